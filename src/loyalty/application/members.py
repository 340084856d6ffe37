"""Members: enrolment, profile, lookup by the engine's id or the merchant's external id."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, true, update
from sqlalchemy.engine import Row

from loyalty.adapters.db.bulk import insert_new_rows, insert_rows
from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.keyed import KeyedRead, each_key
from loyalty.adapters.db.reads import Read
from loyalty.adapters.db.tables import members, wallets
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.limits import ATTRIBUTES_BYTES_MAX, ATTRIBUTES_KEYS_MAX, attributes_size
from loyalty.application.programs import load_program
from loyalty.application.rewards import award_enrollment
from loyalty.domain.errors import LimitExceeded, MemberAlreadyExists, MemberNotFound
from loyalty.domain.ledger import POINTS

EXTERNAL_PREFIX = "ext:"
MEMBERS_PAGE_DEFAULT = 50
MEMBERS_PAGE_MAX = 200

PROFILE_FIELDS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "birth_date",
    "gender",
    "locale",
    "marketing_consent",
)


@dataclass(slots=True)
class MemberProfile:
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    birth_date: date | None = None
    gender: str | None = None
    locale: str | None = None
    marketing_consent: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)


def normalise_email(email: str | None) -> str | None:
    return email.strip().lower() if email else email


def member_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "program_id": row.program_id,
        "external_id": row.external_id,
        "email": row.email,
        "phone": row.phone,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "birth_date": row.birth_date.isoformat() if row.birth_date else None,
        "gender": row.gender,
        "locale": row.locale,
        "marketing_consent": row.marketing_consent,
        "attributes": row.attributes,
        "enrolled_at": row.enrolled_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "enrollment_source": row.enrollment_source,
    }


_BY_ID = select(members).where(
    and_(members.c.program_id == bindparam("program_id"), members.c.id == bindparam("ref"))
)
_BY_EXTERNAL_ID = select(members).where(
    and_(
        members.c.program_id == bindparam("program_id"),
        members.c.external_id == bindparam("ref"),
    )
)


def find_member(conn: Connection, program_id: str, member_ref: str) -> Row[Any] | None:
    """``member_ref`` is the engine's id (``mbr_...``) or ``ext:<external id>``."""
    if member_ref.startswith(EXTERNAL_PREFIX):
        stmt, ref = _BY_EXTERNAL_ID, member_ref[len(EXTERNAL_PREFIX) :]
    else:
        stmt, ref = _BY_ID, member_ref
    return conn.execute(stmt, {"program_id": program_id, "ref": ref}).first()


def resolve_member(conn: Connection, program_id: str, member_ref: str) -> Row[Any]:
    row = find_member(conn, program_id, member_ref)
    if row is None:
        raise MemberNotFound(member_ref)
    return row


_EXISTING_EXTERNAL = select(members.c.id).where(
    and_(
        members.c.program_id == bindparam("program_id"),
        members.c.external_id == bindparam("external_id"),
    )
)
_INSERT_MEMBER = insert(members)


def insert_member(
    conn: Connection,
    *,
    program_id: str,
    external_id: str,
    profile: MemberProfile,
    source: str,
    now: datetime,
) -> str:
    existing = conn.execute(
        _EXISTING_EXTERNAL, {"program_id": program_id, "external_id": external_id}
    ).first()
    if existing is not None:
        raise MemberAlreadyExists(external_id, existing.id)
    row = member_row(
        program_id=program_id, external_id=external_id, profile=profile, source=source, now=now
    )
    member_id = str(row["id"])
    # A prebuilt statement with a parameter dict: building ``insert().values(...)`` on every
    # enrolment cost more than running it (auto-enrolment happens on the earn path).
    conn.execute(_INSERT_MEMBER, row)
    conn.execute(
        insert(wallets).values(
            program_id=program_id,
            member_id=member_id,
            asset=POINTS,
            balance=0,
            debt=0,
            updated_at=now,
        )
    )
    return member_id


def member_row(
    *, program_id: str, external_id: str, profile: MemberProfile, source: str, now: datetime
) -> dict[str, Any]:
    """The ``members`` row of a member enrolled at ``now``, with a new id."""
    return {
        "id": new_id("mbr"),
        "program_id": program_id,
        "external_id": external_id,
        "email": normalise_email(profile.email),
        "phone": profile.phone,
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "birth_date": profile.birth_date,
        "gender": profile.gender,
        "locale": profile.locale,
        "marketing_consent": profile.marketing_consent,
        "attributes": profile.attributes,
        "enrolled_at": now,
        "updated_at": now,
        "enrollment_source": source,
    }


def enroll_members(conn: Connection, rows: list[dict[str, Any]], *, now: datetime) -> set[str]:
    """Insert many ``member_row``s and their empty points wallets, two statements in all, in
    external id order, skipping a customer another transaction enrolled first (on PostgreSQL
    the insert waits for that transaction, so its member can be read once this returns).
    Returns the ids of the members inserted, whose wallets were created with them; two
    batches enrolling the same customers wait on each other in the same order."""
    if not rows:
        return set()
    ordered = sorted(rows, key=lambda row: str(row["external_id"]))
    inserted = {
        str(member_id)
        for member_id in insert_new_rows(
            conn, members, ordered, unique=("program_id", "external_id"), returning="id"
        )
    }
    if not inserted:
        return inserted
    insert_rows(
        conn,
        wallets,
        [
            {
                "program_id": row["program_id"],
                "member_id": row["id"],
                "asset": POINTS,
                "balance": 0,
                "debt": 0,
                "updated_at": now,
            }
            for row in ordered
            if row["id"] in inserted
        ],
    )
    return inserted


_OF_PROGRAM = select(members).where(members.c.program_id == bindparam("program_id"))
_MANY_BY_EXTERNAL_ID = KeyedRead(
    in_list=_OF_PROGRAM.where(members.c.external_id.in_(bindparam("refs", expanding=True))),
    # The program compared with IS TRUE, which no index serves: the one index left is the
    # unique one led by the external id, whatever the planner's statistics say.
    each_key=each_key(
        lambda ref: (
            select(members)
            .where(
                and_(
                    members.c.external_id == ref,
                    (members.c.program_id == bindparam("program_id")).is_(true()),
                )
            )
            .limit(1)
        ),
        keys="refs",
    ),
)
_MANY_BY_ID = KeyedRead(
    in_list=_OF_PROGRAM.where(members.c.id.in_(bindparam("refs", expanding=True))),
    each_key=each_key(lambda ref: _OF_PROGRAM.where(members.c.id == ref).limit(1), keys="refs"),
)


def find_members(conn: Connection, program_id: str, member_refs: set[str]) -> dict[str, Any]:
    """``find_member`` for many references at once (two statements at most): the rows found,
    by the reference they were asked for."""
    reads = _by_ref_reads(program_id, member_refs, lambda read, keys: read.on(conn, keys))
    rows = [row for statement, params in reads for row in conn.execute(statement, params)]
    return members_found(member_refs, rows)


def find_members_reads(conn: Connection, program_id: str, member_refs: set[str]) -> list[Read]:
    """``find_members``'s statements (none, one or two) for ``read_together``; their rows go
    to ``members_found``."""
    return _by_ref_reads(program_id, member_refs, lambda read, _keys: read.together(conn))


def _by_ref_reads(
    program_id: str, member_refs: set[str], form: Callable[[KeyedRead, list[str]], Any]
) -> list[Read]:
    """The reads of the members ``member_refs`` names by external id, then by id, each in the
    ``form`` of its keyed read."""
    external = sorted(
        ref[len(EXTERNAL_PREFIX) :] for ref in member_refs if ref.startswith(EXTERNAL_PREFIX)
    )
    ids = sorted(ref for ref in member_refs if not ref.startswith(EXTERNAL_PREFIX))
    return [
        (form(keyed, keys), {"program_id": program_id, "refs": keys})
        for keyed, keys in ((_MANY_BY_EXTERNAL_ID, external), (_MANY_BY_ID, ids))
        if keys
    ]


def members_found(member_refs: set[str], rows: Iterable[Any]) -> dict[str, Any]:
    """``find_members``'s answer from the rows of ``find_members_reads``: each row by every
    reference of ``member_refs`` that names it (its external id, its id)."""
    found: dict[str, Any] = {}
    for row in rows:
        external = f"{EXTERNAL_PREFIX}{row.external_id}"
        if row.external_id is not None and external in member_refs:
            found[external] = row
        if row.id in member_refs:
            found[str(row.id)] = row
    return found


def enroll_member(
    engine: Engine,
    principal: Principal,
    program_id: str,
    *,
    external_id: str,
    profile: MemberProfile,
    now: datetime,
    idempotency_key: str | None = None,
) -> Outcome:
    """Raises ``ProgramNotFound``, ``MemberAlreadyExists``."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)

        def effect() -> tuple[int, dict[str, Any]]:
            member_id = insert_member(
                conn,
                program_id=program_id,
                external_id=external_id,
                profile=profile,
                source="api",
                now=now,
            )
            view = member_view(resolve_member(conn, program_id, member_id))
            view["welcome"] = award_enrollment(
                conn,
                program_id=program_id,
                settings=ctx.settings,
                member_id=member_id,
                now=now,
                actor=principal.key_id,
            )
            return 201, view

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=None if idempotency_key is None else f"enroll:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint("enroll", external_id, _profile_dict(profile)),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def _profile_dict(profile: MemberProfile) -> dict[str, Any]:
    return {name: getattr(profile, name) for name in (*PROFILE_FIELDS, "attributes")}


def get_member(
    engine: Engine, principal: Principal, program_id: str, member_ref: str
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        return member_view(resolve_member(conn, program_id, member_ref))

    return run_transaction(engine, work, write=False)


def update_member(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    changes: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Partial update. ``attributes`` is merged key by key; a key set to null is removed
    (JSON Merge Patch, RFC 7396). Raises ``MemberNotFound``."""

    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.WRITE)
        row = resolve_member(conn, program_id, member_ref)
        values: dict[str, Any] = {k: v for k, v in changes.items() if k in PROFILE_FIELDS}
        if "email" in values:
            values["email"] = normalise_email(values["email"])
        if "marketing_consent" in values and values["marketing_consent"] is None:
            values["marketing_consent"] = False
        if "attributes" in changes:
            merged = dict(row.attributes)
            for key, value in (changes["attributes"] or {}).items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            if len(merged) > ATTRIBUTES_KEYS_MAX or attributes_size(merged) > ATTRIBUTES_BYTES_MAX:
                raise LimitExceeded(
                    f"Merged attributes would exceed {ATTRIBUTES_KEYS_MAX} keys or "
                    f"{ATTRIBUTES_BYTES_MAX} bytes; remove keys by setting them to null.",
                    limit="attributes",
                    keys=len(merged),
                    keys_max=ATTRIBUTES_KEYS_MAX,
                    bytes_max=ATTRIBUTES_BYTES_MAX,
                )
            values["attributes"] = merged
        values["updated_at"] = now
        conn.execute(update(members).where(members.c.id == row.id).values(**values))
        return member_view(resolve_member(conn, program_id, row.id))

    return run_transaction(engine, work)


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


_CURSOR_ID = re.compile(r"^[a-z]{3}_[0-9A-HJKMNP-TV-Z]{26}$")


def decode_cursor(cursor: str) -> str:
    """The id a page ended at; ``ValueError`` for anything this engine did not hand out."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        decoded = base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("malformed cursor") from exc
    if not _CURSOR_ID.match(decoded):
        raise ValueError("malformed cursor")
    return decoded


def list_members(
    engine: Engine,
    principal: Principal,
    program_id: str,
    *,
    limit: int = MEMBERS_PAGE_DEFAULT,
    cursor: str | None = None,
    external_id: str | None = None,
    email: str | None = None,
) -> dict[str, Any]:
    """Members in enrolment order, ``limit`` at a time; ``next_cursor`` is null on the last
    page. Filters match exactly (email case-insensitively)."""
    assert 1 <= limit <= MEMBERS_PAGE_MAX

    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        stmt = select(members).where(members.c.program_id == program_id)
        if cursor:
            stmt = stmt.where(members.c.id > decode_cursor(cursor))
        if external_id is not None:
            stmt = stmt.where(members.c.external_id == external_id)
        if email is not None:
            stmt = stmt.where(members.c.email == normalise_email(email))
        rows = conn.execute(stmt.order_by(members.c.id).limit(limit + 1)).all()
        page = rows[:limit]
        return {
            "items": [member_view(r) for r in page],
            "next_cursor": encode_cursor(page[-1].id) if len(rows) > limit else None,
        }

    return run_transaction(engine, work, write=False)
