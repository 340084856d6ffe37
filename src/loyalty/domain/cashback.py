"""Cashback and paying at checkout with points or cashback.

Cashback is money, not points: a percentage of eligible spend credited in integer minor units
of the program's currency to the member's cashback wallet, which has lots and an expiry of its
own. At checkout a member can pay part of an order with cashback, or with points converted at
the program's point value, within the program's checkout rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loyalty.domain.errors import PaymentNotAllowed
from loyalty.domain.ledger import CASH, POINTS
from loyalty.domain.points import Rounding, divide
from loyalty.domain.program import Expiry, ExpiryPolicy, PointValue
from loyalty.domain.purchase import Purchase, PurchaseLine
from loyalty.domain.rules import ItemFilter

BASIS_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class CashbackPolicy:
    """``rate_bp`` basis points (1/100 of a percent) of eligible spend, or the member's tier
    rate from ``rate_bp_by_tier``; rounded once per order."""

    rate_bp: int
    rounding: Rounding = Rounding.FLOOR
    rate_bp_by_tier: Mapping[str, int] = field(default_factory=dict)
    include: ItemFilter | None = None
    """Only these lines earn cashback (all lines when absent)."""
    exclude: ItemFilter | None = None
    expiry: Expiry = field(default_factory=lambda: Expiry(ExpiryPolicy.NEVER))
    pending_days: int = 0

    def rate_for(self, tier: str | None) -> int:
        if tier is not None and tier in self.rate_bp_by_tier:
            return self.rate_bp_by_tier[tier]
        return self.rate_bp

    def eligible(self, line: PurchaseLine) -> bool:
        if self.include is not None and not self.include.matches(line):
            return False
        return self.exclude is None or not self.exclude.matches(line)


def cashback_for(
    policy: CashbackPolicy, purchase: Purchase, *, tier: str | None
) -> tuple[int, int]:
    """Cashback for an order: a share of what its product lines cost after their discounts
    (shipping, tax, deposits and gift cards bought earn none); an order sent without lines
    earns on its total unless the policy names lines. Returns ``(cashback_minor,
    eligible_minor)``."""
    if not purchase.lines:
        eligible = purchase.total_minor if policy.include is None else 0
    else:
        eligible = sum(
            line.base_minor
            for line in purchase.lines
            if line.kind == "product" and line.base_minor > 0 and policy.eligible(line)
        )
    if eligible <= 0:
        return 0, 0
    return divide(eligible * policy.rate_for(tier), BASIS_POINTS, policy.rounding), eligible


@dataclass(frozen=True, slots=True)
class PaymentRule:
    """How much of one order one wallet may pay. Amounts are in the wallet's unit: points for
    points, minor units for cashback."""

    enabled: bool = True
    min_amount: int = 0
    """The least a payment may use (e.g. no fewer than 500 points)."""
    max_amount: int | None = None
    """The most one order may use, whatever its total."""
    max_share_percent: int = 100
    """The most of the order's total this wallet may pay, in percent (100: all of it)."""


@dataclass(frozen=True, slots=True)
class CheckoutRules:
    points: PaymentRule = field(default_factory=PaymentRule)
    cashback: PaymentRule = field(default_factory=PaymentRule)
    min_order_minor: int = 0
    """Orders below this total can't be paid with points or cashback at all."""

    def rule(self, asset: str) -> PaymentRule:
        return self.points if asset == POINTS else self.cashback

    @property
    def needs_order_total(self) -> bool:
        """Whether a reservation must say what the order costs for the rules to be checked."""
        return self.min_order_minor > 0 or any(
            r.max_share_percent < 100 for r in (self.points, self.cashback)
        )


def wallet_name(asset: str) -> str:
    return "cashback" if asset == CASH else "points"


def money_of(asset: str, amount: int, value: PointValue) -> int:
    """What ``amount`` of a wallet pays, in minor units."""
    return value.of(amount) if asset == POINTS else amount


def most_for_money(asset: str, money_minor: int, value: PointValue) -> int:
    """The most of a wallet that pays no more than ``money_minor``."""
    if asset == CASH:
        return money_minor
    if value.money_minor == 0:
        return 0
    return money_minor * value.points // value.money_minor


@dataclass(frozen=True, slots=True)
class PaymentRoom:
    """What a wallet may still pay towards one order."""

    asset: str
    max_amount: int | None
    """In the wallet's unit; 0 when it may pay nothing, ``None`` when the rules set no cap (the
    member's balance still does)."""
    min_amount: int
    reason: str | None
    """Why it may pay nothing (``disabled``, ``order_below_minimum``, ``share_used``...)."""


def payment_room(
    rules: CheckoutRules,
    *,
    asset: str,
    value: PointValue,
    order_total_minor: int | None,
    already_reserved: int = 0,
) -> PaymentRoom:
    """The most this wallet may still pay towards an order of ``order_total_minor`` (``None``
    when unknown: only caps that don't depend on the total apply), given ``already_reserved``
    of the same wallet already held or captured for it."""
    rule = rules.rule(asset)
    if not rule.enabled or (asset == POINTS and value.money_minor == 0):
        return PaymentRoom(asset, 0, rule.min_amount, "disabled")
    caps: list[int] = []
    if rule.max_amount is not None:
        caps.append(rule.max_amount)
    if order_total_minor is not None:
        if order_total_minor < rules.min_order_minor:
            return PaymentRoom(asset, 0, rule.min_amount, "order_below_minimum")
        share = order_total_minor * rule.max_share_percent // 100
        caps.append(most_for_money(asset, share, value))
    room = min(caps) - already_reserved if caps else None
    if room is not None and room <= 0:
        return PaymentRoom(asset, 0, rule.min_amount, "share_used")
    if room is not None and room < rule.min_amount:
        return PaymentRoom(asset, 0, rule.min_amount, "below_minimum")
    return PaymentRoom(asset, room, rule.min_amount, None)


def check_payment(
    rules: CheckoutRules,
    *,
    asset: str,
    amount: int,
    value: PointValue,
    order_total_minor: int | None,
    already_reserved: int = 0,
) -> None:
    """Refuse (never trim) a payment of ``amount`` that breaks the checkout rules. Raises
    ``PaymentNotAllowed``."""
    name = wallet_name(asset)
    if rules.needs_order_total and order_total_minor is None:
        raise PaymentNotAllowed(
            "This program limits what points and cashback may pay per order: send "
            "'order_total_minor' with the reservation.",
            wallet=name,
            reason="order_total_required",
            limit=None,
        )
    room = payment_room(
        rules,
        asset=asset,
        value=value,
        order_total_minor=order_total_minor,
        already_reserved=already_reserved,
    )
    rule = rules.rule(asset)
    if room.reason == "disabled":
        raise PaymentNotAllowed(
            f"This program does not let members pay with {name}.",
            wallet=name,
            reason="disabled",
            limit=0,
        )
    if room.reason == "order_below_minimum":
        raise PaymentNotAllowed(
            f"Orders below {rules.min_order_minor} (minor units) can't be paid with points or "
            "cashback.",
            wallet=name,
            reason="order_below_minimum",
            limit=rules.min_order_minor,
        )
    if amount < rule.min_amount:
        raise PaymentNotAllowed(
            f"A payment with {name} uses at least {rule.min_amount}.",
            wallet=name,
            reason="below_minimum",
            limit=rule.min_amount,
        )
    if room.max_amount is not None and amount > room.max_amount:
        raise PaymentNotAllowed(
            f"This order may take at most {room.max_amount} more of {name} "
            f"(the program allows {rule.max_share_percent}% of an order"
            + (f", at most {rule.max_amount}" if rule.max_amount is not None else "")
            + ").",
            wallet=name,
            reason="over_limit",
            limit=room.max_amount,
        )
