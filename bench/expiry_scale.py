"""The expiry job at scale, on PostgreSQL: N due lots seeded set-based into a fresh, migrated
database, then expired by the function ``loyalty jobs run expire`` calls, with its default
batch size; then the job runs a second time and must expire nothing.

    python -m bench.expiry_scale [--lots 1000000] [--lots-per-member 10] [--batch-size 2000]
        [--audit | --no-audit]

The seed is what earning would have written: one member, one wallet per member; per lot one
``earn`` journal entry with its two postings (program ``issued`` -> member) and the lot
itself, earned 395-366 days before the run and expired 30-1 days before it. Wallet balances
equal the lots' remaining points, so ``loyalty ledger audit`` passes on the seed (checked with
``--audit``, the default, before and after the job). Tables are vacuumed and analysed after
the seed, as autovacuum would have done on a live database.

The time of every SQL statement the job sends is added up per statement, so the figures say
where the time goes; the batches' own times are reported per tenth of the run, which shows
whether a batch costs the same at the end as at the start.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from bench.harness import (
    SEED_MEMBERS,
    StatementTimes,
    bench_program,
    scratch_database,
    seed_set_based,
    setting_line,
)
from loyalty.adapters.db.engine import make_engine
from loyalty.application.audit import audit_ledger
from loyalty.application.expiry import (
    EXPIRY_BATCH_DEFAULT,
    EXPIRY_WORKERS_DEFAULT,
    expire_due_lots,
)

GOAL = "goal: 10,000,000 due lots expired in <= 60 s, set-based, safe to run twice"

PROGRAM = {
    "name": "Expiry bench",
    "currency": "EUR",
    "points": {"expiry": {"policy": "after_days", "days": 365}},
}

# Ids are the engine's shape (prefix, underscore, 26 characters) and sort in seed order.
_SEED = [
    SEED_MEMBERS,
    (
        "journal_entries",
        """
        INSERT INTO journal_entries (id, program_id, member_id, kind, program_version,
                                     source_type, source_id, created_at, details)
        SELECT 'ent_' || lpad(i::text, 26, '0'), CAST(:program_id AS text),
               'mbr_' || lpad(((i - 1) / :per_member + 1)::text, 26, '0'), 'earn', 1,
               'purchase', 'seed-' || i, :t0 + (i % 30) * interval '1 day', '{}'::json
        FROM generate_series(1, :lots) AS i
        """,
    ),
    (
        "postings",
        """
        INSERT INTO postings (entry_id, leg, program_id, member_id, account, asset, amount)
        SELECT 'ent_' || lpad(i::text, 26, '0'), leg, CAST(:program_id AS text),
               CASE WHEN leg = 0 THEN 'mbr_' || lpad(((i - 1) / :per_member + 1)::text, 26, '0')
               END,
               CASE WHEN leg = 0
                    THEN 'member:mbr_' || lpad(((i - 1) / :per_member + 1)::text, 26, '0')
                         || :member_suffix
                    ELSE 'program:' || CAST(:program_id AS text) || :issued_suffix END,
               'PTS',
               CASE WHEN leg = 0 THEN 1 ELSE -1 END * (1 + (i::bigint * 7919) % 500)
        FROM generate_series(1, :lots) AS i, (VALUES (0), (1)) AS legs (leg)
        ORDER BY i, leg
        """,
    ),
    (
        "lots",
        """
        INSERT INTO lots (id, program_id, member_id, entry_id, asset, amount, remaining,
                          earned_at, expires_at)
        SELECT 'lot_' || lpad(i::text, 26, '0'), CAST(:program_id AS text),
               'mbr_' || lpad(((i - 1) / :per_member + 1)::text, 26, '0'),
               'ent_' || lpad(i::text, 26, '0'), 'PTS', 1 + (i::bigint * 7919) % 500,
               1 + (i::bigint * 7919) % 500, :t0 + (i % 30) * interval '1 day',
               :t0 + (i % 30) * interval '1 day' + interval '365 days'
        FROM generate_series(1, :lots) AS i
        """,
    ),
    (
        "wallets",
        """
        INSERT INTO wallets (program_id, member_id, asset, balance, debt, updated_at)
        SELECT program_id, member_id, 'PTS', sum(remaining), 0, :t0
        FROM lots GROUP BY program_id, member_id
        """,
    ),
]
_ANALYSE = ["members", "journal_entries", "postings", "lots", "wallets"]


def _seed(engine: Engine, program_id: str, *, lots: int, per_member: int, t0: datetime) -> None:
    params = {
        "program_id": program_id,
        "lots": lots,
        "per_member": per_member,
        "members": -(-lots // per_member),
        "t0": t0,
        "enrolled_at": t0,
        # Written as parameters: a colon inside the SQL text would read as a bind parameter.
        "member_suffix": ":points",
        "issued_suffix": ":points:issued",
    }
    seed_set_based(engine, _SEED, params, analyse=_ANALYSE)


def _run_job(engine: Engine, *, now: datetime, batch_size: int, workers: int, label: str) -> None:
    batch_ends: list[float] = []
    times = StatementTimes()
    started = time.perf_counter()
    with times.watching(engine):
        report = expire_due_lots(
            engine,
            now=now,
            batch_size=batch_size,
            on_batch=lambda _lots, _points: batch_ends.append(time.perf_counter()),
            workers=workers,
        )
    elapsed = time.perf_counter() - started
    rate = report.lots_expired / elapsed if elapsed else 0.0
    print(
        f"{label}: expired {report.lots_expired:,} lots ({report.points_expired:,} points) of "
        f"{report.members_touched:,} members in {report.batches:,} batches: {elapsed:.1f} s "
        f"({rate:,.0f} lots/s)",
        flush=True,
    )
    if len(batch_ends) >= 10:
        durations = [b - a for a, b in zip([started, *batch_ends], batch_ends, strict=False)]
        tenth = len(durations) // 10
        medians = [
            statistics.median(durations[i * tenth : (i + 1) * tenth]) * 1000 for i in range(10)
        ]
        print(
            "  median batch time per tenth of the run (ms): "
            + ", ".join(f"{m:.0f}" for m in medians)
        )
    times.print(elapsed)


def _audit(engine: Engine, label: str) -> None:
    started = time.perf_counter()
    findings = audit_ledger(engine)
    verdict = "passed" if not findings else "FAILED: " + ", ".join(f.invariant for f in findings)
    print(f"ledger audit {label}: {verdict} ({time.perf_counter() - started:.1f} s)", flush=True)


def run(*, lots: int, per_member: int, batch_size: int, workers: int, audit: bool) -> None:
    members = -(-lots // per_member)
    print(
        f"expiry job at scale: PostgreSQL, {lots:,} due lots, {per_member} per member "
        f"({members:,} members), batch size {batch_size:,} members, one process, "
        f"{workers} worker transaction(s) at once. {GOAL}."
    )
    print(setting_line(), flush=True)
    now = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    t0 = now - timedelta(days=395)
    with scratch_database("postgresql") as url:
        _token, program_id = bench_program(url, PROGRAM)
        engine = make_engine(url)
        try:
            _seed(engine, program_id, lots=lots, per_member=per_member, t0=t0)
            if audit:
                _audit(engine, "after the seed")
            for label in ("first run", "second run"):
                _run_job(engine, now=now, batch_size=batch_size, workers=workers, label=label)
            if audit:
                _audit(engine, "after both runs")
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lots", type=int, default=1_000_000)
    parser.add_argument("--lots-per-member", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=EXPIRY_BATCH_DEFAULT)
    parser.add_argument("--workers", type=int, default=EXPIRY_WORKERS_DEFAULT)
    parser.add_argument("--audit", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    run(
        lots=args.lots,
        per_member=args.lots_per_member,
        batch_size=args.batch_size,
        workers=args.workers,
        audit=args.audit,
    )


if __name__ == "__main__":
    main()
