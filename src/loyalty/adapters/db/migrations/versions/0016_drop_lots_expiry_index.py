"""Drop ix_lots_expiry: every query that reads lots by expiry reads lots with points left,
which the partial index ix_lots_due covers; the plain index only cost an entry per lot update.

Revision ID: 0016
Revises: 0014
Create Date: 2026-11-25 01:00:23.752825
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lots_expiry"))


def downgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lots_expiry"), ["expires_at"], unique=False)
