"""Integer arithmetic for points: conversion with an explicit rounding mode, and exact
allocation of a whole across parts. No floats ever touch a balance."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class Rounding(StrEnum):
    FLOOR = "floor"
    HALF_EVEN = "half_even"
    HALF_UP = "half_up"
    CEIL = "ceil"


def divide(numerator: int, denominator: int, rounding: Rounding) -> int:
    """``numerator / denominator`` rounded by ``rounding``; exact for any integer size."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(numerator, denominator)
    if remainder == 0:
        return quotient
    if rounding is Rounding.FLOOR:
        return quotient
    if rounding is Rounding.CEIL:
        return quotient + 1
    doubled = 2 * remainder
    if doubled > denominator:
        return quotient + 1
    if doubled < denominator:
        return quotient
    if rounding is Rounding.HALF_UP:
        return quotient + 1
    return quotient + (quotient % 2)


def convert_spend(
    spend_minor: int, *, points: int, per_spend_minor: int, rounding: Rounding
) -> int:
    """Points earned for ``spend_minor`` at a rate of ``points`` per ``per_spend_minor``."""
    if spend_minor < 0:
        raise ValueError("spend_minor must not be negative")
    return divide(spend_minor * points, per_spend_minor, rounding)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` across ``weights`` proportionally so the parts add up to ``total`` exactly.

    Largest-remainder method; ties go to the earlier part, so the result is deterministic.
    A zero total weight gives every part zero (and ``total`` must then be zero).
    """
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("allocate takes non-negative values")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total != 0:
            raise ValueError("cannot allocate a non-zero total over zero weights")
        return [0 for _ in weights]
    shares = [total * w // weight_sum for w in weights]
    remainders = [(total * w) % weight_sum for w in weights]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    assert sum(shares) == total
    return shares


def share_of_quantity(
    points: int, *, quantity_total: int, quantity_before: int, quantity_now: int
) -> int:
    """Points that belong to ``quantity_now`` more units of a line, given ``quantity_before``
    units were already taken. Cumulative, so returning every unit in any number of steps takes
    back exactly ``points``."""
    if not 0 <= quantity_before <= quantity_before + quantity_now <= quantity_total:
        raise ValueError("quantities out of range")
    after = points * (quantity_before + quantity_now) // quantity_total
    before = points * quantity_before // quantity_total
    return after - before
