"""Group commit: concurrent single purchases of one program recorded in one transaction, each
answered exactly as it would have been alone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from loyalty.adapters.db.engine import connect, nowait_engine
from loyalty.adapters.db.tables import events
from loyalty.application import event_groups
from loyalty.application.access import authenticate
from loyalty.application.audit import audit_ledger
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.event_groups import EventGroups, record_group
from loyalty.bootstrap import Settings
from loyalty.entrypoints.api.app import create_app

AT = datetime(2026, 5, 4, 12, tzinfo=UTC).isoformat()
# Long enough that every request of a test has joined the leader's group before it records,
# each STAGGER_S after the one before (so they join in the order they are listed).
WAIT_MS = 1_000
STAGGER_S = 0.05


def _purchase(order_id: str, euros: int, member: str = "C1", **fields: Any) -> dict[str, Any]:
    lines = [
        {"sku": "A", "quantity": 2, "unit_price_minor": euros * 25},
        {"sku": "B", "quantity": 1, "unit_price_minor": euros * 50},
    ]
    return {
        "type": "purchase",
        "id": order_id,
        "member": {"external_id": member},
        "occurred_at": AT,
        "currency": "EUR",
        "total_minor": euros * 100,
        "lines": lines,
        **fields,
    }


@pytest.fixture(params=["on the loop", "in a thread"])
def on_loop(request: pytest.FixtureRequest) -> bool:
    """Where the groups of ``_grouping_client`` are recorded: on the event loop's thread (as
    the server records them where nothing makes them wait) or in a worker thread."""
    return bool(request.param == "on the loop")


@contextmanager
def _grouping_client(api: Any, on_loop: bool, record: Any = record_group) -> Iterator[TestClient]:
    app = create_app(api.engine)
    app.state.event_groups = EventGroups(
        api.engine,
        size_max=64,
        wait_ms=WAIT_MS,
        record=record,
        on_loop=nowait_engine(api.engine) if on_loop else None,
    )
    with TestClient(app) as client:
        yield client


def _post_together(client: TestClient, token: str, url: str, bodies: list[dict[str, Any]]):
    """Post every body, one thread each, each a moment after the one before, all within the
    first request's group; the responses in the bodies' order."""
    assert STAGGER_S * len(bodies) < WAIT_MS / 1000 / 2
    # The key verified once first, so no request waits on that and overtakes another.
    assert client.get("/v1/programs", headers={"Authorization": f"Bearer {token}"}).is_success
    responses: list[Any] = [None] * len(bodies)

    def post(i: int) -> None:
        time.sleep(i * STAGGER_S)
        responses[i] = client.post(
            url, json=bodies[i], headers={"Authorization": f"Bearer {token}"}
        )

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


def _comparable(value: Any) -> Any:
    """A response body without what differs between two recordings of the same events: the
    engine's ids and the moment of recording."""
    if isinstance(value, dict):
        return {
            k: _comparable(v)
            for k, v in value.items()
            if not (k == "id" or k.endswith("_id") or k in {"received_at", "as_of", "instance"})
        }
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _answers(responses: list[Any]) -> list[tuple[int, str | None, Any]]:
    return [
        (r.status_code, r.headers.get("Idempotent-Replayed"), _comparable(r.json()))
        for r in responses
    ]


def _received_at(api: Any, program: str) -> set[Any]:
    with api.engine.connect() as conn:
        rows = conn.execute(select(events.c.received_at).where(events.c.program_id == program))
        return {row.received_at for row in rows}


def _events_of(api: Any, program: str) -> int:
    with api.engine.connect() as conn:
        rows = conn.execute(select(events.c.id).where(events.c.program_id == program))
        return len(rows.all())


def _mix() -> list[dict[str, Any]]:
    """Purchases for new and repeat customers, one of them twice, and refused ones."""
    return [
        _purchase("O1", 10, "C1"),
        _purchase("O2", 20, "C2"),
        _purchase("O3", 30, "C1"),
        _purchase("O4", 40, "C3", currency="USD"),  # another currency: refused alone
        _purchase("O5", 50, "C2"),
        {**_purchase("O6", 60), "member": {"id": "mbr_nobody"}},  # no such member
        _purchase("O7", 70, "C4"),
    ]


def test_concurrent_purchases_are_answered_as_they_would_be_one_by_one(api, on_loop):
    tiers = {
        "metric": "spend",
        "window": {"type": "calendar_year"},
        "levels": [
            {"id": "bronze", "name": "Bronze", "threshold": 0},
            {
                "id": "silver",
                "name": "Silver",
                "threshold": 3_500,
                "benefits": {"earn_multiplier_percent": 150},
            },
        ],
    }
    alone = api.create_program(enrollment={"auto_enroll_on_purchase": True}, tiers=tiers)
    grouped = api.create_program(enrollment={"auto_enroll_on_purchase": True}, tiers=tiers)
    bodies = _mix()
    # One by one: each purchase in its own transaction.
    one_by_one = [api.request("POST", f"/v1/programs/{alone}/events", json=body) for body in bodies]
    with _grouping_client(api, on_loop) as client:
        together = _post_together(client, api.token, f"/v1/programs/{grouped}/events", bodies)
    assert [r.status_code for r in together] == [201, 201, 201, 422, 201, 404, 201]
    # Every accepted purchase was recorded in one transaction, at one moment, and each
    # answer is the one-by-one answer (C2 reaches Silver at O5, as alone).
    assert _events_of(api, grouped) == 5
    assert len(_received_at(api, grouped)) == 1
    assert _answers(together) == _answers(one_by_one)
    assert together[4].json()["tier_change"] is not None
    for member in ("ext:C1", "ext:C2", "ext:C4"):
        assert _comparable(api.balance(grouped, member)) == _comparable(api.balance(alone, member))
    assert audit_ledger(api.engine) == []


def test_each_purchase_of_a_group_gets_the_body_it_gets_alone(api, on_loop):
    """Distinct members, so the order within the group can't change any answer: every body
    (balance included) is the one-by-one body."""
    alone = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    grouped = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    api.enroll(alone, "K1")
    api.enroll(grouped, "K1")
    bodies = [_purchase(f"O{n}", 10 * n, f"K{n}") for n in range(1, 7)]
    bodies.append(_purchase("O7", 70, "K7", currency="USD"))
    one_by_one = [api.request("POST", f"/v1/programs/{alone}/events", json=body) for body in bodies]
    with _grouping_client(api, on_loop) as client:
        url = f"/v1/programs/{grouped}/events"
        together = _post_together(client, api.token, url, bodies)
        assert len(_received_at(api, grouped)) == 1
        # Sent again, all at once: each replays its own first answer, nothing moves.
        again = _post_together(client, api.token, url, bodies)
    assert _answers(together) == _answers(one_by_one)
    assert [r.status_code for r in again] == [201] * 6 + [422]
    assert [r.headers.get("Idempotent-Replayed") for r in again[:6]] == ["true"] * 6
    assert [r.json() for r in again[:6]] == [r.json() for r in together[:6]]
    assert _events_of(api, grouped) == 6
    assert audit_ledger(api.engine) == []


def test_the_same_event_twice_in_a_group_is_recorded_once_and_a_changed_one_conflicts(api, on_loop):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    bodies = [_purchase("O1", 10), _purchase("O1", 10), _purchase("O1", 99), _purchase("O2", 5)]
    with _grouping_client(api, on_loop) as client:
        answers = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    statuses = sorted(r.status_code for r in answers[:3])
    assert statuses == [201, 201, 409]
    recorded = [r.json() for r in answers[:2] if r.status_code == 201]
    assert recorded[0] == recorded[1]
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in answers[:2]) in (
        ["", "true"],
        ["true", "true"],
    )
    assert answers[3].status_code == 201
    assert api.balance(program, "ext:C1")["balance"] == 15
    assert audit_ledger(api.engine) == []


def test_a_group_the_database_fails_answers_each_request_503_and_writes_nothing(
    api, tmp_path, on_loop
):
    """The group's transaction meets a real database failure (a database that isn't there):
    nothing is written, each request gets the 503 with Retry-After it would get alone, and
    the clients' retries with the same ids are recorded as if nothing had happened."""
    unreachable = create_engine(f"sqlite:///{tmp_path}/missing-dir/none.db")

    def failing(engine: Any, *args: Any, **kwargs: Any) -> Any:
        return record_group(unreachable, *args, **kwargs)

    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    bodies = [_purchase(f"O{n}", 10 * n, f"K{n}") for n in range(1, 5)]
    bodies.append(_purchase("O5", 50, "K5", currency="USD"))
    with _grouping_client(api, on_loop, record=failing) as client:
        answers = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    assert [r.status_code for r in answers] == [503] * 5
    assert {r.json()["code"] for r in answers} == {"storage_unavailable"}
    assert all(r.headers["Retry-After"] == "1" for r in answers)
    assert _events_of(api, program) == 0
    unreachable.dispose()
    with _grouping_client(api, on_loop) as client:
        retried = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    assert [r.status_code for r in retried] == [201, 201, 201, 201, 422]
    assert [r.json()["points_earned"] for r in retried[:4]] == [10, 20, 30, 40]
    assert retried[4].json()["code"] == "currency_mismatch"
    assert _events_of(api, program) == 4
    assert audit_ledger(api.engine) == []


def test_a_group_that_fails_for_another_reason_is_recorded_one_by_one(api, on_loop):
    """A group that fails with anything but a database failure (here, a recorder that
    raises): each request is recorded alone, on the real database, and answered as usual."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the group path")

    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    bodies = [_purchase(f"O{n}", 10 * n, f"K{n}") for n in range(1, 5)]
    bodies.append(_purchase("O5", 50, "K5", currency="USD"))
    with _grouping_client(api, on_loop, record=broken) as client:
        answers = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    assert [r.status_code for r in answers] == [201, 201, 201, 201, 422]
    assert [r.json()["points_earned"] for r in answers[:4]] == [10, 20, 30, 40]
    assert answers[4].json()["code"] == "currency_mismatch"
    # Recorded alone: each at its own moment.
    assert _events_of(api, program) == 4
    assert len(_received_at(api, program)) == 4
    assert audit_ledger(api.engine) == []


def test_returns_and_actions_are_recorded_alone_beside_a_group(api, on_loop):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    first = api.request("POST", f"/v1/programs/{program}/events", json=_purchase("O1", 10))
    assert first.status_code == 201
    returned = {
        "type": "return",
        "id": "R1",
        "order_id": "O1",
        "occurred_at": AT,
        "lines": [{"line_id": "1", "quantity": 2}],
    }
    action = {
        "type": "action",
        "id": "A1",
        "action": "review",
        "member": {"external_id": "C1"},
        "occurred_at": AT,
    }
    bodies = [returned, _purchase("O2", 20, "C2"), action, _purchase("O3", 30, "C3")]
    with _grouping_client(api, on_loop) as client:
        answers = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    assert [r.status_code for r in answers] == [201, 201, 201, 201]
    assert answers[0].json()["points_reversed"] == 5
    assert api.balance(program, "ext:C1")["balance"] == 5
    # The two purchases went together; the return and the action each alone.
    assert len(_received_at(api, program)) == 4
    assert answers[1].json()["points_earned"] + answers[3].json()["points_earned"] == 50
    assert audit_ledger(api.engine) == []


def test_a_program_whose_purchases_need_more_is_recorded_one_by_one(api, on_loop):
    """A campaign budget is per-program state the bulk path doesn't carry: such a program's
    purchases are each recorded alone, and the budget is spent exactly as one by one."""
    program = api.create_program(
        points={"earn": {"points": 0}},
        rules=[
            {
                "id": "launch",
                "name": "Launch bonus",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 30},
                "limits": {"budget": {"points": 50}},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    bodies = [_purchase(f"O{n}", 10, f"C{n}") for n in range(3)]
    with _grouping_client(api, on_loop) as client:
        answers = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    # Released together to be recorded alone, they race: which one gets the rest is open.
    assert sorted(r.json()["points_earned"] for r in answers) == [0, 20, 30]
    assert len(_received_at(api, program)) == 3
    assert audit_ledger(api.engine) == []


def test_with_group_commit_off_every_purchase_is_recorded_alone(api):
    app = create_app(api.engine, Settings("sqlite://", 1, group_commit=False))
    assert app.state.event_groups is None
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    bodies = [_purchase(f"O{n}", 10 * n, f"K{n}") for n in range(1, 5)]
    with TestClient(app) as client:
        answers = _post_together(client, api.token, f"/v1/programs/{program}/events", bodies)
    assert [r.status_code for r in answers] == [201] * 4
    assert len(_received_at(api, program)) == 4


def test_purchases_already_on_their_way_join_the_group_about_to_be_recorded(api):
    """The leader lets the event loop turn before it takes a group, so requests that arrive a
    few turns after the first (as a group's clients send their next purchases together) are
    recorded with it, not left to wait behind a group of one."""
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    principal = authenticate(api.engine, api.token)
    sizes: list[int] = []

    def record(engine: Any, principal: Any, program_id: str, group: Any, **options: Any) -> Any:
        sizes.append(len(group))
        return record_group(engine, principal, program_id, group, **options)

    groups = EventGroups(api.engine, size_max=64, wait_ms=0, record=record)
    purchases = [PurchaseEvent.model_validate(_purchase(f"O{i}", 10 + i)) for i in range(4)]

    async def arrive(turns: int, purchase: PurchaseEvent) -> Any:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await groups.submit(principal, program, purchase, now=datetime.now(UTC))

    async def together() -> list[Any]:
        return await asyncio.gather(*(arrive(i, p) for i, p in enumerate(purchases)))

    outcomes = asyncio.run(together())
    assert sizes == [4]
    assert [o.status_code for o in outcomes] == [201] * 4


def test_a_group_that_would_wait_on_the_loop_is_recorded_in_a_thread_while_the_loop_turns(api):
    """On the event loop's thread a group never waits: when another transaction holds what it
    needs (on SQLite this process's write turn, on PostgreSQL a lock on the events table; a
    held wallet is skipped instead, see ``test_held_locks_postgres``), it gives way with
    nothing written and is recorded in a worker thread, which waits; the loop goes on
    turning meanwhile."""
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    first = api.request("POST", f"/v1/programs/{program}/events", json=_purchase("O0", 10))
    assert first.status_code == 201
    principal = authenticate(api.engine, api.token)
    calls: list[tuple[bool, bool]] = []

    def record(engine: Any, principal: Any, program_id: str, group: Any, **options: Any) -> Any:
        on_main = threading.current_thread() is threading.main_thread()
        calls.append((options.get("nowait", False), on_main))
        return record_group(engine, principal, program_id, group, **options)

    on_loop = nowait_engine(api.engine)
    groups = EventGroups(api.engine, size_max=64, wait_ms=0, record=record, on_loop=on_loop)
    purchases = [PurchaseEvent.model_validate(_purchase(f"O{n}", 10 * n)) for n in range(1, 4)]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        if api.engine.dialect.name == "sqlite":
            with connect(api.engine, write=True):
                held.set()
                release.wait(10)
        else:
            with api.engine.begin() as conn:
                conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))  # reads go on
                held.set()
                release.wait(10)

    async def scenario() -> tuple[int, list[Any]]:
        holder = threading.Thread(target=hold)
        holder.start()
        await asyncio.get_running_loop().run_in_executor(None, held.wait)
        turns = 0

        async def tick() -> None:
            nonlocal turns
            while not release.is_set():
                turns += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        submitted = asyncio.gather(
            *(groups.submit(principal, program, p, now=datetime.now(UTC)) for p in purchases)
        )
        await asyncio.sleep(0.3)
        turns_while_held = turns
        release.set()
        outcomes = await submitted
        await ticker
        holder.join()
        return turns_while_held, outcomes

    turns_while_held, outcomes = asyncio.run(scenario())
    if on_loop is not api.engine:
        on_loop.dispose()
    # Tried on the loop's thread without waiting, then recorded in a worker thread.
    assert calls == [(True, True), (False, False)]
    assert turns_while_held >= 20  # 60 turns of 5 ms in 0.3 s; a blocked loop makes none
    assert [o.status_code for o in outcomes] == [201] * 3
    assert [o.body["points_earned"] for o in outcomes] == [10, 20, 30]
    assert api.balance(program, "ext:C1")["balance"] == 70
    assert _events_of(api, program) == 4
    assert audit_ledger(api.engine) == []


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_server_writes_groups_on_its_event_loop_unless_turned_off(api, monkeypatch, setting):
    """By default a purchase's group is written on the loop's thread, without waiting; with
    ``LOYALTY_GROUP_COMMIT_ON_LOOP=off`` in a worker thread, where a group of one is recorded
    alone."""
    calls: list[tuple[bool, bool]] = []

    def record(engine: Any, principal: Any, program_id: str, group: Any, **options: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_a_loop = True
        except RuntimeError:
            on_a_loop = False
        calls.append((options.get("nowait", False), on_a_loop))
        return record_group(engine, principal, program_id, group, **options)

    monkeypatch.setattr(event_groups, "record_group", record)
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT_ON_LOOP", setting)
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    with TestClient(create_app(api.engine)) as client:
        answer = client.post(
            f"/v1/programs/{program}/events",
            json=_purchase("O1", 10),
            headers={"Authorization": f"Bearer {api.token}"},
        )
    assert answer.status_code == 201
    assert answer.json()["points_earned"] == 10
    assert calls == ([(True, True)] if setting == "on" else [])
    assert _events_of(api, program) == 1
