"""Reading events from CSV, Parquet or JSON Lines for ``loyalty events import`` and
``loyalty simulate``.

JSON Lines: one event per line, exactly as the API takes it.

CSV: one row per purchase line (or one row for an event without lines), with the columns
``type,id,member_external_id,member_id,occurred_at,currency,total_minor,channel,store,order_id,
action,line_id,sku,name,category,brand,kind,quantity,unit_price_minor,discount_minor``.
Consecutive
rows with the same ``type`` and ``id`` form one event.

Parquet (``.parquet``): the CSV's columns and rows; numbers may be integer columns and
``occurred_at`` a timestamp column (one without a zone is read as UTC).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from loyalty.application.event_documents import Event
from loyalty.application.events import AnyEvent

EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)

LINE_FIELDS = ("line_id", "sku", "name", "category", "brand", "kind")
INT_LINE_FIELDS = ("quantity", "unit_price_minor", "discount_minor")


@dataclass(frozen=True, slots=True)
class ParsedRow:
    """One event read from the file: ``event`` or, if it could not be parsed, ``error``."""

    location: str
    source_id: str | None
    event: AnyEvent | None
    error: str | None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _parse(raw: Any, location: str) -> ParsedRow:
    source_id = raw.get("id") if isinstance(raw, dict) else None
    if _has_nul(raw):
        shown_id = source_id if isinstance(source_id, str) else None
        return ParsedRow(location, shown_id, None, "text must not contain NUL characters")
    try:
        event = EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        return ParsedRow(location, source_id, None, _validation_message(exc))
    return ParsedRow(location, event.id, event, None)


def read_jsonl(path: Path) -> Iterator[ParsedRow]:
    with path.open(encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                yield ParsedRow(f"line {number}", None, None, f"invalid JSON: {exc.msg}")
                continue
            yield _parse(raw, f"line {number}")


def _int(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def _event_from_rows(rows: list[dict[str, str]]) -> dict[str, Any]:
    first = rows[0]
    kind = first.get("type", "")
    event: dict[str, Any] = {
        "type": kind,
        "id": first.get("id", ""),
        "occurred_at": first.get("occurred_at", ""),
    }
    if first.get("member_id"):
        event["member"] = {"id": first["member_id"]}
    elif first.get("member_external_id"):
        event["member"] = {"external_id": first["member_external_id"]}
    if kind == "purchase":
        event["currency"] = first.get("currency", "")
        event["total_minor"] = _int(first.get("total_minor", ""))
        for optional in ("channel", "store"):
            if first.get(optional):
                event[optional] = first[optional]
    elif kind == "return":
        event["order_id"] = first.get("order_id", "")
    elif kind == "action":
        event["action"] = first.get("action", "")
    lines = []
    for row in rows:
        if not (row.get("sku") or row.get("unit_price_minor") or row.get("line_id")):
            continue
        line: dict[str, Any] = {k: row[k] for k in LINE_FIELDS if row.get(k)}
        line.update({k: _int(row[k]) for k in INT_LINE_FIELDS if row.get(k)})
        if kind == "return":
            line = {k: v for k, v in line.items() if k in ("line_id", "sku", "quantity")}
        lines.append(line)
    if lines:
        event["lines"] = lines
    return event


def _grouped(rows: Iterable[dict[str, str]], first_row: int) -> Iterator[ParsedRow]:
    """Consecutive rows with the same ``type`` and ``id`` form one event."""
    group: list[dict[str, str]] = []
    start = number = first_row
    for number, row in enumerate(rows, start=first_row):
        if group and (row.get("type"), row.get("id")) != (
            group[0].get("type"),
            group[0].get("id"),
        ):
            yield _parse(_event_from_rows(group), f"rows {start}-{number - 1}")
            group, start = [], number
        group.append(row)
    if group:
        yield _parse(_event_from_rows(group), f"rows {start}-{number}")


def read_csv(path: Path) -> Iterator[ParsedRow]:
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        yield from _grouped(csv.DictReader(fh), first_row=2)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # Parquet timestamps without a zone are UTC
            value = value.replace(tzinfo=UTC)
        return str(value.isoformat())
    return str(value)


def read_parquet(path: Path) -> Iterator[ParsedRow]:
    """The CSV layout as Parquet columns (any column type that reads as the CSV text would),
    read in record batches so a year of history never sits in memory as Python objects."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is in the dev and parquet extras
        raise SystemExit(
            "Reading Parquet needs pyarrow: pip install 'loyalty-engine[parquet]'"
        ) from None

    def rows() -> Iterator[dict[str, str]]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            for row in batch.to_pylist():
                yield {key: _text(value) for key, value in row.items()}

    # Row numbers count from 1, as a Parquet viewer shows them.
    yield from _grouped(rows(), first_row=1)


def read_events(path: Path) -> Iterator[ParsedRow]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".parquet":
        return read_parquet(path)
    return read_jsonl(path)
