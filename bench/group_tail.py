"""The slowest groups on SQLite: groups of purchases of 3-5 lines recorded back to back in
process through the path concurrent ``POST .../events`` take (``event_groups.record_group``),
with the server's checkpoint thread running (``background_checkpoints``) and a pause between
groups standing in for the answers and the next requests. Each group's time is measured on its
own, so the tail shows what a few groups cost that the median hides: over HTTP, every purchase
of a slow group waits for it.

    python -m bench.group_tail [--group 8] [--groups 3000] [--gap-ms 0.8] [--rounds 2]

Two settings run in turn in each round, on fresh databases: the shipped one, and the WAL
handled as before 2026-12-07 (no restarts by the checkpoint thread; a commit checkpoints at
10,000 pages). Each line gives the percentiles of a group's time, the groups that took over
twice the median, and how many times the WAL was restarted (its header's checkpoint sequence
number).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench.earn_http import PROGRAM, _purchase
from bench.harness import bench_program, percentile, scratch_database, setting_line
from bench.wal_pages import WAL_HEADER, wal_header
from loyalty.adapters.db import engine as db_engine
from loyalty.adapters.db.engine import background_checkpoints, make_engine
from loyalty.application.access import authenticate
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.event_groups import record_group
from loyalty.entrypoints.runtime import settle_heap

MEMBERS = 1_000
WARM_GROUPS = 300
BEFORE_AUTOCHECKPOINT_PAGES = 10_000
NEVER = 2**62


@contextmanager
def _autocheckpoint_pages(pages: int) -> Iterator[None]:
    """Engines made in the block set this commit-time threshold on their connections."""
    shipped = db_engine.SQLITE_WAL_AUTOCHECKPOINT_PAGES
    db_engine.SQLITE_WAL_AUTOCHECKPOINT_PAGES = pages
    try:
        yield
    finally:
        db_engine.SQLITE_WAL_AUTOCHECKPOINT_PAGES = shipped


def _restarts(path: str) -> int:
    with open(f"{path}-wal", "rb") as wal:
        return wal_header(wal.read(WAL_HEADER))[1]


def run_setting(*, before: bool, group: int, groups: int, gap_s: float) -> str:
    rng = random.Random(7)
    autocheckpoint = (
        BEFORE_AUTOCHECKPOINT_PAGES if before else db_engine.SQLITE_WAL_AUTOCHECKPOINT_PAGES
    )
    with scratch_database("sqlite") as url, _autocheckpoint_pages(autocheckpoint):
        path = url.removeprefix("sqlite:///")
        token, program = bench_program(url, PROGRAM)
        engine = make_engine(url)
        principal = authenticate(engine, token)
        settle_heap()
        batches = [
            [
                PurchaseEvent.model_validate(
                    _purchase(rng, f"O{number}-{n}", rng.randrange(MEMBERS))
                )
                for n in range(group)
            ]
            for number in range(WARM_GROUPS + groups)
        ]
        restart_pages = NEVER if before else db_engine.SQLITE_WAL_RESTART_PAGES
        times: list[float] = []
        with background_checkpoints(engine, restart_pages=restart_pages):
            for number, events in enumerate(batches):
                time.sleep(gap_s)
                started = time.perf_counter()
                record_group(engine, principal, program, events, now=datetime.now(UTC))
                if number >= WARM_GROUPS:
                    times.append(1000 * (time.perf_counter() - started))
        restarts = _restarts(path) if Path(f"{path}-wal").exists() else 0
        engine.dispose()
    name = "before" if before else "shipped"
    cuts = "  ".join(
        f"{label} {percentile(times, q):5.1f}"
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
    )
    slow = sum(t > 2 * percentile(times, 0.5) for t in times)
    return (
        f"{name:8} {cuts}  max {max(times):6.1f} ms; mean {sum(times) / len(times):.2f} ms;"
        f" over twice the median: {slow} ({100 * slow / len(times):.1f}%);"
        f" WAL restarts {restarts}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--group", type=int, default=8, help="purchases per group")
    parser.add_argument("--groups", type=int, default=3_000, help="groups measured per run")
    parser.add_argument("--gap-ms", type=float, default=0.8, help="pause before each group")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(setting_line())
    print(
        f"sqlite: {args.groups} groups of {args.group} purchases after {WARM_GROUPS} unmeasured,"
        f" {args.gap_ms} ms apart, {MEMBERS:,} members; a group's time in ms"
    )
    for round_ in range(1, args.rounds + 1):
        for before in (True, False):
            line = run_setting(
                before=before, group=args.group, groups=args.groups, gap_s=args.gap_ms / 1000
            )
            print(f"round {round_}: {line}", flush=True)


if __name__ == "__main__":
    main()
