"""Exact unit tests of the integer arithmetic in ``loyalty.domain.points``."""

from __future__ import annotations

import pytest

from loyalty.domain.points import Rounding, allocate, convert_spend, divide, share_of_quantity

ALL_MODES = list(Rounding)


# --- divide -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_an_exact_quotient_is_the_same_in_every_rounding_mode(mode):
    assert divide(1200, 100, mode) == 12
    assert divide(0, 7, mode) == 0


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        # (numerator, denominator) -> {mode: result}
        (7, 2, {"floor": 3, "ceil": 4, "half_up": 4, "half_even": 4}),  # 3.5, odd below
        (5, 2, {"floor": 2, "ceil": 3, "half_up": 3, "half_even": 2}),  # 2.5, even below
        (9, 4, {"floor": 2, "ceil": 3, "half_up": 2, "half_even": 2}),  # 2.25
        (11, 4, {"floor": 2, "ceil": 3, "half_up": 3, "half_even": 3}),  # 2.75
        (1, 3, {"floor": 0, "ceil": 1, "half_up": 0, "half_even": 0}),  # 0.33
        (2, 3, {"floor": 0, "ceil": 1, "half_up": 1, "half_even": 1}),  # 0.67
        (1, 2, {"floor": 0, "ceil": 1, "half_up": 1, "half_even": 0}),  # 0.5
    ],
)
def test_a_fraction_is_rounded_as_each_mode_says(numerator, denominator, expected):
    got = {mode.value: divide(numerator, denominator, mode) for mode in ALL_MODES}
    assert got == expected


def test_divide_is_exact_for_integers_beyond_float_precision():
    big = 10**30 + 1
    assert divide(big, 2, Rounding.FLOOR) == 5 * 10**29
    assert divide(big, 2, Rounding.CEIL) == 5 * 10**29 + 1
    assert divide(big, 2, Rounding.HALF_EVEN) == 5 * 10**29  # 5e29 is even
    assert divide(big + 2, 2, Rounding.HALF_EVEN) == 5 * 10**29 + 2  # .5 above odd 5e29+1


def test_a_negative_numerator_is_floored_and_ceiled_towards_the_right_infinity():
    assert divide(-7, 2, Rounding.FLOOR) == -4
    assert divide(-7, 2, Rounding.CEIL) == -3
    assert divide(-5, 2, Rounding.HALF_EVEN) == -2  # -2.5 -> even neighbour
    assert divide(-7, 2, Rounding.HALF_EVEN) == -4  # -3.5 -> even neighbour
    assert divide(-9, 4, Rounding.HALF_UP) == -2  # -2.25 is not a tie
    assert divide(-11, 4, Rounding.HALF_UP) == -3  # -2.75 is not a tie


@pytest.mark.parametrize("denominator", [0, -1, -100])
def test_divide_refuses_a_denominator_that_is_not_positive(denominator):
    with pytest.raises(ValueError, match="denominator must be positive"):
        divide(10, denominator, Rounding.FLOOR)


# --- convert_spend ------------------------------------------------------------------------


def test_spend_converts_to_points_with_the_program_rounding():
    # 10.50 EUR at 1 point per 1.00 EUR is 10.5 points.
    got = {
        mode.value: convert_spend(1050, points=1, per_spend_minor=100, rounding=mode)
        for mode in ALL_MODES
    }
    assert got == {"floor": 10, "ceil": 11, "half_up": 11, "half_even": 10}


def test_a_rate_of_several_points_multiplies_before_rounding():
    # 3 points per 2.00: 3.33 spent is 4.995 points.
    assert convert_spend(333, points=3, per_spend_minor=200, rounding=Rounding.FLOOR) == 4
    assert convert_spend(333, points=3, per_spend_minor=200, rounding=Rounding.HALF_UP) == 5
    assert convert_spend(333, points=3, per_spend_minor=200, rounding=Rounding.CEIL) == 5


def test_zero_spend_earns_zero_points_in_every_mode():
    for mode in ALL_MODES:
        assert convert_spend(0, points=5, per_spend_minor=100, rounding=mode) == 0


@pytest.mark.parametrize("mode", ALL_MODES)
def test_negative_spend_is_refused(mode):
    with pytest.raises(ValueError, match="spend_minor must not be negative"):
        convert_spend(-1, points=1, per_spend_minor=100, rounding=mode)


# --- allocate -----------------------------------------------------------------------------


def test_allocation_that_divides_evenly_is_exactly_proportional():
    assert allocate(100, [50, 30, 20]) == [50, 30, 20]
    assert allocate(10, [3, 3, 4]) == [3, 3, 4]


def test_allocation_gives_leftover_units_to_the_largest_remainders():
    # 5 over [1, 2]: exact 1.67 and 3.33; the first has the larger remainder.
    assert allocate(5, [1, 2]) == [2, 3]
    # 24 over [1900, 550]: exact 18.61 and 5.39.
    assert allocate(24, [1900, 550]) == [19, 5]


def test_allocation_ties_go_to_the_earlier_part():
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert allocate(1, [1, 1]) == [1, 0]
    assert allocate(2, [1, 1, 1]) == [1, 1, 0]


def test_a_zero_weight_part_gets_nothing():
    assert allocate(7, [0, 5, 0, 2]) == [0, 5, 0, 2]
    assert allocate(3, [0, 1, 1]) == [0, 2, 1]


def test_allocating_zero_over_zero_weights_gives_zeros():
    assert allocate(0, [0, 0, 0]) == [0, 0, 0]
    assert allocate(0, []) == []


@pytest.mark.parametrize("weights", [[0, 0], []])
def test_a_non_zero_total_cannot_be_allocated_over_zero_weights(weights):
    with pytest.raises(ValueError, match="zero weights"):
        allocate(5, weights)


@pytest.mark.parametrize(("total", "weights"), [(-1, [1, 1]), (5, [1, -1]), (5, [-2, 3])])
def test_allocation_refuses_negative_values(total, weights):
    with pytest.raises(ValueError, match="non-negative"):
        allocate(total, weights)


# --- share_of_quantity --------------------------------------------------------------------


def test_returning_a_line_unit_by_unit_takes_back_exactly_its_points():
    steps = [
        share_of_quantity(10, quantity_total=3, quantity_before=before, quantity_now=1)
        for before in range(3)
    ]
    assert steps == [3, 3, 4]
    assert sum(steps) == 10


def test_returning_in_uneven_steps_takes_back_exactly_the_line_points():
    first = share_of_quantity(10, quantity_total=3, quantity_before=0, quantity_now=2)
    second = share_of_quantity(10, quantity_total=3, quantity_before=2, quantity_now=1)
    assert (first, second) == (6, 4)


def test_returning_the_whole_line_at_once_takes_back_all_its_points():
    assert share_of_quantity(17, quantity_total=4, quantity_before=0, quantity_now=4) == 17


def test_returning_nothing_takes_back_nothing():
    assert share_of_quantity(17, quantity_total=4, quantity_before=2, quantity_now=0) == 0


@pytest.mark.parametrize(
    ("before", "now"),
    [(-1, 1), (0, 5), (3, 2), (4, 1), (2, -3)],
)
def test_share_of_quantity_refuses_quantities_outside_the_line(before, now):
    with pytest.raises(ValueError, match="quantities out of range"):
        share_of_quantity(10, quantity_total=4, quantity_before=before, quantity_now=now)
