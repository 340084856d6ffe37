"""The expiry job at scale, on PostgreSQL: N due lots seeded set-based into a fresh, migrated
database, then expired by the function ``loyalty jobs run expire`` calls, with its default
batch size; then the job runs a second time and must expire nothing.

    python -m bench.expiry_scale [--lots 1000000] [--lots-per-member 10] [--batch-size 2000]
        [--audit | --no-audit] [--bare | --no-bare] [--ledger-rows | --no-ledger-rows]

The seed is what earning would have written: one member, one wallet per member; per lot one
``earn`` journal entry with its two postings (program ``issued`` -> member) and the lot
itself, earned 395-366 days before the run and expired 30-1 days before it. Wallet balances
equal the lots' remaining points, so ``loyalty ledger audit`` passes on the seed (checked with
``--audit``, the default, before and after the job). Tables are vacuumed and analysed after
the seed, as autovacuum would have done on a live database.

The time of every SQL statement the job sends is added up per statement, so the figures say
where the time goes; the batches' own times are reported per tenth of the run, which shows
whether a batch costs the same at the end as at the start. The first run also reports the WAL
it wrote per lot and how many of its lot updates were HOT (in place, no new index entries).

The database's own limit is measured in the same run, as the earn benchmark runs pgbench: a
copy of the seeded ``lots`` (same rows, indexes, constraints and storage parameters) is
emptied by the bare set-based statement, ``UPDATE ... SET remaining = 0 WHERE remaining > 0
AND expires_at <= now``, in one transaction, and the job's time is printed as a ratio of that
statement's time. Both start right after a checkpoint.

What a design that wrote no lot would cost is measured too (``--ledger-rows``): the rows the
ledger needs per member whatever the design (an ``expire`` entry, its two postings, the
wallet's debit), written from the members' due lots in the job's batches and workers, each
batch rolled back.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

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


_BARE = "lots_bare"


def _autocommit(engine: Engine, statement: str) -> None:
    """A statement that runs outside a transaction (``CHECKPOINT``, ``VACUUM``, DDL)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(statement))


def _checkpoint(engine: Engine) -> None:
    _autocommit(engine, "CHECKPOINT")


def _wal_lsn(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT pg_current_wal_lsn()")).scalar_one())


def _wal_bytes(engine: Engine, since: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:since AS pg_lsn))"),
                {"since": since},
            ).scalar_one()
        )


def _lot_updates(engine: Engine) -> tuple[int, int]:
    """Updates of ``lots`` so far, and how many were HOT. Read after the job's connections
    closed: a backend reports its counts when it exits."""
    engine.dispose()
    time.sleep(1.0)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'lots'")
        ).one()
    return int(row.n_tup_upd), int(row.n_tup_hot_upd)


def _bare_update(engine: Engine, *, now: datetime) -> float:
    """Time PostgreSQL needs to empty the same lots with nothing else: one UPDATE of a copy of
    ``lots`` with the same rows, indexes, constraints and storage parameters."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {_BARE}"))
        conn.execute(text(f"CREATE TABLE {_BARE} (LIKE lots INCLUDING ALL)"))
        options = conn.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = CAST('lots' AS regclass)")
        ).scalar_one()
        if options:
            conn.execute(text(f"ALTER TABLE {_BARE} SET ({', '.join(options)})"))
        conn.execute(text(f"INSERT INTO {_BARE} SELECT * FROM lots ORDER BY id"))
        conn.execute(text(f"VACUUM ANALYZE {_BARE}"))
        conn.execute(text("CHECKPOINT"))
    since = _wal_lsn(engine)
    with engine.begin() as conn:
        started = time.perf_counter()
        emptied = conn.execute(
            text(f"UPDATE {_BARE} SET remaining = 0 WHERE remaining > 0 AND expires_at <= :now"),
            {"now": now},
        ).rowcount
        elapsed = time.perf_counter() - started
        hot = conn.execute(
            text(f"SELECT pg_stat_get_xact_tuples_hot_updated(CAST('{_BARE}' AS regclass))")
        ).scalar_one()
    wal = _wal_bytes(engine, since)
    print(
        f"bare UPDATE of a copy of lots: {emptied:,} lots emptied in {elapsed:.1f} s "
        f"({emptied / elapsed:,.0f} lots/s), {wal / max(emptied, 1):,.0f} WAL bytes per lot, "
        f"{hot:,} HOT updates",
        flush=True,
    )
    _autocommit(engine, f"DROP TABLE {_BARE}")
    return elapsed


# The rows the ledger needs per member and nothing per lot: one ``expire`` entry, its two
# postings and the wallet's debit, from the member's due lots read through ``ix_lots_member``
# (one lateral lookup per member, as the job's statement does). What expiry would cost if it
# did not rewrite each lot.
_LEDGER_ROWS_ONLY = text(
    """
    WITH batch AS (
        SELECT * FROM unnest(CAST(:program_ids AS text[]), CAST(:member_ids AS text[]),
                             CAST(:entry_ids AS text[]))
            AS b (program_id, member_id, entry_id)
    ),
    totals AS (
        SELECT b.program_id, b.member_id, b.entry_id, l.points, l.lots_n
        FROM batch AS b
        CROSS JOIN LATERAL (
            SELECT sum(lots.remaining) AS points, count(*) AS lots_n
            FROM lots
            WHERE lots.program_id = b.program_id AND lots.member_id = b.member_id
              AND lots.expires_at <= :now AND lots.remaining > 0
            OFFSET 0
        ) AS l
        WHERE l.lots_n > 0
    ),
    entries AS (
        INSERT INTO journal_entries (id, program_id, member_id, kind, program_version, reason,
                                     source_type, source_id, created_at, details)
        SELECT entry_id, program_id, member_id, 'expire', 1, 'points expired', 'expiry',
               'job', :now, json_build_object('lots', lots_n)
        FROM totals
    ),
    legs AS (
        INSERT INTO postings (entry_id, leg, program_id, member_id, account, asset, amount)
        SELECT entry_id, 0, program_id, member_id, 'member:' || member_id || :member_suffix,
               'PTS', -points FROM totals
        UNION ALL
        SELECT entry_id, 1, program_id, NULL, 'program:' || program_id || :expired_suffix,
               'PTS', points FROM totals
    ),
    debited AS (
        UPDATE wallets SET balance = wallets.balance - t.points, updated_at = :now
        FROM totals AS t
        WHERE wallets.program_id = t.program_id AND wallets.member_id = t.member_id
          AND wallets.asset = 'PTS'
        RETURNING 1
    )
    SELECT coalesce(sum(lots_n), 0) AS lots_n, (SELECT count(*) FROM debited) AS members_n
    FROM totals
    """
)


def _ledger_rows_only(
    engine: Engine, program_id: str, *, now: datetime, members: int, batch_size: int, workers: int
) -> float:
    """Time the ledger's per-member rows for every due member, with no write to any lot: the
    same batches and workers as the job, each batch rolled back (then the three tables are
    vacuumed, so the job that follows finds them as seeded)."""

    def batch(first: int) -> tuple[int, int]:
        ids = range(first, min(first + batch_size, members + 1))
        with engine.connect() as conn, conn.begin() as transaction:
            row = conn.execute(
                _LEDGER_ROWS_ONLY,
                {
                    "program_ids": [program_id] * len(ids),
                    "member_ids": [f"mbr_{i:026d}" for i in ids],
                    "entry_ids": [f"ent_x{i:025d}" for i in ids],
                    "now": now,
                    "member_suffix": ":points",
                    "expired_suffix": ":expired:points",
                },
            ).one()
            transaction.rollback()
        return int(row.lots_n), int(row.members_n)

    _checkpoint(engine)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(batch, range(1, members + 1, batch_size)))
    elapsed = time.perf_counter() - started
    lots_n, members_n = (sum(column) for column in zip(*done, strict=True))
    print(
        f"ledger rows only (an entry, two postings and a wallet debit per member; no lot "
        f"written; rolled back): {lots_n:,} lots of {members_n:,} members in {elapsed:.1f} s "
        f"({lots_n / elapsed:,.0f} lots/s)",
        flush=True,
    )
    _autocommit(engine, "VACUUM ANALYZE journal_entries, postings, wallets")
    return elapsed


def _run_job(engine: Engine, *, now: datetime, batch_size: int, workers: int, label: str) -> float:
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
    return elapsed


def _audit(engine: Engine, label: str) -> None:
    started = time.perf_counter()
    findings = audit_ledger(engine)
    verdict = "passed" if not findings else "FAILED: " + ", ".join(f.invariant for f in findings)
    print(f"ledger audit {label}: {verdict} ({time.perf_counter() - started:.1f} s)", flush=True)


def run(
    *,
    lots: int,
    per_member: int,
    batch_size: int,
    workers: int,
    audit: bool,
    bare: bool,
    ledger_rows: bool,
) -> None:
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
            bare_s = _bare_update(engine, now=now) if bare else None
            rows_s = (
                _ledger_rows_only(
                    engine,
                    program_id,
                    now=now,
                    members=members,
                    batch_size=batch_size,
                    workers=workers,
                )
                if ledger_rows
                else None
            )
            _checkpoint(engine)
            updates_before, hot_before = _lot_updates(engine)
            since = _wal_lsn(engine)
            job_s = _run_job(
                engine, now=now, batch_size=batch_size, workers=workers, label="first run"
            )
            wal = _wal_bytes(engine, since)
            updates, hot = (
                n - b
                for n, b in zip(_lot_updates(engine), (updates_before, hot_before), strict=True)
            )
            print(
                f"  first run wrote {wal / max(updates, 1):,.0f} WAL bytes per lot expired; "
                f"{hot:,} of {updates:,} lot updates HOT"
            )
            if bare_s is not None:
                print(
                    f"  job / bare UPDATE: {job_s:.1f} s / {bare_s:.1f} s = {job_s / bare_s:.2f}x",
                    flush=True,
                )
            if rows_s is not None:
                print(
                    f"  job / ledger rows only: {job_s:.1f} s / {rows_s:.1f} s = "
                    f"{job_s / rows_s:.2f}x",
                    flush=True,
                )
            _run_job(engine, now=now, batch_size=batch_size, workers=workers, label="second run")
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
    parser.add_argument(
        "--bare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the bare UPDATE on a copy of the lots (the database's own limit)",
    )
    parser.add_argument(
        "--ledger-rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the per-member ledger rows alone, no lot written (rolled back)",
    )
    args = parser.parse_args(argv)
    run(
        lots=args.lots,
        per_member=args.lots_per_member,
        batch_size=args.batch_size,
        workers=args.workers,
        audit=args.audit,
        bare=args.bare,
        ledger_rows=args.ledger_rows,
    )


if __name__ == "__main__":
    main()
