"""Database faults: the real server (``loyalty serve``) keeps running while its PostgreSQL
sessions are killed, or the whole PostgreSQL server is stopped and started again, under a load
of purchases with ids chosen by the clients.

Every answer must be ``201`` (the first answer or an idempotent replay) or ``503`` with a
``Retry-After`` header and an ``application/problem+json`` body with the code
``storage_unavailable``: never a 500, never a hang past the client's timeout, never a lost
connection (the server is never restarted). The clients retry every ``503`` with the same body
until it is acknowledged. Afterwards every purchase is recorded exactly once, with one complete
journal entry, ``loyalty ledger audit`` passes, and every member's balance equals what the
program's earn rate gives, computed here from the purchases sent.

The normal suite kills the sessions three times and restarts the database once;
``LOYALTY_RELIABILITY_FULL=1`` (``make test-reliability``) does more of each under a larger load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.adapters.db.tables import events, journal_entries, lots, postings
from loyalty.application.access import Scope, create_api_key
from tests.conftest import _PG, CI, NOW
from tests.postgres import _free_port, _pg_bin
from tests.reliability.test_crash import (
    Server,
    earning_program,
    expected_points,
    purchase,
    run_cli,
)

pytestmark = pytest.mark.postgresql

FULL = os.environ.get("LOYALTY_RELIABILITY_FULL") == "1"
REPORT = os.environ.get("LOYALTY_RELIABILITY_REPORT")
THREADS = 4 if FULL else 3
EVENTS_PER_THREAD = 400 if FULL else 50
MEMBERS = 12
KILL_ROUNDS = 20 if FULL else 3
RESTARTS = 4 if FULL else 1
DOWN_S = 2.0 if FULL else 0.6
"""How long the database stays stopped: long enough for every client to be refused."""
# A real client waits the whole Retry-After; these wait less so the test stays short.
RETRY_AFTER_WAIT_S_MAX = 0.1
# Bounds, not expectations: an answer slower than CLIENT_TIMEOUT_S counts as a hang.
CLIENT_TIMEOUT_S = 15.0
RUN_S = 600.0
PROBLEM_JSON = "application/problem+json"


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: int = 0
    replayed: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    """Purchases answered 503 at least once before they were acknowledged."""
    refused_then_replayed: int = 0
    """Of those, acknowledged by a replay: the 503 came after the commit."""
    slowest_503_s: float = 0.0


def check_unavailable(r: httpx.Response) -> str | None:
    """What is wrong with a 503, or None if it is the documented problem."""
    retry_after = r.headers.get("Retry-After", "")
    if not retry_after.isdigit() or int(retry_after) < 1:
        return f"503 without a usable Retry-After ({retry_after!r})"
    if not r.headers.get("Content-Type", "").startswith(PROBLEM_JSON):
        return f"503 as {r.headers.get('Content-Type')!r}"
    body = r.json()
    if (body.get("status"), body.get("code")) != (503, "storage_unavailable"):
        return f"503 with the body {body!r}"
    return None


def client(url: str, token: str, bodies: list[dict[str, Any]], tally: Tally) -> None:
    """Post each purchase until it is acknowledged, retrying the same body after a 503 (and,
    though the server should never drop one, after a connection error or a timeout)."""
    deadline = time.monotonic() + RUN_S
    with httpx.Client(
        headers={"Authorization": f"Bearer {token}"}, timeout=CLIENT_TIMEOUT_S
    ) as http:
        for body in bodies:
            while True:
                if time.monotonic() > deadline:
                    with tally.lock:
                        tally.failures.append(f"{body['id']}: never acknowledged")
                    return
                with tally.lock:
                    tally.attempts += 1
                sent_at = time.monotonic()
                try:
                    r = http.post(url, json=body)
                except httpx.TransportError as exc:
                    with tally.lock:
                        tally.transport_errors.append(f"{body['id']}: {exc!r}")
                    time.sleep(0.05)
                    continue
                elapsed_s = time.monotonic() - sent_at
                with tally.lock:
                    tally.statuses[r.status_code] += 1
                if r.status_code == 503:
                    wrong = check_unavailable(r)
                    with tally.lock:
                        tally.refused.add(body["id"])
                        tally.slowest_503_s = max(tally.slowest_503_s, elapsed_s)
                        if wrong:
                            tally.failures.append(f"{body['id']}: {wrong}")
                    time.sleep(min(int(r.headers.get("Retry-After", "1")), RETRY_AFTER_WAIT_S_MAX))
                    continue
                with tally.lock:
                    if r.status_code != 201:
                        tally.failures.append(f"{body['id']}: {r.status_code} {r.text[:500]}")
                    else:
                        replayed = r.headers.get("Idempotent-Replayed") == "true"
                        tally.acknowledged[body["id"]] = r.json()
                        tally.replayed += replayed
                        tally.refused_then_replayed += replayed and body["id"] in tally.refused
                break


def plan(thread: int) -> list[dict[str, Any]]:
    """The purchases one client thread sends: ids of its own, members shared by all threads,
    totals of at least 250 minor units so that each earns points and posts an entry."""
    return [
        purchase(
            f"F{thread}-{i}",
            f"M{(thread * 5 + i) % MEMBERS}",
            250 + (thread * 389 + i * 911) % 9_000,
        )
        for i in range(EVENTS_PER_THREAD)
    ]


@dataclass
class Load:
    """The server, a program on it, and client threads posting purchases to it."""

    server: Server
    token: str
    program: str
    plans: list[list[dict[str, Any]]]
    tally: Tally = field(default_factory=Tally)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(p) for p in self.plans)

    def start(self) -> None:
        url = f"{self.server.url}/v1/programs/{self.program}/events"
        self.threads = [
            threading.Thread(target=client, args=(url, self.token, p, self.tally), daemon=True)
            for p in self.plans
        ]
        for t in self.threads:
            t.start()

    def wait_for(self, acknowledged: int, deadline: float) -> None:
        """Until ``acknowledged`` purchases are (the load is still running)."""
        while len(self.tally.acknowledged) < acknowledged:
            assert time.monotonic() < deadline, "the load stopped making progress"
            assert any(t.is_alive() for t in self.threads), self.tally.failures[:5]
            time.sleep(0.005)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=RUN_S)
            assert not t.is_alive(), "a client is still sending"


@contextmanager
def running_load(database_url: str, log: Path, *, threads: int = THREADS) -> Iterator[Load]:
    """A key made directly in the database, then the server, a program over HTTP and the
    client threads. The server is stopped on the way out; its log of the whole run must never
    show the key's secret."""
    engine = make_engine(database_url)
    try:
        issued = create_api_key(
            engine,
            tenant_name="faults",
            name="till",
            scopes=[Scope.ADMIN],
            program_id=None,
            now=NOW,
        )
    finally:
        engine.dispose()
    server = Server(database_url, log)
    try:
        server.start()
        program = earning_program(server.url, issued.token, "Database faults")
        load = Load(server, issued.token, program, [plan(t) for t in range(threads)])
        load.start()
        yield load
    finally:
        server.stop()
    assert issued.token.partition(".")[2] not in log.read_text()


def assert_recorded_exactly_once(load: Load, database_url: str) -> None:
    """Every purchase acknowledged with the right points, one event and one whole journal
    entry each, balances equal to the recomputation, the audit passes, and the server
    process that started the run is the one still answering."""
    tally, server = load.tally, load.server
    assert tally.failures == [], tally.failures[:10]
    assert tally.transport_errors == [], tally.transport_errors[:10]
    assert set(tally.statuses) <= {201, 503}, tally.statuses
    assert server.starts == 1
    assert server.process is not None
    assert server.process.poll() is None, "the server exited"

    sent = {b["id"]: b for p in load.plans for b in p}
    assert set(tally.acknowledged) == set(sent)
    for order_id, answer in tally.acknowledged.items():
        assert answer["order_id"] == order_id
        assert answer["points_earned"] == expected_points(sent[order_id]["total_minor"])

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(events.c.source_id, events.c.id, events.c.entry_id, events.c.points).where(
                    events.c.program_id == load.program, events.c.type == "purchase"
                )
            ).all()
            entry_ids = set(
                conn.execute(
                    select(journal_entries.c.id).where(journal_entries.c.program_id == load.program)
                ).scalars()
            )
            legs = dict(
                conn.execute(
                    select(postings.c.entry_id, func.count())
                    .where(postings.c.program_id == load.program)
                    .group_by(postings.c.entry_id)
                    .having(func.sum(postings.c.amount) == 0)
                ).all()
            )
            lot_points = dict(
                conn.execute(
                    select(lots.c.entry_id, lots.c.amount).where(lots.c.program_id == load.program)
                ).all()
            )
    finally:
        engine.dispose()
    assert sorted(r.source_id for r in rows) == sorted(sent), "not one event per purchase"
    assert {r.source_id: r.id for r in rows} == {
        o: a["event_id"] for o, a in tally.acknowledged.items()
    }
    # No partial posting: each event has its entry, each entry balanced postings and its lot.
    assert {r.entry_id for r in rows} == entry_ids
    assert len(entry_ids) == load.total
    assert set(legs) == entry_ids and min(legs.values()) >= 2
    assert {r.entry_id: r.points for r in rows} == lot_points

    expected: Counter[str] = Counter()
    for body in sent.values():
        expected[body["member"]["external_id"]] += expected_points(body["total_minor"])
    assert len(expected) == MEMBERS
    for member, points in sorted(expected.items()):
        b = httpx.get(
            f"{server.url}/v1/programs/{load.program}/members/ext:{member}/balance",
            headers={"Authorization": f"Bearer {load.token}"},
            timeout=30,
        )
        assert b.status_code == 200, b.text
        assert (member, b.json()["balance"], b.json()["available"]) == (member, points, points)

    audit = run_cli("ledger", "audit", "--database-url", database_url)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "Ledger audit passed" in audit.stdout


def report(test: str, load: Load, elapsed_s: float, **faults: Any) -> None:
    tally = load.tally
    record = {
        "test": test,
        "full": FULL,
        "threads": THREADS,
        "events": load.total,
        "members": MEMBERS,
        "attempts": tally.attempts,
        "statuses": dict(tally.statuses),
        "purchases_refused_at_least_once": len(tally.refused),
        "refused_then_replayed": tally.refused_then_replayed,
        "replayed": tally.replayed,
        "slowest_503_s": round(tally.slowest_503_s, 3),
        "elapsed_s": round(elapsed_s, 1),
        **faults,
    }
    print(json.dumps(record))
    if REPORT:
        with open(REPORT, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def terminate_backends(admin_url: str, database: str) -> tuple[int, int]:
    """``pg_terminate_backend`` every client session on ``database``, from a connection to
    another database. Returns (sessions ended, of which inside a transaction or statement)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid), state <> 'idle' FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            (database,),
        ).fetchall()
    return sum(1 for ended, _ in rows if ended), sum(1 for ended, busy in rows if ended and busy)


@pytest.fixture
def shared_server_database() -> Iterator[tuple[str, str]]:
    """A fresh, migrated database on the test PostgreSQL server, and its maintenance URL."""
    if _PG["server"] is None:
        pytest.skip(f"PostgreSQL unavailable: {_PG['why']}")
    url = _PG["server"].create_database()
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url, _PG["server"].admin_url


def test_killed_sessions_answer_503_and_lose_nothing(shared_server_database, tmp_path):
    database_url, admin_url = shared_server_database
    database = database_url.rpartition("/")[2]
    started = time.monotonic()
    ended = busy_ended = 0
    with running_load(database_url, tmp_path / "server.log") as load:
        deadline = time.monotonic() + RUN_S
        for k in range(1, KILL_ROUNDS + 1):
            load.wait_for(load.total * k // (KILL_ROUNDS + 1), deadline)
            # One round ends every session at once; repeat it (briefly) until it has caught at
            # least one in the middle of a transaction, which is what a client sees as a 503.
            for _ in range(50):
                n, busy = terminate_backends(admin_url, database)
                ended, busy_ended = ended + n, busy_ended + busy
                if busy:
                    break
                time.sleep(0.002)
        load.join()
        assert_recorded_exactly_once(load, database_url)
        assert load.tally.statuses[503] >= 1, "no kill was ever seen by a client"
    report(
        "db_faults_kill",
        load,
        time.monotonic() - started,
        kill_rounds=KILL_ROUNDS,
        sessions_ended=ended,
        sessions_ended_mid_transaction=busy_ended,
    )


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test's own, which it stops and starts again on the same
    data directory and port (``tests/postgres.py``'s throwaway cluster can only be thrown
    away)."""

    workdir: str
    pg_ctl: str
    prefix: list[str]
    user: str
    port: int = field(default_factory=_free_port)

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def pg_ctl_run(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", os.path.join(self.workdir, "data"), *args],
            check=check,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl_run("-l", os.path.join(self.workdir, "log"), "-o", options, "-w", "start")

    def stop(self, mode: str) -> None:
        """``fast`` ends every session and checks the data in; ``immediate`` is a crash."""
        self.pg_ctl_run("-m", mode, "-w", "stop")

    def destroy(self) -> None:
        self.pg_ctl_run("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def create_database(self) -> str:
        name = f"loyalty_fault_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"


def make_cluster(workdir: str) -> tuple[Cluster | None, str]:
    """A new cluster in ``workdir``, started; or None and why there can't be one here."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        return None, "no initdb/pg_ctl on PATH or under /usr/lib/postgresql"
    prefix: list[str] = []
    user = os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the cluster as the postgres system user.
        if shutil.which("runuser") is None:
            return None, "running as root without runuser to run PostgreSQL as postgres"
        prefix, user = ["runuser", "-u", "postgres", "--"], "postgres"
        shutil.chown(workdir, user="postgres")
    data = os.path.join(workdir, "data")
    try:
        subprocess.run(
            [*prefix, initdb, "-D", data, "-A", "trust", "-U", user],
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster = Cluster(workdir, pg_ctl, prefix, user)
        cluster.start()
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"initdb or pg_ctl start failed: {exc!r}"
    return cluster, "started"


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """One cluster for this module's tests that stop the database (each leaves it running)."""
    if os.environ.get("LOYALTY_TEST_SKIP_POSTGRES") == "1" and not CI:
        pytest.skip("LOYALTY_TEST_SKIP_POSTGRES=1")
    workdir = tempfile.mkdtemp(prefix="loyalty-pgfault-")
    cluster, why = make_cluster(workdir)
    if cluster is None:
        shutil.rmtree(workdir, ignore_errors=True)
        reason = f"CANNOT STOP A DATABASE OF OUR OWN HERE, database-restart tests not run: {why}"
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster.destroy()


def fresh_database(cluster: Cluster) -> str:
    database_url = cluster.create_database()
    engine = make_engine(database_url)
    migrate(engine)
    engine.dispose()
    return database_url


def test_database_restart_answers_503_then_recovers(own_cluster, tmp_path):
    cluster = own_cluster
    database_url = fresh_database(cluster)
    started = time.monotonic()
    modes = ["fast", "immediate"]
    refused_while_down: list[int] = []
    health_while_down: Counter[int] = Counter()
    with running_load(database_url, tmp_path / "server.log") as load:
        deadline = time.monotonic() + RUN_S
        for k in range(1, RESTARTS + 1):
            load.wait_for(load.total * k // (RESTARTS + 1), deadline)
            cluster.stop(modes[(k - 1) % len(modes)])
            before = load.tally.statuses[503]
            down_until = time.monotonic() + DOWN_S
            while time.monotonic() < down_until:
                # The process itself keeps answering while its database is away.
                health = httpx.get(f"{load.server.url}/healthz", timeout=CLIENT_TIMEOUT_S)
                health_while_down[health.status_code] += 1
                time.sleep(0.05)
            refused_while_down.append(load.tally.statuses[503] - before)
            cluster.start()
        load.join()
        assert_recorded_exactly_once(load, database_url)
        assert health_while_down and set(health_while_down) == {200}, health_while_down
        assert min(refused_while_down) >= 1, f"503s while down: {refused_while_down}"
    report(
        "db_faults_restart",
        load,
        time.monotonic() - started,
        restarts=RESTARTS,
        stop_modes=[modes[(k - 1) % len(modes)] for k in range(1, RESTARTS + 1)],
        down_s=DOWN_S,
        refused_while_down=refused_while_down,
    )


READS = {
    "programs": "/v1/programs",
    "program": "/v1/programs/{p}",
    "members": "/v1/programs/{p}/members",
    "member": "/v1/programs/{p}/members/ext:M1",
    "balance": "/v1/programs/{p}/members/ext:M1/balance",
    "ledger": "/v1/programs/{p}/members/ext:M1/ledger",
    "expiring_points": "/v1/programs/{p}/expiring-points",
    "drafts": "/v1/programs/{p}/drafts",
    "stamp_cards": "/v1/programs/{p}/members/ext:M1/stamp-cards",
    "tier": "/v1/programs/{p}/members/ext:M1/tier",
    "memberships": "/v1/programs/{p}/members/ext:M1/memberships",
    "api_keys": "/v1/api-keys",
}
"""Reads a till or an app makes, asked while the database is stopped."""


@pytest.fixture(scope="module")
def reads_while_down(own_cluster, tmp_path_factory) -> Iterator[dict[str, httpx.Response | str]]:
    """Each of READS asked once right after the database stopped, by a server that has just
    authenticated the key (so the reads get past authentication, which caches a key for a few
    seconds, and into their use cases). The database is started again afterwards."""
    database_url = fresh_database(own_cluster)
    log = tmp_path_factory.mktemp("reads") / "server.log"
    with running_load(database_url, log, threads=0) as load:
        auth = {"Authorization": f"Bearer {load.token}"}
        r = httpx.post(
            f"{load.server.url}/v1/programs/{load.program}/events",
            json=purchase("R-1", "M1", 1_000),
            headers=auth,
            timeout=CLIENT_TIMEOUT_S,
        )
        assert r.status_code == 201, r.text
        own_cluster.stop("fast")
        answers: dict[str, httpx.Response | str] = {}
        try:
            for name, path in READS.items():
                try:
                    # A connection of its own each: after a 500 uvicorn drops the connection.
                    answers[name] = httpx.get(
                        load.server.url + path.format(p=load.program),
                        headers=auth,
                        timeout=CLIENT_TIMEOUT_S,
                    )
                except httpx.TransportError as exc:
                    answers[name] = repr(exc)
        finally:
            own_cluster.start()
        yield answers


@pytest.mark.parametrize("read", list(READS))
def test_reads_while_database_down_answer_503(reads_while_down, read):
    r = reads_while_down[read]
    assert isinstance(r, httpx.Response), f"no answer: {r}"
    assert r.status_code == 503, r.text
    assert check_unavailable(r) is None
