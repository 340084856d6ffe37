"""Earn over HTTP: purchases of 3-5 lines posted to a real uvicorn server, each with a unique
order id, by C concurrent clients for D seconds; on PostgreSQL, pgbench's built-in tpcb-like
transaction runs against the same server in the same run, so the ratio is comparable even on a
noisy machine.

    python -m bench [--db sqlite|postgresql|both] [--clients 8,32] [--seconds 10] [--repeat 3]

PostgreSQL comes from LOYALTY_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres,
where scratch databases are created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.application import programs
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.program_document import ProgramDocument

PG_ADMIN_URL = os.environ.get(
    "LOYALTY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class RunResult:
    events: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(url: str) -> tuple[str, str]:
    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    issued = create_api_key(
        engine, tenant_name="bench", name="bench", scopes=[Scope.ADMIN], program_id=None, now=now
    )
    principal = authenticate(engine, issued.token)
    doc = ProgramDocument.model_validate(
        {
            "name": "Bench",
            "currency": "EUR",
            "points": {"expiry": {"policy": "after_days", "days": 365}},
            "enrollment": {"auto_enroll_on_purchase": True},
        }
    )
    program_id = str(programs.create_program(engine, principal, doc, now=now).body["id"])
    engine.dispose()
    return issued.token, program_id


def _start_server(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_POOL_SIZE": "20"}
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
        ],
        env=env,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _purchase(rng: random.Random, order_id: str, member: int) -> dict[str, object]:
    lines = [
        {
            "sku": f"SKU-{rng.randint(1, 500)}",
            "quantity": rng.randint(1, 3),
            "unit_price_minor": rng.randint(100, 5000),
            "category": "grocery",
        }
        for _ in range(rng.randint(3, 5))
    ]
    total = sum(int(li["quantity"]) * int(li["unit_price_minor"]) for li in lines)  # type: ignore[call-overload]
    return {
        "type": "purchase",
        "id": order_id,
        "member": {"external_id": f"M{member}"},
        "occurred_at": "2026-11-01T10:00:00Z",
        "currency": "EUR",
        "total_minor": total,
        "lines": lines,
    }


async def _drive(
    port: int, token: str, program_id: str, clients: int, seconds: float, members: int
) -> RunResult:
    url = f"http://127.0.0.1:{port}/v1/programs/{program_id}/events"
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    run_tag = uuid.uuid4().hex[:8]

    async def client(n: int) -> None:
        nonlocal errors
        rng = random.Random(n)
        i = 0
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            while time.perf_counter() < stop_at:
                i += 1
                body = _purchase(rng, f"{run_tag}-{n}-{i}", rng.randint(1, members))
                t0 = time.perf_counter()
                r = await http.post(url, json=body)
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 201:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    return RunResult(len(latencies) - errors, errors, elapsed, latencies)


def _pgbench(admin_url: str, clients: int, seconds: int) -> float:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return float("nan")
    name = f"pgbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        subprocess.run(
            [pgbench, "-i", "-q", "-s", "10", f"{base}/{name}"], check=True, capture_output=True
        )
        out = subprocess.run(
            [pgbench, "-c", str(clients), "-j", "2", "-T", str(seconds), f"{base}/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        match = re.search(r"tps = ([0-9.]+)", out)
        return float(match.group(1)) if match else float("nan")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _bench_db(kind: str, clients_list: list[int], seconds: int, repeat: int) -> None:
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
        token, program_id = _prepare(url)
        port = _free_port()
        server = _start_server(url, port)
        try:
            for clients in clients_list:
                rates, p50s, p99s, ratios, tpss = [], [], [], [], []
                for _ in range(repeat):
                    res = asyncio.run(_drive(port, token, program_id, clients, seconds, 1000))
                    rates.append(res.rate)
                    p50s.append(res.pct(0.50))
                    p99s.append(res.pct(0.99))
                    if kind == "postgresql":
                        tps = _pgbench(PG_ADMIN_URL, clients, seconds)
                        tpss.append(tps)
                        ratios.append(res.rate / tps)
                    if res.errors:
                        print(f"  ({res.errors} non-201 responses)")
                rate, p50, p99 = (statistics.median(x) for x in (rates, p50s, p99s))
                line = (
                    f"{kind:10} clients={clients:3}  events/s median {rate:7.0f}"
                    f" (min {min(rates):.0f}, max {max(rates):.0f})  p50 {p50:6.1f} ms"
                    f"  p99 {p99:6.1f} ms"
                )
                if ratios:
                    line += (
                        f"  pgbench tps {statistics.median(tpss):7.0f}  ratio "
                        f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, "
                        f"max {max(ratios):.2f})"
                    )
                print(line, flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_db:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    print(
        f"earn over HTTP: {args.seconds}s x {args.repeat} runs per setting, one uvicorn "
        f"worker, load generator in the same machine; python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    with psycopg.connect(PG_ADMIN_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {row[0] if row else '?'}")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for kind in kinds:
        _bench_db(kind, clients, args.seconds, args.repeat)


if __name__ == "__main__":
    main()
