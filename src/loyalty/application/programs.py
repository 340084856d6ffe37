"""Programs and their versioned documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, update

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.reads import Read
from loyalty.adapters.db.tables import program_versions, programs
from loyalty.adapters.ids import new_id
from loyalty.application.access import Forbidden, Principal, Scope
from loyalty.application.expressions import check_document_expressions
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.program_document import ProgramDocument, settings_from_document
from loyalty.domain.errors import InvalidProgramDocument, ProgramNotFound, ProgramVersionConflict
from loyalty.domain.program import ProgramSettings

PROGRAMS_PAGE_MAX = 200


@dataclass(frozen=True, slots=True)
class ProgramContext:
    """What a use case needs about the program it runs in."""

    program_id: str
    tenant_id: str
    settings: ProgramSettings


# Published versions never change, so their parsed settings can be shared by every request.
_settings_cache: dict[tuple[str, int], ProgramSettings] = {}


def _settings(program_id: str, version: int, document: dict[str, Any]) -> ProgramSettings:
    key = (program_id, version)
    cached = _settings_cache.get(key)
    if cached is None:
        cached = settings_from_document(ProgramDocument.model_validate(document), version=version)
        if len(_settings_cache) > 10_000:
            _settings_cache.clear()
        _settings_cache[key] = cached
    return cached


_CURRENT = select(programs.c.tenant_id, programs.c.current_version).where(
    programs.c.id == bindparam("program_id")
)
_DOCUMENT = select(program_versions.c.document).where(
    and_(
        program_versions.c.program_id == bindparam("program_id"),
        program_versions.c.version == bindparam("version"),
    )
)


def load_program(
    conn: Connection, principal: Principal, program_id: str, scope: Scope
) -> ProgramContext:
    """The program's current version, if this key may use it; another tenant's program is
    reported as absent. The version's document is read (and parsed) only the first time this
    process meets that version: every request reads the program's row, not its document."""
    principal.require_program(program_id, scope)
    return program_from_rows(
        conn, principal, program_id, conn.execute(_CURRENT, {"program_id": program_id}).all()
    )


def program_read(program_id: str) -> Read:
    """``load_program``'s read of the program's row, for ``read_together`` (the caller first
    checks ``principal.require_program``); its rows go to ``program_from_rows``."""
    return _CURRENT, {"program_id": program_id}


def program_from_rows(
    conn: Connection, principal: Principal, program_id: str, rows: Sequence[Any]
) -> ProgramContext:
    """The program of ``program_read``'s rows, as ``load_program`` answers."""
    row = rows[0] if rows else None
    if row is None or row.tenant_id != principal.tenant_id:
        raise ProgramNotFound(program_id)
    return ProgramContext(
        program_id, row.tenant_id, settings_at(conn, program_id, int(row.current_version))
    )


def settings_at(conn: Connection, program_id: str, version: int) -> ProgramSettings:
    """The settings of one published version (what an old purchase was computed under); its
    document is read only if this process has not parsed that version yet."""
    cached = _settings_cache.get((program_id, version))
    if cached is not None:
        return cached
    document = conn.execute(_DOCUMENT, {"program_id": program_id, "version": version}).scalar_one()
    return _settings(program_id, version, document)


def all_programs(conn: Connection) -> list[ProgramContext]:
    """Every program's current version, for jobs that run across tenants."""
    rows = conn.execute(
        select(
            programs.c.id,
            programs.c.tenant_id,
            programs.c.current_version,
            program_versions.c.document,
        ).join(
            program_versions,
            and_(
                program_versions.c.program_id == programs.c.id,
                program_versions.c.version == programs.c.current_version,
            ),
        )
    ).all()
    return [
        ProgramContext(r.id, r.tenant_id, _settings(r.id, r.current_version, r.document))
        for r in rows
    ]


def _program_view(
    program_id: str,
    version: int,
    document: dict[str, Any],
    created_at: datetime,
    updated_at: datetime,
) -> dict[str, Any]:
    return {
        "id": program_id,
        "version": version,
        "document": document,
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
    }


def create_program(
    engine: Engine,
    principal: Principal,
    document: ProgramDocument,
    *,
    now: datetime,
    idempotency_key: str | None = None,
) -> Outcome:
    principal.require(Scope.ADMIN)
    if principal.program_id is not None:
        raise Forbidden("A key limited to one program cannot create programs.")
    check_document_expressions(document)
    doc = document.model_dump(mode="json", by_alias=True)

    def work(conn: Connection) -> Outcome:
        def effect() -> tuple[int, dict[str, Any]]:
            program_id = new_id("prg")
            conn.execute(
                insert(programs).values(
                    id=program_id,
                    tenant_id=principal.tenant_id,
                    name=document.name,
                    current_version=1,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                insert(program_versions).values(
                    program_id=program_id,
                    version=1,
                    document=doc,
                    created_at=now,
                    created_by=principal.key_id,
                )
            )
            return 201, _program_view(program_id, 1, doc, now, now)

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope="programs",
            key=idempotency_key,
            request_fingerprint=fingerprint("create_program", doc),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def publish_document(
    conn: Connection,
    principal: Principal,
    program_id: str,
    document: ProgramDocument,
    *,
    expected_version: int | None,
    now: datetime,
) -> dict[str, Any]:
    """Make ``document`` the program's next version inside the caller's transaction (its
    expressions already checked); shared by updates and draft publishing so both apply the
    same version check and currency rule."""
    doc = document.model_dump(mode="json", by_alias=True)
    ctx = load_program(conn, principal, program_id, Scope.ADMIN)
    row = conn.execute(
        select(programs.c.current_version, programs.c.created_at, program_versions.c.document)
        .join(
            program_versions,
            and_(
                program_versions.c.program_id == programs.c.id,
                program_versions.c.version == programs.c.current_version,
            ),
        )
        .where(programs.c.id == program_id)
        .with_for_update(of=programs)
    ).one()
    current = int(row.current_version)
    if expected_version is not None and expected_version != current:
        raise ProgramVersionConflict(expected_version, current)
    if document.currency != ctx.settings.currency:
        raise InvalidProgramDocument(
            "A program's currency cannot change.",
            [{"field": "currency", "message": f"must stay {ctx.settings.currency}"}],
        )
    stored = ProgramDocument.model_validate(row.document).model_dump(mode="json", by_alias=True)
    if stored == doc:
        return _program_view(program_id, current, doc, row.created_at, now)
    version = current + 1
    conn.execute(
        insert(program_versions).values(
            program_id=program_id,
            version=version,
            document=doc,
            created_at=now,
            created_by=principal.key_id,
        )
    )
    conn.execute(
        update(programs)
        .where(programs.c.id == program_id)
        .values(current_version=version, name=document.name, updated_at=now)
    )
    return _program_view(program_id, version, doc, row.created_at, now)


def update_program(
    engine: Engine,
    principal: Principal,
    program_id: str,
    document: ProgramDocument,
    *,
    expected_version: int | None,
    now: datetime,
) -> dict[str, Any]:
    """Publish a new version of the document. The currency cannot change once set, because
    every amount already recorded is in it. Submitting the current document again is a no-op."""
    principal.require_program(program_id, Scope.ADMIN)
    check_document_expressions(document)

    def work(conn: Connection) -> dict[str, Any]:
        return publish_document(
            conn, principal, program_id, document, expected_version=expected_version, now=now
        )

    return run_transaction(engine, work)


def get_program(
    engine: Engine, principal: Principal, program_id: str, *, version: int | None = None
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        prog = conn.execute(select(programs).where(programs.c.id == program_id)).one()
        wanted = version or prog.current_version
        row = conn.execute(
            select(program_versions).where(
                program_versions.c.program_id == program_id, program_versions.c.version == wanted
            )
        ).first()
        if row is None:
            raise ProgramNotFound(f"{program_id}@{wanted}")
        view = _program_view(program_id, wanted, row.document, prog.created_at, prog.updated_at)
        view["current_version"] = prog.current_version
        return view

    return run_transaction(engine, work, write=False)


def list_programs(engine: Engine, principal: Principal) -> list[dict[str, Any]]:
    principal.require(Scope.READ)

    def work(conn: Connection) -> list[dict[str, Any]]:
        stmt = select(programs).where(programs.c.tenant_id == principal.tenant_id)
        if principal.program_id is not None:
            stmt = stmt.where(programs.c.id == principal.program_id)
        rows = conn.execute(stmt.order_by(programs.c.id).limit(PROGRAMS_PAGE_MAX)).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "version": r.current_version,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]

    return run_transaction(engine, work, write=False)
