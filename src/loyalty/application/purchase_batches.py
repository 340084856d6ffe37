"""Recording a run of purchases of a batch with a few statements per table instead of about
twenty per event.

Every purchase is still checked, earned, answered and made idempotent on its own, with the
same rows and the same response as ``events.record_event`` would give it; what changes is how
the rows reach the database. The run reads what it needs once: the stored idempotency keys,
the members, and their points wallets, locked in member order, with their live lots' figures.
Then each purchase is decided in Python, in order, against that state as the earlier
purchases of the run left it (a rejected purchase changes nothing, so it needs no savepoint),
and the accepted ones are written with one statement per table.

Tiers are carried through the run the same way (``batch_tiers``). Only programs whose
purchases touch nothing else qualify (``takes_bulk_path``): a rule with a cap or a budget, a
member-average condition, a merchant expression, plans, stamp cards, cashback, the inactivity
expiry policy or an enrollment rule each read or write per-member state of their own, and
their purchases go through ``record_event`` one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, select

from loyalty.adapters.db.bulk import insert_rows, pipelined
from loyalty.adapters.db.ledger_store import (
    EntryRecord,
    insert_entries,
    insert_lots,
    plan_entries,
    send_wallet_moves,
)
from loyalty.adapters.db.locking import WalletState, lock_wallets_read, wallets_locked
from loyalty.adapters.db.reads import Read, read_together
from loyalty.adapters.db.tables import events, member_activity, purchase_lines, wallets
from loyalty.adapters.ids import new_id
from loyalty.application import idempotency
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import (
    RunningBalance,
    WalletFigures,
    balances_from_rows,
    live_lots_read,
    running_balances,
)
from loyalty.application.batch_tiers import RunTiers, from_records
from loyalty.application.earning import (
    PurchaseEarning,
    earn_on_purchase,
    held_portions,
    uses_member_average,
)
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.events import (
    event_row,
    lot_views,
    purchase_body,
    purchase_entry_details,
    purchase_line_rows,
)
from loyalty.application.expressions import NO_OUTCOMES
from loyalty.application.idempotency import Outcome, fingerprint
from loyalty.application.ledger_ops import Credit, plan_credit
from loyalty.application.members import (
    EXTERNAL_PREFIX,
    MemberProfile,
    enroll_members,
    find_members,
    find_members_reads,
    member_row,
    members_found,
)
from loyalty.application.programs import ProgramContext, program_from_rows, program_read
from loyalty.application.tiers import activity_row
from loyalty.domain.errors import (
    CurrencyMismatch,
    DomainError,
    IdempotencyConflict,
    MemberNotFound,
)
from loyalty.domain.ledger import POINTS, EntryKind, Posting
from loyalty.domain.program import ExpiryPolicy, ProgramSettings
from loyalty.domain.purchase import Purchase
from loyalty.domain.rules import RuleEvaluation, Trigger


def takes_bulk_path(settings: ProgramSettings) -> bool:
    """Whether this program's purchases can be recorded in bulk (see the module's note)."""
    return (
        not any(rule.limited for rule in settings.rules)
        and not uses_member_average(settings)
        and not settings.expressions
        and not settings.formulas
        and not settings.plans
        and not settings.stamp_cards
        and settings.cashback is None
        and settings.expiry.policy is not ExpiryPolicy.INACTIVITY
        and not any(rule.trigger is Trigger.ENROLLMENT for rule in settings.rules)
    )


@dataclass(slots=True)
class _Rows:
    """What the accepted purchases of a run write, table by table."""

    entries: list[tuple[EntryRecord, list[Posting], dict[str, int] | None]]
    lots: list[dict[str, Any]]
    movements: list[dict[str, Any]]
    events: list[dict[str, Any]]
    lines: list[dict[str, Any]]
    activity: list[dict[str, Any]]
    keys: list[tuple[str, str, Outcome]]


@dataclass(slots=True)
class _Member:
    member_id: str
    attributes: dict[str, Any]
    enrolled_at: datetime
    fresh: bool
    """Enrolled by this run and not yet answered as such (its first accepted purchase is)."""


def record_purchases(
    conn: Connection,
    principal: Principal,
    ctx: ProgramContext,
    run: list[PurchaseEvent],
    *,
    now: datetime,
    skip_locked: bool = False,
) -> list[Outcome | DomainError | None]:
    """Record ``run`` (purchases of a program that ``takes_bulk_path``) in the caller's
    transaction: one outcome per purchase, in order, or the domain error that refused it
    (``CurrencyMismatch``, ``MemberNotFound``, ``LimitExceeded``, ``IdempotencyConflict``).
    ``skip_locked``: a purchase whose member's wallet another transaction holds is not waited
    for; it is answered None, with nothing written for it, to be recorded on its own."""
    assert takes_bulk_path(ctx.settings)
    return _record_parts(conn, principal, ctx, list(_parts(run)), None, now, skip_locked)


def _record_parts(
    conn: Connection,
    principal: Principal,
    ctx: ProgramContext,
    parts: list[list[PurchaseEvent]],
    first_read: list[list[Any]] | None,
    now: datetime,
    skip_locked: bool,
) -> list[Outcome | DomainError | None]:
    """Each part recorded after its reads (``_part_reads``; the first part's already made
    where ``first_read`` holds their rows)."""
    results: list[Outcome | DomainError | None] = []
    for part in parts:
        read = (
            read_together(conn, _part_reads(conn, principal, ctx.program_id, part))
            if first_read is None
            else first_read
        )
        first_read = None
        results.extend(
            _record_part(conn, principal, ctx, part, read, now=now, skip_locked=skip_locked)
        )
    return results


def record_group(
    conn: Connection,
    principal: Principal,
    program_id: str,
    run: list[PurchaseEvent],
    *,
    now: datetime,
) -> list[Outcome | DomainError | None] | None:
    """``record_purchases`` for a group of concurrent requests to one program (wallets held by
    another transaction are skipped: ``skip_locked``), with the program's row read in the same
    round trip as the first part's keys and members. None, with nothing written, if the key
    may not write to the program (each purchase recorded alone then meets its own error) or
    the program's purchases don't take the bulk path."""
    if not run:
        return []
    try:
        principal.require_program(program_id, Scope.WRITE)
    except DomainError:
        return None
    parts = list(_parts(run))
    program_rows, *first_read = read_together(
        conn, [program_read(program_id), *_part_reads(conn, principal, program_id, parts[0])]
    )
    try:
        ctx = program_from_rows(conn, principal, program_id, program_rows)
    except DomainError:
        return None
    if not takes_bulk_path(ctx.settings):
        return None
    return _record_parts(conn, principal, ctx, parts, first_read, now, skip_locked=True)


_POINTS_WALLET = select(wallets.c.balance, wallets.c.debt).where(
    and_(
        wallets.c.program_id == bindparam("program_id"),
        wallets.c.member_id == bindparam("member_id"),
        wallets.c.asset == POINTS,
    )
)


@dataclass(frozen=True, slots=True)
class PurchasePreview:
    body: dict[str, Any]
    """What recording the purchase would answer."""
    before: dict[str, WalletFigures]
    """The member's wallets before it, as ``wallet_figures`` reads them (none for a customer
    it would enrol)."""


def preview_purchase(
    conn: Connection,
    ctx: ProgramContext,
    event: PurchaseEvent,
    *,
    member: Row[Any] | None,
    new_customer: bool,
    now: datetime,
    actor: str,
) -> PurchasePreview:
    """The answer recording ``event`` would give now, decided by the code that records it
    (``_purchase``, as ``record_purchases`` runs it) against the member's state as read here,
    and written nowhere: the quote of a program that ``takes_bulk_path``, in a read-only
    transaction that takes no lock. ``member``: the purchase's member as ``find_member`` read
    it; None for a customer with no membership, priced as the purchase would enrol them where
    ``new_customer`` (a guest quote) or the program enrols on purchase. Raises
    ``CurrencyMismatch``, ``MemberNotFound``, ``LimitExceeded``."""
    assert takes_bulk_path(ctx.settings)
    _checked_purchase(ctx, event, now=now)  # the cart before the member, as a purchase is
    ref = event.member.as_ref()
    balance, debt = 0, 0
    if member is not None:
        found = _Member(str(member.id), dict(member.attributes), member.enrolled_at, fresh=False)
        wallet = conn.execute(
            _POINTS_WALLET, {"program_id": ctx.program_id, "member_id": found.member_id}
        ).first()
        if wallet is not None:
            balance, debt = int(wallet.balance), int(wallet.debt)
    elif new_customer or (ctx.settings.auto_enroll and ref.startswith(EXTERNAL_PREFIX)):
        found = _Member(new_id("mbr"), {}, now, fresh=True)
    else:
        raise MemberNotFound(ref)
    members = {ref: found}
    balances = (
        {found.member_id: RunningBalance(found.member_id, 0, 0, {}, 0, 0, None)}
        if found.fresh
        else running_balances(conn, ctx.program_id, {found.member_id: (balance, debt)}, now=now)
    )
    run_tiers = _run_tiers(conn, ctx, [event], members, now=now, actor=actor)
    before = {} if found.fresh else balances[found.member_id].figures()
    outcome = _purchase(
        ctx,
        event,
        event.model_dump(mode="json", exclude_none=True),
        members,
        balances,
        run_tiers,
        _Rows([], [], [], [], [], [], []),
        now=now,
        actor=actor,
    )
    return PurchasePreview(outcome.body, before)


def _parts(run: list[PurchaseEvent]) -> Iterator[list[PurchaseEvent]]:
    """``run`` cut before each purchase whose id came earlier in it, so the ids of a part are
    distinct: the repeat then finds the key its first occurrence stored, and is replayed (or
    is a conflict) exactly as it would be one by one."""
    part: list[PurchaseEvent] = []
    ids: set[str] = set()
    for event in run:
        if event.id in ids:
            yield part
            part, ids = [], set()
        part.append(event)
        ids.add(event.id)
    if part:
        yield part


def _part_reads(
    conn: Connection, principal: Principal, program_id: str, part: list[PurchaseEvent]
) -> list[Read]:
    """What ``_record_part`` reads before it decides anything: the part's stored idempotency
    keys, then its members (``find_members_reads``), for ``read_together``."""
    keys = {_key(event) for event in part}
    refs = {event.member.as_ref() for event in part}
    return [
        idempotency.find_many_read(
            conn, tenant_id=principal.tenant_id, scope=program_id, keys=keys
        ),
        *find_members_reads(conn, program_id, refs),
    ]


def _key(event: PurchaseEvent) -> str:
    return f"event:{event.type}:{event.id}"


def _record_part(
    conn: Connection,
    principal: Principal,
    ctx: ProgramContext,
    part: list[PurchaseEvent],
    read: list[list[Any]],
    *,
    now: datetime,
    skip_locked: bool,
) -> list[Outcome | DomainError | None]:
    """``record_purchases`` for purchases with distinct ids; ``read``: the rows of
    ``_part_reads``."""
    bodies = [event.model_dump(mode="json", exclude_none=True) for event in part]
    keys = [_key(event) for event in part]
    stored_rows, *member_rows = read
    stored = {row.key: row for row in stored_rows}
    refs = {event.member.as_ref() for event in part}
    found = members_found(refs, (row for rows in member_rows for row in rows))
    members = _members(conn, ctx, part, stored, found, now=now)
    member_ids = {m.member_id for m in members.values()}
    locked: dict[str, WalletState] = {}
    lot_rows: list[Any] = []
    if member_ids:
        # The lots are read after the lock, in the same round trip.
        lock_rows, lot_rows = read_together(
            conn,
            [
                lock_wallets_read(conn, ctx.program_id, member_ids, skip_locked=skip_locked),
                live_lots_read(conn, ctx.program_id, member_ids, now=now),
            ],
        )
        locked = wallets_locked(lock_rows)
    busy = member_ids - locked.keys()  # wallets another transaction holds (``skip_locked``)
    balances = balances_from_rows(
        conn,
        ctx.program_id,
        {member_id: (w.balance, w.debt) for member_id, w in locked.items()},
        lot_rows,
        now=now,
    )
    run_tiers = _run_tiers(conn, ctx, part, members, now=now, actor=principal.key_id)
    rows = _Rows([], [], [], [], [], [], [])
    results: list[Outcome | DomainError | None] = []
    for event, body, key in zip(part, bodies, keys, strict=True):
        request_fingerprint = fingerprint(body)
        earlier = stored.get(key)
        if earlier is not None:
            if earlier.fingerprint != request_fingerprint:
                results.append(IdempotencyConflict(event.id))
            else:
                results.append(Outcome(earlier.status_code, earlier.response, replayed=True))
            continue
        member = members.get(event.member.as_ref())
        if busy and member is not None and member.member_id in busy:
            results.append(None)
            continue
        try:
            outcome = _purchase(
                ctx,
                event,
                body,
                members,
                balances,
                run_tiers,
                rows,
                now=now,
                actor=principal.key_id,
            )
        except DomainError as exc:
            results.append(exc)
            continue
        rows.keys.append((key, request_fingerprint, outcome))
        results.append(outcome)
    _write(conn, ctx, rows, principal=principal, now=now)
    if run_tiers is not None:
        run_tiers.write(conn)
    return results


def _run_tiers(
    conn: Connection,
    ctx: ProgramContext,
    part: list[PurchaseEvent],
    members: dict[str, _Member],
    *,
    now: datetime,
    actor: str,
) -> RunTiers | None:
    """The tiers of the part's members, read under their wallet locks (None: no tiers)."""
    if not ctx.settings.tier_sets:
        return None
    run_tiers = RunTiers(ctx, now=now, actor=actor)
    moments = [
        (members[ref].member_id, min(event.occurred_at.astimezone(UTC), now))
        for event in part
        if (ref := event.member.as_ref()) in members
    ]
    run_tiers.load(
        conn,
        {m.member_id: m.enrolled_at for m in members.values()},
        {m.member_id for m in members.values() if m.fresh},
        moments,
    )
    return run_tiers


def _members(
    conn: Connection,
    ctx: ProgramContext,
    part: list[PurchaseEvent],
    stored: dict[str, Any],
    found: dict[str, Any],
    *,
    now: datetime,
) -> dict[str, _Member]:
    """The members of the part's purchases, by reference, enrolling first the new customers
    that one of its purchases (not recorded before) enrols: the purchase that enrols a
    customer is its first one accepted, and a refused purchase changes nothing, so it is the
    first that would be accepted from a new member's empty state. A customer another
    transaction enrolled meanwhile is read back and earns as an existing member, as
    ``events._member_for_event`` does one by one."""
    settings = ctx.settings
    members = {
        ref: _Member(str(row.id), dict(row.attributes), row.enrolled_at, fresh=False)
        for ref, row in found.items()
    }
    new: dict[str, dict[str, Any]] = {}
    if settings.auto_enroll:
        for event in part:
            ref = event.member.as_ref()
            if (
                ref in members
                or ref in new
                or not ref.startswith(EXTERNAL_PREFIX)
                or _key(event) in stored
                or not _accepted_from_nothing(ctx, event, now=now)
            ):
                continue
            new[ref] = member_row(
                program_id=ctx.program_id,
                external_id=ref[len(EXTERNAL_PREFIX) :],
                profile=MemberProfile(),
                source="auto_enroll",
                now=now,
            )
    inserted = enroll_members(conn, list(new.values()), now=now)
    for ref, row in new.items():
        if row["id"] in inserted:
            members[ref] = _Member(str(row["id"]), {}, now, fresh=True)
    lost = {ref for ref, row in new.items() if row["id"] not in inserted}
    for ref, again in find_members(conn, ctx.program_id, lost).items():
        members[ref] = _Member(
            str(again.id), dict(again.attributes), again.enrolled_at, fresh=False
        )
    return members


def _accepted_from_nothing(ctx: ProgramContext, event: PurchaseEvent, *, now: datetime) -> bool:
    """Whether ``_purchase`` accepts ``event`` for a member with no history."""
    try:
        _earning(ctx, _checked_purchase(ctx, event, now=now), attributes={}, held={})
    except DomainError:
        return False
    return True


def _checked_purchase(ctx: ProgramContext, event: PurchaseEvent, *, now: datetime) -> Purchase:
    """The purchase as the rules see it; raises ``CurrencyMismatch``."""
    purchase = event.to_purchase(not_after=now)
    if purchase.currency != ctx.settings.currency:
        raise CurrencyMismatch(expected=ctx.settings.currency, received=purchase.currency)
    return purchase


def _earning(
    ctx: ProgramContext,
    purchase: Purchase,
    *,
    attributes: dict[str, Any],
    held: dict[str, str | None],
) -> tuple[PurchaseEarning, RuleEvaluation]:
    """What ``purchase`` earns a member with ``attributes`` holding tiers ``held`` (see
    ``batch_tiers.from_records``); raises ``LimitExceeded``."""
    tier, by_set = from_records(ctx, held)
    return earn_on_purchase(
        ctx.settings,
        purchase,
        member_attributes=attributes,
        expression_results=NO_OUTCOMES.conditions,
        formula_results=NO_OUTCOMES.formulas,
        member_tier=tier,
        member_plans=frozenset(),
        member_tiers=frozenset(by_set.values()),
    )


def _purchase(
    ctx: ProgramContext,
    event: PurchaseEvent,
    body: dict[str, Any],
    members: dict[str, _Member],
    balances: dict[str, RunningBalance],
    run_tiers: RunTiers | None,
    rows: _Rows,
    *,
    now: datetime,
    actor: str,
) -> Outcome:
    """Decide one purchase against the run's state so far and add its rows: what
    ``events._record_purchase`` does for a program that ``takes_bulk_path``. Raises before
    changing anything."""
    settings = ctx.settings
    purchase = _checked_purchase(ctx, event, now=now)
    ref = event.member.as_ref()
    member = members.get(ref)
    if member is None:
        if settings.auto_enroll and ref.startswith(EXTERNAL_PREFIX):
            # ``_members`` enrolled no one for this purchase: it earns what a new member's
            # empty state refuses (LimitExceeded), as one by one it is refused after enrolling.
            _earning(ctx, purchase, attributes={}, held={})
            raise AssertionError(f"{ref} was not enrolled for a purchase it could make")
        raise MemberNotFound(ref)
    member_id = member.member_id
    earned_at = min(event.occurred_at.astimezone(UTC), now)
    # Raises LimitExceeded, before anything is added.
    held = run_tiers.held(member_id) if run_tiers is not None else {}
    tier, by_set = from_records(ctx, held)
    earning, evaluation = _earning(ctx, purchase, attributes=member.attributes, held=held)
    enrolled, member.fresh = member.fresh, False
    balance = balances[member_id]
    event_id = new_id("evt")
    entry_id: str | None = None
    lots_view: list[dict[str, Any]] = []
    if earning.points > 0:
        credit = _credit(
            ctx,
            rows,
            balance,
            member_id=member_id,
            points=earning.points,
            held=held_portions(settings, evaluation, earned_at),
            earned_at=earned_at,
            now=now,
            source_id=event.id,
            actor=actor,
            details=purchase_entry_details(
                settings,
                event,
                event_id=event_id,
                earning=earning,
                tier=tier,
                plans=frozenset(),
                tiers=by_set,
                member_average=None,
            ),
        )
        entry_id = credit.entry_id
        lots_view = lot_views(credit)
    rows.events.append(
        event_row(
            ctx.program_id,
            event_id=event_id,
            member_id=member_id,
            event=event,
            body=body,
            now=now,
            entry_id=entry_id,
            points=earning.points,
        )
    )
    activity = activity_row(
        ctx,
        member_id=member_id,
        event_id=event_id,
        occurred_at=earned_at,
        spend_minor=earning.base_minor,
        tier_points=earning.points,
        purchases=1,
        visit=True,
    )
    rows.activity.append(activity)
    tier_change = None
    if run_tiers is not None:
        run_tiers.record(member_id, activity)
        tier_change = run_tiers.upgrade(member_id, at=earned_at)
    rows.lines.extend(
        purchase_line_rows(
            ctx.program_id, member_id, event_id=event_id, earning=earning, purchase=purchase
        )
    )
    response = purchase_body(
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
        stamped=[],
        cashback_view=None,
        balance=balance.view(now=now),
    )
    return Outcome(201, response, replayed=False)


def _credit(
    ctx: ProgramContext,
    rows: _Rows,
    balance: RunningBalance,
    *,
    member_id: str,
    points: int,
    held: list[tuple[int, datetime | None]],
    earned_at: datetime,
    now: datetime,
    source_id: str,
    actor: str,
    details: dict[str, Any],
) -> Credit:
    """``ledger_ops.plan_credit`` for a purchase's earn entry, as rows of the run."""
    settings = ctx.settings
    planned = plan_credit(
        program_id=ctx.program_id,
        member_id=member_id,
        debt=balance.debt,
        points=points,
        kind=EntryKind.EARN,
        from_purpose="issued",
        program_version=settings.version,
        now=now,
        expires_at=settings.expiry.expires_at(earned_at),
        earned_at=earned_at,
        held=held,
        source_type="purchase",
        source_id=source_id,
        actor=actor,
        details=details,
    )
    rows.entries.append((planned.entry, planned.postings, planned.debt_delta))
    rows.lots.extend(planned.lots)
    rows.movements.extend(planned.movements)
    balance.credit(points, debt_repaid=planned.credit.debt_repaid)
    for lot in planned.lots:
        balance.add_lot(
            lot["remaining"],
            expires_at=lot["expires_at"],
            available_at=lot["available_at"],
            now=now,
        )
    return planned.credit


def _write(
    conn: Connection, ctx: ProgramContext, rows: _Rows, *, principal: Principal, now: datetime
) -> None:
    """Each table's rows of the run in one statement, parents before children; events and
    keys in source id order, so two runs sharing an event wait on each other in one order."""
    planned = plan_entries(rows.entries)
    # Nothing below is read back but the wallets' row count, checked once the block is
    # answered: on PostgreSQL, one round trip for all of it.
    with pipelined(conn):
        moved = send_wallet_moves(conn, planned)
        insert_entries(conn, planned)
        insert_lots(conn, rows.lots, rows.movements)
        if rows.events:
            insert_rows(conn, events, sorted(rows.events, key=lambda row: str(row["source_id"])))
        if rows.lines:
            insert_rows(conn, purchase_lines, rows.lines)
        if rows.activity:
            insert_rows(conn, member_activity, rows.activity)
        idempotency.store_many(
            conn, tenant_id=principal.tenant_id, scope=ctx.program_id, now=now, outcomes=rows.keys
        )
    moved.check()
