"""Creating and migrating the schema, only ever through Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from loyalty.adapters.db.engine import is_lock_timeout

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


class UpgradeBlocked(Exception):
    """A migration gave up waiting for a table's lock (``migrations/online.py``): it changed
    nothing, and the migrations before it are applied. Running the upgrade again goes on."""


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade to ``revision``, each migration in a transaction of its own (Alembic's), so one
    that must run a statement outside any transaction (``migrations/online.py``) can: a
    failure leaves the database at the last migration that completed, which the next run
    goes on from. Raises ``UpgradeBlocked`` where one gave up waiting for a lock."""
    config = alembic_config()
    try:
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
    except DBAPIError as exc:
        if not is_lock_timeout(exc):
            raise
        raise UpgradeBlocked(
            f"a migration gave up waiting for a table's lock, held by another transaction;"
            f" the database is at revision {current_revision(engine)}: run the upgrade again"
        ) from exc


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
