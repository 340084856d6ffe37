"""The cashback wallet: cashback an event moved, and the wallet a checkout hold took from.

Revision ID: 0014
Revises: 0012
Create Date: 2026-11-25 00:38:42.611813
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "cashback_minor", sa.BigInteger(), server_default=sa.text("0"), nullable=False
            )
        )

    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "asset", sa.String(length=16), server_default=sa.text("'PTS'"), nullable=False
            )
        )
        batch_op.create_index("ix_holds_order", ["program_id", "order_reference"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_order")
        batch_op.drop_column("asset")

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("cashback_minor")
