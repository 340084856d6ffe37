"""Fixtures shared by every test: an engine on SQLite and on PostgreSQL, an API client, keys."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import migrate
from loyalty.adapters.db.tables import metadata
from loyalty.application.access import Scope, create_api_key
from loyalty.entrypoints.api.app import create_app
from tests.postgres import PostgresServer, find_postgres

_PG: dict[str, Any] = {"server": None, "why": "not looked for yet", "url": None}
CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("LOYALTY_TEST_SKIP_POSTGRES") == "1" and not CI:
        _PG["why"] = "LOYALTY_TEST_SKIP_POSTGRES=1"
        return
    server, why = find_postgres()
    _PG["server"], _PG["why"] = server, why
    if server is None and CI:
        raise pytest.UsageError(f"CI=true but PostgreSQL is unavailable: {why}")
    if server is not None:
        _PG["url"] = server.create_database()
        engine = make_engine(_PG["url"])
        migrate(engine)
        engine.dispose()


def pytest_unconfigure(config: pytest.Config) -> None:
    server: PostgresServer | None = _PG["server"]
    if server is not None:
        server.close()


def pytest_report_header(config: pytest.Config) -> str:
    return f"PostgreSQL: {_PG['why']}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _PG["server"] is None:
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(
            f"PostgreSQL tests were SKIPPED: {_PG['why']}. Only SQLite was tested.",
            red=True,
            bold=True,
        )
        terminalreporter.write_line(bar, red=True, bold=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


def _truncate_postgres(engine: Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    if _PG["url"] is None:
        pytest.skip(f"PostgreSQL unavailable: {_PG['why']}")
    engine = make_engine(_PG["url"], pool_size=40)
    yield engine
    engine.dispose()


def make_sqlite_engine(template: Path, directory: Path) -> Engine:
    path = directory / "loyalty.db"
    shutil.copy(template, path)
    return make_engine(f"sqlite:///{path}", pool_size=40)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def engine(
    request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path
) -> Iterator[Engine]:
    """A migrated, empty database: SQLite in a temp file, or the shared PostgreSQL test
    database truncated before the test."""
    if request.param == "sqlite":
        eng = make_sqlite_engine(sqlite_template, tmp_path)
        yield eng
        eng.dispose()
    else:
        pg: Engine = request.getfixturevalue("pg_engine")
        _truncate_postgres(pg)
        yield pg


@pytest.fixture
def postgres_engine(pg_engine: Engine) -> Engine:
    """Only PostgreSQL (for locking tests, which prove nothing on SQLite)."""
    _truncate_postgres(pg_engine)
    return pg_engine


NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@dataclass
class Api:
    """An HTTP client on a fresh database with one tenant, an admin key and helpers."""

    client: TestClient
    engine: Engine
    token: str
    tenant_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        h = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        return self.client.request(method, url, headers=h, **kwargs)

    def create_program(self, **overrides: Any) -> str:
        document: dict[str, Any] = {"name": "Test program", "currency": "EUR"}
        document.update(overrides)
        r = self.request("POST", "/v1/programs", json=document)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def enroll(self, program_id: str, external_id: str, **fields: Any) -> str:
        r = self.request(
            "POST",
            f"/v1/programs/{program_id}/members",
            json={"external_id": external_id, **fields},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def purchase(
        self,
        program_id: str,
        order_id: str,
        external_id: str,
        lines: list[dict[str, Any]],
        **fields: Any,
    ) -> Any:
        total = sum(
            li.get("quantity", 1) * li["unit_price_minor"] - li.get("discount_minor", 0)
            for li in lines
        )
        body = {
            "type": "purchase",
            "id": order_id,
            "member": {"external_id": external_id},
            "occurred_at": datetime.now(UTC).isoformat(),
            "currency": "EUR",
            "total_minor": total,
            "lines": lines,
            **fields,
        }
        return self.request("POST", f"/v1/programs/{program_id}/events", json=body)

    def balance(self, program_id: str, member: str) -> dict[str, Any]:
        r = self.request("GET", f"/v1/programs/{program_id}/members/{member}/balance")
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture
def api(engine: Engine) -> Iterator[Api]:
    issued = create_api_key(
        engine, tenant_name="acme", name="admin", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    with TestClient(create_app(engine)) as client:
        yield Api(client, engine, issued.token, issued.tenant_id)
