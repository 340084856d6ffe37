"""Points for joining the program: rules with ``trigger: enrollment``, paid in the transaction
that enrolls the member (through the API or on a first purchase)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from loyalty.adapters.db.locking import lock_wallet
from loyalty.adapters.db.tables import members
from loyalty.application.earning import earn_on_action, held_portions, rule_totals, zone_of
from loyalty.application.expressions import evaluate_expressions, member_variables
from loyalty.application.ledger_ops import plan_credit, write_credit
from loyalty.application.rule_limits import capper, record_usage
from loyalty.domain.ledger import EntryKind
from loyalty.domain.program import ProgramSettings
from loyalty.domain.rules import Trigger


def award_enrollment(
    conn: Connection,
    *,
    program_id: str,
    settings: ProgramSettings,
    member_id: str,
    now: datetime,
    actor: str | None,
) -> dict[str, Any] | None:
    """Credit the program's enrollment rules to a member just enrolled; None if none pays."""
    if not any(rule.trigger is Trigger.ENROLLMENT for rule in settings.rules):
        return None
    row = conn.execute(select(members).where(members.c.id == member_id)).one()
    rules_by_id = {rule.rule_id: rule for rule in settings.rules}
    wallet = lock_wallet(conn, program_id, member_id)

    outcomes = evaluate_expressions(
        settings,
        purchase=None,
        member=member_variables(row),
        event={"type": "enrollment", "action": None, "attributes": {}},
        now=now,
    )
    evaluation = earn_on_action(
        settings,
        action=None,
        occurred_at=now,
        member_attributes=dict(row.attributes),
        expression_results=outcomes.conditions,
        formula_results=outcomes.formulas,
        cap=capper(
            conn,
            program_id=program_id,
            member_id=member_id,
            rules=rules_by_id,
            at=now,
            zone=zone_of(settings),
        ),
        trigger=Trigger.ENROLLMENT,
    )
    if evaluation.points <= 0:
        return None
    credit = write_credit(
        conn,
        plan_credit(
            program_id=program_id,
            member_id=member_id,
            debt=wallet.debt,
            points=evaluation.points,
            kind=EntryKind.EARN,
            from_purpose="issued",
            program_version=settings.version,
            now=now,
            expires_at=settings.expiry.expires_at(now),
            held=held_portions(settings, evaluation, now),
            source_type="enrollment",
            source_id=member_id,
            actor=actor,
            details={"rules": rule_totals(evaluation)},
        ),
    )
    record_usage(
        conn,
        program_id=program_id,
        member_id=member_id,
        entry_id=credit.entry_id,
        rules=rules_by_id,
        evaluation=evaluation,
        at=now,
        zone=zone_of(settings),
    )
    return {
        "points": evaluation.points,
        "rules": rule_totals(evaluation),
        "entry_id": credit.entry_id,
    }
