"""Earn over HTTP: purchases of 3-5 lines posted to a real uvicorn server, each with a unique
order id, by C concurrent clients for D seconds; on PostgreSQL, pgbench's built-in tpcb-like
transaction runs against the same server in the same run, so the ratio is comparable even on a
noisy machine.

    python -m bench.earn_http [--db sqlite|postgresql|both] [--clients 1,8,32] [--seconds 10]
        [--repeat 3] [--client auto|wrk|python] [--workers 1] [--members 1000]

The load generator is ``wrk`` where it is installed (``apt-get install wrk``; a C client, as
pgbench is, with the requests written by ``bench/wrk_purchases.lua``), else a Python client (httpx,
one process), which costs the shared cores about as much as the server's own work and so
measures less; ``--client`` chooses, and the setting line says which one ran. Beside the rate,
each line gives the server's CPU time (user and system, from ``/proc``, workers included) per
event recorded: on a shared machine it moves less than the rate does.

PostgreSQL comes from LOYALTY_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres,
where scratch databases are created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass

import httpx
import psycopg

from bench.harness import (
    PG_ADMIN_URL,
    bench_program,
    percentile,
    run_wrk,
    scratch_database,
    setting_line,
    uvicorn_server,
)

# What the embedded default (SQLite, one server process) should reach on an idle machine.
GOAL_SQLITE = "goal on SQLite: >= 2,000 events/s at p99 <= 20 ms"

PROGRAM = {
    "name": "Bench",
    "currency": "EUR",
    "points": {"expiry": {"policy": "after_days", "days": 365}},
    "enrollment": {"auto_enroll_on_purchase": True},
}


@dataclass
class RunResult:
    events: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


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
    return RunResult(
        len(latencies) - errors,
        errors,
        elapsed,
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
    )


def drive_wrk(
    port: int, token: str, program_id: str, clients: int, seconds: float, members: int
) -> RunResult:
    """The same purchases sent by ``wrk`` with ``clients`` connections."""
    result = run_wrk(
        f"http://127.0.0.1:{port}/v1/programs/{program_id}/events",
        token,
        clients=clients,
        seconds=int(seconds),
        members=members,
    )
    return RunResult(
        int(result["requests"] - result["refused"]),
        int(result["refused"] + result["socket_errors"]),
        result["seconds"],
        result["p50_us"] / 1000,
        result["p99_us"] / 1000,
    )


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


def _bench_db(
    kind: str,
    clients_list: list[int],
    seconds: int,
    repeat: int,
    *,
    client: str,
    workers: int,
    members: int,
) -> None:
    with scratch_database(kind) as url:
        token, program_id = bench_program(url, PROGRAM)
        with uvicorn_server(url, workers=workers) as server:
            port = server.port
            for clients in clients_list:
                rates, p50s, p99s, ratios, tpss, cpus = [], [], [], [], [], []
                for _ in range(repeat):
                    cpu_before = server.cpu_seconds()
                    if client == "wrk":
                        res = drive_wrk(port, token, program_id, clients, seconds, members)
                    else:
                        res = asyncio.run(
                            _drive(port, token, program_id, clients, seconds, members)
                        )
                    cpus.append((server.cpu_seconds() - cpu_before) * 1000 / res.events)
                    rates.append(res.rate)
                    p50s.append(res.p50_ms)
                    p99s.append(res.p99_ms)
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
                    f"  p99 {p99:6.1f} ms  server CPU {statistics.median(cpus):.2f} ms/event"
                )
                if ratios:
                    line += (
                        f"  pgbench tps {statistics.median(tpss):7.0f}  ratio "
                        f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, "
                        f"max {max(ratios):.2f})"
                    )
                print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--members",
        type=int,
        default=1000,
        help="customers the purchases go to (fewer: longer histories, more lots per member)",
    )
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    generator = (
        "wrk (C, up to 2 threads)" if client == "wrk" else "a Python client (httpx, one process)"
    )
    print(
        f"earn over HTTP: {args.seconds}s x {args.repeat} runs per setting (median, min, max),"
        f" {args.workers} uvicorn worker(s), purchases of 3-5 lines, {args.members:,} members;"
        f" the load generator, {generator}, runs on the same machine. {GOAL_SQLITE}."
    )
    if client == "python":
        print("NOTE: wrk not used: the Python client's own cost is part of every figure.")
    print(setting_line(), flush=True)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for kind in kinds:
        _bench_db(
            kind,
            clients,
            args.seconds,
            args.repeat,
            client=client,
            workers=args.workers,
            members=args.members,
        )


if __name__ == "__main__":
    main()
