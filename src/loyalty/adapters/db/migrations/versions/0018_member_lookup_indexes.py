"""Member lookups by external id that don't depend on PostgreSQL's statistics.

- On PostgreSQL, ``uq_members_program_external`` is on (external_id, program_id) instead of
  (program_id, external_id): a lookup of a list of external ids (``adapters/db/keyed.py``) names its
  external id with an index condition no other index of the table can serve, so it reads only
  that id's rows. Led by program_id, it looked to a planner without statistics for the program
  no cheaper than the other indexes led by program_id, and the planner took one of those and
  read every member of the program.
- ``ix_members_program_email`` holds only members with an email: a lookup by email names one,
  and a member without one costs the index nothing.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 03:10:00.000000
"""

from __future__ import annotations

from alembic import op

from loyalty.adapters.db.migrations.online import replace_index, replace_unique_constraint

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_HAS_EMAIL = "email IS NOT NULL"


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if _postgresql():
        # SQLite keeps the constraint's order: changing it means copying the table, and its
        # planner looks each external id up through either order.
        replace_unique_constraint(
            "uq_members_program_external", "members", ["external_id", "program_id"]
        )
    replace_index("ix_members_program_email", "members", ["program_id", "email"], where=_HAS_EMAIL)


def downgrade() -> None:
    replace_index("ix_members_program_email", "members", ["program_id", "email"])
    if _postgresql():
        replace_unique_constraint(
            "uq_members_program_external", "members", ["program_id", "external_id"]
        )
