"""On SQLite, the server copies the WAL into the database from a thread of its own, so a
commit need not: the commits themselves leave the WAL alone up to a far higher bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from loyalty.adapters.db.engine import background_checkpoints, make_engine
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
