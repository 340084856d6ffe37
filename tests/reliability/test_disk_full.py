"""A full disk: the real server (``loyalty serve``) with its database on a small file system of
its own, a ``tmpfs`` mounted for the test (so it needs the right to mount one: root, as on the
CI machine; elsewhere the test is skipped, saying so). On SQLite the database file lies there;
on PostgreSQL a cluster of the test's own (``initdb``, as ``test_db_faults`` makes one).

Once the database exists, a file takes all but a few megabytes. Every purchase is then either
recorded (``201``) or refused with ``503``, ``Retry-After`` and the problem code
``storage_unavailable``: never a 500, and nothing half-written. Once the file is deleted (and,
on PostgreSQL, the server started again: it shuts itself down when it can't write its log, and
can't recover without room), the same engine process records every refused purchase when it
is retried. Afterwards the ledger audit passes and every acknowledged purchase is stored once.

On SQLite, more: a purchase needs a few kilobytes of the database, but each commit appends its
pages to the write-ahead log, which SQLite writes from its start again only once it has been
copied into the database. The server must keep the log from taking the room the data needs:
purchases whose rows fit in the space left are all recorded.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.adapters.db.tables import events
from loyalty.application.access import Scope, create_api_key
from loyalty.application.audit import audit_ledger
from tests.conftest import CI, NOW
from tests.reliability.test_crash import Server, earning_program, expected_points, purchase
from tests.reliability.test_db_faults import Cluster, check_unavailable, make_cluster

DISK_BYTES = {"sqlite": 24 * 1024 * 1024, "postgresql": 160 * 1024 * 1024}
"""PostgreSQL's cluster takes about 60 MB of it, its log in files of 16 MB."""
FREE_BYTES = 4 * 1024 * 1024
"""Left free once the database exists: on SQLite, room for the rows of ``FITTING`` purchases
several times over, and for about a hundred commits' worth of log if it only ever grew."""
FITTING = {"sqlite": 400, "postgresql": 0}
"""Purchases that must all be recorded before any is refused (PostgreSQL takes its log's next
file whole, wherever the data stands)."""
FILL_MAX = 6_000
"""Purchases sent, at most, until the disk is full."""
RETRY_S = 15.0
RECOVERY_S = 60.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def small_disk(request: pytest.FixtureRequest) -> Iterator[Store]:
    kind = request.param
    # Under /tmp itself: PostgreSQL runs as another user, who can't reach into tmp_path.
    mount = Path(tempfile.mkdtemp(prefix="loyalty-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES[kind]}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"SKIPPED: a small file system could not be mounted: {done.stderr.strip()}")
    cluster: Cluster | None = None
    try:
        if kind == "sqlite":
            yield Store(kind, mount, f"sqlite:///{mount / 'loyalty.db'}", None)
            return
        workdir = mount / "pg"
        workdir.mkdir()
        cluster, why = make_cluster(str(workdir))
        if cluster is None:
            reason = f"CANNOT START A DATABASE OF OUR OWN HERE, disk-full test not run: {why}"
            if CI:
                pytest.fail(reason)
            pytest.skip(reason)
        yield Store(kind, mount, cluster.create_database(), cluster)
    finally:
        if cluster is not None:
            cluster.destroy()
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


@dataclass
class Store:
    kind: str
    mount: Path
    database_url: str
    cluster: Cluster | None

    def recover(self, engine: Engine) -> None:
        """Space was freed: wait for PostgreSQL, which restarts itself after failing to write
        its log, and start it again if it shut itself down (its recovery found no room)."""
        if self.cluster is None:
            return
        deadline = time.monotonic() + RECOVERY_S
        while True:
            try:
                with engine.connect():
                    return
            except OperationalError:
                pass
            if not self._running():
                self.cluster.start()
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.2)

    def _running(self) -> bool:
        assert self.cluster is not None
        data = f"{self.cluster.workdir}/data"
        status = subprocess.run(
            [*self.cluster.prefix, self.cluster.pg_ctl, "-D", data, "status"], capture_output=True
        )
        return status.returncode == 0


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
    assert check_unavailable(r) is None, check_unavailable(r)
    return False


def test_a_full_disk_refuses_purchases_with_503_and_the_server_recovers_when_space_is_freed(
    small_disk, tmp_path
):
    store: Store = small_disk
    database_url = store.database_url
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
            url = f"/v1/programs/{earning_program(server.url, issued.token, 'Disk')}/events"
            filler = _fill(store.mount, FREE_BYTES)
            statuses: Counter[int] = Counter()
            bodies = [purchase(f"D-{i}", f"M{i % 50}", 500 + i % 7_000) for i in range(FILL_MAX)]

            # Rows that fit in the space left are recorded, however many commits they take.
            fitting = FITTING[store.kind]
            for body in bodies[:fitting]:
                assert _send(http, url, body, statuses), (statuses, server.log.read_text()[-2000:])

            # Until the disk is full: every refusal is the documented 503.
            refused: list[dict[str, object]] = []
            acknowledged = fitting
            for body in bodies[fitting:]:
                if _send(http, url, body, statuses):
                    acknowledged += 1
                else:
                    refused.append(body)
                if len(refused) >= 20:
                    break
            assert refused, f"the disk never filled: {statuses}"

            # Space freed: the same server records every refused purchase, retried.
            filler.unlink()
            store.recover(engine)
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
