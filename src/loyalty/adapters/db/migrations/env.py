"""Alembic environment: the connection is handed in by ``loyalty.adapters.db.schema``."""

from __future__ import annotations

from alembic import context

from loyalty.adapters.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through loyalty.adapters.db.schema.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
