"""What every benchmark needs: a scratch database (SQLite file or PostgreSQL database, migrated
and dropped afterwards), a uvicorn server running the shipped application, percentiles, and
one line saying exactly what was measured on.

PostgreSQL comes from LOYALTY_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres,
where scratch databases are created and dropped).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Engine, event, text

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.application import programs
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.program_document import ProgramDocument
from loyalty.entrypoints.api.http_protocol import PROTOCOL as HTTP_PROTOCOL

PG_ADMIN_URL = os.environ.get(
    "LOYALTY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DATABASES = ("sqlite", "postgresql")


def pg_server_version() -> str:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return "unavailable"
    return str(row[0]).split()[0] if row else "?"


def setting_line() -> str:
    """Machine and versions, printed at the top of every benchmark."""
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("sqlalchemy", "psycopg", "fastapi", "uvicorn")
    )
    return (
        f"machine: {os.cpu_count()} cores {platform.machine()}, python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, PostgreSQL "
        f"{pg_server_version()}; {packages}"
    )


@contextmanager
def scratch_database(kind: str) -> Iterator[str]:
    """A migrated, empty database of ``kind`` (``sqlite`` or ``postgresql``); yields its URL
    and removes it afterwards."""
    tmp = tempfile.mkdtemp(prefix="loyalty-bench-")
    pg_db = None
    if kind == "sqlite":
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
    else:
        pg_db = f"loyalty_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_db}"')
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{pg_db}"
    try:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_db:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running server: its port, and the process whose CPU time (with its workers') is
    read from ``/proc``."""

    port: int
    pid: int

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server and its worker processes so far (NaN where
        there is no ``/proc``)."""
        try:
            return sum(_cpu_seconds(pid) for pid in _process_tree(self.pid))
        except OSError:
            return float("nan")


def _process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for child in children:
            found.extend(_process_tree(int(child)))
    return found


def _cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/<pid>/stat, after the command name in parentheses.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def uvicorn_server(url: str, *, workers: int = 1, source: str | None = None) -> Iterator[Server]:
    """``workers`` uvicorn worker processes (default one) serving the shipped application on
    ``url``; ``source``: another checkout's ``src`` directory, whose code the server runs."""
    port = _free_port()
    env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_POOL_SIZE": "20"}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    # The protocol ``loyalty serve`` runs, where the code served has it (an older checkout
    # compared against runs uvicorn's default).
    code = Path(source) if source is not None else Path(__file__).parents[1] / "src"
    protocol = (
        ["--http", HTTP_PROTOCOL]
        if (code / "loyalty" / "entrypoints" / "api" / "http_protocol.py").exists()
        else []
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "loyalty.entrypoints.api.asgi:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(workers),
            *protocol,
        ],
        env=env,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        yield Server(port, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


WRK_SCRIPT = Path(__file__).with_name("wrk_purchases.lua")


def run_wrk(
    url: str,
    token: str,
    *,
    clients: int,
    seconds: int,
    members: int = 1000,
    batch: int = 0,
    body: str | None = None,
) -> dict[str, float]:
    """Purchases sent by ``wrk`` (``bench/wrk_purchases.lua``) to ``url`` for ``seconds``
    with ``clients`` connections, each one request at a time, on up to two threads; ``batch``
    purchases per request to the batch route, or one to the events route (0); with ``body``,
    that body in every request, answered ``200`` (a quote). Returns what
    the script's ``RESULT`` line counts: ``requests``, ``seconds``, ``refused`` (any other
    status than the route's success), ``socket_errors``, ``p50_us``, ``p99_us``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    out = subprocess.run(
        [
            wrk,
            f"--threads={min(2, clients)}",
            f"--connections={clients}",
            f"--duration={seconds}s",
            "--timeout=120s",
            f"--script={WRK_SCRIPT}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "LOYALTY_TOKEN": token,
            "LOYALTY_RUN": uuid.uuid4().hex[:8],
            "LOYALTY_MEMBERS": str(members),
            "LOYALTY_BATCH": str(batch),
            **({"LOYALTY_BODY": body} if body is not None else {}),
        },
    ).stdout
    found = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return {k: float(v) for k, v in (kv.split("=") for kv in found.group(1).split())}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """``median (min-max)`` of repeated runs."""
    if len(values) == 1:
        return fmt.format(values[0])
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def bench_program(url: str, document: Mapping[str, Any]) -> tuple[str, str]:
    """An admin API key and a program made from ``document``; returns (token, program id)."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    issued = create_api_key(
        engine, tenant_name="bench", name="bench", scopes=[Scope.ADMIN], program_id=None, now=now
    )
    principal = authenticate(engine, issued.token)
    doc = ProgramDocument.model_validate(document)
    program_id = str(programs.create_program(engine, principal, doc, now=now).body["id"])
    engine.dispose()
    return issued.token, program_id


SEED_MEMBERS = (
    "members",
    """
    INSERT INTO members (id, program_id, external_id, attributes, enrolled_at, updated_at,
                         enrollment_source)
    SELECT 'mbr_' || lpad(m::text, 26, '0'), CAST(:program_id AS text), 'seed-' || m,
           '{}'::json, :enrolled_at, :enrolled_at, 'api'
    FROM generate_series(1, :members) AS m
    """,
)
"""Members ``mbr_00..01`` to ``mbr_..N`` (ids in the engine's shape, sorting in seed order), for
:func:`seed_set_based`; parameters ``program_id``, ``members`` and ``enrolled_at``."""


def seed_set_based(
    engine: Engine,
    steps: Sequence[tuple[str, str]],
    params: Mapping[str, Any],
    *,
    analyse: Sequence[str],
) -> None:
    """Run each ``(table, INSERT ... SELECT)`` step in its own transaction, then vacuum and
    analyse ``analyse`` as autovacuum would have done on a live database; prints each step's
    time."""
    started = time.perf_counter()
    for table, sql in steps:
        t = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(sql), params)
        print(f"  seed {table:16} {time.perf_counter() - t:7.1f} s", flush=True)
    t = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in analyse:
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    print(f"  vacuum analyze         {time.perf_counter() - t:7.1f} s", flush=True)
    print(f"  seed total             {time.perf_counter() - started:7.1f} s", flush=True)


class StatementTimes:
    """Wall time per SQL statement (by its first words), for every statement an engine sends
    through SQLAlchemy while active. Not counted: PostgreSQL's multi-row inserts of
    ``adapters/db/bulk.insert_rows``, which go to psycopg directly (their time shows in the
    statement that ends their pipeline, or in none)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def watching(self, engine: Engine) -> Iterator[None]:
        def before(
            conn: Any, _cur: Any, _stmt: str, _params: Any, context: Any, _many: Any
        ) -> None:
            conn.info.setdefault("bench_started", []).append(time.perf_counter())

        def after(conn: Any, _cur: Any, statement: str, _params: Any, _ctx: Any, _m: Any) -> None:
            key = " ".join(statement.split())[:90]
            self.seconds[key] += time.perf_counter() - conn.info["bench_started"].pop()
            self.calls[key] += 1

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        try:
            yield
        finally:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)

    def print(self, total_s: float) -> None:
        in_sql = sum(self.seconds.values())
        print(
            f"  time in SQL statements {in_sql:.3f} s of {total_s:.3f} s"
            f" ({100 * in_sql / total_s:.0f}%); by statement:"
        )
        for key, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {seconds:8.3f} s  {self.calls[key]:6} calls  {key}")
