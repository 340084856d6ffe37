"""Where a quote is answered: on a SQLite file, with groups of purchases written on the event
loop's thread (the default), on that thread too, through the loop's own connection and
without waiting; anywhere else, and whenever something would make it wait there, in a worker
thread. The answer is the same either way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from loyalty.adapters.db.engine import connect
from loyalty.entrypoints.api.app import create_app

CART = {"currency": "EUR", "lines": [{"unit_price_minor": 700}], "member": {"external_id": "M"}}
CAPPED_RULE = {
    "id": "bonus",
    "name": "Bonus, once a day",
    "trigger": "purchase",
    "effect": {"type": "fixed", "points": 50},
    "limits": {"per_member": [{"period": "day", "max_count": 1}]},
}


@contextmanager
def _statements(*engines: Engine) -> Iterator[list[tuple[Engine, bool]]]:
    """Each statement sent through ``engines`` meanwhile: the engine, and whether it was sent
    from a thread running an event loop."""
    seen: list[tuple[Engine, bool]] = []
    listeners = []
    for engine in engines:

        def before(*_: Any, engine: Engine = engine) -> None:
            try:
                asyncio.get_running_loop()
                on_a_loop = True
            except RuntimeError:
                on_a_loop = False
            seen.append((engine, on_a_loop))

        event.listen(engine, "before_cursor_execute", before)
        listeners.append((engine, before))
    try:
        yield seen
    finally:
        for engine, before in listeners:
            event.remove(engine, "before_cursor_execute", before)


def _client(api: Any, monkeypatch: pytest.MonkeyPatch, setting: str) -> TestClient:
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT_ON_LOOP", setting)
    return TestClient(create_app(api.engine))


@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_quote_is_answered_on_the_event_loop_on_sqlite_unless_turned_off(
    api, monkeypatch, setting
):
    program = api.create_program()
    api.enroll(program, "M")
    assert api.purchase(program, "P0", "M", [{"unit_price_minor": 1000}]).status_code == 201
    with _client(api, monkeypatch, setting) as client:
        on_loop = client.app.state.event_groups.reads_on_loop  # type: ignore[attr-defined]
        watched = [api.engine] if on_loop is None else [api.engine, on_loop]
        with _statements(*watched) as seen:
            answer = client.post(f"/v1/programs/{program}/quote", json=CART, headers=api.auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["points_earned"] == 7
    assert answer.json()["balance_after"]["balance"] == 17
    expected_on_loop = setting == "on" and api.engine.dialect.name == "sqlite"
    assert (on_loop is not None) == expected_on_loop
    assert seen, "the quote read nothing"
    if expected_on_loop:
        assert set(seen) == {(on_loop, True)}
    else:  # PostgreSQL's round trips would hold the loop
        assert set(seen) == {(api.engine, False)}
    assert api.balance(program, "ext:M")["balance"] == 10


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # only SQLite quotes on the loop
def test_a_quote_that_would_wait_on_the_loop_is_answered_from_a_thread_while_the_loop_turns(
    api, monkeypatch
):
    """A program with capped rules is quoted by recording the purchase and rolling it back,
    which on SQLite takes the process's write turn. While another transaction holds it, the
    quote gives way on the loop with nothing written and waits in a worker thread; the server
    answers other requests meanwhile."""
    program = api.create_program(rules=[CAPPED_RULE])
    api.enroll(program, "M")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with connect(api.engine, write=True):
            held.set()
            release.wait(10)

    with _client(api, monkeypatch, "on") as client:
        on_loop = client.app.state.event_groups.reads_on_loop  # type: ignore[attr-defined]
        assert on_loop is not None
        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(10)
        answers: list[Any] = []
        with _statements(api.engine, on_loop) as seen:
            quoting = threading.Thread(
                target=lambda: answers.append(
                    client.post(f"/v1/programs/{program}/quote", json=CART, headers=api.auth)
                )
            )
            quoting.start()
            time.sleep(0.3)
            # The loop is free: other requests are answered while the quote waits.
            health = [client.get("/healthz").status_code for _ in range(5)]
            waited = quoting.is_alive()
            release.set()
            quoting.join(30)
            holder.join(10)
    assert health == [200] * 5
    assert waited, "the quote did not wait for the write turn"
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["points_earned"] == 57
    # Tried on the loop (its first read names the program, then it gave way at the write's
    # BEGIN), then run in a worker thread on the engine's own connections.
    assert (on_loop, True) in seen
    assert (api.engine, False) in seen
    assert {on_a_loop for engine, on_a_loop in seen if engine is api.engine} == {False}
    assert api.balance(program, "ext:M")["balance"] == 0
