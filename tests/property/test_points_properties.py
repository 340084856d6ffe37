"""Properties of the pure points arithmetic, checked against ``fractions.Fraction``."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from loyalty.domain.points import Rounding, allocate, convert_spend, divide, share_of_quantity
from loyalty.domain.purchase import RecordedLine, ReturnRequestLine, plan_return


def reference_round(value: Fraction, rounding: Rounding) -> int:
    """Rounding of an exact rational, written independently of ``divide``. ``half_up`` rounds
    a tie towards +infinity, which for the non-negative values points can take is "up"."""
    if rounding is Rounding.FLOOR:
        return math.floor(value)
    if rounding is Rounding.CEIL:
        return math.ceil(value)
    if rounding is Rounding.HALF_UP:
        return math.floor(value + Fraction(1, 2))
    return round(value)  # Fraction.__round__ rounds half to even


numerators = st.integers(min_value=0, max_value=10**30)
denominators = st.integers(min_value=1, max_value=10**12)


@given(numerator=numerators, denominator=denominators, rounding=st.sampled_from(Rounding))
def test_divide_matches_exact_rational_rounding(numerator, denominator, rounding):
    assert divide(numerator, denominator, rounding) == reference_round(
        Fraction(numerator, denominator), rounding
    )


@given(
    numerator=st.integers(min_value=-(10**30), max_value=-1),
    denominator=denominators,
    rounding=st.sampled_from([Rounding.FLOOR, Rounding.CEIL, Rounding.HALF_EVEN]),
)
def test_divide_rounds_negative_values_by_the_unambiguous_modes(numerator, denominator, rounding):
    assert divide(numerator, denominator, rounding) == reference_round(
        Fraction(numerator, denominator), rounding
    )


@given(
    numerator=numerators,
    denominator=st.integers(min_value=2, max_value=10**6),
    rounding=st.sampled_from(Rounding),
)
def test_divide_lands_on_a_neighbour_of_the_exact_quotient(numerator, denominator, rounding):
    exact = Fraction(numerator, denominator)
    got = divide(numerator, denominator, rounding)
    assert math.floor(exact) <= got <= math.ceil(exact)


@given(
    spend=st.integers(min_value=0, max_value=10**12),
    extra=st.integers(min_value=0, max_value=10**6),
    points=st.integers(min_value=0, max_value=1000),
    per=st.integers(min_value=1, max_value=1_000_000),
    rounding=st.sampled_from(Rounding),
)
def test_spending_more_never_earns_fewer_points(spend, extra, points, per, rounding):
    less = convert_spend(spend, points=points, per_spend_minor=per, rounding=rounding)
    more = convert_spend(spend + extra, points=points, per_spend_minor=per, rounding=rounding)
    assert less == reference_round(Fraction(spend * points, per), rounding)
    assert less <= more


@st.composite
def totals_and_weights(draw):
    weights = draw(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=25))
    if sum(weights) == 0:
        return 0, weights
    return draw(st.integers(min_value=0, max_value=10**12)), weights


@given(totals_and_weights())
def test_allocation_sums_exactly_and_each_share_is_within_one_of_its_proportion(case):
    total, weights = case
    shares = allocate(total, weights)
    assert len(shares) == len(weights)
    assert sum(shares) == total
    weight_sum = sum(weights)
    for share, weight in zip(shares, weights, strict=True):
        assert share >= 0
        if weight_sum == 0:
            assert share == 0
        else:
            exact = Fraction(total * weight, weight_sum)
            assert abs(share - exact) < 1
            assert math.floor(exact) <= share <= math.ceil(exact)


@given(totals_and_weights())
def test_allocation_gives_equal_weights_shares_that_differ_by_at_most_one(case):
    total, weights = case
    shares = allocate(total, weights)
    by_weight: dict[int, list[int]] = {}
    for share, weight in zip(shares, weights, strict=True):
        by_weight.setdefault(weight, []).append(share)
    for group in by_weight.values():
        assert max(group) - min(group) <= 1
        assert group == sorted(group, reverse=True)  # ties go to the earlier part


@st.composite
def quantity_partitions(draw):
    quantity = draw(st.integers(min_value=1, max_value=500))
    cuts: set[int] = set()
    if quantity > 1:
        cuts = draw(st.sets(st.integers(min_value=1, max_value=quantity - 1), max_size=20))
    bounds = [0, *sorted(cuts), quantity]
    steps = [b - a for a, b in itertools.pairwise(bounds)]
    return quantity, steps


@given(points=st.integers(min_value=0, max_value=10**12), partition=quantity_partitions())
def test_returning_a_line_in_any_steps_takes_back_exactly_its_points(points, partition):
    quantity, steps = partition
    before = 0
    taken = []
    for step in steps:
        taken.append(
            share_of_quantity(
                points, quantity_total=quantity, quantity_before=before, quantity_now=step
            )
        )
        before += step
    assert sum(taken) == points
    for step, share in zip(steps, taken, strict=True):
        assert abs(share - Fraction(points * step, quantity)) < 1


@st.composite
def orders_with_returns(draw):
    """Lines of a recorded order, and a sequence of partial returns (by line id or by SKU)
    that, followed by a whole-order return, brings back every unit."""
    n = draw(st.integers(min_value=1, max_value=5))
    lines = [
        (
            f"L{i}",
            draw(st.sampled_from(["A", "B", None])),
            draw(st.integers(min_value=1, max_value=6)),
            draw(st.integers(min_value=0, max_value=10_000)),
        )
        for i in range(n)
    ]
    requests = draw(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=n - 1), st.booleans(), st.integers(1, 3)),
            max_size=8,
        )
    )
    return lines, requests


@given(orders_with_returns())
def test_partial_returns_then_a_whole_return_give_back_exactly_the_order_points(case):
    lines, requests = case
    returned = {line_id: 0 for line_id, *_ in lines}
    order_points = sum(points for *_, points in lines)
    points_back = 0

    def state() -> list[RecordedLine]:
        return [
            RecordedLine(line_id, sku, qty, points, returned[line_id])
            for line_id, sku, qty, points in lines
        ]

    for index, by_sku, qty in requests:
        line_id, sku, quantity, _ = lines[index]
        request = (
            ReturnRequestLine(None, sku, qty)
            if by_sku and sku
            else ReturnRequestLine(line_id, None, qty)
        )
        if by_sku and sku:
            left = sum(q - returned[lid] for lid, s, q, _ in lines if s == sku)
        else:
            left = quantity - returned[line_id]
        if qty > left:
            continue  # refusals are covered by unit tests
        plan = plan_return(
            order_id="O",
            recorded=state(),
            requested=[request],
            order_points=order_points,
            order_points_returned=points_back,
        )
        assert sum(lr.quantity for lr in plan) == qty
        for lr in plan:
            returned[lr.line_id] += lr.quantity
            points_back += lr.points
    rest = plan_return(
        order_id="O",
        recorded=state(),
        requested=None,
        order_points=order_points,
        order_points_returned=points_back,
    )
    points_back += sum(lr.points for lr in rest)
    for lr in rest:
        returned[lr.line_id] += lr.quantity
    assert points_back == order_points
    assert all(returned[line_id] == qty for line_id, _, qty, _ in lines)
