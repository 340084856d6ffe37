"""Crash recovery: the real server (``loyalty serve``) is killed with SIGKILL while client
threads post purchases, restarted, and the clients retry everything that wasn't
acknowledged, with the same event ids. Afterwards every purchase is recorded exactly once,
``loyalty ledger audit`` passes, and every member's balance equals what the program's earn
rate gives, computed here independently from the purchases sent.

The normal suite kills the server twice per database; ``LOYALTY_RELIABILITY_FULL=1`` (``make
test-reliability``) kills it five times under a larger load.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.adapters.db.tables import events, journal_entries
from loyalty.application.access import Scope, create_api_key
from tests.conftest import _PG, NOW

FULL = os.environ.get("LOYALTY_RELIABILITY_FULL") == "1"
KILLS = 5 if FULL else 2
THREADS = 4 if FULL else 3
EVENTS_PER_THREAD = 400 if FULL else 40
MEMBERS = 12
REPORT = os.environ.get("LOYALTY_RELIABILITY_REPORT")
BIN = Path(sys.executable).parent
# Bounds, not expectations: a run that needs longer than these has hung.
SERVER_START_S = 60.0
RUN_S = 600.0

# The program's earn rate, and the same rule written independently of the engine.
EARN_POINTS = 3
EARN_PER_SPEND_MINOR = 250
EARN = {"points": EARN_POINTS, "per_spend_minor": EARN_PER_SPEND_MINOR, "rounding": "floor"}


def expected_points(total_minor: int) -> int:
    return total_minor * EARN_POINTS // EARN_PER_SPEND_MINOR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``loyalty serve`` in its own process group, restartable on the same port."""

    database_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    """Settings for the server process, over this process's environment."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "loyalty"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--database-url",
                    self.database_url,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        self.starts += 1
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        assert self.process.returncode == -signal.SIGKILL
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    replayed: int = 0
    attempts: int = 0
    connection_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def purchase(order_id: str, member: str, total_minor: int) -> dict[str, Any]:
    return {
        "type": "purchase",
        "id": order_id,
        "member": {"external_id": member},
        "occurred_at": NOW.isoformat(),
        "currency": "EUR",
        "total_minor": total_minor,
    }


def earning_program(server_url: str, token: str, name: str) -> str:
    """A program earning ``EARN`` and enrolling on purchase, made on the server at
    ``server_url`` with the admin key ``token``: its id."""
    r = httpx.post(
        f"{server_url}/v1/programs",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "name": name,
            "currency": "EUR",
            "points": {"earn": EARN},
            "enrollment": {"auto_enroll_on_purchase": True},
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def plan(thread: int) -> list[dict[str, Any]]:
    """The purchases one client thread sends: its own ids, members shared by all threads."""
    return [
        purchase(
            f"T{thread}-{i}",
            f"M{(thread * 7 + i) % MEMBERS}",
            (thread + 1) * 137 + i * 991 % 20_000,
        )
        for i in range(EVENTS_PER_THREAD)
    ]


def client(
    server: Server, url: str, token: str, bodies: list[dict[str, Any]], tally: Tally
) -> None:
    """Post each purchase until it is acknowledged (201), retrying the same body after a
    connection error, a timeout or 503, as a till would."""
    deadline = time.monotonic() + RUN_S
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10.0) as http:
        for body in bodies:
            while True:
                if time.monotonic() > deadline:
                    with tally.lock:
                        tally.failures.append(f"{body['id']}: never acknowledged")
                    return
                with tally.lock:
                    tally.attempts += 1
                try:
                    r = http.post(f"{server.url}{url}", json=body)
                except httpx.TransportError:
                    with tally.lock:
                        tally.connection_errors += 1
                    time.sleep(0.02)  # back-off while the server restarts
                    continue
                with tally.lock:
                    tally.statuses[r.status_code] += 1
                if r.status_code == 503:
                    time.sleep(0.02)
                    continue
                with tally.lock:
                    if r.status_code != 201:
                        tally.failures.append(f"{body['id']}: {r.status_code} {r.text[:500]}")
                    else:
                        tally.acknowledged[body["id"]] = r.json()
                        tally.replayed += r.headers.get("Idempotent-Replayed") == "true"
                break


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "loyalty"), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of its own: a SQLite file, or a new PostgreSQL database on
    the test server (dropped when the session ends)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'crash.db'}"
    else:
        if _PG["server"] is None:
            pytest.skip(f"PostgreSQL unavailable: {_PG['why']}")
        url = _PG["server"].create_database()
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url


GROUPING = {
    # Every purchase in a transaction of its own.
    "alone": {"LOYALTY_GROUP_COMMIT": "off"},
    # Group commit with its leader waiting for more: the kills land while groups are open.
    "grouped": {"LOYALTY_GROUP_COMMIT": "on", "LOYALTY_GROUP_COMMIT_WAIT_MS": "20"},
}


@pytest.mark.parametrize("grouping", sorted(GROUPING))
def test_sigkill_mid_load_loses_and_duplicates_nothing(database_url, tmp_path, grouping):
    engine = make_engine(database_url)
    issued = create_api_key(
        engine, tenant_name="crash", name="till", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    server = Server(database_url, tmp_path / "server.log", env=GROUPING[grouping])
    server.start()
    try:
        program = earning_program(server.url, issued.token, "Crash")
        url = f"/v1/programs/{program}/events"
        plans = [plan(t) for t in range(THREADS)]
        total = sum(len(p) for p in plans)
        tally = Tally()
        threads = [
            threading.Thread(target=client, args=(server, url, issued.token, p, tally))
            for p in plans
        ]
        for t in threads:
            t.start()
        # Kill at evenly spread points of progress, while every client is still sending.
        deadline = time.monotonic() + RUN_S
        for k in range(1, KILLS + 1):
            while len(tally.acknowledged) < total * k // (KILLS + 1):
                assert time.monotonic() < deadline, "the load stopped making progress"
                assert any(t.is_alive() for t in threads), tally.failures[:5]
                time.sleep(0.005)
            server.kill()
            server.start()
        for t in threads:
            t.join(timeout=RUN_S)
            assert not t.is_alive()
        assert tally.failures == []
        assert server.kills == KILLS

        # Every purchase acknowledged, each with the points the earn rate gives.
        sent = {b["id"]: b for p in plans for b in p}
        assert set(tally.acknowledged) == set(sent)
        for order_id, answer in tally.acknowledged.items():
            assert answer["order_id"] == order_id
            assert answer["points_earned"] == expected_points(sent[order_id]["total_minor"])

        # Recorded exactly once: one event and one earn entry per purchase.
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    events.c.source_id, events.c.id, events.c.points, events.c.received_at
                ).where(events.c.program_id == program, events.c.type == "purchase")
            ).all()
            earn_entries = conn.execute(
                select(func.count())
                .select_from(journal_entries)
                .where(journal_entries.c.program_id == program)
            ).scalar_one()
        assert sorted(r.source_id for r in rows) == sorted(sent)
        assert {r.source_id: r.id for r in rows} == {
            o: a["event_id"] for o, a in tally.acknowledged.items()
        }
        assert earn_entries == total
        # A group's purchases share their transaction's time: groups did form under the load
        # the kills interrupted.
        if grouping == "grouped":
            assert len({r.received_at for r in rows}) < len(rows)

        # Each member's balance, recomputed from the purchases sent.
        expected: Counter[str] = Counter()
        for body in sent.values():
            expected[body["member"]["external_id"]] += expected_points(body["total_minor"])
        auth = {"Authorization": f"Bearer {issued.token}"}
        for member, points in sorted(expected.items()):
            b = httpx.get(
                f"{server.url}/v1/programs/{program}/members/ext:{member}/balance",
                headers=auth,
                timeout=30,
            )
            assert b.status_code == 200, b.text
            assert (member, b.json()["balance"], b.json()["available"]) == (
                member,
                points,
                points,
            )
        assert len(expected) == MEMBERS

        # Sent once more, every purchase is a replay of what was recorded.
        for order_id in list(sent)[:: max(1, total // 50)]:
            again = httpx.post(f"{server.url}{url}", json=sent[order_id], headers=auth, timeout=30)
            assert again.status_code == 201, again.text
            assert again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["event_id"] == tally.acknowledged[order_id]["event_id"]
    finally:
        server.stop()
        engine.dispose()

    audit = run_cli("ledger", "audit", "--database-url", database_url)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "Ledger audit passed" in audit.stdout
    # The server's own log of the whole run never shows the key's secret.
    assert issued.token.partition(".")[2] not in server.log.read_text()

    if REPORT:
        with open(REPORT, "a") as fh:
            record = {
                "test": "crash",
                "database": database_url.split(":", 1)[0],
                "grouping": grouping,
                "kills": server.kills,
                "starts": server.starts,
                "threads": THREADS,
                "events": total,
                "members": MEMBERS,
                "attempts": tally.attempts,
                "connection_errors": tally.connection_errors,
                "replayed": tally.replayed,
                "statuses": dict(tally.statuses),
            }
            fh.write(json.dumps(record) + "\n")
