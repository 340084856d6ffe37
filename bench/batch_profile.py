"""Where a batch's time goes: batches of purchases of 3-5 lines recorded in-process through
``submit_batch`` (what ``POST .../events:batch`` calls), on a fresh database, with every SQL
statement counted and timed around the driver, and optionally the Python profile.

    python -m bench.batch_profile [--db sqlite|postgresql|both] [--batch 1000] [--batches 4]
        [--members 5000] [--profile]

The first batch enrols most of its members; later ones mostly earn on known members (the
steady state of an import). Each batch's line gives events/s, statements per event and the
share of the time spent inside SQL statements; the last batch's statements are listed.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections import Counter
from datetime import UTC, datetime

from bench.batch_ingest import DOCUMENT, _purchase
from bench.harness import StatementTimes, bench_program, scratch_database, setting_line
from loyalty.adapters.db.engine import make_engine
from loyalty.application.access import authenticate
from loyalty.application.batch import submit_batch
from loyalty.entrypoints.runtime import settle_heap


def run(kind: str, *, batch: int, batches: int, members: int, profile: bool) -> None:
    rng = random.Random(7)
    with scratch_database(kind) as url:
        token, program = bench_program(url, DOCUMENT)
        engine = make_engine(url)
        principal = authenticate(engine, token)
        settle_heap()  # as the server and `loyalty events import` do
        for number in range(1, batches + 1):
            raw = [_purchase(rng, members) for _ in range(batch)]
            times = StatementTimes()
            profiler = cProfile.Profile() if profile and number == batches else None
            started = time.perf_counter()
            with times.watching(engine):
                if profiler is not None:
                    profiler.enable()
                results = submit_batch(engine, principal, program, raw, now=datetime.now(UTC))
                if profiler is not None:
                    profiler.disable()
            elapsed = time.perf_counter() - started
            outcomes = Counter(
                "accepted" if getattr(r, "accepted", False) else "rejected" for r in results
            )
            statements = sum(times.calls.values())
            in_sql = sum(times.seconds.values())
            print(
                f"{kind:10} batch {number}: {batch} events in {elapsed:.2f} s = "
                f"{batch / elapsed:,.0f} events/s; {statements / batch:.1f} statements/event; "
                f"{100 * in_sql / elapsed:.0f}% of the time in SQL; {dict(outcomes)}",
                flush=True,
            )
            if number == batches:
                times.print(elapsed)
                for key, calls in sorted(times.calls.items(), key=lambda kv: -kv[1])[:30]:
                    print(f"    {calls / batch:6.2f}/event  {key}")
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(setting_line(), flush=True)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for kind in kinds:
        run(
            kind,
            batch=args.batch,
            batches=args.batches,
            members=args.members,
            profile=args.profile,
        )


if __name__ == "__main__":
    main()
