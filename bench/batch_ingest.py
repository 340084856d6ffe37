"""Batch ingestion: purchases of 3-5 lines posted to ``POST .../events:batch`` on a real uvicorn
server, B events per request, by C concurrent clients, each event with a unique id. On
PostgreSQL, pgbench's tpcb-like transaction runs against the same server in the same run, so
the ratio holds on a noisy machine.

    python -m bench.batch_ingest [--db sqlite|postgresql|both] [--batch 500] [--clients 2]
        [--events 20000] [--repeat 3] [--client python|wrk] [--seconds 10]

The default client is Python (httpx), which encodes every batch and decodes every answer on
the same cores as the server. ``--client wrk`` sends the same batches from ``wrk``
(``bench/wrk_purchases.lua``) for ``--seconds`` instead of a number of events, and counts an
event only once its batch was answered ``200`` (every event of the run is checked to be in
the database afterwards).

Goals stated for this path: >= 5x pgbench TPS on PostgreSQL, >= 20,000 events/s on SQLite.
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
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.harness import (
    PG_ADMIN_URL,
    bench_program,
    run_wrk,
    scratch_database,
    setting_line,
    spread,
    uvicorn_server,
)
from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.tables import events as events_table

DOCUMENT = {
    "name": "Batch bench",
    "currency": "EUR",
    "enrollment": {"auto_enroll_on_purchase": True},
    "points": {"earn": {"points": 1, "per_spend_minor": 100}},
}


def _purchase(rng: random.Random, members: int) -> dict[str, Any]:
    lines = [
        {
            "sku": f"SKU-{rng.randint(1, 500)}",
            "quantity": rng.randint(1, 3),
            "unit_price_minor": rng.randint(100, 5000),
        }
        for _ in range(rng.randint(3, 5))
    ]
    return {
        "type": "purchase",
        "id": uuid.uuid4().hex,
        "member": {"external_id": f"M{rng.randint(1, members)}"},
        "occurred_at": datetime.now(UTC).isoformat(),
        "currency": "EUR",
        "total_minor": sum(li["quantity"] * li["unit_price_minor"] for li in lines),
        "lines": lines,
    }


async def _drive(
    port: int, token: str, program: str, *, events: int, batch: int, clients: int
) -> tuple[float, int]:
    rng = random.Random(7)
    bodies = [
        {"events": [_purchase(rng, 5_000) for _ in range(batch)]}
        for _ in range(max(1, events // batch))
    ]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0
    url = f"http://127.0.0.1:{port}/v1/programs/{program}/events:batch"

    async def client() -> None:
        nonlocal accepted
        async with httpx.AsyncClient(
            timeout=120, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            while not queue.empty():
                body = queue.get_nowait()
                r = await http.post(url, json=body)
                r.raise_for_status()
                accepted += r.json()["accepted"]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, accepted


def _pgbench_tps(seconds: int, clients: int) -> float | None:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return None
    db = f"pgbench_{uuid.uuid4().hex[:6]}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    subprocess.run(["psql", PG_ADMIN_URL, "-qc", f'CREATE DATABASE "{db}"'], check=True)
    try:
        subprocess.run([pgbench, "-qi", "-s", "1", f"{base}/{db}"], check=True, capture_output=True)
        out = subprocess.run(
            [pgbench, "-c", str(clients), "-j", "2", "-T", str(seconds), f"{base}/{db}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        match = re.search(r"tps = ([0-9.]+)", out)
        return float(match.group(1)) if match else None
    finally:
        subprocess.run(["psql", PG_ADMIN_URL, "-qc", f'DROP DATABASE "{db}" WITH (FORCE)'])


def _drive_wrk(
    database_url: str,
    port: int,
    token: str,
    program: str,
    *,
    seconds: int,
    batch: int,
    clients: int,
) -> tuple[float, int]:
    result = run_wrk(
        f"http://127.0.0.1:{port}/v1/programs/{program}/events:batch",
        token,
        clients=clients,
        seconds=seconds,
        members=5_000,
        batch=batch,
    )
    if result["refused"] or result["socket_errors"]:
        raise RuntimeError(f"wrk saw failed batches: {result}")
    answered = int(result["requests"]) * batch
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(events_table)).scalar_one()
    finally:
        engine.dispose()
    if stored < answered:
        raise RuntimeError(f"{answered} events answered but {stored} stored")
    return result["seconds"], answered


def run(
    kind: str, *, events: int, batch: int, clients: int, repeat: int, client: str, seconds: int
) -> None:
    rates = []
    for _ in range(repeat):
        with scratch_database(kind) as url:
            token, program = bench_program(url, DOCUMENT)
            with uvicorn_server(url) as server:
                port = server.port
                if client == "wrk":
                    elapsed, accepted = _drive_wrk(
                        url, port, token, program, seconds=seconds, batch=batch, clients=clients
                    )
                else:
                    elapsed, accepted = asyncio.run(
                        _drive(port, token, program, events=events, batch=batch, clients=clients)
                    )
        rates.append(accepted / elapsed)
    amount = f"{seconds} s" if client == "wrk" else f"{events:,} events"
    line = (
        f"{kind:10} batch {batch}, {clients} clients ({client}), {amount} x {repeat}: "
        f"{spread(rates, '{:,.0f}')} events/s"
    )
    if kind == "postgresql":
        tps = _pgbench_tps(10, 8)
        if tps:
            line += f"; pgbench tpcb-like (8 clients, 10 s) {tps:,.0f} TPS; ratio "
            line += f"{statistics.median(rates) / tps:.2f}x (goal >= 5x)"
    else:
        line += " (goal >= 20,000 events/s)"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client", choices=["python", "wrk"], default="python")
    parser.add_argument("--seconds", type=int, default=10, help="with --client wrk")
    args = parser.parse_args(argv)
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    print(setting_line(), flush=True)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for kind in kinds:
        run(
            kind,
            events=args.events,
            batch=args.batch,
            clients=args.clients,
            repeat=args.repeat,
            client=args.client,
            seconds=args.seconds,
        )


if __name__ == "__main__":
    main()
