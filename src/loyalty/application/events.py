"""Recording events: purchases earn points, returns take them back, custom actions are kept
for the rules to come. Each event is idempotent on its source id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.ledger_store import expired_from_entry, member_lots
from loyalty.adapters.db.locking import WalletState, lock_wallet
from loyalty.adapters.db.tables import (
    events,
    journal_entries,
    purchase_lines,
    return_lines,
)
from loyalty.adapters.ids import new_id
from loyalty.application import cashback, holds, memberships, stamps, tiers
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import balance_view
from loyalty.application.cashback import charged_by_returns
from loyalty.application.earning import (
    Cap,
    PurchaseEarning,
    earn_on_action,
    earn_on_purchase,
    held_portions,
    rule_totals,
    uses_member_average,
    zone_of,
)
from loyalty.application.event_documents import ActionEvent, PurchaseEvent, ReturnEvent
from loyalty.application.expiry import extend_on_activity, lock_for_burn
from loyalty.application.expressions import (
    NO_OUTCOMES,
    ExpressionOutcomes,
    evaluate_expressions,
    member_variables,
    purchase_variables,
)
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.ledger_ops import Credit, debit_lots, plan_credit, write_credit
from loyalty.application.members import MemberProfile, find_member, insert_member
from loyalty.application.programs import ProgramContext, load_program, settings_at
from loyalty.application.rewards import award_enrollment
from loyalty.application.rule_limits import capper, record_usage
from loyalty.domain.errors import (
    CurrencyMismatch,
    MemberAlreadyExists,
    MemberMismatch,
    MemberNotFound,
    OrderNotFound,
)
from loyalty.domain.ledger import EntryKind, MovementKind, plan_takeback
from loyalty.domain.program import ProgramSettings
from loyalty.domain.purchase import (
    LineReturn,
    Purchase,
    RecordedLine,
    ReturnRequestLine,
    plan_return,
)
from loyalty.domain.rules import Rule, RuleEvaluation, Trigger

AnyEvent = PurchaseEvent | ReturnEvent | ActionEvent

_INSERT_EVENT = insert(events)
_INSERT_LINES = insert(purchase_lines)


def submit_event(
    engine: Engine, principal: Principal, program_id: str, event: AnyEvent, *, now: datetime
) -> Outcome:
    """Record one event in its own transaction. Raises ``ProgramNotFound``, ``MemberNotFound``,
    ``CurrencyMismatch``, ``OrderNotFound``, ``UnknownOrderLine``, ``ReturnExceedsPurchase``,
    ``MemberMismatch``, ``IdempotencyConflict``."""
    return run_transaction(
        engine, lambda conn: record_event(conn, principal, program_id, event, now=now)
    )


def record_event(
    conn: Connection, principal: Principal, program_id: str, event: AnyEvent, *, now: datetime
) -> Outcome:
    ctx = load_program(conn, principal, program_id, Scope.WRITE)
    body = event.model_dump(mode="json", exclude_none=True)

    def effect() -> tuple[int, dict[str, Any]]:
        if isinstance(event, PurchaseEvent):
            return 201, _record_purchase(conn, ctx, event, body, now=now, actor=principal.key_id)
        if isinstance(event, ReturnEvent):
            return 201, _record_return(conn, ctx, event, body, now=now, actor=principal.key_id)
        return 201, _record_action(conn, ctx, event, body, now=now, actor=principal.key_id)

    return run_idempotent(
        conn,
        tenant_id=principal.tenant_id,
        scope=program_id,
        key=f"event:{event.type}:{event.id}",
        client_key=event.id,
        request_fingerprint=fingerprint(body),
        now=now,
        work=effect,
    )


def _expressions(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    *,
    now: datetime,
    purchase: dict[str, Any] | None,
    event: dict[str, Any],
    tier: str | None = None,
    plans: frozenset[str] = frozenset(),
    tiers_held: dict[str, str] | None = None,
) -> ExpressionOutcomes:
    """Merchant expressions of the program's rules, bound once to this event."""
    if not ctx.settings.expressions and not ctx.settings.formulas:
        return NO_OUTCOMES
    row = find_member(conn, ctx.program_id, member_id)
    return evaluate_expressions(
        ctx.settings,
        purchase=purchase,
        member=member_variables(row, tier=tier, plans=plans, tiers=tiers_held)
        if row is not None
        else None,
        event=event,
        now=now,
    )


def _member_average(conn: Connection, program_id: str, member_id: str) -> int | None:
    """The member's average order base so far (orders sent with lines), floored; None before
    their first such order."""
    per_order = (
        select(func.sum(purchase_lines.c.base_minor).label("base"))
        .where(
            and_(
                purchase_lines.c.program_id == program_id,
                purchase_lines.c.member_id == member_id,
            )
        )
        .group_by(purchase_lines.c.event_id)
        .subquery()
    )
    row = conn.execute(select(func.count(), func.coalesce(func.sum(per_order.c.base), 0))).one()
    count, total = int(row[0]), int(row[1])
    return total // count if count else None


def _limited_rules(settings: ProgramSettings) -> dict[str, Rule]:
    """The program's rules by id, if any of them has a cap or a budget; else empty."""
    if not any(rule.limited for rule in settings.rules):
        return {}
    return {rule.rule_id: rule for rule in settings.rules}


def _capper(conn: Connection, ctx: ProgramContext, member_id: str, at: datetime) -> Cap:
    return capper(
        conn,
        program_id=ctx.program_id,
        member_id=member_id,
        rules=_limited_rules(ctx.settings),
        at=at,
        zone=zone_of(ctx.settings),
    )


def _credit_evaluation(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    wallet: WalletState,
    evaluation: RuleEvaluation,
    earned_at: datetime,
    now: datetime,
    source_type: str,
    source_id: str,
    actor: str,
    details: dict[str, Any],
) -> Credit:
    """Credit what an evaluation earned (one lot per pending period) and record it against
    the rules' caps and budgets, in the caller's transaction and under its wallet lock."""
    settings = ctx.settings
    credit = write_credit(
        conn,
        plan_credit(
            program_id=ctx.program_id,
            member_id=member_id,
            debt=wallet.debt,
            points=evaluation.points,
            kind=EntryKind.EARN,
            from_purpose="issued",
            program_version=settings.version,
            now=now,
            expires_at=settings.expiry.expires_at(earned_at),
            earned_at=earned_at,
            held=held_portions(settings, evaluation, earned_at),
            source_type=source_type,
            source_id=source_id,
            actor=actor,
            details=details,
        ),
    )
    limited = _limited_rules(settings)
    if limited:
        record_usage(
            conn,
            program_id=ctx.program_id,
            member_id=member_id,
            entry_id=credit.entry_id,
            rules=limited,
            evaluation=evaluation,
            at=earned_at,
            zone=zone_of(settings),
        )
    return credit


def lot_views(credit: Credit) -> list[dict[str, Any]]:
    """The lots an event created, spendable soonest first (one unless rules hold their points
    for different pending periods)."""
    return [
        {
            "id": lot.lot_id,
            "points": lot.points,
            "expires_at": credit.expires_at.isoformat() if credit.expires_at else None,
            "available_at": lot.available_at.isoformat() if lot.available_at else None,
            "debt_repaid": lot.debt_repaid,
        }
        for lot in credit.lots
    ]


def _member_for_event(
    conn: Connection, ctx: ProgramContext, ref: str, *, auto_enroll: bool, now: datetime
) -> tuple[str, bool, dict[str, Any]]:
    row = find_member(conn, ctx.program_id, ref)
    if row is not None:
        return str(row.id), False, dict(row.attributes)
    if auto_enroll and ref.startswith("ext:"):
        try:
            member_id = insert_member(
                conn,
                program_id=ctx.program_id,
                external_id=ref[len("ext:") :],
                profile=MemberProfile(),
                source="auto_enroll",
                now=now,
            )
        except MemberAlreadyExists as exists:
            # Another event enrolled the same customer since the lookup above: earn on them.
            again = find_member(conn, ctx.program_id, ref)
            attributes = dict(again.attributes) if again is not None else {}
            return str(exists.context["member_id"]), False, attributes
        award_enrollment(
            conn,
            program_id=ctx.program_id,
            settings=ctx.settings,
            member_id=member_id,
            now=now,
            actor=None,
        )
        return member_id, True, {}
    raise MemberNotFound(ref)


def event_row(
    program_id: str,
    *,
    event_id: str,
    member_id: str,
    event: AnyEvent,
    body: dict[str, Any],
    now: datetime,
    entry_id: str | None,
    points: int,
    cashback_minor: int = 0,
) -> dict[str, Any]:
    """The ``events`` row of an event recorded at ``now``."""
    return {
        "id": event_id,
        "program_id": program_id,
        "member_id": member_id,
        "type": event.type,
        "source_id": event.id,
        "action": event.action if isinstance(event, ActionEvent) else None,
        "occurred_at": event.occurred_at,
        "received_at": now,
        "payload": body,
        "entry_id": entry_id,
        "points": points,
        "cashback_minor": cashback_minor,
    }


def _record_purchase(
    conn: Connection,
    ctx: ProgramContext,
    event: PurchaseEvent,
    body: dict[str, Any],
    *,
    now: datetime,
    actor: str,
    with_balance: bool = True,
) -> dict[str, Any]:
    settings = ctx.settings
    # Rules see the purchase no later than now: a future-dated event cannot reach into a
    # campaign that has not started.
    purchase = event.to_purchase(not_after=now)
    if purchase.currency != settings.currency:
        raise CurrencyMismatch(expected=settings.currency, received=purchase.currency)
    member_id, enrolled, attributes = _member_for_event(
        conn, ctx, event.member.as_ref(), auto_enroll=settings.auto_enroll, now=now
    )
    # Points count as earned when the purchase happened (a POS that was offline sends it late),
    # never later than now; expiry and rule limits run from there.
    earned_at = min(event.occurred_at.astimezone(UTC), now)
    limited = _limited_rules(settings)
    # With limited rules the member's usage is read under the wallet lock, so it is taken first.
    wallet = lock_wallet(conn, ctx.program_id, member_id) if limited else None
    tier, plans = memberships.standing(conn, ctx, member_id, now=earned_at)
    by_set = memberships.tiers_by_set(conn, ctx, member_id, tier=tier, plans=plans)
    member_average = (
        _member_average(conn, ctx.program_id, member_id) if uses_member_average(settings) else None
    )
    outcomes = _expressions(
        conn,
        ctx,
        member_id,
        now=now,
        purchase=purchase_variables(purchase),
        event={"type": "purchase", "action": None, "attributes": {}},
        tier=tier,
        plans=plans,
        tiers_held=by_set,
    )
    earning, evaluation = earn_on_purchase(
        settings,
        purchase,
        member_attributes=attributes,
        expression_results=outcomes.conditions,
        formula_results=outcomes.formulas,
        cap=_capper(conn, ctx, member_id, earned_at) if limited else None,
        member_average_minor=member_average,
        member_tier=tier,
        member_plans=plans,
        member_tiers=frozenset(by_set.values()),
    )
    event_id = new_id("evt")
    entry_id: str | None = None
    lots_view: list[dict[str, Any]] = []
    if earning.points > 0:
        wallet = wallet or lock_wallet(conn, ctx.program_id, member_id)
        credit = _credit_evaluation(
            conn,
            ctx,
            member_id=member_id,
            wallet=wallet,
            evaluation=evaluation,
            earned_at=earned_at,
            now=now,
            source_type="purchase",
            source_id=event.id,
            actor=actor,
            details=purchase_entry_details(
                settings,
                event,
                event_id=event_id,
                earning=earning,
                tier=tier,
                plans=plans,
                tiers=by_set,
                member_average=member_average,
            ),
        )
        entry_id = credit.entry_id
        lots_view = lot_views(credit)
    if settings.cashback is not None:
        wallet = wallet or lock_wallet(conn, ctx.program_id, member_id)
    cashback_view = cashback.credit_cashback(
        conn,
        ctx,
        member_id=member_id,
        purchase=purchase,
        order_id=event.id,
        event_id=event_id,
        tier=tier,
        earned_at=earned_at,
        now=now,
        actor=actor,
    )
    conn.execute(
        _INSERT_EVENT,
        event_row(
            ctx.program_id,
            event_id=event_id,
            member_id=member_id,
            event=event,
            body=body,
            now=now,
            entry_id=entry_id,
            points=earning.points,
            cashback_minor=cashback_view["earned_minor"] if cashback_view else 0,
        ),
    )
    tiers.record_activity(
        conn,
        ctx,
        member_id=member_id,
        event_id=event_id,
        occurred_at=earned_at,
        spend_minor=earning.base_minor,
        tier_points=earning.points,
        purchases=1,
        visit=True,
    )
    tier_change = tiers.upgrade_if_qualified(
        conn, ctx, member_id, at=earned_at, now=now, actor=actor
    )
    extend_on_activity(conn, settings, ctx.program_id, member_id, at=earned_at, now=now)
    stamped = stamps.stamp_purchase(
        conn,
        ctx,
        member_id=member_id,
        event_id=event_id,
        purchase=purchase,
        at=earned_at,
        now=now,
        actor=actor,
    )
    if purchase.lines:
        conn.execute(
            _INSERT_LINES,
            purchase_line_rows(
                ctx.program_id, member_id, event_id=event_id, earning=earning, purchase=purchase
            ),
        )
    return purchase_body(
        event,
        purchase,
        earning,
        event_id=event_id,
        member_id=member_id,
        enrolled=enrolled,
        entry_id=entry_id,
        lots_view=lots_view,
        tier=tier,
        tier_change=tier_change,
        stamped=stamped,
        cashback_view=cashback_view,
        balance=balance_view(conn, ctx.program_id, member_id, now=now) if with_balance else None,
    )


def purchase_entry_details(
    settings: ProgramSettings,
    event: PurchaseEvent,
    *,
    event_id: str,
    earning: PurchaseEarning,
    tier: str | None,
    plans: frozenset[str],
    member_average: int | None,
    tiers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The details of a purchase's earn entry; ``tiers`` the tier held in each tier set."""
    return {
        "event_id": event_id,
        "base_minor": earning.base_minor,
        "rate": {
            "points": settings.earn.points,
            "per_spend_minor": settings.earn.per_spend_minor,
            "rounding": settings.earn.rounding.value,
        },
        "rules": earning.rules,
        # What a return needs to recalculate the rest of the basket as it was.
        "tier": tier,
        "tiers": tiers if tiers is not None else {},
        "plans": sorted(plans),
        "member_average_minor": member_average,
        "member_discount_minor": event.member_discount_minor,
    }


def purchase_line_rows(
    program_id: str,
    member_id: str,
    *,
    event_id: str,
    earning: PurchaseEarning,
    purchase: Purchase,
) -> list[dict[str, Any]]:
    """The ``purchase_lines`` rows of a purchase: what each line earned, for its returns."""
    return [
        {
            "event_id": event_id,
            "line_no": i,
            "program_id": program_id,
            "member_id": member_id,
            "line_id": le.line_id,
            "sku": pl.sku,
            "quantity": pl.quantity,
            "base_minor": le.base_minor,
            "points": le.points,
        }
        for i, (le, pl) in enumerate(zip(earning.lines, purchase.lines, strict=True))
    ]


def purchase_body(
    event: PurchaseEvent,
    purchase: Purchase,
    earning: PurchaseEarning,
    *,
    event_id: str,
    member_id: str,
    enrolled: bool,
    entry_id: str | None,
    lots_view: list[dict[str, Any]],
    tier: str | None,
    tier_change: dict[str, Any] | None,
    stamped: list[dict[str, Any]],
    cashback_view: dict[str, Any] | None,
    balance: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a recorded purchase answers (and what its idempotency key replays)."""
    return {
        "event_id": event_id,
        "type": "purchase",
        "order_id": event.id,
        "member_id": member_id,
        "member_enrolled": enrolled,
        "points_earned": earning.points,
        "base_minor": earning.base_minor,
        "program_version": earning.program_version,
        "entry_id": entry_id,
        "lot": lots_view[0] if lots_view else None,
        "lots": lots_view,
        "rules": earning.rules,
        "limited": earning.limited,
        "tier": tier,
        "tier_change": tier_change,
        "stamps": stamped,
        "cashback": cashback_view,
        "member_discount_minor": event.member_discount_minor,
        "lines": [
            {
                "line_id": le.line_id,
                "sku": pl.sku,
                "base_minor": le.base_minor,
                "points": le.points,
                "rules": le.rules,
            }
            for le, pl in zip(earning.lines, purchase.lines, strict=True)
        ],
        "balance": balance,
    }


def record_purchase_in(
    conn: Connection,
    ctx: ProgramContext,
    event: PurchaseEvent,
    body: dict[str, Any],
    *,
    now: datetime,
    actor: str,
    with_balance: bool = True,
) -> dict[str, Any]:
    """Record a purchase in the caller's transaction (used by the quote, which rolls it back);
    without ``with_balance`` the answer's ``balance`` is None and not read."""
    return _record_purchase(conn, ctx, event, body, now=now, actor=actor, with_balance=with_balance)


def _record_return(
    conn: Connection,
    ctx: ProgramContext,
    event: ReturnEvent,
    body: dict[str, Any],
    *,
    now: datetime,
    actor: str,
) -> dict[str, Any]:
    settings = ctx.settings
    purchase = conn.execute(
        select(
            events.c.id,
            events.c.member_id,
            events.c.entry_id,
            events.c.points,
            events.c.cashback_minor,
            events.c.occurred_at,
            events.c.received_at,
        ).where(
            and_(
                events.c.program_id == ctx.program_id,
                events.c.type == "purchase",
                events.c.source_id == event.order_id,
            )
        )
    ).first()
    if purchase is None:
        raise OrderNotFound(event.order_id)
    member_id = str(purchase.member_id)
    if event.member is not None:
        named = find_member(conn, ctx.program_id, event.member.as_ref())
        if named is None:
            raise MemberNotFound(event.member.as_ref())
        if named.id != member_id:
            raise MemberMismatch(order_id=event.order_id)
    # Lock first: everything read below about this member's points is then stable.
    # Points already past their expiry are gone; a return must not take them from the balance.
    lock_for_burn(conn, ctx.program_id, member_id, now=now)
    returned: dict[str, int] = {}
    returned_points: dict[str, int] = {}
    for r in conn.execute(
        select(
            return_lines.c.line_id,
            func.sum(return_lines.c.quantity).label("quantity"),
            func.sum(return_lines.c.points).label("points"),
        )
        .where(return_lines.c.purchase_event_id == purchase.id)
        .group_by(return_lines.c.line_id)
    ).all():
        returned[r.line_id] = int(r.quantity)
        returned_points[r.line_id] = int(r.points)
    bought = conn.execute(
        select(purchase_lines)
        .where(purchase_lines.c.event_id == purchase.id)
        .order_by(purchase_lines.c.line_no)
    ).all()
    recorded = [
        RecordedLine(
            line_id=r.line_id,
            sku=r.sku,
            quantity=r.quantity,
            points=r.points,
            quantity_returned=int(returned.get(r.line_id, 0)),
        )
        for r in bought
    ]
    requested = (
        None
        if event.lines is None
        else [ReturnRequestLine(rl.line_id, rl.sku, rl.quantity) for rl in event.lines]
    )
    plan = plan_return(
        order_id=event.order_id,
        recorded=recorded,
        requested=requested,
        order_points=int(purchase.points),
        order_points_returned=int(sum(returned_points.values())),
    )
    line_points = sum(lr.points for lr in plan)
    reversed_before = sum(returned_points.values())
    rest = _rest_of_basket(conn, purchase, recorded, plan) if bought else None
    kept = (
        _points_kept(conn, ctx, purchase, rest)
        if bought and purchase.entry_id is not None
        else None
    )
    if kept is None:
        points = line_points
    else:
        # The rest of the basket is evaluated again by the rules of the purchase's version:
        # whatever it no longer earns (a threshold bonus it no longer reaches, say) is
        # reversed with the returned units' own points.
        points = max(0, int(purchase.points) - kept["points"] - reversed_before)
    # Points of this purchase that expired unspent are already gone: they are not taken again
    # from the member's other points. Across all returns of the order, what is charged is the
    # points reversed less what expired from the purchase's own lots.
    expired_own = 0
    if purchase.entry_id is not None:
        expired_own = expired_from_entry(conn, purchase.entry_id)
    charged_before = -charged_by_returns(conn, purchase.id, events.c.points)
    charge_total = max(0, reversed_before + points - expired_own)
    charge = max(0, charge_total - charged_before)
    event_id = new_id("evt")
    entry_id: str | None = None
    taken = debt_added = written_off = 0
    if charge > 0:
        own = member_lots(conn, ctx.program_id, member_id, entry_id=purchase.entry_id)
        others = member_lots(conn, ctx.program_id, member_id)
        takeback = plan_takeback(
            points=charge, own_lots=own, other_lots=others, policy=settings.negative_balance
        )
        taken, debt_added, written_off = (
            takeback.points_taken,
            takeback.debt_added,
            takeback.points_written_off,
        )
        if takeback.points_taken > 0:
            entry_id = debit_lots(
                conn,
                program_id=ctx.program_id,
                member_id=member_id,
                takes=takeback.takes,
                points=takeback.points_taken,
                kind=EntryKind.RETURN,
                movement=MovementKind.RETURN,
                to_purpose="issued",
                program_version=settings.version,
                now=now,
                debt_added=takeback.debt_added,
                source_type="return",
                source_id=event.id,
                actor=actor,
                reverses_entry_id=purchase.entry_id,
                details={
                    "event_id": event_id,
                    "order_id": event.order_id,
                    "points_reversed": points,
                    "points_already_expired": points - charge,
                    "debt_added": takeback.debt_added,
                    "points_written_off": takeback.points_written_off,
                },
            )
    bonus = (
        _return_rules(conn, ctx, event, member_id, event_id, now=now, actor=actor)
        if any(rule.trigger is Trigger.RETURN for rule in settings.rules)
        else None
    )
    # The returned units' share of their lines' base comes off the spend of the window the
    # purchase was in, as do the points reversed.
    bases = {r.line_id: (int(r.base_minor), int(r.quantity)) for r in bought}
    returned_spend = sum(
        bases[lr.line_id][0] * lr.quantity // bases[lr.line_id][1]
        for lr in plan
        if lr.line_id in bases and bases[lr.line_id][1]
    )
    tiers.record_activity(
        conn,
        ctx,
        member_id=member_id,
        event_id=event_id,
        occurred_at=purchase.occurred_at,
        spend_minor=-returned_spend,
        tier_points=-points + (bonus["points"] if bonus else 0),
        purchases=0,
        visit=False,
    )
    cashback_view = (
        cashback.take_back_cashback(
            conn,
            ctx,
            member_id=member_id,
            order_id=event.order_id,
            purchase_event_id=purchase.id,
            rest=rest,
            return_id=event.id,
            event_id=event_id,
            now=now,
            actor=actor,
        )
        if purchase.cashback_minor > 0
        else None
    )
    # Points and cashback that paid for the order come back in proportion to the value
    # returned so far (everything once nothing is left of it).
    order_value = sum(base for base, _ in bases.values())
    returned_value = sum(
        bases[line_id][0] * quantity // bases[line_id][1]
        for line_id, quantity in _returned_so_far(returned, plan).items()
        if line_id in bases and bases[line_id][1]
    )
    restored = holds.restore_payments(
        conn,
        ctx,
        member_id=member_id,
        order_id=event.order_id,
        returned_share=None if rest is None else (returned_value, order_value),
        return_id=event.id,
        now=now,
        actor=actor,
    )
    unstamped = (
        stamps.unstamp_return(
            conn,
            ctx,
            member_id=member_id,
            event_id=event_id,
            purchase_event_id=purchase.id,
            rest=rest,
            now=now,
            actor=actor,
        )
        if settings.stamp_cards
        else []
    )
    conn.execute(
        _INSERT_EVENT,
        event_row(
            ctx.program_id,
            event_id=event_id,
            member_id=member_id,
            event=event,
            body=body,
            now=now,
            entry_id=entry_id,
            points=-charge,
            cashback_minor=-cashback_view["charged_minor"] if cashback_view else 0,
        ),
    )
    line_rows = [
        {
            "return_event_id": event_id,
            "line_id": lr.line_id,
            "purchase_event_id": purchase.id,
            "program_id": ctx.program_id,
            "member_id": member_id,
            "quantity": lr.quantity,
            "points": lr.points,
        }
        for lr in plan
    ]
    if points != line_points:
        # What the rest of the basket no longer earns, beyond the returned units' own points.
        line_rows.append(
            {
                "return_event_id": event_id,
                "line_id": ADJUSTMENT_LINE,
                "purchase_event_id": purchase.id,
                "program_id": ctx.program_id,
                "member_id": member_id,
                "quantity": 0,
                "points": points - line_points,
            }
        )
    if line_rows:
        conn.execute(insert(return_lines), line_rows)
    return {
        "event_id": event_id,
        "type": "return",
        "return_id": event.id,
        "order_id": event.order_id,
        "member_id": member_id,
        "points_reversed": points,
        "points_already_expired": points - charge,
        "points_taken": taken,
        "debt_added": debt_added,
        "points_written_off": written_off,
        "program_version": settings.version,
        "entry_id": entry_id,
        "lines": [
            {"line_id": lr.line_id, "quantity": lr.quantity, "points": lr.points} for lr in plan
        ],
        "points_adjusted": points - line_points,
        "stamps": unstamped,
        "cashback": cashback_view,
        "payments_restored": restored,
        "kept": kept,
        "points_earned": bonus["points"] if bonus else 0,
        "rules": bonus["rules"] if bonus else [],
        "earn_entry_id": bonus["entry_id"] if bonus else None,
        "balance": balance_view(conn, ctx.program_id, member_id, now=now),
    }


def _returned_so_far(before: dict[str, int], plan: list[LineReturn]) -> dict[str, int]:
    """Units returned per line over all the order's returns, this one included."""
    total = dict(before)
    for lr in plan:
        total[lr.line_id] = total.get(lr.line_id, 0) + lr.quantity
    return total


ADJUSTMENT_LINE = "~rest-of-basket"
"""The return line that records what the rest of a basket no longer earns."""


def _rest_of_basket(
    conn: Connection, purchase: Any, recorded: list[RecordedLine], plan: list[LineReturn]
) -> Purchase | None:
    """What is left of the order after this return (each line's remaining units, its discount
    in proportion), as it was bought; None when nothing is left."""
    now_returned = {lr.line_id: lr.quantity for lr in plan}
    left = {
        line.line_id: line.quantity - line.quantity_returned - now_returned.get(line.line_id, 0)
        for line in recorded
    }
    if not any(left.values()):
        return None
    payload = conn.execute(select(events.c.payload).where(events.c.id == purchase.id)).scalar_one()
    original = PurchaseEvent.model_validate(payload)
    return original.to_purchase(not_after=purchase.received_at, left=left)


def _points_kept(
    conn: Connection, ctx: ProgramContext, purchase: Any, rest: Purchase | None
) -> dict[str, Any] | None:
    """What the rest of the basket earns under the rules of the version the purchase was
    computed with, the member's tier and average as they were then, and no more per rule
    than the purchase paid (caps and budgets are not paid twice). None for a purchase
    recorded before returns were recalculated."""
    entry = conn.execute(
        select(journal_entries.c.program_version, journal_entries.c.details).where(
            journal_entries.c.id == purchase.entry_id
        )
    ).one()
    details = dict(entry.details)
    if "tier" not in details:
        return None
    paid = {r["rule"]: int(r["points"]) for r in details.get("rules", [])}
    if rest is None:
        return {"points": 0, "rules": [{"rule": r, "paid": p, "kept": 0} for r, p in paid.items()]}
    settings = settings_at(conn, ctx.program_id, int(entry.program_version))
    member = find_member(conn, ctx.program_id, purchase.member_id)
    attributes = dict(member.attributes) if member is not None else {}
    outcomes = evaluate_expressions(
        settings,
        purchase=purchase_variables(rest),
        member=member_variables(
            member,
            tier=details["tier"],
            plans=details.get("plans", []),
            tiers=details.get("tiers"),
        )
        if member is not None
        else None,
        event={"type": "purchase", "action": None, "attributes": {}},
        now=rest.occurred_at,
    )
    _, evaluation = earn_on_purchase(
        settings,
        rest,
        member_attributes=attributes,
        expression_results=outcomes.conditions,
        formula_results=outcomes.formulas,
        member_average_minor=details.get("member_average_minor"),
        member_tier=details["tier"],
        member_plans=frozenset(details.get("plans", [])),
        member_tiers=frozenset(details.get("tiers", {}).values()),
    )
    again = {r.rule_id: r.points for r in evaluation.results}
    rules = [
        {"rule": rule, "paid": points, "kept": min(points, again.get(rule, 0))}
        for rule, points in paid.items()
    ]
    return {"points": sum(r["kept"] for r in rules), "rules": rules}


def _return_rules(
    conn: Connection,
    ctx: ProgramContext,
    event: ReturnEvent,
    member_id: str,
    event_id: str,
    *,
    now: datetime,
    actor: str,
) -> dict[str, Any] | None:
    """Points the program's ``return`` rules pay for this return, credited in an entry of
    their own after the reversal (so the reversal stays exact and separately visible)."""
    settings = ctx.settings
    at = min(event.occurred_at.astimezone(UTC), now)
    row = find_member(conn, ctx.program_id, member_id)
    outcomes = _expressions(
        conn,
        ctx,
        member_id,
        now=now,
        purchase=None,
        event={"type": "return", "action": None, "attributes": {}},
    )
    limited = _limited_rules(settings)
    evaluation = earn_on_action(
        settings,
        action=None,
        occurred_at=at,
        member_attributes=dict(row.attributes) if row is not None else {},
        expression_results=outcomes.conditions,
        formula_results=outcomes.formulas,
        cap=_capper(conn, ctx, member_id, at) if limited else None,
        trigger=Trigger.RETURN,
    )
    if evaluation.points <= 0:
        return None
    rules = rule_totals(evaluation)
    credit = _credit_evaluation(
        conn,
        ctx,
        member_id=member_id,
        # Read again under the lock already held: the reversal may have added a debt.
        wallet=lock_wallet(conn, ctx.program_id, member_id),
        evaluation=evaluation,
        earned_at=at,
        now=now,
        source_type="return",
        source_id=event.id,
        actor=actor,
        details={"event_id": event_id, "order_id": event.order_id, "rules": rules},
    )
    return {"points": evaluation.points, "rules": rules, "entry_id": credit.entry_id}


def _record_action(
    conn: Connection,
    ctx: ProgramContext,
    event: ActionEvent,
    body: dict[str, Any],
    *,
    now: datetime,
    actor: str,
) -> dict[str, Any]:
    settings = ctx.settings
    member_id, enrolled, attributes = _member_for_event(
        conn, ctx, event.member.as_ref(), auto_enroll=settings.auto_enroll, now=now
    )
    earned_at = min(event.occurred_at.astimezone(UTC), now)
    limited = _limited_rules(settings)
    wallet = lock_wallet(conn, ctx.program_id, member_id) if limited else None
    tier, plans = memberships.standing(conn, ctx, member_id, now=earned_at)
    by_set = memberships.tiers_by_set(conn, ctx, member_id, tier=tier, plans=plans)
    outcomes = _expressions(
        conn,
        ctx,
        member_id,
        now=now,
        purchase=None,
        event={"type": "action", "action": event.action, "attributes": event.attributes},
        tier=tier,
        plans=plans,
        tiers_held=by_set,
    )
    evaluation = earn_on_action(
        settings,
        action=event.action,
        occurred_at=event.occurred_at,
        member_attributes=attributes,
        expression_results=outcomes.conditions,
        formula_results=outcomes.formulas,
        cap=_capper(conn, ctx, member_id, earned_at) if limited else None,
        member_tier=tier,
        member_plans=plans,
        member_tiers=frozenset(by_set.values()),
    )
    points, rules = evaluation.points, rule_totals(evaluation)
    event_id = new_id("evt")
    entry_id: str | None = None
    lots_view: list[dict[str, Any]] = []
    if points > 0:
        credit = _credit_evaluation(
            conn,
            ctx,
            member_id=member_id,
            wallet=wallet or lock_wallet(conn, ctx.program_id, member_id),
            evaluation=evaluation,
            earned_at=earned_at,
            now=now,
            source_type="action",
            source_id=event.id,
            actor=actor,
            details={"event_id": event_id, "action": event.action, "rules": rules},
        )
        entry_id = credit.entry_id
        lots_view = lot_views(credit)
    tier_change = None
    if points > 0:
        tiers.record_activity(
            conn,
            ctx,
            member_id=member_id,
            event_id=event_id,
            occurred_at=earned_at,
            spend_minor=0,
            tier_points=points,
            purchases=0,
            visit=False,
        )
        tier_change = tiers.upgrade_if_qualified(
            conn, ctx, member_id, at=earned_at, now=now, actor=actor
        )
        extend_on_activity(conn, settings, ctx.program_id, member_id, at=earned_at, now=now)
    conn.execute(
        _INSERT_EVENT,
        event_row(
            ctx.program_id,
            event_id=event_id,
            member_id=member_id,
            event=event,
            body=body,
            now=now,
            entry_id=entry_id,
            points=points,
        ),
    )
    return {
        "event_id": event_id,
        "type": "action",
        "action": event.action,
        "id": event.id,
        "member_id": member_id,
        "member_enrolled": enrolled,
        "points_earned": points,
        "rules": rules,
        "entry_id": entry_id,
        "lot": lots_view[0] if lots_view else None,
        "lots": lots_view,
        "tier_change": tier_change,
        "program_version": settings.version,
    }
