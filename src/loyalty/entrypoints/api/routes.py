"""The ``/v1`` routes. Handlers translate HTTP to use-case calls and nothing more."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy import Engine

from loyalty.adapters.clock import utc_now
from loyalty.adapters.db.engine import WouldWait
from loyalty.adapters.json_bytes import json_bytes
from loyalty.application import (
    access,
    balances,
    batch,
    catalog,
    drafts,
    events,
    holds,
    members,
    memberships,
    programs,
    redemptions,
    stamps,
    tiers,
    transfers,
)
from loyalty.application import backtest as backtests
from loyalty.application import quote as quotes
from loyalty.application.access import Principal, Scope
from loyalty.application.event_documents import Event, MemberRef, PurchaseEvent
from loyalty.application.event_groups import EventGroups
from loyalty.application.idempotency import IDEMPOTENCY_KEY_LENGTH_MAX, Outcome
from loyalty.application.limits import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.ledger import CASH, POINTS
from loyalty.entrypoints.api import responses as bodies
from loyalty.entrypoints.api.errors import ApiProblem, status_for
from loyalty.entrypoints.api.schemas import (
    AdjustPoints,
    AssignTier,
    BacktestRequest,
    CancelGiftCardUse,
    CancelRedemption,
    CapturePoints,
    CouponCart,
    CreateApiKey,
    EnrollMember,
    EventBatch,
    Fulfilment,
    JoinPlan,
    MembershipPayment,
    QuoteRequest,
    RecalculateTiers,
    RedeemPoints,
    ReservePoints,
    TransferPoints,
    UpdateMember,
    UseCoupon,
)

router = APIRouter(prefix="/v1")
bearer = HTTPBearer(auto_error=False, description="An API key: `<key id>.<secret>`.")

ProgramId = Annotated[str, Path(min_length=1, max_length=32)]
HoldId = Annotated[str, Path(min_length=1, max_length=32)]
MemberRefParam = Annotated[
    str,
    Path(
        min_length=1,
        max_length=160,
        description="The engine's member id (`mbr_...`) or `ext:<the merchant's external id>`.",
    ),
]
PageSize = Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)]
Cursor = Annotated[str | None, Query(max_length=200)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=IDEMPOTENCY_KEY_LENGTH_MAX,
        description="Makes the request safe to retry: the same key with the same body returns "
        "the first response; with a different body, `409 idempotency_conflict`.",
    ),
]


# The two dependencies every route has are coroutines: FastAPI runs a plain function
# dependency in the thread pool, and the hop there and back cost more than the work they do.
async def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(engine_of)]


async def event_groups_of(request: Request) -> EventGroups | None:
    groups: EventGroups | None = request.app.state.event_groups
    return groups


EventGroupsDep = Annotated[EventGroups | None, Depends(event_groups_of)]


async def principal_of(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None:
        raise access.Unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
    engine: Engine = request.app.state.engine
    token = credentials.credentials
    # A key verified moments ago is answered from memory; reading the key is database I/O and
    # goes to the thread pool, off the event loop.
    principal = access.cached_principal(engine, token)
    if principal is None:
        principal = await run_in_threadpool(access.authenticate, engine, token)
    return principal


Auth = Annotated[Principal, Depends(principal_of)]


class _Answer(JSONResponse):
    """An answer written by ``json_bytes`` (orjson): the same JSON as ``JSONResponse`` writes,
    in a tenth of the time, on the event loop's thread."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def respond(outcome: Outcome, response_status: int | None = None) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return _Answer(
        outcome.body, status_code=response_status or outcome.status_code, headers=headers
    )


def require_key(key: str | None) -> str:
    if not key:
        raise ApiProblem(
            400,
            "idempotency_key_required",
            "This operation moves points; send an `Idempotency-Key` header.",
        )
    return key


def cursor_or_422(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        members.decode_cursor(cursor)
    except ValueError:
        raise ApiProblem(
            422,
            "validation_error",
            "The cursor is malformed.",
            errors=[{"field": "cursor", "message": "malformed cursor", "type": "value_error"}],
        ) from None
    return cursor


# --- programs ---------------------------------------------------------------------------


@router.post(
    "/programs",
    status_code=201,
    tags=["programs"],
    responses=bodies.documented(201, bodies.ProgramOut, "The program at version 1."),
)
def create_program(
    document: ProgramDocument,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a program from its document (version 1). Needs an `admin` key for the tenant."""
    return respond(
        programs.create_program(
            engine, principal, document, now=utc_now(), idempotency_key=idempotency_key
        )
    )


@router.get(
    "/programs",
    tags=["programs"],
    responses=bodies.documented(200, bodies.ProgramList, "Programs."),
)
def list_programs(principal: Auth, engine: EngineDep) -> dict[str, Any]:
    return {"items": programs.list_programs(engine, principal)}


@router.get(
    "/programs/{program_id}",
    tags=["programs"],
    responses=bodies.documented(200, bodies.ProgramOut, "The current version."),
)
def get_program(program_id: ProgramId, principal: Auth, engine: EngineDep) -> dict[str, Any]:
    return programs.get_program(engine, principal, program_id)


@router.get(
    "/programs/{program_id}/versions/{version}",
    tags=["programs"],
    responses=bodies.documented(200, bodies.ProgramOut, "That version."),
)
def get_program_version(
    program_id: ProgramId,
    version: Annotated[int, Path(ge=1, le=1_000_000)],
    principal: Auth,
    engine: EngineDep,
) -> dict[str, Any]:
    return programs.get_program(engine, principal, program_id, version=version)


@router.put(
    "/programs/{program_id}",
    tags=["programs"],
    responses=bodies.documented(200, bodies.ProgramOut, "The new current version."),
)
def update_program(
    program_id: ProgramId,
    document: ProgramDocument,
    principal: Auth,
    engine: EngineDep,
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=20)] = None,
) -> dict[str, Any]:
    """Publish a new version of the document. `If-Match: <version>` refuses the change
    (`409 program_version_conflict`) unless the program is still at that version."""
    expected: int | None = None
    if if_match is not None:
        try:
            expected = int(if_match.strip().strip('"'))
        except ValueError:
            raise ApiProblem(
                422,
                "validation_error",
                "If-Match must be a version number.",
                errors=[
                    {"field": "If-Match", "message": "not a version number", "type": "int_parsing"}
                ],
            ) from None
    return programs.update_program(
        engine, principal, program_id, document, expected_version=expected, now=utc_now()
    )


# --- program drafts ---------------------------------------------------------------------

DraftId = Annotated[str, Path(min_length=1, max_length=32)]


@router.post(
    "/programs/{program_id}/drafts",
    status_code=201,
    tags=["programs"],
    responses=bodies.documented(201, bodies.DraftOut, "The draft and what it changes."),
)
def create_draft(
    program_id: ProgramId, document: ProgramDocument, principal: Auth, engine: EngineDep
) -> JSONResponse:
    """Save a document as a draft of the next version, validated like `PUT`; earning is
    unchanged until it is published. `diff` lists the paths it changes."""
    draft = drafts.create_draft(engine, principal, program_id, document, now=utc_now())
    return JSONResponse(draft, status_code=201)


@router.get(
    "/programs/{program_id}/drafts",
    tags=["programs"],
    responses=bodies.documented(200, bodies.DraftList, "Drafts, newest first (at most 50)."),
)
def list_drafts(program_id: ProgramId, principal: Auth, engine: EngineDep) -> dict[str, Any]:
    return {"items": drafts.list_drafts(engine, principal, program_id)}


@router.get(
    "/programs/{program_id}/drafts/{draft_id}",
    tags=["programs"],
    responses=bodies.documented(200, bodies.DraftOut, "The draft."),
)
def get_draft(
    program_id: ProgramId, draft_id: DraftId, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    return drafts.get_draft(engine, principal, program_id, draft_id)


@router.post(
    "/programs/{program_id}/drafts/{draft_id}/publish",
    tags=["programs"],
    responses=bodies.documented(200, bodies.ProgramOut, "The new current version."),
)
def publish_draft(
    program_id: ProgramId, draft_id: DraftId, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Publish the draft as the next version. Refused with `409 program_version_conflict` if
    the program moved past the draft's `base_version`, and `409 draft_already_published` the
    second time."""
    return drafts.publish_draft(engine, principal, program_id, draft_id, now=utc_now())


@router.delete("/programs/{program_id}/drafts/{draft_id}", status_code=204, tags=["programs"])
def delete_draft(
    program_id: ProgramId, draft_id: DraftId, principal: Auth, engine: EngineDep
) -> Response:
    """Discard an unpublished draft (a published one is kept: `409 draft_already_published`)."""
    drafts.delete_draft(engine, principal, program_id, draft_id)
    return Response(status_code=204)


# --- members ----------------------------------------------------------------------------


@router.post(
    "/programs/{program_id}/members",
    status_code=201,
    tags=["members"],
    responses=bodies.documented(201, bodies.MemberOut, "The member."),
)
def enroll_member(
    program_id: ProgramId,
    body: EnrollMember,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    fields = body.model_dump(exclude={"external_id"}, exclude_none=True)
    profile = members.MemberProfile(**fields)
    return respond(
        members.enroll_member(
            engine,
            principal,
            program_id,
            external_id=body.external_id,
            profile=profile,
            now=utc_now(),
            idempotency_key=idempotency_key,
        )
    )


@router.get(
    "/programs/{program_id}/members",
    tags=["members"],
    responses=bodies.documented(200, bodies.MemberPage, "A page of members."),
)
def list_members(
    program_id: ProgramId,
    principal: Auth,
    engine: EngineDep,
    limit: PageSize = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
    external_id: Annotated[str | None, Query(max_length=128)] = None,
    email: Annotated[str | None, Query(max_length=254)] = None,
) -> dict[str, Any]:
    """Members in enrolment order. Filter by exact `external_id` or `email`."""
    return members.list_members(
        engine,
        principal,
        program_id,
        limit=limit,
        cursor=cursor_or_422(cursor),
        external_id=external_id,
        email=email,
    )


@router.get(
    "/programs/{program_id}/expiring-points",
    tags=["points"],
    responses=bodies.documented(200, bodies.ExpiringPage, "A page of members."),
)
def list_expiring_points(
    program_id: ProgramId,
    principal: Auth,
    engine: EngineDep,
    within_days: Annotated[int, Query(ge=1, le=balances.EXPIRING_WITHIN_DAYS_MAX)] = 30,
    limit: PageSize = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Members with points expiring within `within_days` days (1 to 366, default 30), with
    those points and the first expiry: the list for a reminder e-mail. Paged by member."""
    return balances.expiring_soon(
        engine,
        principal,
        program_id,
        within_days=within_days,
        now=utc_now(),
        limit=limit,
        cursor=cursor_or_422(cursor),
    )


# --- events -----------------------------------------------------------------------------


@router.post(
    "/programs/{program_id}/events",
    status_code=201,
    tags=["events"],
    responses=bodies.documented(
        201,
        bodies.EventResult,
        "A purchase: points per line and the new balance; a return: what was taken "
        "back; an action: recorded.",
    ),
)
async def post_event(
    program_id: ProgramId,
    event: Annotated[Event, Body()],
    principal: Auth,
    engine: EngineDep,
    groups: EventGroupsDep,
) -> JSONResponse:
    """Record a `purchase`, `return` or custom `action`. The event's `id` is its idempotency
    key: the same id with the same body replays the first response (`Idempotent-Replayed`),
    with a different body is `409 idempotency_conflict`."""
    now = utc_now()
    if groups is not None:
        return respond(await groups.submit(principal, program_id, event, now=now))
    return respond(
        await run_in_threadpool(events.submit_event, engine, principal, program_id, event, now=now)
    )


@router.post(
    "/programs/{program_id}/events:batch",
    tags=["events"],
    responses=bodies.documented(200, bodies.BatchOut, "One result per event, in order."),
)
def post_event_batch(
    program_id: ProgramId, body: EventBatch, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Record up to 1,000 events in one transaction (a till catching up after being offline,
    an import): each is validated on its own, idempotent on its own id, recorded or refused on
    its own (a refused event leaves nothing behind), and answered on its own, in order. A bad
    event is reported and the others go on; the batch answers `200` unless the whole request
    is refused."""
    results = batch.submit_batch(engine, principal, program_id, body.events, now=utc_now())
    out = []
    for index, item in enumerate(results):
        if isinstance(item, batch.Invalid):
            problem = {
                "code": "validation_error",
                "detail": f"{len(item.errors)} field(s) are invalid.",
                "errors": item.errors,
            }
            out.append(_batch_result(index, 422, None, problem))
        elif item.accepted:
            out.append(
                _batch_result(index, 200 if item.replayed else 201, item.body, None, item.replayed)
            )
        else:
            assert item.error is not None
            out.append(_batch_result(index, status_for(item.error), None, item.body))
    return {
        "accepted": sum(1 for r in out if r["status"] in (200, 201)),
        "replayed": sum(1 for r in out if r["replayed"]),
        "rejected": sum(1 for r in out if r["status"] >= 300),
        "results": out,
    }


def _batch_result(
    index: int,
    status: int,
    body: dict[str, Any] | None,
    problem: dict[str, Any] | None,
    replayed: bool = False,
) -> dict[str, Any]:
    return {
        "index": index,
        "status": status,
        "replayed": replayed,
        "body": body,
        "problem": problem,
    }


@router.post(
    "/programs/{program_id}/quote",
    tags=["events"],
    responses=bodies.documented(
        200, bodies.QuoteOut, "What the cart would earn; nothing is recorded."
    ),
)
async def quote(
    program_id: ProgramId,
    body: QuoteRequest,
    principal: Auth,
    engine: EngineDep,
    groups: EventGroupsDep,
) -> JSONResponse:
    """What a cart (or a single product) would earn, per line and per rule, computed by the
    same code as a real purchase in a transaction that is rolled back. Needs a `read` key."""
    now = utc_now()
    try:
        # The cart is checked as a purchase would be (unique line ids, totals within limits),
        # so a cart a purchase would refuse is refused the same way.
        cart = PurchaseEvent(
            type="purchase",
            id=f"quote-{now.timestamp()}",
            member=body.member or MemberRef(external_id="quote-guest"),
            occurred_at=body.occurred_at or now,
            currency=body.currency,
            total_minor=body.total_minor
            if body.total_minor is not None
            else sum(li.quantity * li.unit_price_minor - li.discount_minor for li in body.lines),
            lines=body.lines,
            channel=body.channel,
            store=body.store,
        )
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None
    ask = functools.partial(
        quotes.quote_purchase,
        principal=principal,
        program_id=program_id,
        cart=cart,
        member=body.member,
        now=now,
        order_reference=body.order_reference,
    )
    # The quote is plain JSON already (strings, integers, lists): sent as it is, like the
    # answers of the other routes. On the event loop's own thread where that is set up (a
    # SQLite file, with groups written there): it then waits for at most the group being
    # written, not for a worker thread and the loop again. What would wait there gives way,
    # having written nothing, to a worker thread.
    on_loop = groups.reads_on_loop if groups is not None else None
    if on_loop is not None:
        try:
            return JSONResponse(ask(engine=on_loop, nowait=True))
        except WouldWait:
            pass
    return JSONResponse(await run_in_threadpool(ask, engine=engine))


@router.post(
    "/programs/{program_id}/backtests",
    tags=["programs"],
    responses=bodies.documented(200, bodies.BacktestOut, "What the candidate would have earned."),
)
def run_backtest(
    program_id: ProgramId, body: BacktestRequest, principal: Auth, engine: EngineDep
) -> Any:
    """Replay the program's stored purchases and actions (at most 100,000, optionally between
    `from` and `until`) against a candidate document and the published version: points per
    rule and month, members earning, caps and budgets hit, and the difference. Read-only."""
    return backtests.backtest(
        engine, principal, program_id, body.document, since=body.from_, until=body.until
    )


# --- balance, statement -----------------------------------------------------------------


@router.get(
    "/programs/{program_id}/members/{member:path}/balance",
    tags=["points"],
    responses=bodies.documented(200, bodies.BalanceOut, "The balance."),
)
def get_balance(
    program_id: ProgramId, member: MemberRefParam, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    return balances.get_balance(engine, principal, program_id, member, now=utc_now())


@router.get(
    "/programs/{program_id}/members/{member:path}/ledger",
    tags=["points"],
    responses=bodies.documented(200, bodies.LedgerPage, "Entries, newest first."),
)
def get_ledger(
    program_id: ProgramId,
    member: MemberRefParam,
    principal: Auth,
    engine: EngineDep,
    limit: PageSize = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
    wallet: Annotated[
        Literal["points", "cashback"],
        Query(description="`cashback` for the cashback wallet (amounts in minor units)."),
    ] = "points",
) -> dict[str, Any]:
    """Every entry that moved the member's points (or cashback), newest first."""
    return balances.get_statement(
        engine,
        principal,
        program_id,
        member,
        limit=limit,
        cursor=cursor_or_422(cursor),
        asset=CASH if wallet == "cashback" else POINTS,
    )


# --- redemptions, adjustments -----------------------------------------------------------


@router.post(
    "/programs/{program_id}/members/{member:path}/redemptions",
    status_code=201,
    tags=["points"],
    responses=bodies.documented(
        201, bodies.RedemptionOut, "The redemption and the lots it consumed."
    ),
)
def redeem(
    program_id: ProgramId,
    member: MemberRefParam,
    body: RedeemPoints,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Burn points, earliest-expiring first. `Idempotency-Key` is required."""
    return respond(
        redemptions.redeem_points(
            engine,
            principal,
            program_id,
            member,
            points=body.points,
            reason=body.reason,
            reference=body.reference,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
        )
    )


@router.get(
    "/programs/{program_id}/redemptions/{redemption_id}",
    tags=["points"],
    responses=bodies.documented(200, bodies.RedemptionStatus, "The redemption."),
)
def get_redemption(
    program_id: ProgramId,
    redemption_id: Annotated[str, Path(max_length=32)],
    principal: Auth,
    engine: EngineDep,
) -> dict[str, Any]:
    return redemptions.get_redemption(engine, principal, program_id, redemption_id)


@router.post(
    "/programs/{program_id}/redemptions/{redemption_id}/cancel",
    tags=["points"],
    responses=bodies.documented(200, bodies.CancellationOut, "The cancelled redemption."),
)
def cancel_redemption(
    program_id: ProgramId,
    redemption_id: Annotated[str, Path(max_length=32)],
    principal: Auth,
    engine: EngineDep,
    body: CancelRedemption | None = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Reverse a redemption; the points return to their lots with their original expiry."""
    return respond(
        redemptions.cancel_redemption(
            engine,
            principal,
            program_id,
            redemption_id,
            reason=body.reason if body else None,
            idempotency_key=idempotency_key,
            now=utc_now(),
        )
    )


@router.get(
    "/programs/{program_id}/members/{member:path}/tier",
    tags=["tiers"],
    responses=bodies.documented(200, bodies.MemberTierOut, "The member's tier and progress."),
)
def get_member_tier(
    program_id: ProgramId, member: MemberRefParam, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """The member's tier, since and until when, the metric so far, what the next tier needs
    and what keeping this one needs by the review (a progress bar's data), the tier the
    member would get at the review if nothing more happened, and the last tier changes."""
    return tiers.get_member_tier(engine, principal, program_id, member, now=utc_now())


@router.post(
    "/programs/{program_id}/members/{member:path}/transfers",
    status_code=201,
    tags=["points"],
    responses=bodies.documented(201, bodies.TransferOut, "The transfer."),
)
def transfer_points(
    program_id: ProgramId,
    member: MemberRefParam,
    body: TransferPoints,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Give points to another member of the program, where the program allows it (limits
    per transfer and per month), as one balanced ledger entry. `Idempotency-Key` is
    required. `422 transfer_refused` says why not."""
    return respond(
        transfers.transfer(
            engine,
            principal,
            program_id,
            member,
            receiver_ref=body.to,
            points=body.points,
            reason=body.reason,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
        )
    )


@router.get(
    "/programs/{program_id}/members/{member:path}/rewards",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.MemberRewards, "The catalog, for this member."),
)
def list_member_rewards(
    program_id: ProgramId, member: MemberRefParam, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """What this member can get now, and for what they can't yet, why: points short by N,
    tier too low, out of stock, limit reached, outside its dates."""
    return catalog.member_rewards(engine, principal, program_id, member, now=utc_now())


@router.post(
    "/programs/{program_id}/members/{member:path}/rewards/{reward_id}/redeem",
    status_code=201,
    tags=["rewards"],
    responses=bodies.documented(201, bodies.RewardIssue, "The reward, issued."),
)
def redeem_reward(
    program_id: ProgramId,
    member: MemberRefParam,
    reward_id: Annotated[str, Path(min_length=1, max_length=64)],
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Burn the reward's cost and issue it in one transaction; a coupon's code is in this
    answer only. `Idempotency-Key` is required. `422 reward_not_available` says why not."""
    return respond(
        catalog.redeem_reward(
            engine,
            principal,
            program_id,
            member,
            reward_id,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
        )
    )


IssueId = Annotated[str, Path(min_length=1, max_length=32)]


@router.get(
    "/programs/{program_id}/reward-issues/{issue_id}",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.RewardIssue, "The issued reward."),
)
def get_reward_issue(
    program_id: ProgramId, issue_id: IssueId, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """An issued reward: its status, and for experiences, its fulfilment."""
    return catalog.get_issue(engine, principal, program_id, issue_id)


@router.post(
    "/programs/{program_id}/reward-issues/{issue_id}/fulfilment",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.RewardIssue, "The issued reward."),
)
def set_reward_fulfilment(
    program_id: ProgramId, issue_id: IssueId, body: Fulfilment, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Record an experience reward's fulfilment: `pending`, `processing`, `shipped`,
    `fulfilled`."""
    return catalog.set_fulfilment(engine, principal, program_id, issue_id, status=body.status)


CouponCode = Annotated[str, Path(min_length=1, max_length=32)]


@router.post(
    "/programs/{program_id}/coupons/{code}/validate",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.CouponCheck, "Whether it applies, and how much."),
)
def validate_coupon(
    program_id: ProgramId, code: CouponCode, body: CouponCart, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Whether a code applies to a cart and what it takes off, without using it."""
    lines = [
        (li.sku, li.quantity * li.unit_price_minor - li.discount_minor, li.quantity)
        for li in body.lines
    ]
    total = body.total_minor if body.total_minor is not None else sum(b for _, b, _ in lines)
    return catalog.validate_coupon(
        engine,
        principal,
        program_id,
        code,
        currency=body.currency,
        lines=lines,
        total_minor=total,
        now=utc_now(),
    )


@router.post(
    "/programs/{program_id}/coupons/{code}/use",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.RewardIssue, "The coupon, used."),
)
def use_coupon(
    program_id: ProgramId,
    code: CouponCode,
    principal: Auth,
    engine: EngineDep,
    body: UseCoupon | None = None,
) -> JSONResponse:
    """Use a coupon, once (atomically): a second use is `409 coupon_not_usable`. A gift card
    is spent in part: send `amount_minor` and `order_reference` (its idempotency key); past
    what remains is `422 gift_card_balance_short`."""
    return respond(
        catalog.use_coupon(
            engine,
            principal,
            program_id,
            code,
            order_reference=body.order_reference if body else None,
            amount_minor=body.amount_minor if body else None,
            now=utc_now(),
        )
    )


@router.post(
    "/programs/{program_id}/coupons/{code}/cancel-use",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.RewardIssue, "The gift card, with the amount back."),
)
def cancel_gift_card_use(
    program_id: ProgramId,
    code: CouponCode,
    body: CancelGiftCardUse,
    principal: Auth,
    engine: EngineDep,
) -> JSONResponse:
    """Give back to a gift card what an order took of it (the order was returned)."""
    return respond(
        catalog.cancel_gift_card_use(
            engine,
            principal,
            program_id,
            code,
            order_reference=body.order_reference,
            now=utc_now(),
        )
    )


@router.post(
    "/programs/{program_id}/coupons/{code}/cancel",
    tags=["rewards"],
    responses=bodies.documented(200, bodies.RewardIssue, "The coupon, cancelled."),
)
def cancel_coupon(
    program_id: ProgramId, code: CouponCode, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Cancel an unused coupon: its points go back with their original expiry."""
    return catalog.cancel_coupon(engine, principal, program_id, code, now=utc_now())


@router.post(
    "/programs/{program_id}/members/{member:path}/holds",
    status_code=201,
    tags=["checkout"],
    responses=bodies.documented(201, bodies.HoldOut, "The hold."),
)
def reserve_points(
    program_id: ProgramId,
    member: MemberRefParam,
    body: ReservePoints,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Reserve points (or cashback, with `cashback_minor`) against an order at checkout: they
    leave the member's spendable balance at once (earliest expiry first) for `ttl_seconds`
    (default 900, at most 86,400), until captured or released. The program's checkout rules
    are checked against `order_total_minor` and what earlier holds of the same
    `order_reference` took (`422 payment_not_allowed` says which rule).
    `Idempotency-Key` is required."""
    cash = body.cashback_minor is not None
    amount = body.cashback_minor if cash else body.points
    assert amount is not None  # the body holds exactly one of them
    return respond(
        holds.reserve(
            engine,
            principal,
            program_id,
            member,
            points=amount,
            order_reference=body.order_reference,
            ttl_seconds=body.ttl_seconds,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
            asset=CASH if cash else POINTS,
            order_total_minor=body.order_total_minor,
        )
    )


@router.get(
    "/programs/{program_id}/holds/{hold_id}",
    tags=["checkout"],
    responses=bodies.documented(200, bodies.HoldOut, "The hold."),
)
def get_hold(
    program_id: ProgramId, hold_id: HoldId, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """A hold and its status: `held`, `captured`, `released` or `expired`."""
    return holds.get_hold(engine, principal, program_id, hold_id)


@router.post(
    "/programs/{program_id}/holds/{hold_id}/capture",
    tags=["checkout"],
    responses=bodies.documented(200, bodies.HoldOut, "The captured hold."),
)
def capture_hold(
    program_id: ProgramId,
    hold_id: HoldId,
    principal: Auth,
    engine: EngineDep,
    body: CapturePoints | None = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """The order completed: capture `points` of the hold (`cashback_minor` for a cashback
    hold; default all); the rest goes back to the lots it came from. After the hold's
    time-to-live: `409 hold_expired`. `Idempotency-Key` is required."""
    cash = body is not None and body.cashback_minor is not None
    named = body is not None and body.points is not None
    return respond(
        holds.capture(
            engine,
            principal,
            program_id,
            hold_id,
            points=(body.cashback_minor if cash else body.points) if body else None,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
            asset=CASH if cash else (POINTS if named else None),
        )
    )


@router.post(
    "/programs/{program_id}/holds/{hold_id}/release",
    tags=["checkout"],
    responses=bodies.documented(200, bodies.HoldOut, "The released hold."),
)
def release_hold(
    program_id: ProgramId, hold_id: HoldId, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """The order was abandoned: every held point goes back to the lot it came from, with its
    expiry. Releasing again answers the same."""
    return holds.release(engine, principal, program_id, hold_id, now=utc_now())


@router.post(
    "/programs/{program_id}/members/{member:path}/memberships",
    status_code=201,
    tags=["memberships"],
    responses=bodies.documented(201, bodies.MembershipOut, "The membership."),
)
def join_plan(
    program_id: ProgramId,
    member: MemberRefParam,
    body: JoinPlan,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Start a paid membership: a trial when the plan has one and the member never had it,
    else a first paid period (`payment_reference`: your payment system's record of the
    fee). `Idempotency-Key` is required."""
    return respond(
        memberships.join(
            engine,
            principal,
            program_id,
            member,
            plan_id=body.plan,
            payment_reference=body.payment_reference,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
        )
    )


@router.get(
    "/programs/{program_id}/members/{member:path}/memberships",
    tags=["memberships"],
    responses=bodies.documented(200, bodies.MembershipList, "The member's memberships."),
)
def list_memberships(
    program_id: ProgramId, member: MemberRefParam, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Every membership of the member, with its status now."""
    return memberships.list_memberships(engine, principal, program_id, member, now=utc_now())


@router.post(
    "/programs/{program_id}/memberships/{membership_id}/payments",
    tags=["memberships"],
    responses=bodies.documented(200, bodies.MembershipOut, "The membership, renewed."),
)
def pay_membership(
    program_id: ProgramId,
    membership_id: Annotated[str, Path(min_length=1, max_length=32)],
    body: MembershipPayment,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Record a renewal fee your payment system collected: the next period starts where the
    paid one ends (or now, after a lapse or a trial). The amount must be the plan's fee.
    `Idempotency-Key` is required."""
    return respond(
        memberships.record_payment(
            engine,
            principal,
            program_id,
            membership_id,
            amount_minor=body.amount_minor,
            reference=body.reference,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
        )
    )


@router.post(
    "/programs/{program_id}/memberships/{membership_id}/cancel",
    tags=["memberships"],
    responses=bodies.documented(200, bodies.MembershipOut, "The membership."),
)
def cancel_membership(
    program_id: ProgramId,
    membership_id: Annotated[str, Path(min_length=1, max_length=32)],
    principal: Auth,
    engine: EngineDep,
) -> dict[str, Any]:
    """Cancel at the end of the current period; benefits last until then."""
    return memberships.cancel(engine, principal, program_id, membership_id, now=utc_now())


@router.get(
    "/programs/{program_id}/members/{member:path}/stamp-cards",
    tags=["stamp cards"],
    responses=bodies.documented(200, bodies.StampCardsOut, "The member's cards and visits."),
)
def get_stamp_cards(
    program_id: ProgramId, member: MemberRefParam, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    """Each stamp card of the program: stamps on the current card, how many are needed, cards
    completed and rewards issued; and the member's visits (distinct days with a purchase,
    and purchases)."""
    return stamps.member_stamp_cards(engine, principal, program_id, member)


@router.put(
    "/programs/{program_id}/members/{member:path}/tier",
    tags=["tiers"],
    responses=bodies.documented(200, bodies.MemberTierOut, "The member's tier after it."),
)
def assign_member_tier(
    program_id: ProgramId,
    member: MemberRefParam,
    body: AssignTier,
    principal: Auth,
    engine: EngineDep,
) -> dict[str, Any]:
    """Put a member in a tier by hand (admin), with a reason and an optional end date; the
    change is recorded with the acting key."""
    return tiers.assign_tier(
        engine,
        principal,
        program_id,
        member,
        tier_id=body.tier,
        reason=body.reason,
        until=body.until,
        now=utc_now(),
    )


@router.post(
    "/programs/{program_id}/tiers/recalculate",
    tags=["tiers"],
    responses=bodies.documented(200, bodies.RecalculationOut, "The moves, made or not."),
)
def recalculate_tiers(
    program_id: ProgramId, principal: Auth, engine: EngineDep, body: RecalculateTiers
) -> dict[str, Any]:
    """After changing thresholds: which members the current thresholds would move, by from
    and to tier (`apply: false`, a `read` key), or make those moves (`apply: true`, an
    `admin` key), in one tier set (`tier_set`, default the main one). Members assigned by hand
    keep their tier until their assignment ends."""
    return tiers.recalculate_tiers(
        engine, principal, program_id, now=utc_now(), apply=body.apply, set_id=body.tier_set
    )


@router.post(
    "/programs/{program_id}/members/{member:path}/adjustments",
    status_code=201,
    tags=["points"],
    responses=bodies.documented(201, bodies.AdjustmentOut, "The adjustment."),
)
def adjust(
    program_id: ProgramId,
    member: MemberRefParam,
    body: AdjustPoints,
    principal: Auth,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """A manual credit (positive) or debit (negative) with a mandatory reason; the acting key
    is recorded. `Idempotency-Key` is required."""
    return respond(
        redemptions.adjust_points(
            engine,
            principal,
            program_id,
            member,
            points=body.points,
            reason=body.reason,
            reference=body.reference,
            expires_at=body.expires_at,
            idempotency_key=require_key(idempotency_key),
            now=utc_now(),
        )
    )


# --- API keys ---------------------------------------------------------------------------


@router.post(
    "/api-keys",
    status_code=201,
    tags=["api keys"],
    responses=bodies.documented(201, bodies.ApiKeyCreated, "The key; `token` is shown only here."),
)
def create_api_key(
    body: CreateApiKey, principal: Auth, engine: EngineDep, response: Response
) -> dict[str, Any]:
    """Create a key for this tenant. The `token` is shown once; only its hash is stored."""
    principal.require(Scope.ADMIN)
    if principal.program_id is not None:
        raise access.Forbidden("A key limited to one program cannot create keys.")
    if body.program_id is not None:
        programs.get_program(engine, principal, body.program_id)
    issued = access.create_key_for_tenant(
        engine,
        tenant_id=principal.tenant_id,
        name=body.name,
        scopes=body.scopes,
        program_id=body.program_id,
        now=utc_now(),
    )
    response.headers["Cache-Control"] = "no-store"
    return {
        "id": issued.key_id,
        "token": issued.token,
        "scopes": issued.scopes,
        "program_id": issued.program_id,
    }


@router.get(
    "/api-keys",
    tags=["api keys"],
    responses=bodies.documented(200, bodies.ApiKeyList, "Keys, without secrets."),
)
def list_api_keys(principal: Auth, engine: EngineDep) -> dict[str, Any]:
    return {"items": access.list_api_keys(engine, principal)}


@router.delete("/api-keys/{key_id}", status_code=204, tags=["api keys"])
def revoke_api_key(
    key_id: Annotated[str, Path(max_length=32)], principal: Auth, engine: EngineDep
) -> Response:
    access.revoke_api_key(engine, principal, key_id, now=utc_now())
    return Response(status_code=204)


# Registered last: ``{member:path}`` admits external ids containing "/", so the routes with a
# suffix (/balance, /ledger, ...) must be tried before these.
@router.get(
    "/programs/{program_id}/members/{member:path}",
    tags=["members"],
    responses=bodies.documented(200, bodies.MemberOut, "The member."),
)
def get_member(
    program_id: ProgramId, member: MemberRefParam, principal: Auth, engine: EngineDep
) -> dict[str, Any]:
    return members.get_member(engine, principal, program_id, member)


@router.patch(
    "/programs/{program_id}/members/{member:path}",
    tags=["members"],
    responses=bodies.documented(200, bodies.MemberOut, "The updated member."),
)
def update_member(
    program_id: ProgramId,
    member: MemberRefParam,
    body: UpdateMember,
    principal: Auth,
    engine: EngineDep,
) -> dict[str, Any]:
    """Change profile fields; `attributes` merges key by key (null removes a key)."""
    return members.update_member(
        engine,
        principal,
        program_id,
        member,
        changes=body.model_dump(exclude_unset=True),
        now=utc_now(),
    )
