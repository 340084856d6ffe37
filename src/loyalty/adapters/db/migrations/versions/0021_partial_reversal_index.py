"""Only the entries that reverse another are indexed by the entry they reverse.

``ix_journal_entries_reverses`` held an entry for every journal entry, though all but the
reversals (returns, cancellations) have no entry to point to: every purchase's earn entry
added a key of NULL, one more index page in each commit of a group. Lookups by the entry
reversed name one, so the partial index answers each of them as before.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 17:00:00.000000
"""

from __future__ import annotations

from loyalty.adapters.db.migrations.online import replace_index

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_REVERSALS = "reverses_entry_id IS NOT NULL"


def upgrade() -> None:
    replace_index(
        "ix_journal_entries_reverses", "journal_entries", ["reverses_entry_id"], where=_REVERSALS
    )


def downgrade() -> None:
    replace_index("ix_journal_entries_reverses", "journal_entries", ["reverses_entry_id"])
