"""Request bodies. Event and program bodies are the shared documents in ``application``."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from loyalty.application.access import Scope
from loyalty.application.event_documents import LineItem, MemberRef
from loyalty.application.limits import (
    ATTRIBUTES_BYTES_MAX,
    ATTRIBUTES_KEYS_MAX,
    BATCH_EVENTS_MAX,
    LINES_PER_EVENT_MAX,
    MONEY_MINOR_MAX,
    POINTS_PER_REQUEST_MAX,
    REASON_LENGTH_MAX,
    REFERENCE_LENGTH_MAX,
    attributes_size,
)
from loyalty.application.program_document import ProgramDocument


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _bounded_attributes(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    if len(value) > ATTRIBUTES_KEYS_MAX:
        raise ValueError(f"at most {ATTRIBUTES_KEYS_MAX} attributes")
    if attributes_size(value) > ATTRIBUTES_BYTES_MAX:
        raise ValueError(f"attributes exceed {ATTRIBUTES_BYTES_MAX} bytes as JSON")
    return value


class MemberFields(_Strict):
    email: Annotated[EmailStr, Field(max_length=254)] | None = None
    phone: (
        Annotated[str, Field(min_length=3, max_length=32, pattern=r"^\+?[0-9 ()\-.]+$")] | None
    ) = None
    first_name: Annotated[str, Field(max_length=100)] | None = None
    last_name: Annotated[str, Field(max_length=100)] | None = None
    birth_date: date | None = None
    gender: Annotated[str, Field(max_length=32)] | None = None
    locale: (
        Annotated[str, Field(max_length=35, pattern=r"^[A-Za-z]{2,8}([_-][A-Za-z0-9]{1,8})*$")]
        | None
    ) = None
    marketing_consent: bool | None = None
    attributes: dict[str, Any] | None = None

    _attrs = field_validator("attributes")(_bounded_attributes)

    @field_validator("birth_date")
    @classmethod
    def _plausible_birth_date(cls, value: date | None) -> date | None:
        if value is not None and not date(1900, 1, 1) <= value <= date(2100, 1, 1):
            raise ValueError("birth_date must be between 1900-01-01 and 2100-01-01")
        return value


class EnrollMember(MemberFields):
    external_id: Annotated[str, Field(min_length=1, max_length=128)]


class UpdateMember(MemberFields):
    pass


class RedeemPoints(_Strict):
    points: Annotated[StrictInt, Field(ge=1, le=POINTS_PER_REQUEST_MAX)]
    reason: Annotated[str, Field(max_length=REASON_LENGTH_MAX)] | None = None
    reference: Annotated[str, Field(max_length=REFERENCE_LENGTH_MAX)] | None = None


class CancelRedemption(_Strict):
    reason: Annotated[str, Field(max_length=REASON_LENGTH_MAX)] | None = None


class AdjustPoints(_Strict):
    points: Annotated[
        StrictInt,
        Field(
            ge=-POINTS_PER_REQUEST_MAX,
            le=POINTS_PER_REQUEST_MAX,
            description="Positive to credit, negative to debit; never zero.",
        ),
    ]
    reason: Annotated[str, Field(min_length=1, max_length=REASON_LENGTH_MAX)]
    reference: Annotated[str, Field(max_length=REFERENCE_LENGTH_MAX)] | None = None
    expires_at: AwareDatetime | None = Field(
        default=None, description="For a credit: when it expires (default: the program's policy)."
    )

    @field_validator("points")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("points must not be zero")
        return value


class CreateApiKey(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=3)]
    program_id: Annotated[str, Field(max_length=32)] | None = None


class QuoteRequest(_Strict):
    """A cart to price: a purchase without an id. Omit ``member`` to price for a new member
    (a product page); omit ``occurred_at`` for now; omit ``total_minor`` for the lines' sum."""

    member: MemberRef | None = None
    occurred_at: AwareDatetime | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    total_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)] | None = None
    lines: Annotated[list[LineItem], Field(max_length=LINES_PER_EVENT_MAX)] = Field(
        default_factory=list
    )
    channel: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    store: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    order_reference: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="The order's reference as holds name it: what holds of this order "
        "already took counts against the checkout rules in `payment`.",
    )


class BacktestRequest(_Strict):
    """A candidate document to replay on the program's stored purchases and actions."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    document: ProgramDocument
    from_: AwareDatetime | None = Field(default=None, alias="from")
    until: AwareDatetime | None = None


class AssignTier(_Strict):
    tier: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]
    until: AwareDatetime | None = Field(
        default=None,
        description="When the assignment ends and the member is reviewed like anyone else "
        "(default: the tier set's next review date).",
    )


class RecalculateTiers(_Strict):
    apply: bool = Field(
        default=False, description="false: only show what would change. true: make the moves."
    )
    tier_set: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Which tier set to recalculate (default: the main one)."
    )


class JoinPlan(_Strict):
    plan: Annotated[str, Field(min_length=1, max_length=64)]
    payment_reference: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="The merchant's record of the first fee (not needed for a trial).",
    )


class MembershipPayment(_Strict):
    amount_minor: Annotated[StrictInt, Field(ge=0, le=10**9)]
    reference: Annotated[str, Field(min_length=1, max_length=128)]


class EventBatch(_Strict):
    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=BATCH_EVENTS_MAX)] = (
        Field(
            description="Up to 1,000 events, each exactly as `POST .../events` takes it; each is "
            "validated, recorded and answered on its own."
        )
    )


class ReservePoints(_Strict):
    points: Annotated[StrictInt, Field(ge=1, le=POINTS_PER_REQUEST_MAX)] | None = Field(
        default=None, description="Points to hold (give this or `cashback_minor`)."
    )
    cashback_minor: Annotated[StrictInt, Field(ge=1, le=MONEY_MINOR_MAX)] | None = Field(
        default=None, description="Cashback to hold, in minor units (or `points`)."
    )
    order_reference: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    order_total_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)] | None = Field(
        default=None,
        description="What the order costs: the program's checkout rules (minimum order, "
        "largest share paid with points or cashback) are checked against it. Required when "
        "the program sets a share or a minimum order.",
    )
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=86_400)] = Field(
        default=900, description="How long the hold lasts before it is released by itself."
    )

    @model_validator(mode="after")
    def _one_wallet(self) -> ReservePoints:
        if (self.points is None) == (self.cashback_minor is None):
            raise ValueError("give exactly one of 'points' and 'cashback_minor'")
        return self


class CapturePoints(_Strict):
    points: Annotated[StrictInt, Field(ge=0, le=POINTS_PER_REQUEST_MAX)] | None = Field(
        default=None, description="At most the hold's points (default: all of them)."
    )
    cashback_minor: Annotated[StrictInt, Field(ge=0, le=MONEY_MINOR_MAX)] | None = Field(
        default=None, description="For a cashback hold: at most what it holds (default: all)."
    )

    @model_validator(mode="after")
    def _one_wallet(self) -> CapturePoints:
        if self.points is not None and self.cashback_minor is not None:
            raise ValueError("give at most one of 'points' and 'cashback_minor'")
        return self


class CouponCart(_Strict):
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    lines: Annotated[list[LineItem], Field(max_length=LINES_PER_EVENT_MAX)] = Field(
        default_factory=list
    )
    total_minor: Annotated[StrictInt, Field(ge=0, le=10**13)] | None = None


GIFT_CARD_AMOUNT_MAX = 10**9
"""A gift card is worth at most 10^9 minor units (``rewards[].value_minor``)."""


class UseCoupon(_Strict):
    order_reference: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="Your order. Required for a gift card, where it is the idempotency key: "
        "the same order and amount again replays the answer.",
    )
    amount_minor: Annotated[StrictInt, Field(ge=1, le=GIFT_CARD_AMOUNT_MAX)] | None = Field(
        default=None,
        description="Gift cards only, and required for them: how much to take, in minor "
        "units of the program's currency; never more than remains.",
    )


class CancelGiftCardUse(_Strict):
    order_reference: Annotated[str, Field(min_length=1, max_length=128)]


class TransferPoints(_Strict):
    to: Annotated[str, Field(min_length=1, max_length=140)] = Field(
        description="The receiving member: `mbr_...` or `ext:<external id>`."
    )
    points: Annotated[StrictInt, Field(ge=1, le=POINTS_PER_REQUEST_MAX)]
    reason: Annotated[str, Field(max_length=REASON_LENGTH_MAX)] | None = None


class Fulfilment(_Strict):
    status: Literal["pending", "processing", "shipped", "fulfilled"]
