"""The wire format of events (purchase, return, custom action), shared by the API, the batch
endpoint and ``loyalty events import``. Every field has a documented maximum."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from loyalty.application.limits import (
    ATTRIBUTES_BYTES_MAX,
    ATTRIBUTES_KEYS_MAX,
    LINES_PER_EVENT_MAX,
    MONEY_MINOR_MAX,
    QUANTITY_MAX,
    attributes_size,
)
from loyalty.domain.purchase import Purchase, PurchaseLine

ShortText = Annotated[str, Field(min_length=1, max_length=64)]
SourceId = Annotated[str, Field(min_length=1, max_length=128)]
Name = Annotated[str, Field(max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


LineKind = Literal["product", "gift_card", "shipping", "tax", "deposit", "service"]


class MemberRef(_Strict):
    """Exactly one of ``id`` (the engine's) or ``external_id`` (the merchant's)."""

    id: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    external_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> MemberRef:
        if (self.id is None) == (self.external_id is None):
            raise ValueError("give exactly one of 'id' or 'external_id'")
        return self

    def as_ref(self) -> str:
        return self.id if self.id is not None else f"ext:{self.external_id}"


class LineItem(_Strict):
    line_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    sku: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    name: Name | None = None
    category: Name | None = None
    brand: Name | None = None
    quantity: Annotated[StrictInt, Field(ge=1, le=QUANTITY_MAX)] = 1
    unit_price_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)]
    discount_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)] = 0
    kind: LineKind = Field(
        default="product",
        description="Spend rules earn on products only, unless a rule names other kinds.",
    )

    @model_validator(mode="after")
    def _discount_within_price(self) -> LineItem:
        gross = self.quantity * self.unit_price_minor
        if gross > MONEY_MINOR_MAX:
            raise ValueError(f"quantity x unit_price_minor exceeds {MONEY_MINOR_MAX}")
        if self.discount_minor > gross:
            raise ValueError("discount_minor exceeds quantity x unit_price_minor")
        return self


def _check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > ATTRIBUTES_KEYS_MAX:
        raise ValueError(f"at most {ATTRIBUTES_KEYS_MAX} attributes")
    if attributes_size(value) > ATTRIBUTES_BYTES_MAX:
        raise ValueError(f"attributes exceed {ATTRIBUTES_BYTES_MAX} bytes as JSON")
    return value


class PurchaseEvent(_Strict):
    type: Literal["purchase"]
    id: SourceId = Field(description="The source's order id; also the event's idempotency key.")
    member: MemberRef
    occurred_at: AwareDatetime
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    total_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)]
    lines: Annotated[list[LineItem], Field(max_length=LINES_PER_EVENT_MAX)] = Field(
        default_factory=list
    )
    channel: ShortText | None = None
    store: ShortText | None = None
    member_discount_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)] = Field(
        default=0,
        description="The member discount the checkout granted (as the quote offered it), "
        "already part of the lines' discount_minor; recorded with the purchase.",
    )

    @model_validator(mode="after")
    def _lines_consistent(self) -> PurchaseEvent:
        ids = self.line_ids()
        if len(ids) != len(set(ids)):
            raise ValueError(
                "line ids must be unique within a purchase (a line without line_id is named "
                "by its 1-based position)"
            )
        base = sum(li.quantity * li.unit_price_minor - li.discount_minor for li in self.lines)
        if base > MONEY_MINOR_MAX:
            raise ValueError(f"the lines add up to more than {MONEY_MINOR_MAX}")
        if self.lines and self.member_discount_minor > sum(li.discount_minor for li in self.lines):
            raise ValueError(
                "member_discount_minor is part of the lines' discount_minor, so it can't be "
                "more than their sum"
            )
        return self

    def line_ids(self) -> list[str]:
        """Lines without an id are named by their position, 1-based."""
        return [line.line_id or str(i) for i, line in enumerate(self.lines, start=1)]

    def to_purchase(
        self, *, not_after: datetime | None = None, left: Mapping[str, int] | None = None
    ) -> Purchase:
        """The purchase as the rules see it: ``occurred_at`` no later than ``not_after``. With
        ``left`` (units left per line id), only what is left of it: each line's remaining
        units with its discount in proportion, and the total less what went back."""
        lines = []
        for line_id, item in zip(self.line_ids(), self.lines, strict=True):
            quantity = item.quantity if left is None else left.get(line_id, 0)
            if quantity <= 0:
                continue
            lines.append(
                PurchaseLine(
                    line_id=line_id,
                    sku=item.sku,
                    quantity=quantity,
                    unit_price_minor=item.unit_price_minor,
                    discount_minor=item.discount_minor * quantity // item.quantity,
                    name=item.name,
                    category=item.category,
                    brand=item.brand,
                    kind=item.kind,
                )
            )
        full_base = sum(li.quantity * li.unit_price_minor - li.discount_minor for li in self.lines)
        occurred_at = self.occurred_at.astimezone(UTC)
        return Purchase(
            order_id=self.id,
            occurred_at=min(occurred_at, not_after) if not_after is not None else occurred_at,
            currency=self.currency,
            total_minor=self.total_minor - (full_base - sum(x.base_minor for x in lines)),
            lines=lines,
            channel=self.channel,
            store=self.store,
        )


class ReturnLine(_Strict):
    line_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    sku: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    quantity: Annotated[StrictInt, Field(ge=1, le=QUANTITY_MAX)] = 1

    @model_validator(mode="after")
    def _exactly_one(self) -> ReturnLine:
        if (self.line_id is None) == (self.sku is None):
            raise ValueError("give exactly one of 'line_id' or 'sku'")
        return self


class ReturnEvent(_Strict):
    type: Literal["return"]
    id: SourceId = Field(description="The source's return id; also the idempotency key.")
    order_id: SourceId
    member: MemberRef | None = None
    occurred_at: AwareDatetime
    lines: (
        Annotated[list[ReturnLine], Field(min_length=1, max_length=LINES_PER_EVENT_MAX)] | None
    ) = Field(default=None, description="Omit to return everything not yet returned.")


class ActionEvent(_Strict):
    type: Literal["action"]
    id: SourceId
    member: MemberRef
    occurred_at: AwareDatetime
    action: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    attributes: dict[str, Any] = Field(default_factory=dict)

    _attributes_bounded = field_validator("attributes")(_check_attributes)


Event = Annotated[PurchaseEvent | ReturnEvent | ActionEvent, Field(discriminator="type")]
EVENT_TYPES = ("purchase", "return", "action")
