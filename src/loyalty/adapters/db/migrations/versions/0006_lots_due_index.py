"""lots due index

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 23:40:00.000000

A partial index on the lots that still have points and an expiry: the expiry job finds its
due lots (and their members) through it, so the cost of that search follows what is due, not
every lot ever expired.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_LIVE_WITH_EXPIRY = "remaining > 0 AND expires_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_lots_due",
            ["expires_at", "program_id", "member_id"],
            unique=False,
            postgresql_where=sa.text(_LIVE_WITH_EXPIRY),
            sqlite_where=sa.text(_LIVE_WITH_EXPIRY),
        )


def downgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index("ix_lots_due")
