"""Idempotent writes.

The stored key and the response are written in the same transaction as the effect, so a key
is either absent (nothing happened) or present with the exact response. The same key with the
same request replays that response; with a different request it is a conflict. When two
identical requests race, the loser's INSERT of the key conflicts (on PostgreSQL it waits for the
winner to commit first); its transaction is rolled back and re-run, and then finds the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, text

from loyalty.adapters.db.bulk import insert_rows
from loyalty.adapters.db.engine import RetryTransaction
from loyalty.adapters.db.keyed import KeyedRead, each_key
from loyalty.adapters.db.reads import Read
from loyalty.adapters.db.tables import idempotency_keys
from loyalty.domain.errors import DomainError, IdempotencyConflict

IDEMPOTENCY_KEY_LENGTH_MAX = 255


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool


def fingerprint(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


_STORED = select(
    idempotency_keys.c.key,
    idempotency_keys.c.fingerprint,
    idempotency_keys.c.status_code,
    idempotency_keys.c.response,
).where(
    idempotency_keys.c.tenant_id == bindparam("tenant_id"),
    idempotency_keys.c.scope == bindparam("scope"),
)
_FIND = _STORED.where(idempotency_keys.c.key == bindparam("key"))
# Written as text because SQLAlchemy cannot cache a compiled ON CONFLICT statement, and this
# runs on every write; the SQL is the same on PostgreSQL and SQLite (3.35+).
_INSERT = text(
    "INSERT INTO idempotency_keys "
    "(tenant_id, scope, key, fingerprint, status_code, response, created_at) "
    "VALUES (:tenant_id, :scope, :key, :fingerprint, :status_code, :response, :created_at) "
    "ON CONFLICT DO NOTHING RETURNING key"
).bindparams(
    bindparam("response", type_=idempotency_keys.c.response.type),
    bindparam("created_at", type_=idempotency_keys.c.created_at.type),
)


def find(conn: Connection, *, tenant_id: str, scope: str, key: str) -> Any:
    return conn.execute(_FIND, {"tenant_id": tenant_id, "scope": scope, "key": key}).first()


_FIND_MANY = KeyedRead(
    in_list=_STORED.where(idempotency_keys.c.key.in_(bindparam("keys", expanding=True))),
    each_key=each_key(
        lambda key: _STORED.where(idempotency_keys.c.key == key).limit(1), keys="keys"
    ),
)


def find_many(conn: Connection, *, tenant_id: str, scope: str, keys: set[str]) -> dict[str, Any]:
    """The stored keys among ``keys``, in one statement."""
    if not keys:
        return {}
    params = {"tenant_id": tenant_id, "scope": scope, "keys": sorted(keys)}
    return {row.key: row for row in conn.execute(_FIND_MANY.on(conn, keys), params)}


def find_many_read(conn: Connection, *, tenant_id: str, scope: str, keys: set[str]) -> Read:
    """``find_many``'s statement for ``read_together`` (``keys`` not empty); its rows, by
    ``row.key``, are ``find_many``'s answer."""
    params = {"tenant_id": tenant_id, "scope": scope, "keys": sorted(keys)}
    return _FIND_MANY.together(conn), params


def store_many(
    conn: Connection,
    *,
    tenant_id: str,
    scope: str,
    now: datetime,
    outcomes: list[tuple[str, str, Outcome]],
) -> None:
    """Store ``(key, fingerprint, outcome)`` for many writes made in this transaction, in one
    statement and in key order. A key a concurrent transaction stored first is a unique
    violation: the whole transaction is re-run, finds that key, and replays it."""
    if not outcomes:
        return
    insert_rows(
        conn,
        idempotency_keys,
        [
            {
                "tenant_id": tenant_id,
                "scope": scope,
                "key": key,
                "fingerprint": request_fingerprint,
                "status_code": outcome.status_code,
                "response": outcome.body,
                "created_at": now,
            }
            for key, request_fingerprint, outcome in sorted(outcomes, key=lambda o: o[0])
        ],
    )


def run_idempotent(
    conn: Connection,
    *,
    tenant_id: str,
    scope: str,
    key: str | None,
    request_fingerprint: str,
    now: datetime,
    work: Callable[[], tuple[int, dict[str, Any]]],
    client_key: str | None = None,
) -> Outcome:
    """``key`` is namespaced by operation; ``client_key`` is what the client sent, for errors."""
    if key is None:
        status, body = work()
        return Outcome(status, body, replayed=False)
    stored = find(conn, tenant_id=tenant_id, scope=scope, key=key)
    if stored is not None:
        if stored.fingerprint != request_fingerprint:
            raise IdempotencyConflict(client_key or key)
        return Outcome(stored.status_code, stored.response, replayed=True)
    try:
        status, body = work()
    except DomainError:
        # A twin request may have committed while this one waited for a lock and then found the
        # state already changed by it (points gone, member enrolled): replay its response.
        stored = find(conn, tenant_id=tenant_id, scope=scope, key=key)
        if stored is None:
            raise
        if stored.fingerprint != request_fingerprint:
            raise IdempotencyConflict(client_key or key) from None
        return Outcome(stored.status_code, stored.response, replayed=True)
    values = {
        "tenant_id": tenant_id,
        "scope": scope,
        "key": key,
        "fingerprint": request_fingerprint,
        "status_code": status,
        "response": body,
        "created_at": now,
    }
    inserted = conn.execute(_INSERT, values).first()
    if inserted is None:
        raise RetryTransaction()
    return Outcome(status, body, replayed=False)
