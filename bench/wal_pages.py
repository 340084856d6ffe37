"""What a group's commit writes on SQLite: groups of purchases of 3-5 lines recorded in-process
through the path concurrent ``POST .../events`` take (``event_groups.record_group``), on a
fresh database whose 1,000 members have each bought a few times, then the write-ahead log
read frame by frame and each page put down to the table or index it belongs to (SQLite's
``dbstat``). Every page a commit changes is written whole to the WAL, and copied again into
the database by the next checkpoint: these are the pages per purchase that cost.

    python -m bench.wal_pages [--group 4] [--groups 50]

Counts, not times: the same on a busy machine as on an idle one.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import struct
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event

from bench.earn_http import PROGRAM, _purchase
from bench.harness import bench_program, scratch_database, setting_line
from loyalty.adapters.db.engine import make_engine
from loyalty.application.access import authenticate
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.event_groups import record_group

MEMBERS = 1_000
HISTORY = 3  # purchases per member before the measured groups
WAL_HEADER = 32
FRAME_HEADER = 24


def wal_header(data: bytes) -> tuple[int, int]:
    """The page size and the checkpoint sequence number (how many times the WAL was written
    from its start again) from the header at the start of a WAL file's ``data``."""
    page_size, restarts = struct.unpack(">II", data[8:16])
    return int(page_size), int(restarts)


def _frames_by_tree(path: str) -> Counter[str]:
    """Frames in the WAL at ``path``, by the table or index their page belongs to."""
    with open(f"{path}-wal", "rb") as wal:
        data = wal.read()
    page_size, _restarts = wal_header(data)
    pages: Counter[int] = Counter()
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(data):
        pages[struct.unpack(">I", data[offset : offset + 4])[0]] += 1
        offset += FRAME_HEADER + page_size
    with sqlite3.connect(path) as conn:
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
    trees: Counter[str] = Counter()
    for page, frames in pages.items():
        trees[owner.get(page, "(free or new page)")] += frames
    return trees


def run(group: int, groups: int) -> None:
    rng = random.Random(7)
    with scratch_database("sqlite") as url:
        path = url.removeprefix("sqlite:///")
        token, program = bench_program(url, PROGRAM)
        engine = make_engine(url)

        @event.listens_for(engine, "connect")
        def _no_checkpoints(dbapi_conn: Any, _record: Any) -> None:
            # Every frame stays in the WAL to be counted (after the engine's own settings).
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

        principal = authenticate(engine, token)

        def record(purchases: list[dict[str, object]]) -> None:
            events = [PurchaseEvent.model_validate(purchase) for purchase in purchases]
            record_group(engine, principal, program, events, now=datetime.now(UTC))

        for round_ in range(HISTORY):
            for start in range(0, MEMBERS, 50):
                record([_purchase(rng, f"H{round_}-{n}", n) for n in range(start, start + 50)])
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all()
        for number in range(groups):
            record([_purchase(rng, f"O{number}-{n}", rng.randrange(MEMBERS)) for n in range(group)])
        trees = _frames_by_tree(path)  # before the last connection closes and empties the WAL
        engine.dispose()
    total = sum(trees.values())
    print(
        f"sqlite: {groups} groups of {group} purchases: {total / groups:.1f} pages written"
        f" per commit, {total / groups / group:.1f} per purchase"
    )
    for name, frames in trees.most_common():
        print(f"  {frames / groups:6.2f} per commit  {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--group", type=int, default=4, help="purchases per group")
    parser.add_argument("--groups", type=int, default=50, help="groups measured")
    args = parser.parse_args(argv)
    print(setting_line())
    run(args.group, args.groups)


if __name__ == "__main__":
    main()
