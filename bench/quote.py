"""Preview latency: what ``quote`` costs for a 4-line cart under the grocer example (a spend
rule that leaves out gift cards, a private-label multiplier, two exclusive basket bonuses).

Measured two ways on each database, one request at a time:

* in-process: ``quote_purchase`` called directly, as the route calls it;
* over HTTP: ``POST /v1/programs/{id}/quote`` to one uvicorn worker, from one client that
  keeps its connection open: the Python client (httpx), whose own work per request is part
  of every latency it measures, and, where ``wrk`` is installed (``apt-get install wrk``), a
  C client on one connection (``bench/wrk_purchases.lua`` sending the cart) for
  ``--seconds`` a run, which measures the server more nearly alone.

Each for a known member (a till asking before payment) and for no member (a product page:
priced for a new member, whom the quote would enrol).

    python -m bench.quote [--db sqlite|postgresql|both] [--requests 2000] [--repeat 3]
        [--seconds 10] [--client both|python|wrk]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import (
    DATABASES,
    bench_program,
    percentile,
    run_wrk,
    scratch_database,
    setting_line,
    spread,
    uvicorn_server,
)
from loyalty.adapters.db.engine import make_engine
from loyalty.application.access import authenticate
from loyalty.application.event_documents import LineItem, MemberRef, PurchaseEvent
from loyalty.application.events import submit_event
from loyalty.application.quote import quote_purchase

GOAL = "goal: p99 <= 5 ms over HTTP on an idle machine"
GROCER = Path(__file__).resolve().parent.parent / "docs" / "examples" / "grocer.yaml"
MEMBER = "Q-1001"
WARMUP = 50

# Every rule of the grocer example has something to do: two private-label lines (2x), a gift
# card (no spend points) and a total over EUR 50 (the basket bonus).
CART_LINES: list[dict[str, Any]] = [
    {"line_id": "1", "sku": "MILK", "brand": "Private", "category": "dairy",
     "quantity": 2, "unit_price_minor": 119},
    {"line_id": "2", "sku": "COFFEE", "brand": "Douwe", "category": "coffee",
     "quantity": 1, "unit_price_minor": 899, "discount_minor": 100},
    {"line_id": "3", "sku": "BREAD", "brand": "Private", "category": "bakery",
     "quantity": 1, "unit_price_minor": 249},
    {"line_id": "4", "sku": "GIFT-25", "category": "gift-cards",
     "quantity": 2, "unit_price_minor": 2500},
]  # fmt: skip


def _cart(member: MemberRef | None, now: datetime) -> PurchaseEvent:
    """The purchase the quote route builds from a request body."""
    lines = [LineItem.model_validate(line) for line in CART_LINES]
    return PurchaseEvent(
        type="purchase",
        id=f"quote-{now.timestamp()}",
        member=member or MemberRef(external_id="quote-guest"),
        occurred_at=now,
        currency="EUR",
        total_minor=sum(li.quantity * li.unit_price_minor - li.discount_minor for li in lines),
        lines=lines,
    )


def _enroll_member(url: str, token: str, program_id: str) -> None:
    """One earlier purchase, so the known member has a wallet, a lot and history."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    submit_event(
        engine,
        authenticate(engine, token),
        program_id,
        _cart(MemberRef(external_id=MEMBER), now).model_copy(update={"id": "ORDER-1"}),
        now=now,
    )
    engine.dispose()


def _time_calls(call: Callable[[], None], requests: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    latencies_ms = []
    for _ in range(requests):
        t0 = time.perf_counter()
        call()
        latencies_ms.append((time.perf_counter() - t0) * 1000)
    return latencies_ms


def _in_process(
    url: str, token: str, program_id: str, member: MemberRef | None
) -> Callable[[], None]:
    engine = make_engine(url)
    principal = authenticate(engine, token)

    def call() -> None:
        now = datetime.now(UTC)
        quote_purchase(engine, principal, program_id, _cart(member, now), member=member, now=now)

    return call


def _body(member: MemberRef | None) -> dict[str, Any]:
    body: dict[str, Any] = {"currency": "EUR", "lines": CART_LINES}
    if member is not None:
        body["member"] = member.model_dump(exclude_none=True)
    return body


def _over_http(http: httpx.Client, program_id: str, member: MemberRef | None) -> Callable[[], None]:
    body = _body(member)
    path = f"/v1/programs/{program_id}/quote"

    def call() -> None:
        response = http.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"quote answered {response.status_code}: {response.text[:300]}")

    return call


def _report(kind: str, how: str, who: str, runs: list[list[float]]) -> None:
    _print(
        kind,
        how,
        who,
        [percentile(r, 0.50) for r in runs],
        [percentile(r, 0.99) for r in runs],
        f"{len(runs)} x {len(runs[0])} requests",
    )


def _print(kind: str, how: str, who: str, p50s: list[float], p99s: list[float], runs: str) -> None:
    print(
        f"{kind:10} {how:10} {who:6}  p50 {spread(p50s, '{:.2f}')} ms"
        f"  p99 {spread(p99s, '{:.2f}')} ms  ({runs})",
        flush=True,
    )


def _over_wrk(
    kind: str, who: str, url: str, token: str, member: MemberRef | None, seconds: int, repeat: int
) -> None:
    """The same quote from ``wrk`` on one connection, ``repeat`` runs of ``seconds``."""
    results = [
        run_wrk(
            url,
            token,
            clients=1,
            seconds=seconds,
            body=json.dumps(_body(member)),
        )
        for _ in range(repeat)
    ]
    if any(r["refused"] or r["socket_errors"] for r in results):
        raise RuntimeError(f"wrk saw refused quotes or socket errors: {results}")
    _print(
        kind,
        "HTTP wrk",
        who,
        [r["p50_us"] / 1000 for r in results],
        [r["p99_us"] / 1000 for r in results],
        f"{repeat} x {seconds} s, "
        + "/".join(f"{r['requests']:,.0f}" for r in results)
        + " requests",
    )


def _bench_db(kind: str, requests: int, repeat: int, *, seconds: int, clients: list[str]) -> None:
    document = yaml.safe_load(GROCER.read_text(encoding="utf-8"))
    with scratch_database(kind) as url:
        token, program_id = bench_program(url, document)
        _enroll_member(url, token, program_id)
        who_refs: list[tuple[str, MemberRef | None]] = [
            ("member", MemberRef(external_id=MEMBER)),
            ("guest", None),
        ]
        for who, ref in who_refs:
            call = _in_process(url, token, program_id, ref)
            _report(kind, "in-process", who, [_time_calls(call, requests) for _ in range(repeat)])
        with uvicorn_server(url) as server:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(
                base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=30
            ) as http:
                for who, ref in who_refs:
                    call = _over_http(http, program_id, ref)
                    if "python" in clients:
                        runs = [_time_calls(call, requests) for _ in range(repeat)]
                        _report(kind, "HTTP", who, runs)
                    if "wrk" in clients:
                        for _ in range(WARMUP):  # as the Python client's runs do
                            call()
                        quote_url = f"http://127.0.0.1:{server.port}/v1/programs/{program_id}/quote"
                        _over_wrk(kind, who, quote_url, token, ref, seconds, repeat)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=[*DATABASES, "both"], default="both")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run's length")
    parser.add_argument(
        "--client",
        choices=["both", "python", "wrk"],
        default="both",
        help="HTTP clients (both: wrk only where installed)",
    )
    args = parser.parse_args(argv)
    clients = ["python", "wrk"] if args.client == "both" else [args.client]
    if args.client == "both" and shutil.which("wrk") is None:
        print("NOTE: wrk is not installed (apt-get install wrk): HTTP from the Python client only")
        clients = ["python"]
    print(
        f"quote latency: a 4-line cart under {GROCER.name}, sequential requests, "
        f"{WARMUP} warm-up then {args.requests} timed, {args.repeat} runs (median, min-max "
        f"of the runs' percentiles); HTTP: one uvicorn worker, one keep-alive client on the "
        f"same machine. {GOAL}."
    )
    print(setting_line(), flush=True)
    for kind in DATABASES if args.db == "both" else [args.db]:
        _bench_db(kind, args.requests, args.repeat, seconds=args.seconds, clients=clients)


if __name__ == "__main__":
    main()
