"""Pooled PostgreSQL connections are not pinged on every checkout, only after sitting idle; a
connection whose session ended unpinged costs its transaction a second run on a new
connection, never an error, and a transaction is run again only if nothing of it was
committed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text

from loyalty.adapters.db import engine as engine_module
from loyalty.adapters.db.engine import StorageUnavailable, make_engine, run_transaction


@pytest.fixture
def pool(postgres_engine: Engine) -> Iterator[Engine]:
    """An engine of its own on the test database, with one pooled connection."""
    own = make_engine(postgres_engine.url.render_as_string(hide_password=False), pool_size=1)
    yield own
    own.dispose()


def _pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _backend_pid(engine: Engine) -> int:
    return run_transaction(engine, _pid)


def _end_session(admin: Engine, pid: int) -> None:
    """End the session and wait until its process is gone."""
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()
        deadline = time.monotonic() + 10
        while conn.execute(_ALIVE, {"pid": pid}).scalar_one():
            assert time.monotonic() < deadline, "the session did not end"
            conn.commit()
            time.sleep(0.01)


_ALIVE = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")


def test_a_connection_back_in_use_at_once_is_not_pinged(pool, monkeypatch):
    pings: list[object] = []
    monkeypatch.setattr(pool.dialect, "do_ping", lambda dbapi_conn: pings.append(dbapi_conn))
    first = _backend_pid(pool)
    assert _backend_pid(pool) == first  # the same pooled connection, handed out again
    assert pings == []
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 0.0)
    assert _backend_pid(pool) == first
    assert len(pings) == 1  # idle "long enough": pinged before use


def test_a_connection_whose_session_ended_is_replaced_and_the_transaction_runs_again(
    pool, postgres_engine
):
    first = _backend_pid(pool)
    _end_session(postgres_engine, first)
    runs: list[int] = []

    def work(conn: Connection) -> int:
        runs.append(1)
        return _pid(conn)

    second = run_transaction(pool, work)
    assert second != first
    assert len(runs) == 2  # the first run met the ended session, the second a new one


def test_an_idle_connection_whose_session_ended_is_replaced_before_use(
    pool, postgres_engine, monkeypatch
):
    first = _backend_pid(pool)
    _end_session(postgres_engine, first)
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 0.0)
    runs: list[int] = []

    def work(conn: Connection) -> int:
        runs.append(1)
        return _pid(conn)

    assert run_transaction(pool, work) != first
    assert len(runs) == 1  # the ping found it dead, so the work ran once, on a new one


def test_a_transaction_whose_commit_fails_is_not_run_again(pool, postgres_engine):
    """The commit may have been applied: the caller gets the 503 and retries with its own
    idempotency key, rather than the engine running the work twice."""
    runs: list[int] = []

    def work(conn: Connection) -> None:
        runs.append(1)
        _end_session(postgres_engine, _pid(conn))  # after the work, before the commit

    with pytest.raises(StorageUnavailable):
        run_transaction(pool, work)
    assert len(runs) == 1
