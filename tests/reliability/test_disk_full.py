"""A full disk, on the embedded default: the real server (``loyalty serve``) on a SQLite file on
a small file system of its own (a ``tmpfs`` mounted for the test, so it needs the right to
mount one: root, as on the CI machine; elsewhere the test is skipped, saying so).

With a few megabytes free, a purchase needs a few kilobytes of the database, but each commit
appends its pages to the write-ahead log, which SQLite writes from its start again only once
it has been copied into the database. The server must keep the log from taking the space the
data needs: purchases whose rows fit in the space left are all recorded. Once the disk is
really full, every purchase is answered ``503`` with ``Retry-After`` and the problem code
``storage_unavailable``, never a 500, and nothing half-written; once space is freed, the
same server records them again when retried, without a restart. Afterwards the ledger audit
passes and every acknowledged purchase is stored once.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.adapters.db.tables import events
from loyalty.application.access import Scope, create_api_key
from loyalty.application.audit import audit_ledger
from tests.conftest import NOW
from tests.reliability.test_crash import EARN, Server, expected_points, purchase

DISK_BYTES = 24 * 1024 * 1024
FREE_BYTES = 4 * 1024 * 1024
"""Left free once the database exists: room for the rows of ``FITTING`` purchases several
times over, and for about a hundred commits' worth of log if it only ever grew."""
FITTING = 400
FILL_MAX = 6_000
"""Purchases sent, at most, until the disk is full."""
RETRY_S = 15.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"SKIPPED: a small file system could not be mounted: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the file system."""
    stat = os.statvfs(directory)
    filler = directory / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def _send(http: httpx.Client, url: str, body: dict[str, object], statuses: Counter[int]) -> bool:
    """One attempt: True if acknowledged. Anything but 201 must be the documented 503."""
    r = http.post(url, json=body)
    statuses[r.status_code] += 1
    if r.status_code == 201:
        assert r.json()["points_earned"] == expected_points(int(str(body["total_minor"])))
        return True
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "storage_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    return False


def test_a_full_disk_refuses_purchases_with_503_and_the_server_recovers_when_space_is_freed(
    small_disk, tmp_path
):
    database_url = f"sqlite:///{small_disk / 'loyalty.db'}"
    engine = make_engine(database_url)
    migrate(engine)
    issued = create_api_key(
        engine, tenant_name="disk", name="till", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    server = Server(database_url, tmp_path / "server.log")
    server.start()
    try:
        headers = {"Authorization": f"Bearer {issued.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            r = http.post(
                "/v1/programs",
                json={
                    "name": "Disk",
                    "currency": "EUR",
                    "points": {"earn": EARN},
                    "enrollment": {"auto_enroll_on_purchase": True},
                },
            )
            assert r.status_code == 201, r.text
            url = f"/v1/programs/{r.json()['id']}/events"
            filler = _fill(small_disk, FREE_BYTES)
            statuses: Counter[int] = Counter()
            bodies = [purchase(f"D-{i}", f"M{i % 50}", 500 + i % 7_000) for i in range(FILL_MAX)]

            # Rows that fit in the space left are recorded, however many commits they take.
            for body in bodies[:FITTING]:
                assert _send(http, url, body, statuses), (statuses, server.log.read_text()[-2000:])

            # Until the disk is full: every refusal is the documented 503.
            refused: list[dict[str, object]] = []
            acknowledged = FITTING
            for body in bodies[FITTING:]:
                if _send(http, url, body, statuses):
                    acknowledged += 1
                else:
                    refused.append(body)
                if len(refused) >= 20:
                    break
            assert refused, f"the disk never filled: {statuses}"

            # Space freed: the same server records every refused purchase, retried.
            filler.unlink()
            for body in refused:
                deadline = time.monotonic() + RETRY_S
                while not _send(http, url, body, statuses):
                    assert time.monotonic() < deadline, (body["id"], statuses)
                    time.sleep(0.05)
                acknowledged += 1
        assert statuses[500] == 0
    finally:
        server.stop()

    assert audit_ledger(engine) == []
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
    engine.dispose()
    assert stored == acknowledged
