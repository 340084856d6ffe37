"""Member discounts: what percentage off each line a member is entitled to at checkout.

Three sources can give a line a percentage: the program's simple member discount (optionally
only on some categories), the cumulative discount whose percentage rises with the member's
spend so far, and the member's tier. They don't add up: each line gets the best of them.
Amounts are whole minor units, rounded down per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loyalty.domain.purchase import PurchaseLine


@dataclass(frozen=True, slots=True)
class SpendBracket:
    from_spend_minor: int
    percent: int


@dataclass(frozen=True, slots=True)
class DiscountPolicy:
    member_percent: int = 0
    member_categories: frozenset[str] | None = None
    """The simple discount applies only to lines in these categories (None: every line)."""
    brackets: tuple[SpendBracket, ...] = ()
    """Cumulative discount: ordered by ``from_spend_minor``."""

    def cumulative_percent(self, spend_minor: int) -> int:
        percent = 0
        for bracket in self.brackets:
            if spend_minor >= bracket.from_spend_minor:
                percent = bracket.percent
        return percent


@dataclass(frozen=True, slots=True)
class LineDiscount:
    line_id: str
    percent: int
    source: str
    """``member``, ``cumulative`` or ``tier``."""
    amount_minor: int


def line_discounts(
    policy: DiscountPolicy,
    lines: Sequence[PurchaseLine],
    *,
    cumulative_spend_minor: int,
    tier_percent: int,
) -> list[LineDiscount]:
    """The best percentage for each product line, and its amount on the line's base."""
    cumulative = policy.cumulative_percent(cumulative_spend_minor)
    result = []
    for line in lines:
        if line.kind != "product":
            continue
        options = [(cumulative, "cumulative"), (tier_percent, "tier")]
        categories = policy.member_categories
        if categories is None or (line.category is not None and line.category in categories):
            options.append((policy.member_percent, "member"))
        percent, source = max(options, key=lambda option: option[0])
        if percent <= 0:
            continue
        amount = max(0, line.base_minor) * percent // 100
        result.append(LineDiscount(line.line_id, percent, source, amount))
    return result
