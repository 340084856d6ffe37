"""The reward catalog: what a member can get for points, and why not when they can't; and
coupon codes that can't be guessed and whose typos are caught. Pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from loyalty.domain.errors import GiftCardBalanceShort
from loyalty.domain.rules import Period

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base 32: no I, L, O or U, so a code read aloud or typed is hard to garble."""
CODE_RANDOM_CHARS = 12
"""60 random bits: guessing one live code among millions takes ~10^11 tries."""
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})


class RewardType(StrEnum):
    COUPON_AMOUNT = "coupon_amount"
    COUPON_PERCENT = "coupon_percent"
    FREE_PRODUCT = "free_product"
    GIFT_CARD = "gift_card"
    EXPERIENCE = "experience"


@dataclass(frozen=True, slots=True)
class Reward:
    reward_id: str
    name: str
    type: RewardType
    cost_points: int
    description: str | None = None
    image_url: str | None = None
    cost_by_tier: Mapping[str, int] = field(default_factory=dict)
    value_minor: int = 0
    percent: int = 0
    min_order_minor: int = 0
    skus: frozenset[str] = frozenset()
    stock: int | None = None
    limit_count: int | None = None
    limit_period: Period = Period.LIFETIME
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    tiers: frozenset[str] | None = None
    segments: frozenset[str] | None = None
    """The member must be in at least one of these segments."""
    condition: str | None = None
    """A CEL condition over ``member`` and ``now`` the member must meet."""
    valid_days: int = 90

    def cost_for(self, held: frozenset[str]) -> int:
        """The cost for a member holding the tiers ``held`` (one per tier set): the lowest
        price any of them has, or the reward's cost."""
        prices = [self.cost_by_tier[tier] for tier in held if tier in self.cost_by_tier]
        return min(prices, default=self.cost_points)


def why_not(
    reward: Reward,
    *,
    available_points: int,
    tiers: frozenset[str],
    issued_total: int,
    issued_to_member_in_period: int,
    now: datetime,
    member_segments: frozenset[str] = frozenset(),
    condition_met: bool = True,
) -> list[dict[str, Any]]:
    """Every reason the member can't redeem ``reward`` now (empty: they can). ``tiers`` are
    the tiers the member holds now, one per tier set (a tier-only reward needs any of its
    tiers); ``member_segments`` the segments the member is in now; ``condition_met`` what the
    reward's own condition said of them (true when it has none)."""
    reasons: list[dict[str, Any]] = []
    if (reward.starts_at and now < reward.starts_at) or (reward.ends_at and now >= reward.ends_at):
        reasons.append({"code": "not_available_now"})
    if reward.tiers is not None and not reward.tiers & tiers:
        reasons.append({"code": "tier_too_low", "tiers": sorted(reward.tiers)})
    if reward.segments is not None and not reward.segments & member_segments:
        reasons.append({"code": "not_in_segment", "segments": sorted(reward.segments)})
    if reward.condition is not None and not condition_met:
        reasons.append({"code": "condition_not_met"})
    if reward.stock is not None and issued_total >= reward.stock:
        reasons.append({"code": "out_of_stock"})
    if reward.limit_count is not None and issued_to_member_in_period >= reward.limit_count:
        reasons.append(
            {"code": "limit_reached", "limit": reward.limit_count, "period": reward.limit_period}
        )
    cost = reward.cost_for(tiers)
    if available_points < cost:
        reasons.append({"code": "points_short", "points_short": cost - available_points})
    return reasons


def _check_char(body: str) -> str:
    """Luhn mod 32 over the alphabet: catches any single wrong character and any swap of two
    neighbours."""
    n = len(CODE_ALPHABET)
    factor, total = 2, 0
    for char in reversed(body):
        addend = factor * CODE_ALPHABET.index(char)
        factor = 1 if factor == 2 else 2
        total += addend // n + addend % n
    return CODE_ALPHABET[(n - total % n) % n]


def new_code() -> str:
    """A fresh coupon code, ``XXXX-XXXX-XXXX-C``: 12 random characters and a check one."""
    body = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_RANDOM_CHARS))
    full = body + _check_char(body)
    return "-".join(full[i : i + 4] for i in range(0, 12, 4)) + "-" + full[12]


def normalise_code(text: str) -> str | None:
    """The code without dashes or spaces, upper case, O read as 0 and I/L as 1; None when it
    can't be a code or its check character doesn't match (a typo)."""
    raw = text.upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    if len(raw) != CODE_RANDOM_CHARS + 1 or any(c not in CODE_ALPHABET for c in raw):
        return None
    if _check_char(raw[:-1]) != raw[-1]:
        return None
    return raw


def code_hash(normalised: str) -> str:
    """What the database keeps: codes are shown once and never stored in clear."""
    return hashlib.sha256(normalised.encode()).hexdigest()


def discount_for(reward: Reward, lines: list[tuple[str | None, int, int]], total_minor: int) -> int:
    """What a coupon takes off a cart of ``(sku, base_minor, quantity)`` lines: an amount or a
    percent of the lines it applies to (its ``skus``, or all), or one unit of the free
    product; 0 when the order is under the minimum."""
    if total_minor < reward.min_order_minor:
        return 0
    applicable = [base for sku, base, _ in lines if not reward.skus or sku in reward.skus]
    if reward.type is RewardType.FREE_PRODUCT:
        units = [base // qty for sku, base, qty in lines if sku in reward.skus and qty > 0]
        return max(units, default=0)
    if reward.type in (RewardType.COUPON_AMOUNT, RewardType.GIFT_CARD):
        return min(reward.value_minor, sum(applicable))
    if reward.type is RewardType.COUPON_PERCENT:
        return sum(applicable) * reward.percent // 100
    return 0


@dataclass(frozen=True, slots=True)
class GiftCardBalance:
    """A gift card's value, fixed when it was issued, and what its uses took net of the uses
    cancelled since."""

    value_minor: int
    spent_minor: int

    def __post_init__(self) -> None:
        assert 0 <= self.spent_minor <= self.value_minor, self

    @property
    def remaining_minor(self) -> int:
        return self.value_minor - self.spent_minor

    def take(self, amount_minor: int) -> GiftCardBalance:
        """The balance after spending ``amount_minor``; refused past what remains, never
        clamped to it."""
        if not 0 < amount_minor <= self.remaining_minor:
            raise GiftCardBalanceShort(
                amount_minor=amount_minor, remaining_minor=self.remaining_minor
            )
        return GiftCardBalance(self.value_minor, self.spent_minor + amount_minor)

    def give_back(self, amount_minor: int) -> GiftCardBalance:
        return GiftCardBalance(self.value_minor, self.spent_minor - amount_minor)


FULFILMENT_STATES = ("pending", "processing", "shipped", "fulfilled")
"""An experience or physical reward's fulfilment, as the merchant updates it."""
