"""Tier recalculation and the tier review at scale, on PostgreSQL: N members with a year of
activity seeded set-based into a fresh, migrated database, then the functions behind
``loyalty tiers recalculate`` and ``loyalty jobs run tier-review``, each run twice.

    python -m bench.tier_scale [--members 1000000] [--activity-per-member 4] [--profile]

The program has one tier set: spend over the calendar year (UTC), bronze 0, silver 50,000,
gold 150,000 (minor units), 31 grace days. Each member is given a year's spend, spread evenly
from 0 to 249,999, written as ``--activity-per-member`` ``member_activity`` rows spread over
2026 (so about 20% are bronze, 40% silver, 40% gold), and a points wallet (the row a review
or recalculation locks, as enrolment creates it). What the upgrades inside purchases would
have written is seeded too: a ``member_tiers`` row (review on 1 January 2027, measured from 1
January 2026) and an ``upgrade`` tier change for every silver and gold member, plus a bronze
row for every tenth bronze member; every hundredth member's row is a manual assignment.

Then, at 2026-11-24:

1. the thresholds change (silver 40,000, gold 175,000: some bronze members move up, some gold
   members down); ``recalculate_tiers`` runs as a preview (``apply=False``), then with
   ``apply=True``, then with ``apply=True`` again, which must move no one;
2. ``review_tiers`` runs at 2027-02-15, after the review date and its grace days, so every
   member with a row is due; then again, which must review no one.

Per step: seconds, members/s, and the time of every SQL statement sent (by its first words).
``--profile`` adds the Python functions that took the most time in each step (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from bench.harness import (
    SEED_MEMBERS,
    StatementTimes,
    bench_program,
    scratch_database,
    seed_set_based,
    setting_line,
)
from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.tables import member_tiers, tier_changes
from loyalty.application import programs, tiers
from loyalty.application.access import Principal, Scope, authenticate
from loyalty.application.program_document import ProgramDocument

GOAL = "goal: tier recalculation for 1,000,000 members in <= 60 s, set-based, safe to run twice"

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
REVIEW_NOW = datetime(2027, 2, 15, 3, 0, tzinfo=UTC)
YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)
REVIEW_AT = datetime(2027, 1, 1, tzinfo=UTC)
ENROLLED_AT = datetime(2025, 6, 1, tzinfo=UTC)
SPEND_SPAN = 250_000
"""Members' yearly spend runs evenly over 0 .. SPEND_SPAN - 1 (minor units)."""


def _document(silver: int, gold: int) -> dict[str, Any]:
    return {
        "name": "Tier bench",
        "currency": "EUR",
        "tiers": {
            "metric": "spend",
            "window": {"type": "calendar_year"},
            "max_levels_down": 1,
            "grace_days": 31,
            "levels": [
                {"id": "bronze", "name": "Bronze", "threshold": 0},
                {"id": "silver", "name": "Silver", "threshold": silver},
                {"id": "gold", "name": "Gold", "threshold": gold},
            ],
        },
    }


SEED_DOCUMENT = _document(50_000, 150_000)
CHANGED_DOCUMENT = _document(40_000, 175_000)

# Member m's yearly spend; ids are the engine's shape (prefix, underscore, 26 characters).
_SPEND = "((m::bigint * 7919) % :spend_span)"
_SEED = [
    SEED_MEMBERS,
    (
        "wallets",
        """
        INSERT INTO wallets (program_id, member_id, asset, balance, debt, updated_at)
        SELECT CAST(:program_id AS text), 'mbr_' || lpad(m::text, 26, '0'), 'PTS', 0, 0,
               :enrolled_at
        FROM generate_series(1, :members) AS m
        """,
    ),
    (
        "member_activity",
        f"""
        INSERT INTO member_activity (id, program_id, member_id, event_id, occurred_at,
                                     spend_minor, tier_points, purchases, visit_day)
        SELECT 'act_' || lpad(((m - 1) * :per_member + j)::text, 26, '0'),
               CAST(:program_id AS text), 'mbr_' || lpad(m::text, 26, '0'),
               'evt_' || lpad(((m - 1) * :per_member + j)::text, 26, '0'), at,
               spend, spend / 100, 1, to_char(at, 'YYYY-MM-DD')
        FROM generate_series(1, :members) AS m,
             generate_series(0, :per_member - 1) AS j,
             LATERAL (SELECT :year_start + ((m * 31 + j * 83) % 320) * interval '1 day'
                             + (m % 86400) * interval '1 second' AS at,
                             {_SPEND} / :per_member
                             + CASE WHEN j = 0 THEN {_SPEND} % :per_member ELSE 0 END
                             AS spend) AS row
        """,
    ),
    (
        "member_tiers",
        f"""
        INSERT INTO member_tiers (program_id, member_id, tier_set, tier, since, review_at,
                                  review_from, manual, reason, updated_at)
        SELECT CAST(:program_id AS text), 'mbr_' || lpad(m::text, 26, '0'), 'status', tier,
               :year_start + (m % 300) * interval '1 day', :review_at, :year_start,
               m % 100 = 0, CASE WHEN m % 100 = 0 THEN 'bench' END,
               :year_start + (m % 300) * interval '1 day'
        FROM generate_series(1, :members) AS m,
             LATERAL (SELECT CASE WHEN {_SPEND} >= 150000 THEN 'gold'
                                  WHEN {_SPEND} >= 50000 THEN 'silver'
                                  ELSE 'bronze' END AS tier) AS t
        WHERE tier <> 'bronze' OR m % 10 = 0
        """,
    ),
    (
        "tier_changes",
        """
        INSERT INTO tier_changes (id, program_id, member_id, tier_set, from_tier, to_tier,
                                  reason, metric, at, actor)
        SELECT 'tch_' || substr(member_id, 5), program_id, member_id, tier_set, 'bronze',
               tier, 'upgrade', NULL, since, 'bench'
        FROM member_tiers WHERE tier <> 'bronze'
        """,
    ),
]
_ANALYSE = ["members", "wallets", "member_activity", "member_tiers", "tier_changes"]


def _seed(engine: Engine, program_id: str, *, members: int, per_member: int) -> None:
    params = {
        "program_id": program_id,
        "members": members,
        "per_member": per_member,
        "spend_span": SPEND_SPAN,
        "enrolled_at": ENROLLED_AT,
        "year_start": YEAR_START,
        "review_at": REVIEW_AT,
    }
    seed_set_based(engine, _SEED, params, analyse=_ANALYSE)
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(member_tiers.c.tier, func.count()).group_by(member_tiers.c.tier)
            ).all()
        )
    print(f"  member_tiers rows by tier: {counts}", flush=True)


def _timed(
    engine: Engine, label: str, work: Callable[[], Any], *, members: int, profile: bool
) -> Any:
    """Run ``work`` once, timing it and each statement it sends; ``members`` is what the
    rate is counted in."""
    times = StatementTimes()
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    with times.watching(engine):
        if profiler is not None:
            profiler.enable()
        result = work()
        if profiler is not None:
            profiler.disable()
    elapsed = time.perf_counter() - started
    rate = f" ({members / elapsed:,.0f} members/s)" if members else ""
    print(f"{label}: {elapsed:.1f} s{rate}", flush=True)
    print(f"  result: {result}")
    times.print(elapsed)
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        print("  Python time by function (cProfile, tottime):")
        for line in lines[lines.index(next(x for x in lines if "ncalls" in x)) :]:
            print(f"    {line[:150]}")
    return result


def _short(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "members": report["members"],
        "members_moving": report["members_moving"],
        "changes": {f"{c['from']}->{c['to']}": c["members"] for c in report["changes"]},
    }


def run(*, members: int, per_member: int, profile: bool) -> None:
    print(
        f"tier recalculation and review at scale: PostgreSQL, {members:,} members, "
        f"{per_member} activity rows each ({members * per_member:,}), one process. {GOAL}."
    )
    print(setting_line(), flush=True)
    with scratch_database("postgresql") as url:
        token, program_id = bench_program(url, SEED_DOCUMENT)
        engine = make_engine(url)
        try:
            _seed(engine, program_id, members=members, per_member=per_member)
            principal: Principal = authenticate(engine, token)
            programs.update_program(
                engine,
                principal,
                program_id,
                ProgramDocument.model_validate(CHANGED_DOCUMENT),
                expected_version=None,
                now=NOW,
            )
            print("thresholds changed: silver 50,000 -> 40,000, gold 150,000 -> 175,000")

            def recalculate(apply: bool) -> Callable[[], dict[str, Any]]:
                return lambda: _short(
                    tiers.recalculate_tiers(engine, principal, program_id, now=NOW, apply=apply)
                )

            _timed(
                engine, "recalculate, preview", recalculate(False), members=members, profile=profile
            )
            _timed(
                engine, "recalculate, apply", recalculate(True), members=members, profile=profile
            )
            again = _timed(
                engine,
                "recalculate, apply again",
                recalculate(True),
                members=members,
                profile=profile,
            )
            print(f"  second apply moved {again['members_moving']:,} members (must be 0)")

            with engine.connect() as conn:
                ctx = programs.load_program(conn, principal, program_id, Scope.READ)
                due = conn.execute(select(func.count()).select_from(member_tiers)).scalar_one()
            print(f"member_tiers rows before the review (all due): {due:,}")
            # The second review finds no one due: its time is the search for due members.
            for label, count in (("review", due), ("review again", 0)):
                _timed(
                    engine,
                    label,
                    lambda: tiers.review_tiers(engine, ctx, now=REVIEW_NOW),
                    members=count,
                    profile=profile,
                )
            with engine.connect() as conn:
                changes = conn.execute(select(func.count()).select_from(tier_changes)).scalar_one()
            print(f"tier_changes rows at the end: {changes:,}")
            # Linux reports kilobytes: how much the steps held in Python at once.
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak memory of this process: {peak_mib:,.0f} MiB")
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--activity-per-member", type=int, default=4)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    run(members=args.members, per_member=args.activity_per_member, profile=args.profile)


if __name__ == "__main__":
    main()
