"""Expiry policies: end of period, and inactivity (activity pushes every live lot's expiry)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from loyalty.application import balances, events, programs, redemptions
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.expiry import expire_due_lots
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.program import Expiry, ExpiryPolicy

T0 = datetime(2026, 2, 10, 9, 0, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("period", "days", "earned", "expected"),
    [
        ("month", 0, datetime(2026, 2, 10, 9, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=PARIS)),
        ("quarter", 0, datetime(2026, 2, 10, 9, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=PARIS)),
        ("quarter", 365, datetime(2026, 2, 10, 9, tzinfo=UTC), datetime(2027, 4, 1, tzinfo=PARIS)),
        ("year", 0, datetime(2026, 12, 31, 23, 30, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=PARIS)),
        ("quarter", 0, datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=PARIS)),
    ],
)
def test_end_of_period_expiry_falls_on_the_local_periods_end(period, days, earned, expected):
    expiry = Expiry(ExpiryPolicy.END_OF_PERIOD, days=days, period=period, time_zone="Europe/Paris")
    assert expiry.expires_at(earned) == expected


def test_an_expiry_document_is_consistent_with_its_policy():
    for bad in (
        {"policy": "end_of_period"},
        {"policy": "after_days", "days": 10, "period": "month"},
        {"policy": "inactivity"},
        {"policy": "inactivity", "days": 0},
    ):
        with pytest.raises(ValueError):
            ProgramDocument.model_validate(
                {"name": "x", "currency": "EUR", "points": {"expiry": bad}}
            )


def _setup(engine, expiry):
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=T0
    )
    principal = authenticate(engine, issued.token)
    doc = ProgramDocument.model_validate(
        {
            "name": "Shop",
            "currency": "EUR",
            "time_zone": "Europe/Paris",
            "points": {"expiry": expiry},
            "enrollment": {"auto_enroll_on_purchase": True},
        }
    )
    return principal, str(programs.create_program(engine, principal, doc, now=T0).body["id"])


def _buy(engine, principal, program_id, order_id, euros, at):
    event = PurchaseEvent.model_validate(
        {
            "type": "purchase",
            "id": order_id,
            "member": {"external_id": "C1"},
            "occurred_at": at.isoformat(),
            "currency": "EUR",
            "total_minor": euros * 100,
        }
    )
    return events.submit_event(engine, principal, program_id, event, now=at).body


def test_a_purchase_lot_expires_at_the_end_of_the_quarter_a_year_on(engine):
    principal, program_id = _setup(
        engine, {"policy": "end_of_period", "period": "quarter", "days": 365}
    )
    body = _buy(engine, principal, program_id, "O1", 30, T0)
    assert datetime.fromisoformat(body["lot"]["expires_at"]) == datetime(2027, 4, 1, tzinfo=PARIS)


def test_inactivity_expiry_is_pushed_by_purchases_and_redemptions_then_runs_out(engine):
    principal, program_id = _setup(engine, {"policy": "inactivity", "days": 90})

    def expiries(at):
        view = balances.get_balance(engine, principal, program_id, "ext:C1", now=at)
        return [(datetime.fromisoformat(b["expires_at"]), b["points"]) for b in view["expiring"]]

    _buy(engine, principal, program_id, "O1", 30, T0)
    assert expiries(T0) == [(T0 + timedelta(days=90), 30)]
    _buy(engine, principal, program_id, "O2", 20, T0 + timedelta(days=60))
    # The second purchase pushed the first lot too: everything now lives to day 150.
    assert expiries(T0 + timedelta(days=60)) == [(T0 + timedelta(days=150), 50)]
    redemptions.redeem_points(
        engine,
        principal,
        program_id,
        "ext:C1",
        points=5,
        reason=None,
        reference=None,
        idempotency_key="r1",
        now=T0 + timedelta(days=100),
    )
    assert expiries(T0 + timedelta(days=100)) == [(T0 + timedelta(days=190), 45)]
    # Nothing happens for 90 days: it all expires, and the job finds nothing more next time.
    report = expire_due_lots(engine, now=T0 + timedelta(days=191))
    assert (report.lots_expired, report.points_expired) == (2, 45)
    assert expire_due_lots(engine, now=T0 + timedelta(days=191)).points_expired == 0
    # A purchase after that starts afresh; it does not revive what expired.
    _buy(engine, principal, program_id, "O3", 10, T0 + timedelta(days=200))
    view = balances.get_balance(
        engine, principal, program_id, "ext:C1", now=T0 + timedelta(days=200)
    )
    assert view["balance"] == 10
    assert audit_ledger(engine) == []
