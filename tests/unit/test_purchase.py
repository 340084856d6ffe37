"""Exact unit tests of earning on purchases and taking points back on returns."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from loyalty.domain.errors import CurrencyMismatch, ReturnExceedsPurchase, UnknownOrderLine
from loyalty.domain.points import Rounding
from loyalty.domain.program import (
    EarnRate,
    Expiry,
    ExpiryPolicy,
    NegativeBalancePolicy,
    ProgramSettings,
)
from loyalty.domain.purchase import (
    Earning,
    LineEarning,
    LineReturn,
    Purchase,
    PurchaseLine,
    RecordedLine,
    ReturnRequestLine,
    compute_earning,
    plan_return,
)

WHEN = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def settings(
    *, points: int = 1, per: int = 100, rounding: Rounding = Rounding.FLOOR, version: int = 1
) -> ProgramSettings:
    return ProgramSettings(
        currency="EUR",
        earn=EarnRate(points=points, per_spend_minor=per, rounding=rounding),
        expiry=Expiry(ExpiryPolicy.NEVER),
        negative_balance=NegativeBalancePolicy.ALLOW_DEBT,
        auto_enroll=False,
        version=version,
    )


def purchase(lines: list[PurchaseLine], *, total: int = 0, currency: str = "EUR") -> Purchase:
    return Purchase("O1", WHEN, currency, total, lines)


# --- compute_earning ----------------------------------------------------------------------


def test_a_purchase_earns_on_its_lines_after_discounts_and_splits_points_by_line_base():
    lines = [
        PurchaseLine("L1", "A", quantity=2, unit_price_minor=1000, discount_minor=100),
        PurchaseLine("L2", "B", quantity=1, unit_price_minor=550),
    ]
    earning = compute_earning(purchase(lines, total=999_999), settings(version=7))
    # Base 1900 + 550 = 2450 -> 24 points; 24 split 18.61 / 5.39 -> 19 / 5.
    assert earning == Earning(
        points=24,
        base_minor=2450,
        lines=[LineEarning("L1", 1900, 19), LineEarning("L2", 550, 5)],
        program_version=7,
    )


def test_a_purchase_is_rounded_once_for_the_whole_order_not_per_line():
    lines = [
        PurchaseLine("L1", None, quantity=1, unit_price_minor=150),
        PurchaseLine("L2", None, quantity=1, unit_price_minor=150),
    ]
    earning = compute_earning(purchase(lines), settings())
    assert earning.points == 3  # 3.00 spent; per-line flooring would give only 2
    assert [le.points for le in earning.lines] == [2, 1]


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        (Rounding.FLOOR, 10),
        (Rounding.CEIL, 11),
        (Rounding.HALF_UP, 11),
        (Rounding.HALF_EVEN, 10),
    ],
)
def test_a_purchase_uses_the_program_rounding_mode(rounding, expected):
    lines = [PurchaseLine("L1", None, quantity=1, unit_price_minor=1050)]
    earning = compute_earning(purchase(lines), settings(rounding=rounding))
    assert earning.points == expected
    assert earning.lines == [LineEarning("L1", 1050, expected)]


def test_a_purchase_without_lines_earns_on_its_total():
    earning = compute_earning(purchase([], total=1234), settings(points=2, per=100))
    assert earning == Earning(points=24, base_minor=1234, lines=[], program_version=1)


def test_a_fully_discounted_order_earns_nothing():
    lines = [
        PurchaseLine("L1", None, quantity=2, unit_price_minor=500, discount_minor=1000),
        PurchaseLine("L2", None, quantity=1, unit_price_minor=0),
    ]
    earning = compute_earning(purchase(lines, total=0), settings())
    assert earning.points == 0
    assert earning.lines == [LineEarning("L1", 0, 0), LineEarning("L2", 0, 0)]


def test_a_purchase_in_another_currency_is_refused():
    with pytest.raises(CurrencyMismatch) as caught:
        compute_earning(purchase([], total=1000, currency="USD"), settings())
    assert caught.value.context == {"expected_currency": "EUR", "received_currency": "USD"}
    assert caught.value.code == "currency_mismatch"


# --- plan_return --------------------------------------------------------------------------


def recorded(*lines: tuple[str, str | None, int, int, int]) -> list[RecordedLine]:
    return [RecordedLine(*line) for line in lines]


def test_a_return_by_line_id_takes_back_the_units_share_of_points():
    rec = recorded(("L1", "A", 3, 10, 0), ("L2", "B", 1, 7, 0))
    plan = plan_return(
        order_id="O1",
        recorded=rec,
        requested=[ReturnRequestLine("L1", None, 1)],
        order_points=17,
        order_points_returned=0,
    )
    assert plan == [LineReturn("L1", 1, 3)]


def test_a_later_partial_return_takes_the_rest_of_the_line_exactly():
    # One unit of L1 (3 points) already came back; the last two carry the remaining 7.
    rec = recorded(("L1", "A", 3, 10, 1))
    plan = plan_return(
        order_id="O1",
        recorded=rec,
        requested=[ReturnRequestLine("L1", None, 2)],
        order_points=10,
        order_points_returned=3,
    )
    assert plan == [LineReturn("L1", 2, 7)]


def test_a_return_by_sku_spans_the_lines_with_that_sku_in_order():
    rec = recorded(
        ("L1", "X", 2, 8, 0),
        ("L2", "Y", 1, 5, 0),
        ("L3", "X", 3, 9, 0),
    )
    plan = plan_return(
        order_id="O1",
        recorded=rec,
        requested=[ReturnRequestLine(None, "X", 4)],
        order_points=22,
        order_points_returned=0,
    )
    assert plan == [LineReturn("L1", 2, 8), LineReturn("L3", 2, 6)]


def test_a_return_by_sku_skips_units_already_returned():
    rec = recorded(("L1", "X", 2, 8, 2), ("L3", "X", 3, 9, 1))
    plan = plan_return(
        order_id="O1",
        recorded=rec,
        requested=[ReturnRequestLine(None, "X", 1)],
        order_points=17,
        order_points_returned=11,
    )
    # L3 had 1 of 3 units returned (3 points); the second unit brings the total to 6.
    assert plan == [LineReturn("L3", 1, 3)]


def test_a_whole_order_return_takes_back_everything_not_yet_returned():
    rec = recorded(
        ("L1", "A", 3, 10, 1),
        ("L2", "B", 1, 7, 1),
        ("L3", "C", 2, 5, 0),
    )
    plan = plan_return(
        order_id="O1", recorded=rec, requested=None, order_points=22, order_points_returned=10
    )
    assert plan == [LineReturn("L1", 2, 7), LineReturn("L3", 2, 5)]


def test_a_whole_order_return_of_a_fully_returned_order_is_empty():
    rec = recorded(("L1", "A", 3, 10, 3))
    assert (
        plan_return(
            order_id="O1", recorded=rec, requested=None, order_points=10, order_points_returned=10
        )
        == []
    )


def test_an_order_without_lines_is_returned_whole():
    plan = plan_return(
        order_id="O1", recorded=[], requested=None, order_points=40, order_points_returned=0
    )
    assert plan == [LineReturn("order", 1, 40)]


def test_an_order_without_lines_returns_only_what_is_left_of_it():
    assert plan_return(
        order_id="O1", recorded=[], requested=None, order_points=40, order_points_returned=15
    ) == [LineReturn("order", 1, 25)]
    assert (
        plan_return(
            order_id="O1", recorded=[], requested=None, order_points=40, order_points_returned=40
        )
        == []
    )


def test_naming_lines_of_an_order_recorded_without_lines_is_refused():
    with pytest.raises(UnknownOrderLine) as caught:
        plan_return(
            order_id="O1",
            recorded=[],
            requested=[ReturnRequestLine(None, "A", 1), ReturnRequestLine("L1", None, 1)],
            order_points=40,
            order_points_returned=0,
        )
    assert caught.value.context == {"order_id": "O1", "line": "A"}


def test_returning_more_units_than_remain_is_refused():
    rec = recorded(("L1", "A", 3, 10, 1))
    with pytest.raises(ReturnExceedsPurchase) as caught:
        plan_return(
            order_id="O1",
            recorded=rec,
            requested=[ReturnRequestLine("L1", None, 3)],
            order_points=10,
            order_points_returned=3,
        )
    assert caught.value.context == {
        "order_id": "O1",
        "line": "L1",
        "quantity_returnable": 2,
        "quantity_requested": 3,
    }


def test_two_request_lines_together_cannot_exceed_what_remains():
    rec = recorded(("L1", "A", 3, 10, 0))
    with pytest.raises(ReturnExceedsPurchase) as caught:
        plan_return(
            order_id="O1",
            recorded=rec,
            requested=[ReturnRequestLine("L1", None, 2), ReturnRequestLine(None, "A", 2)],
            order_points=10,
            order_points_returned=0,
        )
    assert caught.value.context["quantity_returnable"] == 1
    assert caught.value.context["quantity_requested"] == 2
    assert caught.value.context["line"] == "A"


def test_returning_more_of_a_sku_than_all_its_lines_hold_is_refused():
    rec = recorded(("L1", "X", 2, 8, 0), ("L2", "X", 1, 4, 0))
    with pytest.raises(ReturnExceedsPurchase) as caught:
        plan_return(
            order_id="O1",
            recorded=rec,
            requested=[ReturnRequestLine(None, "X", 4)],
            order_points=12,
            order_points_returned=0,
        )
    assert caught.value.context["quantity_returnable"] == 3


def test_returning_an_unknown_line_id_is_refused():
    rec = recorded(("L1", "A", 3, 10, 0))
    with pytest.raises(UnknownOrderLine) as caught:
        plan_return(
            order_id="O1",
            recorded=rec,
            requested=[ReturnRequestLine("L9", None, 1)],
            order_points=10,
            order_points_returned=0,
        )
    assert caught.value.context == {"order_id": "O1", "line": "L9"}


def test_returning_an_unknown_sku_is_refused():
    rec = recorded(("L1", "A", 3, 10, 0))
    with pytest.raises(UnknownOrderLine) as caught:
        plan_return(
            order_id="O1",
            recorded=rec,
            requested=[ReturnRequestLine(None, "ZZZ", 1)],
            order_points=10,
            order_points_returned=0,
        )
    assert caught.value.context == {"order_id": "O1", "line": "ZZZ"}
