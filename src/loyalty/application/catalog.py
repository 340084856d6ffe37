"""The reward catalog and coupons: what a member can get now (and why not), redeeming a
reward (points burnt and the reward issued in one transaction, stock and per-member limits
held under concurrent redemptions), and a coupon's life: validated by a checkout without
being used, used once, or cancelled with its points back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from loyalty.adapters.db.engine import reading, run_transaction
from loyalty.adapters.db.locking import lock_wallet
from loyalty.adapters.db.tables import (
    coupon_lookup_failures,
    redemptions,
    reward_issues,
    reward_stock,
)
from loyalty.adapters.ids import new_id
from loyalty.application import gift_cards, memberships
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import balance_view
from loyalty.application.expressions import MemberConditions, member_conditions, member_variables
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.members import find_member, resolve_member
from loyalty.application.programs import ProgramContext, load_program
from loyalty.application.redemptions import burn_points, restore_redemption
from loyalty.domain.catalog import (
    GiftCardBalance,
    Reward,
    RewardType,
    code_hash,
    discount_for,
    new_code,
    normalise_code,
    why_not,
)
from loyalty.domain.errors import (
    CouponCodeInvalid,
    CouponNotFound,
    CouponNotUsable,
    GiftCardSpent,
    GiftCardUseIncomplete,
    IdempotencyConflict,
    MemberNotFound,
    NotAGiftCard,
    NotFulfilled,
    RewardIssueNotFound,
    RewardNotAvailable,
    TooManyAttempts,
    UnknownReward,
)
from loyalty.domain.rules import period_start

COUPON_TYPES = (
    RewardType.COUPON_AMOUNT,
    RewardType.COUPON_PERCENT,
    RewardType.FREE_PRODUCT,
    RewardType.GIFT_CARD,
)
"""Rewards issued with a code (a gift card's is its voucher code)."""


def _reward(ctx: ProgramContext, reward_id: str) -> Reward:
    for reward in ctx.settings.rewards:
        if reward.reward_id == reward_id:
            return reward
    raise UnknownReward(reward_id)


@dataclass(frozen=True, slots=True)
class _Standing:
    """What the catalog's eligibility reads of a member now."""

    tiers: frozenset[str]
    """The tiers the member holds, one per tier set."""
    conditions: MemberConditions

    def why_not(
        self,
        reward: Reward,
        *,
        available_points: int,
        issued_total: int,
        issued_to_member_in_period: int,
        now: datetime,
    ) -> list[dict[str, Any]]:
        return why_not(
            reward,
            available_points=available_points,
            tiers=self.tiers,
            issued_total=issued_total,
            issued_to_member_in_period=issued_to_member_in_period,
            now=now,
            member_segments=self.conditions.segments,
            condition_met=self.conditions.rewards.get(reward.reward_id, True),
        )


def _standing(conn: Connection, ctx: ProgramContext, member: Any, now: datetime) -> _Standing:
    """The member's tier and plans, and what the program's segments and reward conditions say
    of them, bound once for the whole catalog."""
    tier, plans = memberships.standing(conn, ctx, member.id, now=now)
    by_set = memberships.tiers_by_set(conn, ctx, member.id, tier=tier, plans=plans)
    conditions = member_conditions(
        ctx.settings,
        member=member_variables(member, tier=tier, plans=plans, tiers=by_set),
        now=now,
    )
    return _Standing(frozenset(by_set.values()), conditions)


def _issued_total(conn: Connection, ctx: ProgramContext, reward_id: str) -> int:
    row = conn.execute(
        select(reward_stock.c.issued).where(
            and_(reward_stock.c.program_id == ctx.program_id, reward_stock.c.reward_id == reward_id)
        )
    ).first()
    return int(row.issued) if row else 0


def _issued_to_member(
    conn: Connection, ctx: ProgramContext, reward: Reward, member_id: str, now: datetime
) -> int:
    since = period_start(reward.limit_period, now, ZoneInfo(ctx.settings.time_zone))
    i = reward_issues.c
    where = [
        i.program_id == ctx.program_id,
        i.member_id == member_id,
        i.reward_id == reward.reward_id,
        i.status != "cancelled",
    ]
    if since is not None:
        where.append(i.created_at >= since)
    return int(conn.execute(select(func.count()).where(and_(*where))).scalar_one())


def _reward_view(reward: Reward, tiers: frozenset[str]) -> dict[str, Any]:
    return {
        "id": reward.reward_id,
        "name": reward.name,
        "description": reward.description,
        "image_url": reward.image_url,
        "type": reward.type.value,
        "cost_points": reward.cost_for(tiers),
        "value_minor": reward.value_minor or None,
        "percent": reward.percent or None,
        "min_order_minor": reward.min_order_minor,
        "skus": sorted(reward.skus),
    }


def member_rewards(
    engine: Engine, principal: Principal, program_id: str, member_ref: str, *, now: datetime
) -> dict[str, Any]:
    """Every reward of the catalog for this member: ``available``, or the reasons it isn't
    (``points_short`` by N, ``tier_too_low``, ``not_in_segment``, ``condition_not_met``,
    ``out_of_stock``, ``limit_reached``, ``not_available_now``); and the segments the member
    is in now."""
    with reading(engine) as conn:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        standing = _standing(conn, ctx, member, now)
        available_points = balance_view(conn, program_id, member.id, now=now)["available"]
        items = []
        for reward in ctx.settings.rewards:
            reasons = standing.why_not(
                reward,
                available_points=available_points,
                issued_total=_issued_total(conn, ctx, reward.reward_id),
                issued_to_member_in_period=_issued_to_member(conn, ctx, reward, member.id, now),
                now=now,
            )
            items.append(
                {
                    **_reward_view(reward, standing.tiers),
                    "available": not reasons,
                    "reasons": reasons,
                }
            )
    return {
        "member_id": member.id,
        "available_points": available_points,
        "segments": sorted(standing.conditions.segments),
        "items": items,
    }


def _card(conn: Connection, ctx: ProgramContext, row: Any) -> GiftCardBalance | None:
    """The balance of ``row`` when it is a gift card."""
    reward = next((r for r in ctx.settings.rewards if r.reward_id == row.reward_id), None)
    gift = reward is not None and reward.type is RewardType.GIFT_CARD
    return gift_cards.balance(
        conn, row, unopened_value_minor=reward.value_minor if reward and gift else None
    )


def _issue_view(row: Any, card: GiftCardBalance | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "member_id": row.member_id,
        "reward": row.reward_id,
        "redemption_id": row.redemption_id,
        "status": row.status,
        "fulfilment": row.fulfilment,
        "code": None,
        "code_hint": row.code_hint,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "used_at": row.used_at.isoformat() if row.used_at else None,
        "used_reference": row.used_reference,
        "cancelled_at": row.cancelled_at.isoformat() if row.cancelled_at else None,
        "value_minor": card.value_minor if card else None,
        "remaining_minor": card.remaining_minor if card else None,
    }


def redeem_reward(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    reward_id: str,
    *,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """Burn the reward's cost (lots, earliest expiry first) and issue it, in one
    transaction. A coupon gets a fresh code, shown in full in this answer only (a replay of
    the same key shows only its last characters). Locks: the member's wallet, then the
    reward's stock row, so stock and per-member limits hold under concurrent redemptions."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        member = resolve_member(conn, program_id, member_ref)
        reward = _reward(ctx, reward_id)
        shown: dict[str, str] = {}

        def effect() -> tuple[int, dict[str, Any]]:
            lock_wallet(conn, program_id, member.id)
            s = reward_stock.c
            stock = conn.execute(
                select(s.issued)
                .where(and_(s.program_id == program_id, s.reward_id == reward_id))
                .with_for_update()
            ).first()
            if stock is None:
                conn.execute(
                    insert(reward_stock),
                    {
                        "program_id": program_id,
                        "reward_id": reward_id,
                        "stock": reward.stock,
                        "issued": 0,
                    },
                )
            standing = _standing(conn, ctx, member, now)
            tiers = standing.tiers
            reasons = standing.why_not(
                reward,
                available_points=balance_view(conn, program_id, member.id, now=now)["available"],
                issued_total=int(stock.issued) if stock else 0,
                issued_to_member_in_period=_issued_to_member(conn, ctx, reward, member.id, now),
                now=now,
            )
            if reasons:
                raise RewardNotAvailable(reward_id, reasons=reasons)
            conn.execute(
                update(reward_stock)
                .where(and_(s.program_id == program_id, s.reward_id == reward_id))
                .values(issued=s.issued + 1, stock=reward.stock)
            )
            burnt = burn_points(
                conn,
                ctx,
                member.id,
                points=reward.cost_for(tiers),
                reason=f"reward {reward_id}",
                reference=None,
                actor=principal.key_id,
                now=now,
            )
            code = new_code() if reward.type in COUPON_TYPES else None
            issue_id = new_id("rwi")
            conn.execute(
                insert(reward_issues),
                {
                    "id": issue_id,
                    "program_id": program_id,
                    "member_id": member.id,
                    "reward_id": reward_id,
                    "redemption_id": burnt["id"],
                    "code_hash": code_hash(normalise_code(code) or "") if code else None,
                    "code_hint": code[-6:] if code else None,
                    "status": "issued",
                    "fulfilment": "pending" if reward.type is RewardType.EXPERIENCE else None,
                    "created_at": now,
                    "expires_at": now + timedelta(days=reward.valid_days) if code else None,
                },
            )
            if code:
                shown["code"] = code
            card = None
            if reward.type is RewardType.GIFT_CARD:
                gift_cards.open_card(
                    conn, program_id=program_id, issue_id=issue_id, value_minor=reward.value_minor
                )
                card = GiftCardBalance(reward.value_minor, 0)
            row = conn.execute(select(reward_issues).where(reward_issues.c.id == issue_id)).one()
            # What is stored for a replay holds no code: a code is shown once.
            return 201, {
                **_issue_view(row, card),
                "points": reward.cost_for(tiers),
                "balance": burnt["balance"],
            }

        outcome = run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"reward:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(member.id, reward_id),
            now=now,
            work=effect,
        )
        if shown and not outcome.replayed:
            outcome = Outcome(outcome.status_code, {**outcome.body, **shown}, replayed=False)
        return outcome

    return run_transaction(engine, work)


T = TypeVar("T")

CODE_FAILURES_MAX = 30
CODE_FAILURES_WINDOW_S = 60


def _check_attempts(conn: Connection, key_id: str, now: datetime) -> None:
    """Refuse lookups from a key past CODE_FAILURES_MAX failures in the window, so codes can't
    be enumerated through the API. Counted in the database, so every server process sees the
    same count; two failures racing may each be let through at the limit, which only moves
    it by a few attempts."""
    f = coupon_lookup_failures.c
    count, oldest = conn.execute(
        select(func.count(), func.min(f.failed_at)).where(
            and_(f.key_id == key_id, f.failed_at > now - timedelta(seconds=CODE_FAILURES_WINDOW_S))
        )
    ).one()
    if count >= CODE_FAILURES_MAX:
        wait = int((oldest - now).total_seconds()) + CODE_FAILURES_WINDOW_S + 1
        raise TooManyAttempts(
            retry_after_s=max(wait, 1), limit=CODE_FAILURES_MAX, window_s=CODE_FAILURES_WINDOW_S
        )


def _record_failure(engine: Engine, key_id: str, now: datetime) -> None:
    """Count a failed lookup, in a transaction of its own: the request's was rolled back."""

    def work(conn: Connection) -> None:
        f = coupon_lookup_failures.c
        conn.execute(
            delete(coupon_lookup_failures).where(
                and_(
                    f.key_id == key_id,
                    f.failed_at <= now - timedelta(seconds=CODE_FAILURES_WINDOW_S),
                )
            )
        )
        conn.execute(
            insert(coupon_lookup_failures),
            {"id": new_id("clf"), "key_id": key_id, "failed_at": now},
        )

    run_transaction(engine, work)


def _counting_failures(
    engine: Engine, principal: Principal, now: datetime, call: Callable[[], T]
) -> T:
    """Run a use case that looks up a code, counting an unknown or mistyped one."""
    try:
        return call()
    except (CouponCodeInvalid, CouponNotFound):
        _record_failure(engine, principal.key_id, now)
        raise


def _lookup(
    conn: Connection, principal: Principal, program_id: str, code: str, now: datetime, **kw: Any
) -> Any:
    """Find a coupon for ``principal``, unless it has failed too often lately (the failure
    itself is counted by ``_counting_failures``, outside the request's transaction)."""
    _check_attempts(conn, principal.key_id, now)
    return _find_coupon(conn, program_id, code, **kw)


def _find_coupon(conn: Connection, program_id: str, code: str, *, lock: bool = False) -> Any:
    normalised = normalise_code(code)
    if normalised is None:
        raise CouponCodeInvalid()
    stmt = select(reward_issues).where(
        and_(
            reward_issues.c.program_id == program_id,
            reward_issues.c.code_hash == code_hash(normalised),
        )
    )
    row = conn.execute(stmt.with_for_update() if lock else stmt).first()
    if row is None:
        raise CouponNotFound()
    return row


def _status_now(row: Any, now: datetime) -> str:
    if row.status == "issued" and row.expires_at is not None and now >= row.expires_at:
        return "expired"
    return str(row.status)


def validate_coupon(
    engine: Engine,
    principal: Principal,
    program_id: str,
    code: str,
    *,
    currency: str,
    lines: list[tuple[str | None, int, int]],
    total_minor: int,
    now: datetime,
) -> dict[str, Any]:
    """Whether a code applies to a cart and what it takes off, without using it."""

    def read() -> dict[str, Any]:
        with reading(engine) as conn:
            ctx = load_program(conn, principal, program_id, Scope.READ)
            row = _lookup(conn, principal, program_id, code, now)
            reward = _reward(ctx, row.reward_id)
            status = _status_now(row, now)
            card = _card(conn, ctx, row)
            # A gift card gives what remains of it, at most what the lines it applies to cost.
            applied = replace(reward, value_minor=card.remaining_minor) if card else reward
            discount = (
                discount_for(applied, lines, total_minor)
                if currency == ctx.settings.currency
                else 0
            )
            reasons: list[dict[str, Any]] = []
            if status != "issued":
                reasons.append({"code": f"coupon_{status}"})
            if currency != ctx.settings.currency:
                reasons.append({"code": "currency_mismatch", "expected": ctx.settings.currency})
            elif total_minor < reward.min_order_minor:
                reasons.append({"code": "below_minimum", "min_order_minor": reward.min_order_minor})
            elif card is not None and card.remaining_minor == 0:
                reasons.append({"code": "gift_card_empty"})
            elif discount == 0:
                reasons.append({"code": "no_applicable_lines", "skus": sorted(reward.skus)})
            return {
                "valid": not reasons,
                "reasons": reasons,
                "discount_minor": discount if not reasons else 0,
                "coupon": _issue_view(row, card) | {"status": status},
                "reward": _reward_view(reward, frozenset()),
            }

    return _counting_failures(engine, principal, now, read)


def use_coupon(
    engine: Engine,
    principal: Principal,
    program_id: str,
    code: str,
    *,
    order_reference: str | None,
    amount_minor: int | None = None,
    now: datetime,
) -> Outcome:
    """Use a coupon, once: the row is locked and moved from ``issued`` to ``used`` in one
    step, so two tills racing with the same code can't both have it. A gift card is spent
    in part instead (see ``_move_gift_card``).

    Raises CouponCodeInvalid, CouponNotFound, TooManyAttempts, CouponNotUsable, NotAGiftCard
    (an amount for a single-use coupon), GiftCardUseIncomplete, GiftCardBalanceShort,
    IdempotencyConflict (an order's use replayed with another amount)."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        row = _lookup(conn, principal, program_id, code, now, lock=True)
        card = _card(conn, ctx, row)
        if card is not None:
            if amount_minor is None or order_reference is None:
                raise GiftCardUseIncomplete()
            return _move_gift_card(
                conn,
                principal,
                row,
                card,
                kind=gift_cards.USE,
                amount_minor=amount_minor,
                order_reference=order_reference,
                now=now,
            )
        if amount_minor is not None:
            raise NotAGiftCard()
        status = _status_now(row, now)
        if status != "issued":
            raise CouponNotUsable(status=status, used_at=row.used_at)
        conn.execute(
            update(reward_issues)
            .where(and_(reward_issues.c.id == row.id, reward_issues.c.status == "issued"))
            .values(status="used", used_at=now, used_reference=order_reference)
        )
        view = _issue_view(
            conn.execute(select(reward_issues).where(reward_issues.c.id == row.id)).one()
        )
        return Outcome(200, view, replayed=False)

    return _counting_failures(engine, principal, now, lambda: run_transaction(engine, work))


def _move_gift_card(
    conn: Connection,
    principal: Principal,
    row: Any,
    card: GiftCardBalance,
    *,
    kind: str,
    amount_minor: int | None,
    order_reference: str,
    now: datetime,
) -> Outcome:
    """Take ``amount_minor`` off a gift card for an order (``use``), or give back what the
    order's use took (``cancel``, ``amount_minor`` None), the card's row being locked. The
    order reference is the idempotency key: the same request again replays the answer, a use
    of the same order with another amount is a conflict."""

    def effect() -> tuple[int, dict[str, Any]]:
        if kind == gift_cards.USE:
            status = _status_now(row, now)
            if status != "issued":
                raise CouponNotUsable(status=status, used_at=row.used_at)
        if gift_cards.find_use(conn, row.id, order_reference, kind) is not None:
            # Done for this order by a twin request that committed while this one waited for
            # the lock: run_idempotent replays its answer (or finds a conflict).
            raise IdempotencyConflict(order_reference)
        amount = (
            amount_minor
            if amount_minor is not None
            else gift_cards.use_to_cancel(conn, row.id, order_reference)
        )
        after = gift_cards.record(
            conn,
            row,
            card,
            kind=kind,
            amount_minor=amount,
            order_reference=order_reference,
            actor=principal.key_id,
            now=now,
        )
        moved = "taken_minor" if kind == gift_cards.USE else "returned_minor"
        return 200, {**_issue_view(row, after), moved: amount}

    return run_idempotent(
        conn,
        tenant_id=principal.tenant_id,
        scope=row.program_id,
        key=f"gift-card-{kind}:{row.id}:{order_reference}",
        client_key=order_reference,
        request_fingerprint=fingerprint(amount_minor),
        now=now,
        work=effect,
    )


def cancel_gift_card_use(
    engine: Engine,
    principal: Principal,
    program_id: str,
    code: str,
    *,
    order_reference: str,
    now: datetime,
) -> Outcome:
    """Give back what an order took of a gift card (the order was returned or voided), as a
    new row reversing the use; the same cancellation again replays its answer.

    Raises CouponCodeInvalid, CouponNotFound, TooManyAttempts, NotAGiftCard,
    GiftCardUseNotFound."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        row = _lookup(conn, principal, program_id, code, now, lock=True)
        card = _card(conn, ctx, row)
        if card is None:
            raise NotAGiftCard()
        return _move_gift_card(
            conn,
            principal,
            row,
            card,
            kind=gift_cards.CANCEL,
            amount_minor=None,
            order_reference=order_reference,
            now=now,
        )

    return _counting_failures(engine, principal, now, lambda: run_transaction(engine, work))


def cancel_coupon(
    engine: Engine, principal: Principal, program_id: str, code: str, *, now: datetime
) -> dict[str, Any]:
    """Cancel an unused coupon: its points go back to the lots they came from, with their
    original expiry, and the stock it took is free again."""

    def work(conn: Connection) -> dict[str, Any]:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        first = _lookup(conn, principal, program_id, code, now)
        lock_wallet(conn, program_id, first.member_id)
        row = _find_coupon(conn, program_id, code, lock=True)
        if row.status != "issued":
            raise CouponNotUsable(status=row.status, used_at=row.used_at)
        card = _card(conn, ctx, row)
        if card is not None and card.spent_minor > 0:
            raise GiftCardSpent(spent_minor=card.spent_minor)
        red = conn.execute(select(redemptions).where(redemptions.c.id == row.redemption_id)).one()
        restored = restore_redemption(
            conn, ctx, red, reason="coupon cancelled", actor=principal.key_id, now=now
        )
        s = reward_stock.c
        conn.execute(
            update(reward_stock)
            .where(and_(s.program_id == program_id, s.reward_id == row.reward_id))
            .values(issued=s.issued - 1)
        )
        conn.execute(
            update(reward_issues)
            .where(reward_issues.c.id == row.id)
            .values(status="cancelled", cancelled_at=now)
        )
        view = _issue_view(
            conn.execute(select(reward_issues).where(reward_issues.c.id == row.id)).one(), card
        )
        return {**view, "points_returned": restored["points"], "balance": restored["balance"]}

    return _counting_failures(engine, principal, now, lambda: run_transaction(engine, work))


def _issue_row(conn: Connection, program_id: str, issue_id: str) -> Any:
    row = conn.execute(
        select(reward_issues).where(
            and_(reward_issues.c.id == issue_id, reward_issues.c.program_id == program_id)
        )
    ).first()
    if row is None:
        raise RewardIssueNotFound(issue_id)
    return row


def get_issue(
    engine: Engine, principal: Principal, program_id: str, issue_id: str
) -> dict[str, Any]:
    with reading(engine) as conn:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        row = _issue_row(conn, program_id, issue_id)
        return _issue_view(row, _card(conn, ctx, row))


def set_fulfilment(
    engine: Engine, principal: Principal, program_id: str, issue_id: str, *, status: str
) -> dict[str, Any]:
    """Record how an experience or physical reward's fulfilment is going."""

    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.WRITE)
        row = _issue_row(conn, program_id, issue_id)
        if row.fulfilment is None:
            raise NotFulfilled(issue_id)
        conn.execute(
            update(reward_issues).where(reward_issues.c.id == issue_id).values(fulfilment=status)
        )
        return _issue_view(_issue_row(conn, program_id, issue_id))

    return run_transaction(engine, work)
