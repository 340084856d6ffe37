"""A real grocer's year through the batch path: the Complete Journey baskets (2,469
households, 155,848 baskets, 1.47 million line items) recorded into a fresh database by
``record_events_batch``, the function behind ``POST .../events:batch`` and ``loyalty events
import``, in batches of the import's default size, against the grocer example with a
spend-based tier set added.

    pip install -e '.[bench]'
    python -m bench.import_completejourney [--db sqlite|postgresql|both] [--limit N]

Prints events/s for the recording alone (the events are built and validated first), and
what the year left: points issued, the liability (points outstanding, and their value at the
program's point value), members by tier, and whether ``loyalty ledger audit`` passes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from bench.harness import bench_program, scratch_database, setting_line
from bench.simulate_completejourney import load_events
from loyalty.adapters.db.engine import background_checkpoints, make_engine
from loyalty.adapters.db.tables import member_tiers, members, wallets
from loyalty.application.access import authenticate
from loyalty.application.audit import audit_ledger
from loyalty.application.batch import record_events_batch
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.limits import IMPORT_BATCH_DEFAULT
from loyalty.domain.ledger import POINTS
from loyalty.entrypoints.runtime import settle_heap

GROCER = Path(__file__).resolve().parents[1] / "docs" / "examples" / "grocer.yaml"
TIERS = {
    "metric": "spend",
    "window": {"type": "calendar_year"},
    "levels": [
        {"id": "regular", "name": "Regular", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 100_000},
        {"id": "gold", "name": "Gold", "threshold": 400_000},
    ],
}


def program_document() -> dict[str, Any]:
    document = yaml.safe_load(GROCER.read_text(encoding="utf-8"))
    document["currency"] = "USD"
    document["tiers"] = TIERS
    return dict(document)


def _outcome(url: str, program_id: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            outstanding = int(
                conn.execute(
                    select(func.coalesce(func.sum(wallets.c.balance), 0)).where(
                        wallets.c.program_id == program_id, wallets.c.asset == POINTS
                    )
                ).scalar_one()
            )
            member_count = int(
                conn.execute(
                    select(func.count()).where(members.c.program_id == program_id)
                ).scalar_one()
            )
            tiers = dict(
                conn.execute(
                    select(member_tiers.c.tier, func.count())
                    .where(member_tiers.c.program_id == program_id)
                    .group_by(member_tiers.c.tier)
                ).all()
            )
        started = time.perf_counter()
        findings = audit_ledger(engine)
        audit_s = time.perf_counter() - started
    finally:
        engine.dispose()
    # Members who never reached a tier above the first have no tier row of their own.
    tiers["regular"] = tiers.get("regular", 0) + member_count - sum(tiers.values())
    return {
        "outstanding": outstanding,
        "members": member_count,
        "tiers": tiers,
        "audit": "passed" if not findings else "FAILED " + ", ".join(f.invariant for f in findings),
        "audit_s": audit_s,
    }


def run(kind: str, events: Sequence[PurchaseEvent], *, batch: int) -> None:
    with scratch_database(kind) as url:
        token, program_id = bench_program(url, program_document())
        engine = make_engine(url)
        principal = authenticate(engine, token)
        settle_heap()  # as the server and `loyalty events import` do
        accepted = points = 0
        started = time.perf_counter()
        with background_checkpoints(engine):  # as `loyalty events import` runs
            try:
                for start in range(0, len(events), batch):
                    chunk = list(events[start : start + batch])
                    for item in record_events_batch(
                        engine, principal, program_id, chunk, now=datetime.now(UTC)
                    ):
                        if item.accepted:
                            accepted += 1
                            points += int(item.body["points_earned"])
                    if start // batch % 20 == 0:
                        done = start + len(chunk)
                        rate = done / (time.perf_counter() - started)
                        print(f"  {kind}: {done:,} events, {rate:,.0f} events/s", flush=True)
            finally:
                engine.dispose()
        elapsed = time.perf_counter() - started
        outcome = _outcome(url, program_id)
        print(
            f"{kind}: recorded {accepted:,} of {len(events):,} events in {elapsed:.1f} s "
            f"({accepted / elapsed:,.0f} events/s), batches of {batch:,}"
        )
        print(
            f"  points issued {points:,}; outstanding {outstanding_line(outcome)}; "
            f"{outcome['members']:,} members by tier: "
            + ", ".join(f"{tier} {count:,}" for tier, count in sorted(outcome["tiers"].items()))
        )
        print(f"  ledger audit {outcome['audit']} ({outcome['audit_s']:.1f} s)", flush=True)


def outstanding_line(outcome: dict[str, Any]) -> str:
    # The grocer keeps the default point value: 100 points are worth 1.00.
    points = int(outcome["outstanding"])
    return f"{points:,} points (USD {points / 100:,.2f} at 100 points = 1.00)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N baskets.")
    parser.add_argument("--batch", type=int, default=IMPORT_BATCH_DEFAULT)
    args = parser.parse_args(argv)
    print(setting_line(), flush=True)
    started = time.perf_counter()
    events, _timings = load_events()
    events.sort(key=lambda e: e.occurred_at)
    if args.limit is not None:
        events = events[: args.limit]
    print(f"built and validated {len(events):,} baskets in {time.perf_counter() - started:.1f} s")
    for kind in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        run(kind, events, batch=args.batch)


if __name__ == "__main__":
    main()
