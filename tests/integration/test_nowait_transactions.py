"""Transactions run with ``nowait`` (how the server records a group on its event loop's
thread) never wait: whatever would make them wait raises ``WouldWait`` at once, with nothing
written, and the engine's other transactions wait as before."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from loyalty.adapters.db.engine import (
    NOWAIT_LOCK_TIMEOUT_MS,
    SQLITE_BUSY_TIMEOUT_MS,
    WouldWait,
    connect,
    make_engine,
    nowait_engine,
    run_transaction,
)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'nowait.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (n INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO probe VALUES (1, 0)"))
    yield engine
    engine.dispose()


@pytest.fixture
def pg_probe(postgres_engine: Engine) -> Iterator[Engine]:
    with postgres_engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS nowait_probe"))
        conn.execute(text("CREATE TABLE nowait_probe (n INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO nowait_probe VALUES (1, 0)"))
    yield postgres_engine
    with postgres_engine.begin() as conn:
        conn.execute(text("DROP TABLE nowait_probe"))


@contextmanager
def _held_by_another_thread(hold: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
    """While the block runs, another thread holds what ``hold()`` takes."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with hold():
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


@contextmanager
def _row_locked(engine: Engine) -> Iterator[None]:
    with engine.begin() as conn:
        conn.execute(text("SELECT v FROM nowait_probe WHERE n = 1 FOR UPDATE")).all()
        yield


def _bump(table: str, ran: list[int]):  # type: ignore[no-untyped-def]
    def work(conn: Connection) -> None:
        ran.append(1)
        conn.execute(text(f"UPDATE {table} SET v = v + 1 WHERE n = 1"))

    return work


def _value(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT v FROM {table} WHERE n = 1")).scalar_one())


def test_sqlite_another_process_writing_makes_it_give_way_at_once(sqlite_engine, tmp_path):
    other = sqlite3.connect(tmp_path / "nowait.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    ran: list[int] = []
    nowait = nowait_engine(sqlite_engine)
    started = time.monotonic()
    with pytest.raises(WouldWait, match="locked"):
        run_transaction(nowait, _bump("probe", ran), nowait=True)
    waited_s = time.monotonic() - started
    other.execute("ROLLBACK")
    other.close()
    assert ran == []  # it gave way at BEGIN, before any work
    assert waited_s < SQLITE_BUSY_TIMEOUT_MS / 1000 / 2  # not the busy timeout's wait
    # The connection it ran on waits again as usual for later transactions.
    with connect(nowait, write=True) as conn:
        timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    assert timeout == SQLITE_BUSY_TIMEOUT_MS
    run_transaction(nowait, _bump("probe", ran), nowait=True)
    assert _value(sqlite_engine, "probe") == 1
    nowait.dispose()


def test_sqlite_this_processs_write_turn_taken_makes_it_give_way(sqlite_engine):
    ran: list[int] = []
    with _held_by_another_thread(lambda: connect(sqlite_engine, write=True)):
        nowait = nowait_engine(sqlite_engine)
        with pytest.raises(WouldWait, match="another transaction of this process is writing"):
            run_transaction(nowait, _bump("probe", ran), nowait=True)
        nowait.dispose()
        assert ran == []
        # Without nowait, the same transaction waits for the turn and is written.
        waiting = threading.Thread(
            target=run_transaction, args=(sqlite_engine, _bump("probe", ran))
        )
        waiting.start()
        time.sleep(0.1)
        assert ran == []  # still waiting for the turn
    waiting.join(10)
    assert ran == [1]
    assert _value(sqlite_engine, "probe") == 1


def test_sqlite_nowait_has_connections_of_its_own_and_shares_the_write_turn(sqlite_engine):
    """Its own pool, so it never waits for a connection the engine's threads hold; the same
    write turn, so it and the engine's writers never meet in SQLite's busy handler."""
    nowait = nowait_engine(sqlite_engine)
    assert nowait is not sqlite_engine
    ran: list[int] = []
    # Taken by nowait: the engine's writer waits for it, then writes.
    waiting = threading.Thread(target=run_transaction, args=(sqlite_engine, _bump("probe", ran)))
    with connect(nowait, write=True, nowait=True) as conn:
        conn.execute(text("UPDATE probe SET v = v + 10 WHERE n = 1"))
        waiting.start()
        time.sleep(0.1)
        assert ran == []  # waiting for the turn, not failing
    waiting.join(10)
    assert ran == [1]
    assert _value(sqlite_engine, "probe") == 11
    nowait.dispose()


def test_an_in_memory_sqlite_runs_nowait_on_the_engine_itself():
    """A second pool on ``sqlite://`` would open another, empty database."""
    engine = create_engine("sqlite://")
    assert nowait_engine(engine) is engine
    engine.dispose()


@pytest.mark.postgresql
def test_postgresql_a_lock_held_makes_it_give_way_with_nothing_written(pg_probe):
    nowait = nowait_engine(pg_probe)
    ran: list[int] = []
    with _held_by_another_thread(lambda: _row_locked(pg_probe)):
        started = time.monotonic()
        with pytest.raises(WouldWait):
            run_transaction(nowait, _bump("nowait_probe", ran), nowait=True)
        waited_s = time.monotonic() - started
        assert ran == [1]  # it ran up to the lock, and gave way there
        assert waited_s < 1  # the lock timeout, not the holder's ten seconds
        assert waited_s >= NOWAIT_LOCK_TIMEOUT_MS / 1000
        # The engine's own transactions wait for the lock as before, and are written.
        waiting = threading.Thread(
            target=run_transaction, args=(pg_probe, _bump("nowait_probe", ran))
        )
        waiting.start()
        time.sleep(0.2)
        assert ran == [1, 1]
        assert _value(pg_probe, "nowait_probe") == 0  # the waiting one has not committed
    waiting.join(10)
    assert _value(pg_probe, "nowait_probe") == 1  # only the one that waited was written
    run_transaction(nowait, _bump("nowait_probe", ran), nowait=True)
    assert _value(pg_probe, "nowait_probe") == 2
    nowait.dispose()


@pytest.mark.postgresql
def test_postgresql_a_statement_past_its_time_makes_it_give_way(pg_probe):
    nowait = nowait_engine(pg_probe)

    def slow(conn: Connection) -> None:
        conn.execute(text("UPDATE nowait_probe SET v = v + 1 WHERE n = 1"))
        conn.execute(text("SELECT pg_sleep(2)"))

    with pytest.raises(WouldWait):
        run_transaction(nowait, slow, nowait=True)
    assert _value(pg_probe, "nowait_probe") == 0
    # The engine's own sessions have no such limit.
    run_transaction(pg_probe, lambda conn: conn.execute(text("SELECT pg_sleep(0.6)")).all())
    nowait.dispose()
