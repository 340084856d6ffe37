"""ix_lots_member holds only lots with points left, and lot_movements has no foreign keys: an
emptied lot writes no new entry into the member index, and a movement no longer runs two
per-row checks (an index lookup and a row lock each) that prove what its writer already
holds. ``loyalty ledger audit`` checks every movement's lot and entry instead.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-25 03:05:45.749319
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_LIVE = "remaining > 0"


def upgrade() -> None:
    with op.batch_alter_table("lot_movements", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_lot_movements_entry_id_journal_entries"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("fk_lot_movements_lot_id_lots"), type_="foreignkey")

    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lots_member"))
        batch_op.create_index(
            batch_op.f("ix_lots_member"),
            ["program_id", "member_id", "expires_at"],
            unique=False,
            postgresql_where=sa.text(_LIVE),
            sqlite_where=sa.text(_LIVE),
        )


def downgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lots_member"))
        batch_op.create_index(
            batch_op.f("ix_lots_member"), ["program_id", "member_id", "expires_at"], unique=False
        )

    with op.batch_alter_table("lot_movements", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_lot_movements_lot_id_lots"), "lots", ["lot_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_lot_movements_entry_id_journal_entries"),
            "journal_entries",
            ["entry_id"],
            ["id"],
        )
