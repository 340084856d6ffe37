"""A wallet held by another transaction, on PostgreSQL: an administrator's session left open
after ``SELECT ... FOR UPDATE``, a stuck client of another process, a long job. Against the
real server (``loyalty serve``, its lock timeout cut to ``LOCK_TIMEOUT_MS`` to keep the test
short):

- purchases of every other member are recorded while the wallet stays held: a group of
  purchases that includes the held member records the others and leaves that one to be
  recorded alone (before, the group waited for the wallet, and every purchase of the program
  queued behind it until the client gave up);
- the held member's purchase is answered ``503`` with ``Retry-After`` and the problem code
  ``storage_unavailable`` once the lock timeout passes, with nothing written;
- once the wallet is let go, the same purchase, retried, is recorded once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.adapters.db.tables import events
from loyalty.application.access import Scope, create_api_key
from loyalty.application.audit import audit_ledger
from tests.conftest import _PG, NOW
from tests.reliability.test_crash import Server, earning_program, expected_points, purchase
from tests.reliability.test_db_faults import check_unavailable

pytestmark = pytest.mark.postgresql

LOCK_TIMEOUT_MS = 500
MEMBERS = 8
OTHERS = 60
"""Purchases of the other members sent while the wallet is held, by ``CLIENTS`` clients at once
(so that groups form, some with the held member's purchase in them)."""
CLIENTS = 4
CLIENT_TIMEOUT_S = 20.0
"""A bound, not an expectation: an answer slower than this counts as a hang."""


def test_a_held_wallet_holds_up_only_its_own_member(tmp_path: Path) -> None:
    server_pg = _PG["server"]
    if server_pg is None:
        pytest.skip(f"PostgreSQL unavailable: {_PG['why']}")
    database_url = server_pg.create_database()
    engine = make_engine(database_url)
    migrate(engine)
    issued = create_api_key(
        engine, tenant_name="locks", name="till", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    server = Server(
        database_url, tmp_path / "server.log", env={"LOYALTY_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS)}
    )
    server.start()
    headers = {"Authorization": f"Bearer {issued.token}"}
    holder: psycopg.Connection[Any] | None = None
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=CLIENT_TIMEOUT_S) as http:
            url = f"/v1/programs/{earning_program(server.url, issued.token, 'Locks')}/events"
            for m in range(MEMBERS):  # every member enrolled, with a wallet
                assert http.post(url, json=purchase(f"E-{m}", f"M{m}", 1_000)).status_code == 201

            holder = psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql"))
            held = holder.execute(
                "SELECT w.member_id FROM wallets AS w JOIN members AS m ON m.id = w.member_id"
                " WHERE m.external_id = 'M0' FOR UPDATE OF w"
            ).fetchall()
            assert len(held) == 1

            # Many clients at once, the held member's purchases among the others'.
            bodies = [purchase(f"P-{i}", f"M{i % MEMBERS}", 500 + i * 37) for i in range(OTHERS)]
            answers: dict[str, httpx.Response] = {}
            failures: list[str] = []

            def client(mine: list[dict[str, object]]) -> None:
                with httpx.Client(
                    base_url=server.url, headers=headers, timeout=CLIENT_TIMEOUT_S
                ) as own:
                    for body in mine:
                        try:
                            answers[str(body["id"])] = own.post(url, json=body)
                        except httpx.HTTPError as exc:
                            failures.append(f"{body['id']}: {exc!r}")

            threads = [
                threading.Thread(target=client, args=(bodies[c::CLIENTS],)) for c in range(CLIENTS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert failures == []
            still_held = holder.execute("SELECT 1").fetchone()  # the holder is still open
            assert still_held is not None

            refused = []
            for body in bodies:
                answer = answers[str(body["id"])]
                if body["member"] == {"external_id": "M0"}:
                    assert answer.status_code == 503, answer.text
                    assert check_unavailable(answer) is None, check_unavailable(answer)
                    refused.append(body)
                else:
                    assert answer.status_code == 201, answer.text
                    expected = expected_points(int(str(body["total_minor"])))
                    assert answer.json()["points_earned"] == expected
            assert refused

            holder.rollback()  # the wallet let go: the refused purchases go through
            for body in refused:
                answer = http.post(url, json=body)
                assert answer.status_code == 201, answer.text
                assert answer.headers.get("idempotent-replayed") != "true"
    finally:
        if holder is not None:
            holder.close()
        server.stop()

    assert audit_ledger(engine) == []
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
    engine.dispose()
    assert stored == MEMBERS + OTHERS
