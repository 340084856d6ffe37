"""Stamp cards (frequency programs): which purchases earn stamps, and when a card is full.

A card holds ``stamps`` stamps; filling it issues its reward and a new card starts with the
stamps left over. The engine keeps, per member and card, the net stamps ever collected and
the rewards issued: cards completed are ``total // stamps``, so a return that takes stamps
back below a completed card takes that card's reward back too. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from loyalty.domain.purchase import PurchaseLine
from loyalty.domain.rules import ItemFilter


class StampPer(StrEnum):
    UNIT = "unit"
    """A stamp for each qualifying unit (each coffee)."""
    PURCHASE = "purchase"
    """A stamp for a purchase with at least one qualifying line (a visit)."""


@dataclass(frozen=True, slots=True)
class StampCard:
    card_id: str
    name: str
    stamps: int
    """Stamps that fill a card."""
    reward_points: int
    """Points credited when a card is full."""
    per: StampPer = StampPer.UNIT
    include: ItemFilter | None = None
    """Lines that earn stamps (None: every product line)."""
    min_total_minor: int = 0
    max_per_day: int | None = None
    """At most this many stamps a local day (None: no limit)."""


def qualifying_units(card: StampCard, lines: Sequence[PurchaseLine]) -> int:
    return sum(
        line.quantity
        for line in lines
        if line.kind == "product" and (card.include is None or card.include.matches(line))
    )


def stamps_for(
    card: StampCard,
    lines: Sequence[PurchaseLine],
    *,
    total_minor: int,
    stamped_today: int = 0,
) -> int:
    """Stamps a basket earns on ``card``, after ``stamped_today`` stamps already given today."""
    if total_minor < card.min_total_minor:
        return 0
    units = qualifying_units(card, lines)
    earned = units if card.per is StampPer.UNIT else min(units, 1)
    if card.max_per_day is not None:
        earned = min(earned, max(0, card.max_per_day - stamped_today))
    return earned


def rewards_due(card: StampCard, *, total: int, rewarded: int) -> int:
    """Rewards to issue (positive) or take back (negative) so that one is issued per full
    card: ``total // stamps`` in all."""
    return max(total, 0) // card.stamps - rewarded
