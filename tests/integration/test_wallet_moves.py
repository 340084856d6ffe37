"""Wallet moves sent in one statement, inside a pipelined block too, move each wallet by its
amount, and a move whose wallet is not there fails the transaction, which writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from loyalty.adapters.db.bulk import pipelined
from loyalty.adapters.db.ledger_store import PlannedEntries, send_wallet_moves
from loyalty.adapters.db.tables import wallets
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.members import MemberProfile, enroll_members, member_row
from loyalty.application.program_document import ProgramDocument
from loyalty.application.programs import create_program
from loyalty.domain.ledger import POINTS

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _members(engine: Engine, count: int) -> tuple[str, list[str]]:
    issued = create_api_key(
        engine, tenant_name="moves", name="admin", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    principal = authenticate(engine, issued.token)
    document = ProgramDocument.model_validate({"name": "Moves", "currency": "EUR"})
    program_id = str(create_program(engine, principal, document, now=NOW).body["id"])
    rows = [
        member_row(
            program_id=program_id,
            external_id=f"c{n}",
            profile=MemberProfile(),
            source="api",
            now=NOW,
        )
        for n in range(count)
    ]
    with engine.begin() as conn:
        enroll_members(conn, rows, now=NOW)
    return program_id, [str(row["id"]) for row in rows]


def _moves(program_id: str, changes: dict[str, tuple[int, int]]) -> PlannedEntries:
    moves = [
        {
            "w_program_id": program_id,
            "w_member_id": member_id,
            "w_asset": POINTS,
            "balance_change": balance,
            "debt_change": debt,
            "w_updated_at": NOW,
        }
        for member_id, (balance, debt) in sorted(changes.items())
    ]
    return PlannedEntries([], [], moves, {})


def _wallets(engine: Engine, program_id: str) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(wallets.c.member_id, wallets.c.balance, wallets.c.debt).where(
                wallets.c.program_id == program_id
            )
        )
        return {row.member_id: (row.balance, row.debt) for row in rows}


def test_moves_in_a_pipelined_block_move_each_wallet_by_its_amount(engine):
    program_id, (a, b, c) = _members(engine, 3)
    with engine.begin() as conn, pipelined(conn):
        moved = send_wallet_moves(conn, _moves(program_id, {a: (250, 0), b: (-40, 40)}))
    moved.check()
    assert _wallets(engine, program_id) == {a: (250, 0), b: (-40, 40), c: (0, 0)}


def test_a_move_of_a_missing_wallet_fails_the_transaction_and_moves_nothing(engine):
    program_id, (a, b) = _members(engine, 2)
    moves = _moves(program_id, {a: (5, 0), b: (7, 0), "mbr_gone": (9, 0)})
    with pytest.raises(AssertionError, match="1 of 3 wallets are missing"), engine.begin() as conn:
        with pipelined(conn):
            moved = send_wallet_moves(conn, moves)
        moved.check()
    assert _wallets(engine, program_id) == {a: (0, 0), b: (0, 0)}
