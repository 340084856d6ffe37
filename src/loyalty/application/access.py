"""Tenants, API keys and what a key may do.

A key is shown once as ``<key id>.<secret>``; only the SHA-256 of the secret is stored (the
secret is 256 random bits, so a slow hash adds nothing). Scopes nest: ``admin`` includes
``write``, which includes ``read``. A key may be limited to one program.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, Engine, insert, select, update

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.tables import api_keys, programs, tenants
from loyalty.adapters.ids import new_id
from loyalty.domain.errors import ApiKeyNotFound, DomainError, ProgramNotFound


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


_IMPLIED = {
    Scope.ADMIN: {Scope.ADMIN, Scope.WRITE, Scope.READ},
    Scope.WRITE: {Scope.WRITE, Scope.READ},
    Scope.READ: {Scope.READ},
}


class Unauthenticated(DomainError):
    code = "unauthenticated"


class Forbidden(DomainError):
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[Scope]
    program_id: str | None

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"This API key lacks the {scope.value!r} scope.", required_scope=scope)

    def require_program(self, program_id: str, scope: Scope) -> None:
        """A key limited to another program sees it as absent, like another tenant's."""
        if self.program_id is not None and self.program_id != program_id:
            raise ProgramNotFound(program_id)
        self.require(scope)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    tenant_id: str
    token: str
    scopes: list[str]
    program_id: str | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def expand_scopes(scopes: list[Scope]) -> frozenset[Scope]:
    result: set[Scope] = set()
    for scope in scopes:
        result |= _IMPLIED[scope]
    return frozenset(result)


def ensure_tenant(conn: Connection, name: str, *, now: datetime) -> str:
    row = conn.execute(select(tenants.c.id).where(tenants.c.name == name)).first()
    if row is not None:
        return str(row.id)
    tenant_id = new_id("ten")
    conn.execute(insert(tenants).values(id=tenant_id, name=name, created_at=now))
    return tenant_id


def create_api_key(
    engine: Engine,
    *,
    tenant_name: str,
    name: str,
    scopes: list[Scope],
    program_id: str | None,
    now: datetime,
    key_id: str | None = None,
    secret: str | None = None,
) -> IssuedKey:
    """Create a key (and its tenant, the first time). ``key_id``/``secret`` are for the demo's
    well-known key only; everything else gets random ones."""

    def work(conn: Connection) -> IssuedKey:
        tenant_id = ensure_tenant(conn, tenant_name, now=now)
        if program_id is not None:
            owner = conn.execute(
                select(programs.c.tenant_id).where(programs.c.id == program_id)
            ).first()
            if owner is None or owner.tenant_id != tenant_id:
                raise ProgramNotFound(program_id)
        return issue_key(
            conn,
            tenant_id=tenant_id,
            name=name,
            scopes=scopes,
            program_id=program_id,
            now=now,
            key_id=key_id,
            secret=secret,
        )

    return run_transaction(engine, work)


def issue_key(
    conn: Connection,
    *,
    tenant_id: str,
    name: str,
    scopes: list[Scope],
    program_id: str | None,
    now: datetime,
    key_id: str | None = None,
    secret: str | None = None,
) -> IssuedKey:
    key_id = key_id or new_id("key")
    secret = secret or secrets.token_urlsafe(32)
    scope_list = sorted({s.value for s in scopes})
    conn.execute(
        insert(api_keys).values(
            id=key_id,
            tenant_id=tenant_id,
            name=name,
            secret_sha256=_digest(secret),
            scopes=",".join(scope_list),
            program_id=program_id,
            created_at=now,
        )
    )
    return IssuedKey(key_id, tenant_id, f"{key_id}.{secret}", scope_list, program_id)


AUTH_CACHE_TTL_S = 5.0
AUTH_CACHE_ENTRIES_MAX = 10_000
_auth_cache: dict[str, tuple[Principal, float]] = {}
_auth_lock = threading.Lock()


def authenticate(engine: Engine, token: str) -> Principal:
    """The principal behind a bearer token; ``Unauthenticated`` for anything else, with the
    same message whether the key is unknown, revoked or the secret is wrong.

    A verified key is remembered for ``AUTH_CACHE_TTL_S`` seconds in this process (keyed by the
    token's hash, never the token), so a revocation reaches other processes within that time.
    """
    key_id, sep, secret = token.partition(".")
    if not sep or not key_id or not secret or len(token) > 200:
        raise Unauthenticated("The API key is malformed.")
    cached = cached_principal(engine, token)
    if cached is not None:
        return cached
    principal = _authenticate_uncached(engine, key_id, secret)
    with _auth_lock:
        if len(_auth_cache) >= AUTH_CACHE_ENTRIES_MAX:
            _auth_cache.clear()
        _auth_cache[_cache_key(engine, token)] = (principal, time.monotonic() + AUTH_CACHE_TTL_S)
    return principal


def _cache_key(engine: Engine, token: str) -> str:
    return _digest(f"{engine.url}|{token}")


def cached_principal(engine: Engine, token: str) -> Principal | None:
    """The principal :func:`authenticate` verified for this token less than
    ``AUTH_CACHE_TTL_S`` seconds ago, without touching the database; None otherwise (the
    caller then authenticates, which may read the key)."""
    cached = _auth_cache.get(_cache_key(engine, token))
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    return None


def forget_cached_keys(key_id: str | None = None) -> None:
    with _auth_lock:
        if key_id is None:
            _auth_cache.clear()
            return
        for cache_key, (principal, _) in list(_auth_cache.items()):
            if principal.key_id == key_id:
                del _auth_cache[cache_key]


def _authenticate_uncached(engine: Engine, key_id: str, secret: str) -> Principal:

    def work(conn: Connection) -> Principal:
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.secret_sha256, _digest(secret))
        ):
            raise Unauthenticated("The API key is not valid.")
        scopes = expand_scopes([Scope(s) for s in row.scopes.split(",") if s])
        return Principal(row.tenant_id, row.id, scopes, row.program_id)

    return run_transaction(engine, work, write=False)


def list_api_keys(engine: Engine, principal: Principal) -> list[dict[str, object]]:
    principal.require(Scope.ADMIN)
    if principal.program_id is not None:
        raise Forbidden("A key limited to one program cannot manage keys.")

    def work(conn: Connection) -> list[dict[str, object]]:
        rows = conn.execute(
            select(api_keys)
            .where(api_keys.c.tenant_id == principal.tenant_id)
            .order_by(api_keys.c.id)
        ).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "scopes": r.scopes.split(","),
                "program_id": r.program_id,
                "created_at": r.created_at.isoformat(),
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
            }
            for r in rows
        ]

    return run_transaction(engine, work, write=False)


def revoke_api_key(engine: Engine, principal: Principal, key_id: str, *, now: datetime) -> None:
    principal.require(Scope.ADMIN)
    if principal.program_id is not None:
        raise Forbidden("A key limited to one program cannot manage keys.")

    def work(conn: Connection) -> None:
        row = conn.execute(
            select(api_keys.c.revoked_at).where(
                api_keys.c.id == key_id, api_keys.c.tenant_id == principal.tenant_id
            )
        ).first()
        if row is None:
            raise ApiKeyNotFound(key_id)
        if row.revoked_at is None:  # revoking twice keeps the first revocation time
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))

    run_transaction(engine, work)
    forget_cached_keys(key_id)


def create_key_for_tenant(
    engine: Engine,
    *,
    tenant_id: str,
    name: str,
    scopes: list[Scope],
    program_id: str | None,
    now: datetime,
) -> IssuedKey:
    return run_transaction(
        engine,
        lambda conn: issue_key(
            conn, tenant_id=tenant_id, name=name, scopes=scopes, program_id=program_id, now=now
        ),
    )
