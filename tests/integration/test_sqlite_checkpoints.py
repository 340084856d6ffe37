"""On SQLite, the server copies the WAL into the database from a thread of its own, so a
commit need not: the commits themselves leave the WAL alone up to a far higher bound. The
thread also makes SQLite write the WAL from its start again once it is long, which steady
writes alone never let happen."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, create_engine, text

from loyalty.adapters.db.engine import (
    _OPEN_FILES,
    _flush_files,
    background_checkpoints,
    make_engine,
    run_transaction,
)
from loyalty.entrypoints.api.app import create_app

ROWS = 8_000  # 8 MB: past SQLite's default threshold of 1,000 pages (4 MB)


def _write(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE filler (n INTEGER PRIMARY KEY, data BLOB)"))
    for start in range(0, ROWS, 1_000):
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO filler (n, data) VALUES (:n, randomblob(1000))"),
                [{"n": n} for n in range(start, start + 1_000)],
            )


def _grows_past(path: Path, size: int, *, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.stat().st_size > size:
            return True
        time.sleep(0.01)
    return False


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoints"]


def test_commits_leave_the_wal_and_the_background_thread_copies_it(tmp_path):
    path = tmp_path / "wal.db"
    engine = make_engine(f"sqlite:///{path}")
    _write(engine)
    assert path.stat().st_size < 1_000_000, "a commit checkpointed the WAL"
    with background_checkpoints(engine, interval_s=0.01):
        assert _grows_past(path, 7_000_000, within_s=10)
    assert _checkpointers() == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM filler")).scalar_one() == ROWS
    engine.dispose()


def test_the_server_checkpoints_while_it_runs(tmp_path):
    path = tmp_path / "server.db"
    engine = make_engine(f"sqlite:///{path}")
    _write(engine)
    before = path.stat().st_size
    with TestClient(create_app(engine)) as client:
        assert client.get("/healthz").status_code == 200
        assert len(_checkpointers()) == 1
        assert _grows_past(path, before + 7_000_000, within_s=10)
    assert _checkpointers() == []
    engine.dispose()


def _wal_frames_and_restarts(path: Path) -> tuple[int, int]:
    """The frames the WAL file has room for (it is reused from its start, not shrunk), and how
    many times it was restarted (the checkpoint sequence number in its header)."""
    wal = path.with_name(path.name + "-wal")
    header = wal.read_bytes()[:32]
    page_size, restarts = struct.unpack(">II", header[8:16])
    return (wal.stat().st_size - 32) // (24 + page_size), restarts


def test_under_steady_writes_the_thread_restarts_the_wal_past_its_bound(tmp_path):
    path = tmp_path / "restart.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE filler (n INTEGER PRIMARY KEY, data BLOB)"))

    def insert(start: int) -> None:
        def work(conn: Connection) -> None:
            conn.execute(
                text("INSERT INTO filler (n, data) VALUES (:n, randomblob(1000))"),
                [{"n": n} for n in range(start, start + 4)],
            )

        run_transaction(engine, work)

    transactions = 3_000  # 3 frames each: about 9,000 if the WAL never restarts
    with background_checkpoints(engine, interval_s=0.005, restart_pages=100):
        for number in range(transactions):
            insert(4 * number)
    frames, restarts = _wal_frames_and_restarts(path)
    assert restarts >= 5  # without the restarts: 0, the file 9,125 frames long
    assert frames < 4_500, f"the WAL grew to {frames} frames"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM filler")).scalar_one() == 4 * transactions
    engine.dispose()


def test_writers_in_threads_lose_nothing_while_the_wal_restarts_under_them(tmp_path):
    """The thread takes the writers' turn for each restart: writers on four threads queue
    behind it and go on, none waits forever, every row commits once, and the file is sound."""
    path = tmp_path / "threads.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE filler (n INTEGER PRIMARY KEY, data BLOB)"))
    per_thread, threads = 400, 4
    failures: list[BaseException] = []

    def write(offset: int) -> None:
        try:
            for number in range(per_thread):
                n = offset + 2 * number

                def work(conn: Connection, n: int = n) -> None:
                    conn.execute(
                        text("INSERT INTO filler (n, data) VALUES (:n, randomblob(1000))"),
                        [{"n": n}, {"n": n + 1}],
                    )

                run_transaction(engine, work)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    with background_checkpoints(engine, interval_s=0.002, restart_pages=50):
        workers = [
            threading.Thread(target=write, args=(index * 2 * per_thread,))
            for index in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not any(worker.is_alive() for worker in workers), "a writer never finished"
    assert failures == []
    _frames, restarts = _wal_frames_and_restarts(path)
    assert restarts >= 5
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM filler")).scalar_one()
        assert count == threads * per_thread * 2
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    engine.dispose()


def test_no_thread_where_there_is_no_file_of_its_own_to_copy(tmp_path, monkeypatch):
    """In memory, or named by a SQLite URI (whose parameters a plain connection would not
    read: it would open a file literally named ``file:...``), the block runs alone."""
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:", f"sqlite:///file:{tmp_path}/u.db?uri=true"):
        engine = create_engine(url)
        with background_checkpoints(engine, interval_s=0.01):
            assert _checkpointers() == []
            time.sleep(0.05)
        engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _another_process_can_write(path: Path) -> bool:
    """Whether another process can take the write lock on ``path`` at once."""
    script = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
        "try:\n"
        "    conn.execute('BEGIN EXCLUSIVE')\n"
        "except sqlite3.OperationalError:\n"
        "    sys.exit(1)\n"
        "conn.execute('ROLLBACK')\n"
    )
    return subprocess.run([sys.executable, "-c", script, str(path)], check=False).returncode == 0


@pytest.mark.skipif(_OPEN_FILES is None, reason="this system does not list open descriptors")
def test_before_a_restart_the_thread_syncs_the_files_through_sqlites_own_descriptors(tmp_path):
    path = tmp_path / "sync.db"
    engine = make_engine(f"sqlite:///{path}")
    wal = f"{path}-wal"
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
    with engine.connect() as conn:  # holds the database and its WAL open
        conn.execute(text("SELECT count(*) FROM t")).scalar_one()
        assert _flush_files(str(path), wal) == 2
    engine.dispose()  # nothing of the process has them open any more
    (tmp_path / "other").write_bytes(b"x")
    assert _flush_files(str(path), wal, str(tmp_path / "other"), str(tmp_path / "none")) == 0


@pytest.mark.skipif(_OPEN_FILES is None, reason="this system does not list open descriptors")
def test_syncing_the_database_keeps_the_locks_sqlite_holds_on_it(tmp_path):
    """Closing any descriptor of a file drops every POSIX lock the process holds on it, so a
    descriptor of our own would let another process write under a reader of this one; the
    sync goes through SQLite's own and keeps them."""
    path = tmp_path / "locks.db"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("CREATE TABLE t (n INTEGER)")  # a rollback journal: locks on the file itself
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # a shared lock until the end
    assert not _another_process_can_write(path)
    assert _flush_files(str(path)) == 1
    assert not _another_process_can_write(path)
    os.close(os.open(path, os.O_RDONLY))  # what a descriptor of our own would have done
    assert _another_process_can_write(path)
    reader.close()
