"""Where one request's time goes: quotes (known member and guest) and purchases posted through
the shipped ASGI application in-process (no socket, no uvicorn), with every SQL statement
counted and timed around the driver, the time in named parts of the request, and optionally
the Python profile.

    python -m bench.request_profile [--db sqlite|postgresql|both] [--requests 500] [--profile]

To let one profiler see the whole request, the handlers run in the event loop's thread
instead of the thread pool (what that hop costs is measured separately, by uvicorn in
``bench.quote`` and ``bench.earn_http``). The parts are cumulative times of functions, so they
overlap (the quote includes its statements); each is per request.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import pstats
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fastapi.dependencies.utils
import fastapi.routing
import httpx
import yaml

from bench.harness import StatementTimes, bench_program, scratch_database, setting_line
from bench.quote import CART_LINES, GROCER, MEMBER, _enroll_member
from loyalty.adapters.db.engine import make_engine
from loyalty.entrypoints.api.app import create_app

# Functions whose cumulative time is reported per request, by the name cProfile gives them.
PARTS: dict[str, tuple[str, str]] = {
    "whole request (ASGI app)": ("fastapi/applications.py", "__call__"),
    "authentication": ("loyalty/application/access.py", "authenticate"),
    "request body validation": ("fastapi/dependencies/utils.py", "request_body_to_args"),
    "the route's function": ("fastapi/routing.py", "_run_sync_endpoint"),
    "quote_purchase": ("loyalty/application/quote.py", "quote_purchase"),
    "  load_program": ("loyalty/application/programs.py", "load_program"),
    "  _discounts": ("loyalty/application/quote.py", "_discounts"),
    "  payment_options": ("loyalty/application/holds.py", "payment_options"),
    "  _record_purchase": ("loyalty/application/events.py", "_record_purchase"),
    "    earn_on_purchase": ("loyalty/application/earning.py", "earn_on_purchase"),
    "    balance_view": ("loyalty/application/balances.py", "balance_view"),
    "submit_event": ("loyalty/application/events.py", "submit_event"),
    "  run_idempotent": ("loyalty/application/idempotency.py", "run_idempotent"),
    "response encoding (jsonable_encoder)": ("fastapi/encoders.py", "jsonable_encoder"),
    "response encoding (JSONResponse)": ("starlette/responses.py", "render"),
}


async def _inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


def _run_handlers_inline() -> None:
    fastapi.routing.run_in_threadpool = _inline  # type: ignore[assignment]
    fastapi.dependencies.utils.run_in_threadpool = _inline  # type: ignore[assignment]


def _part_times(profiler: cProfile.Profile, requests: int) -> list[tuple[str, float]]:
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out = []
    for label, (path, name) in PARTS.items():
        total = sum(
            cumulative
            for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.items()
            if function == name and filename.endswith(path)
        )
        if total:
            out.append((label, 1000 * total / requests))
    return out


async def _measure(
    app: Any,
    token: str,
    name: str,
    request: Callable[[httpx.AsyncClient], Any],
    *,
    requests: int,
    profile: bool,
) -> None:
    engine = app.state.engine
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://x", headers=headers) as c:
        for _ in range(20):
            (await request(c)).raise_for_status()
        times = StatementTimes()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        with times.watching(engine):
            profiler.enable()
            for _ in range(requests):
                response = await request(c)
                if response.status_code >= 300:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
            profiler.disable()
        elapsed = time.perf_counter() - started
    statements = sum(times.calls.values())
    in_sql = sum(times.seconds.values())
    print(
        f"  {name}: {statements / requests:.1f} statements/request, "
        f"{1000 * in_sql / requests:.2f} ms of them in SQL; "
        f"{1000 * elapsed / requests:.2f} ms/request under the profiler",
        flush=True,
    )
    for label, ms in _part_times(profiler, requests):
        print(f"    {ms:7.3f} ms  {label}")
    for key, calls in sorted(times.calls.items(), key=lambda kv: -times.seconds[kv[0]]):
        print(f"    {calls / requests:5.2f} x {1000 * times.seconds[key] / calls:6.3f} ms  {key}")
    if profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def run(kind: str, *, requests: int, profile: bool) -> None:
    document = yaml.safe_load(GROCER.read_text(encoding="utf-8"))
    with scratch_database(kind) as url:
        token, program_id = bench_program(url, document)
        _enroll_member(url, token, program_id)
        app = create_app(make_engine(url))
        quote_path = f"/v1/programs/{program_id}/quote"
        member_body = {"currency": "EUR", "lines": CART_LINES, "member": {"external_id": MEMBER}}
        guest_body = {"currency": "EUR", "lines": CART_LINES}
        orders = itertools.count()

        def purchase() -> dict[str, Any]:
            return {
                "type": "purchase",
                "id": f"P-{next(orders)}",
                "member": {"external_id": MEMBER},
                "occurred_at": datetime.now(UTC).isoformat(),
                "currency": "EUR",
                "total_minor": 5000 + 238 + 799 + 249,
                "lines": CART_LINES,
            }

        cases: list[tuple[str, Callable[[httpx.AsyncClient], Any]]] = [
            ("quote, member", lambda c: c.post(quote_path, json=member_body)),
            ("quote, guest", lambda c: c.post(quote_path, json=guest_body)),
            (
                "purchase, member",
                lambda c: c.post(f"/v1/programs/{program_id}/events", json=purchase()),
            ),
        ]
        print(f"{kind}:", flush=True)
        for name, request in cases:
            asyncio.run(_measure(app, token, name, request, requests=requests, profile=profile))
        app.state.engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(setting_line(), flush=True)
    _run_handlers_inline()
    for kind in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        run(kind, requests=args.requests, profile=args.profile)


if __name__ == "__main__":
    main()
