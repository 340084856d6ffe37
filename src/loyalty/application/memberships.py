"""Paid membership: join (with a trial or a first payment), renew by recording a payment,
cancel at period end; a period that ends unpaid lapses. Status is read from the dates, so
nothing has to run for a membership to lapse."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from loyalty.adapters.db.engine import reading, run_transaction
from loyalty.adapters.db.locking import lock_wallet
from loyalty.adapters.db.tables import membership_payments, memberships
from loyalty.adapters.ids import new_id
from loyalty.application import tiers
from loyalty.application.access import Principal, Scope
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.members import find_member, resolve_member
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.errors import (
    FeeMismatch,
    MemberNotFound,
    MembershipExists,
    MembershipNotFound,
    PaymentRequired,
    UnknownPlan,
)
from loyalty.domain.memberships import (
    Plan,
    grants_benefits,
    period_after,
    status_at,
    trial_end,
)


def _plan(ctx: ProgramContext, plan_id: str) -> Plan:
    for plan in ctx.settings.plans:
        if plan.plan_id == plan_id:
            return plan
    raise UnknownPlan(plan_id, known=[p.plan_id for p in ctx.settings.plans])


def _view(ctx: ProgramContext, row: Any, *, now: datetime) -> dict[str, Any]:
    status = status_at(
        in_trial=bool(row.in_trial),
        cancelled=row.cancelled_at is not None,
        period_end=row.period_end,
        now=now,
    )
    plan = next((p for p in ctx.settings.plans if p.plan_id == row.plan_id), None)
    return {
        "id": row.id,
        "member_id": row.member_id,
        "plan": row.plan_id,
        "status": status.value,
        "benefits": grants_benefits(status) and plan is not None,
        "started_at": row.started_at.isoformat(),
        "period_start": row.period_start.isoformat(),
        "period_end": row.period_end.isoformat(),
        "in_trial": bool(row.in_trial),
        "cancelled_at": row.cancelled_at.isoformat() if row.cancelled_at else None,
        "fee_minor": plan.fee_minor if plan else None,
        "grants_tier": plan.grants_tier if plan else None,
        "perks": list(plan.perks) if plan else [],
    }


def active_plans(
    conn: Connection, ctx: ProgramContext, member_id: str, *, now: datetime
) -> frozenset[str]:
    """Plans whose membership grants the member benefits at ``now``."""
    if not ctx.settings.plans:
        return frozenset()
    m = memberships.c
    rows = conn.execute(
        select(m.plan_id, m.in_trial, m.cancelled_at, m.period_end).where(
            and_(m.program_id == ctx.program_id, m.member_id == member_id, m.period_end > now)
        )
    ).all()
    known = {plan.plan_id for plan in ctx.settings.plans}
    return frozenset(
        r.plan_id
        for r in rows
        if r.plan_id in known
        and grants_benefits(
            status_at(
                in_trial=bool(r.in_trial),
                cancelled=r.cancelled_at is not None,
                period_end=r.period_end,
                now=now,
            )
        )
    )


def granted_tiers(ctx: ProgramContext, plans: frozenset[str]) -> list[str]:
    return [p.grants_tier for p in ctx.settings.plans if p.plan_id in plans and p.grants_tier]


def standing(
    conn: Connection, ctx: ProgramContext, member_id: str, *, now: datetime
) -> tuple[str | None, frozenset[str]]:
    """What rules, discounts and the catalog see of a member at ``now``: their tier (the
    higher of their own and what their memberships grant) and the plans in force."""
    plans = active_plans(conn, ctx, member_id, now=now)
    tier = tiers.with_granted(
        ctx, tiers.current_tier(conn, ctx, member_id), granted_tiers(ctx, plans)
    )
    return tier, plans


def tiers_by_set(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    *,
    tier: str | None,
    plans: frozenset[str],
) -> dict[str, str]:
    """The member's tier in every tier set, by set id: the main set's as :func:`standing`
    gives it (``tier``), the others likewise with what memberships grant there."""
    main = ctx.settings.tier_set
    if main is None or tier is None:
        return {}
    return {
        main.set_id: tier,
        **tiers.other_tiers(conn, ctx, member_id, granted_tiers(ctx, plans)),
    }


def _row(conn: Connection, program_id: str, membership_id: str) -> Any:
    row = conn.execute(
        select(memberships).where(
            and_(memberships.c.id == membership_id, memberships.c.program_id == program_id)
        )
    ).first()
    if row is None:
        raise MembershipNotFound(membership_id)
    return row


def _pay(
    conn: Connection,
    ctx: ProgramContext,
    membership_id: str,
    *,
    amount_minor: int,
    reference: str,
    start: datetime,
    end: datetime,
    now: datetime,
) -> None:
    conn.execute(
        insert(membership_payments),
        {
            "id": new_id("pay"),
            "membership_id": membership_id,
            "program_id": ctx.program_id,
            "amount_minor": amount_minor,
            "reference": reference,
            "period_start": start,
            "period_end": end,
            "paid_at": now,
        },
    )


def join(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    plan_id: str,
    payment_reference: str | None,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """Start a membership: a trial if the plan has one and the member never had this plan,
    else a first paid period (``payment_reference`` is the merchant's record of the fee)."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        member = resolve_member(conn, program_id, member_ref)
        plan = _plan(ctx, plan_id)

        def effect() -> tuple[int, dict[str, Any]]:
            lock_wallet(conn, program_id, member.id)
            m = memberships.c
            previous = conn.execute(
                select(memberships).where(
                    and_(
                        m.program_id == program_id,
                        m.member_id == member.id,
                        m.plan_id == plan_id,
                    )
                )
            ).all()
            if plan_id in active_plans(conn, ctx, member.id, now=now):
                raise MembershipExists(plan_id)
            trial = plan.trial_days > 0 and not previous
            if not trial and payment_reference is None:
                raise PaymentRequired(plan_id, fee_minor=plan.fee_minor)
            end = trial_end(plan, now) if trial else period_after(plan, now)
            membership_id = new_id("msh")
            conn.execute(
                insert(memberships),
                {
                    "id": membership_id,
                    "program_id": program_id,
                    "member_id": member.id,
                    "plan_id": plan_id,
                    "started_at": now,
                    "period_start": now,
                    "period_end": end,
                    "in_trial": trial,
                    "cancelled_at": None,
                    "updated_at": now,
                },
            )
            if not trial:
                assert payment_reference is not None
                _pay(
                    conn,
                    ctx,
                    membership_id,
                    amount_minor=plan.fee_minor,
                    reference=payment_reference,
                    start=now,
                    end=end,
                    now=now,
                )
            return 201, _view(ctx, _row(conn, program_id, membership_id), now=now)

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"membership:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(member.id, plan_id, payment_reference),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def record_payment(
    engine: Engine,
    principal: Principal,
    program_id: str,
    membership_id: str,
    *,
    amount_minor: int,
    reference: str,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """A renewal: the fee for the next period, which starts where the paid one ends (or now,
    if it already lapsed). Ends a trial, and undoes a cancellation."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        row = _row(conn, program_id, membership_id)
        plan = _plan(ctx, row.plan_id)
        if amount_minor != plan.fee_minor:
            raise FeeMismatch(plan.plan_id, fee_minor=plan.fee_minor, amount_minor=amount_minor)

        def effect() -> tuple[int, dict[str, Any]]:
            lock_wallet(conn, program_id, row.member_id)
            current = _row(conn, program_id, membership_id)
            start = max(current.period_end, now) if not current.in_trial else now
            end = period_after(plan, start)
            conn.execute(
                update(memberships)
                .where(memberships.c.id == membership_id)
                .values(
                    period_start=start,
                    period_end=end,
                    in_trial=False,
                    cancelled_at=None,
                    updated_at=now,
                )
            )
            _pay(
                conn,
                ctx,
                membership_id,
                amount_minor=amount_minor,
                reference=reference,
                start=start,
                end=end,
                now=now,
            )
            return 200, _view(ctx, _row(conn, program_id, membership_id), now=now)

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"membership-payment:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(membership_id, amount_minor, reference),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def cancel(
    engine: Engine, principal: Principal, program_id: str, membership_id: str, *, now: datetime
) -> dict[str, Any]:
    """Cancel at period end: benefits last until the paid (or trial) period ends. Cancelling
    again changes nothing."""

    def work(conn: Connection) -> dict[str, Any]:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        row = _row(conn, program_id, membership_id)
        if row.cancelled_at is None:
            conn.execute(
                update(memberships)
                .where(memberships.c.id == membership_id)
                .values(cancelled_at=now, updated_at=now)
            )
        return _view(ctx, _row(conn, program_id, membership_id), now=now)

    return run_transaction(engine, work)


def list_memberships(
    engine: Engine, principal: Principal, program_id: str, member_ref: str, *, now: datetime
) -> dict[str, Any]:
    with reading(engine) as conn:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        rows = conn.execute(
            select(memberships)
            .where(
                and_(
                    memberships.c.program_id == program_id,
                    memberships.c.member_id == member.id,
                )
            )
            .order_by(memberships.c.id)
        ).all()
        return {"member_id": member.id, "items": [_view(ctx, r, now=now) for r in rows]}
