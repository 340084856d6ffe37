"""Earning on a purchase and taking points back on a return, line by line and exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from loyalty.domain.errors import CurrencyMismatch, ReturnExceedsPurchase, UnknownOrderLine
from loyalty.domain.points import allocate, convert_spend, share_of_quantity
from loyalty.domain.program import ProgramSettings


@dataclass(frozen=True, slots=True)
class PurchaseLine:
    line_id: str
    sku: str | None
    quantity: int
    unit_price_minor: int
    discount_minor: int = 0
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    kind: str = "product"
    """``product``, or ``gift_card``, ``shipping``, ``tax``, ``deposit``, ``service``: lines
    that spend rules leave out of the earn base unless a rule names their kind."""

    @property
    def base_minor(self) -> int:
        """The earn base: the line's price after its discount."""
        return self.quantity * self.unit_price_minor - self.discount_minor


@dataclass(frozen=True, slots=True)
class Purchase:
    order_id: str
    occurred_at: datetime
    currency: str
    total_minor: int
    lines: Sequence[PurchaseLine]
    channel: str | None = None
    store: str | None = None


@dataclass(frozen=True, slots=True)
class LineEarning:
    line_id: str
    base_minor: int
    points: int


@dataclass(frozen=True, slots=True)
class Earning:
    points: int
    base_minor: int
    lines: list[LineEarning]
    program_version: int


def compute_earning(purchase: Purchase, settings: ProgramSettings) -> Earning:
    """Points for a purchase. The rate applies to the order's whole earn base, rounded once
    by the program's rounding mode, and the result is allocated to lines in proportion to their
    base so the line figures add up exactly. An order without lines earns on its total."""
    if purchase.currency != settings.currency:
        raise CurrencyMismatch(expected=settings.currency, received=purchase.currency)
    rate = settings.earn
    if purchase.lines:
        bases = [line.base_minor for line in purchase.lines]
        base_total = sum(bases)
    else:
        bases = []
        base_total = purchase.total_minor
    points = convert_spend(
        base_total, points=rate.points, per_spend_minor=rate.per_spend_minor, rounding=rate.rounding
    )
    shares = allocate(points, bases) if purchase.lines else []
    lines = [
        LineEarning(line.line_id, base, share)
        for line, base, share in zip(purchase.lines, bases, shares, strict=True)
    ]
    return Earning(points, base_total, lines, settings.version)


@dataclass(frozen=True, slots=True)
class RecordedLine:
    """A purchase line as recorded, with what was returned of it so far."""

    line_id: str
    sku: str | None
    quantity: int
    points: int
    quantity_returned: int


@dataclass(frozen=True, slots=True)
class ReturnRequestLine:
    line_id: str | None
    sku: str | None
    quantity: int


@dataclass(frozen=True, slots=True)
class LineReturn:
    line_id: str
    quantity: int
    points: int


def plan_return(
    *,
    order_id: str,
    recorded: Sequence[RecordedLine],
    requested: Sequence[ReturnRequestLine] | None,
    order_points: int,
    order_points_returned: int,
) -> list[LineReturn]:
    """Which units of which lines come back and the points they carry.

    ``requested=None`` returns everything not yet returned. A line is named by ``line_id`` or,
    when the purchase had it once, by ``sku``; units of a SKU that appears on several lines are
    taken from those lines in order. An order recorded without lines is returned whole, and
    ``order_points`` / ``order_points_returned`` say what is left of it.
    """
    if not recorded:
        if requested:
            first = requested[0]
            raise UnknownOrderLine(order_id=order_id, line=first.line_id or first.sku or "")
        left = order_points - order_points_returned
        return [LineReturn(line_id="order", quantity=1, points=left)] if left > 0 else []

    returnable = {line.line_id: line.quantity - line.quantity_returned for line in recorded}
    by_id = {line.line_id: line for line in recorded}
    wanted: dict[str, int] = {}
    if requested is None:
        wanted = {lid: q for lid, q in returnable.items() if q > 0}
    else:
        for req in requested:
            if req.line_id is not None:
                if req.line_id not in by_id:
                    raise UnknownOrderLine(order_id=order_id, line=req.line_id)
                candidates = [req.line_id]
                label = req.line_id
            else:
                assert req.sku is not None
                candidates = [line.line_id for line in recorded if line.sku == req.sku]
                label = req.sku
                if not candidates:
                    raise UnknownOrderLine(order_id=order_id, line=req.sku)
            need = req.quantity
            available = sum(returnable[c] - wanted.get(c, 0) for c in candidates)
            if need > available:
                raise ReturnExceedsPurchase(
                    order_id=order_id, line=label, quantity_returnable=available, requested=need
                )
            for c in candidates:
                free = returnable[c] - wanted.get(c, 0)
                step = min(free, need)
                if step:
                    wanted[c] = wanted.get(c, 0) + step
                    need -= step
    result: list[LineReturn] = []
    for line in recorded:
        qty = wanted.get(line.line_id, 0)
        if qty == 0:
            continue
        pts = share_of_quantity(
            line.points,
            quantity_total=line.quantity,
            quantity_before=line.quantity_returned,
            quantity_now=qty,
        )
        result.append(LineReturn(line.line_id, qty, pts))
    return result
