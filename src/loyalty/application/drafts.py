"""Drafts of a program's document: saved and reviewed without changing how points are earned,
then published as the next version."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, delete, insert, select, update

from loyalty.adapters.db.engine import RetryTransaction, run_transaction
from loyalty.adapters.db.tables import program_drafts, program_versions, programs
from loyalty.adapters.ids import new_id
from loyalty.application import programs as program_use_cases
from loyalty.application.access import Principal, Scope
from loyalty.application.expressions import check_document_expressions
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.errors import DraftAlreadyPublished, InvalidProgramDocument, NotFound

DRAFTS_PAGE_MAX = 50

_MISSING = object()


def changed_paths(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths whose values differ, descending into objects only: a list (``rules``) is
    reported as a whole, because its items have no stable path a reviewer could act on."""
    changed: list[str] = []
    for key in sorted(set(before) | set(after)):
        path = f"{prefix}.{key}" if prefix else key
        old, new = before.get(key, _MISSING), after.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(changed_paths(old, new, path))
        elif old != new:
            changed.append(path)
    return changed


def _normalized(document: dict[str, Any]) -> dict[str, Any]:
    # Versions stored before a field existed lack its default; compare both sides as the
    # current schema reads them, so a new default is not reported as a change.
    return ProgramDocument.model_validate(document).model_dump(mode="json", by_alias=True)


_DRAFT_WITH_BASE = select(program_drafts, program_versions.c.document.label("base_document")).join(
    program_versions,
    and_(
        program_versions.c.program_id == program_drafts.c.program_id,
        program_versions.c.version == program_drafts.c.base_version,
    ),
)


def _draft_view(row: Row[Any]) -> dict[str, Any]:
    """The draft and, in ``diff``, what it changes from the version it was based on (the
    current version when it was saved): that comparison stays the same after publishing."""
    return {
        "id": row.id,
        "program_id": row.program_id,
        "base_version": row.base_version,
        "document": row.document,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "published_version": row.published_version,
        "published_at": row.published_at.isoformat() if row.published_at else None,
        "diff": changed_paths(_normalized(row.base_document), row.document),
    }


def _load_draft(conn: Connection, program_id: str, draft_id: str, *, lock: bool) -> Row[Any]:
    stmt = _DRAFT_WITH_BASE.where(
        program_drafts.c.id == draft_id, program_drafts.c.program_id == program_id
    )
    if lock:
        stmt = stmt.with_for_update(of=program_drafts)
    row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"Draft {draft_id!r} does not exist.", draft_id=draft_id)
    return row


def create_draft(
    engine: Engine,
    principal: Principal,
    program_id: str,
    document: ProgramDocument,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Save a draft based on the current version. It is checked like a published document,
    so a draft that saves can be published unless the program moves on first."""
    principal.require_program(program_id, Scope.ADMIN)
    check_document_expressions(document)
    doc = document.model_dump(mode="json", by_alias=True)

    def work(conn: Connection) -> dict[str, Any]:
        ctx = program_use_cases.load_program(conn, principal, program_id, Scope.ADMIN)
        if document.currency != ctx.settings.currency:
            raise InvalidProgramDocument(
                "A program's currency cannot change.",
                [{"field": "currency", "message": f"must stay {ctx.settings.currency}"}],
            )
        base_version = conn.execute(
            select(programs.c.current_version).where(programs.c.id == program_id)
        ).scalar_one()
        draft_id = new_id("drf")
        conn.execute(
            insert(program_drafts).values(
                id=draft_id,
                program_id=program_id,
                base_version=base_version,
                document=doc,
                created_at=now,
                created_by=principal.key_id,
            )
        )
        return _draft_view(_load_draft(conn, program_id, draft_id, lock=False))

    return run_transaction(engine, work)


def get_draft(
    engine: Engine, principal: Principal, program_id: str, draft_id: str
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        program_use_cases.load_program(conn, principal, program_id, Scope.ADMIN)
        return _draft_view(_load_draft(conn, program_id, draft_id, lock=False))

    return run_transaction(engine, work, write=False)


def list_drafts(engine: Engine, principal: Principal, program_id: str) -> list[dict[str, Any]]:
    """The newest drafts first, published ones included (they record who proposed what)."""

    def work(conn: Connection) -> list[dict[str, Any]]:
        program_use_cases.load_program(conn, principal, program_id, Scope.ADMIN)
        rows = conn.execute(
            _DRAFT_WITH_BASE.where(program_drafts.c.program_id == program_id)
            .order_by(program_drafts.c.id.desc())
            .limit(DRAFTS_PAGE_MAX)
        ).all()
        return [_draft_view(r) for r in rows]

    return run_transaction(engine, work, write=False)


def publish_draft(
    engine: Engine, principal: Principal, program_id: str, draft_id: str, *, now: datetime
) -> dict[str, Any]:
    """Publish the draft as the next version, refused if the program moved past the version
    the draft was based on (the reviewer saw a diff against that version, not the newer one)."""
    principal.require_program(program_id, Scope.ADMIN)

    def work(conn: Connection) -> dict[str, Any]:
        program_use_cases.load_program(conn, principal, program_id, Scope.ADMIN)
        draft = _load_draft(conn, program_id, draft_id, lock=True)
        if draft.published_version is not None:
            raise DraftAlreadyPublished(draft_id, draft.published_version)
        document = ProgramDocument.model_validate(draft.document)
        # Checked again: the expression checks may have tightened since the draft was saved.
        check_document_expressions(document)
        view = program_use_cases.publish_document(
            conn, principal, program_id, document, expected_version=draft.base_version, now=now
        )
        marked = conn.execute(
            update(program_drafts)
            .where(program_drafts.c.id == draft_id, program_drafts.c.published_version.is_(None))
            .values(published_version=view["version"], published_at=now)
        )
        if marked.rowcount != 1:
            # Another request published it between our read and this write (possible only
            # without row locks); the rerun reports the version it became.
            raise RetryTransaction()
        return view

    return run_transaction(engine, work)


def delete_draft(engine: Engine, principal: Principal, program_id: str, draft_id: str) -> None:
    """Discard an unpublished draft; a published one stays as the record of its version."""
    principal.require_program(program_id, Scope.ADMIN)

    def work(conn: Connection) -> None:
        program_use_cases.load_program(conn, principal, program_id, Scope.ADMIN)
        draft = _load_draft(conn, program_id, draft_id, lock=True)
        if draft.published_version is not None:
            raise DraftAlreadyPublished(draft_id, draft.published_version)
        conn.execute(delete(program_drafts).where(program_drafts.c.id == draft_id))

    run_transaction(engine, work)
