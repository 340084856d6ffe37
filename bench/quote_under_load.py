"""Quotes while purchases flow: one client sends quotes one after another to a server that
``wrk`` keeps busy with purchases from ``--clients`` connections, and the quotes' latency is
reported beside the purchases' rate. With ``--before``, another checkout's server takes the
same load in turn (rounds alternating), so the two are compared in the same hour.

    python -m bench.quote_under_load [--db sqlite|postgresql] [--clients 8] [--seconds 9]
        [--rounds 2] [--rate 50] [--before ../other-checkout]

The quoting client sends ``--rate`` quotes a second, each when its time comes or when the
last is answered if that is later, so both servers are asked for the same work; ``--rate 0``
sends each as soon as the last is answered (then faster quotes mean more of them, each
taking its share of the server). Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.earn_http import PROGRAM
from bench.harness import (
    bench_program,
    percentile,
    run_wrk,
    scratch_database,
    setting_line,
    uvicorn_server,
)

CART: dict[str, Any] = {
    "currency": "EUR",
    "lines": [
        {"sku": "A", "quantity": 2, "unit_price_minor": 450},
        {"sku": "B", "quantity": 1, "unit_price_minor": 1200},
    ],
    "member": {"external_id": "QUOTER"},
}


def run_once(db: str, *, clients: int, seconds: int, rate: float, source: str | None) -> str:
    """One server under ``wrk``'s purchases, quoted meanwhile; its line of figures."""
    with scratch_database(db) as url:
        token, program_id = bench_program(url, PROGRAM)
        with uvicorn_server(url, source=source) as server:
            base = f"http://127.0.0.1:{server.port}"
            events = f"{base}/v1/programs/{program_id}/events"
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
                enrolled = c.post(
                    f"/v1/programs/{program_id}/members", json={"external_id": "QUOTER"}
                )
                enrolled.raise_for_status()
                load: dict[str, float] = {}
                purchases = threading.Thread(
                    target=lambda: load.update(
                        run_wrk(events, token, clients=clients, seconds=seconds)
                    )
                )
                purchases.start()
                time.sleep(0.5)  # quotes only while the purchases flow
                latencies: list[float] = []
                first = time.monotonic()
                until = first + seconds - 1.5
                while time.monotonic() < until:
                    if rate > 0:
                        time.sleep(max(0.0, first + len(latencies) / rate - time.monotonic()))
                    started = time.perf_counter()
                    answer = c.post(f"/v1/programs/{program_id}/quote", json=CART)
                    latencies.append(1000 * (time.perf_counter() - started))
                    answer.raise_for_status()
                purchases.join()
    return (
        f"quotes {len(latencies):5}  p50 {percentile(latencies, 0.5):5.1f} ms"
        f"  p99 {percentile(latencies, 0.99):5.1f} ms;  purchases"
        f" {load['requests'] / load['seconds']:6,.0f}/s  p99 {load['p99_us'] / 1000:5.1f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50, help="quotes a second; 0: no pause")
    parser.add_argument("--before", help="another checkout, whose server takes turns")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    sources: dict[str, str | None] = {"this checkout": None}
    if args.before:
        before_src = Path(args.before).resolve() / "src"
        if not (before_src / "loyalty").is_dir():
            parser.error(f"{args.before} is not a checkout of this project")
        sources = {"before": str(before_src), "after": None}
    print(
        f"quotes under load: {args.db}, purchases from {args.clients} wrk clients for"
        f" {args.seconds} s, one client quoting meanwhile"
        f" ({f'{args.rate:g} a second' if args.rate > 0 else 'without pauses'}),"
        f" {args.rounds} rounds"
    )
    print(setting_line(), flush=True)
    for round_no in range(args.rounds):
        order = list(sources) if round_no % 2 == 0 else list(reversed(sources))
        for name in order:
            line = run_once(
                args.db,
                clients=args.clients,
                seconds=args.seconds,
                rate=args.rate,
                source=sources[name],
            )
            print(f"round {round_no + 1} {name:13} {line}", flush=True)


if __name__ == "__main__":
    main()
