"""ix_member_tiers_review is on (tier_set, program_id, review_at) instead of (program_id,
tier_set, review_at): a review names both, so either order serves it, and led by the set it
no longer offers a planner without statistics for a program a path to one member's tiers
that reads every row of the program (``adapters/db/keyed.py``; the primary key, led by
(program_id, member_id), is the one path left).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 03:40:00.000000
"""

from __future__ import annotations

from loyalty.adapters.db.migrations.online import replace_index

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_index("ix_member_tiers_review", "member_tiers", ["tier_set", "program_id", "review_at"])


def downgrade() -> None:
    replace_index("ix_member_tiers_review", "member_tiers", ["program_id", "tier_set", "review_at"])
