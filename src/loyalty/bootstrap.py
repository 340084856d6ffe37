"""The one place that wires settings to an engine and the engine to the entrypoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine

from loyalty.adapters.db.engine import (
    DEFAULT_SQLITE_URL,
    SERVER_LOCK_TIMEOUT_MS,
    make_engine,
    normalise_url,
    nowait_engine,
)
from loyalty.application.event_groups import EventGroups
from loyalty.application.limits import (
    EVENT_GROUP_SIZE_MAX,
    EVENT_GROUP_WAIT_MS,
    EVENT_GROUP_WAIT_MS_MAX,
)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    pool_size: int
    group_commit: bool = True
    """Concurrent single purchases of a program recorded together (``event_groups``)."""
    group_wait_ms: float = EVENT_GROUP_WAIT_MS
    """How long a group's leader waits for more purchases to join before writing."""
    group_commit_on_loop: bool = True
    """Groups recorded on the event loop's own thread when nothing would make them wait."""
    lock_timeout_ms: int = SERVER_LOCK_TIMEOUT_MS
    """On PostgreSQL, how long the server's transactions wait for a lock (0: as long as it
    takes)."""

    @classmethod
    def from_env(cls) -> Settings:
        wait = os.environ.get("LOYALTY_GROUP_COMMIT_WAIT_MS", str(EVENT_GROUP_WAIT_MS))
        try:
            group_wait_ms = float(wait)
        except ValueError:
            group_wait_ms = -1.0
        if not 0 <= group_wait_ms <= EVENT_GROUP_WAIT_MS_MAX:
            raise ValueError(
                f"LOYALTY_GROUP_COMMIT_WAIT_MS must be 0 to {EVENT_GROUP_WAIT_MS_MAX:g}, "
                f"not {wait!r}"
            )
        timeout = os.environ.get("LOYALTY_LOCK_TIMEOUT_MS", str(SERVER_LOCK_TIMEOUT_MS))
        if not timeout.isdigit() or int(timeout) > LOCK_TIMEOUT_MS_MAX:
            raise ValueError(
                f"LOYALTY_LOCK_TIMEOUT_MS must be 0 to {LOCK_TIMEOUT_MS_MAX}, not {timeout!r}"
            )
        return cls(
            database_url=normalise_url(os.environ.get("LOYALTY_DATABASE_URL", DEFAULT_SQLITE_URL)),
            pool_size=int(os.environ.get("LOYALTY_POOL_SIZE", "10")),
            group_commit=_switch("LOYALTY_GROUP_COMMIT"),
            group_wait_ms=group_wait_ms,
            group_commit_on_loop=_switch("LOYALTY_GROUP_COMMIT_ON_LOOP"),
            lock_timeout_ms=int(timeout),
        )


_SWITCH = {"on": True, "off": False, "1": True, "0": False, "true": True, "false": False}


def _switch(variable: str) -> bool:
    """An on/off setting, on unless the environment says otherwise."""
    value = os.environ.get(variable, "on").strip().lower()
    if value not in _SWITCH:
        raise ValueError(f"{variable} must be on or off, not {value!r}")
    return _SWITCH[value]


LOCK_TIMEOUT_MS_MAX = 600_000


def build_engine(settings: Settings | None = None, *, serving: bool = False) -> Engine:
    """The engine of a command, or (``serving``) of the server, whose PostgreSQL sessions wait
    for a lock at most ``settings.lock_timeout_ms``: a request answers ``503`` rather than
    hang behind a transaction that holds a row too long. Jobs and imports wait."""
    settings = settings or Settings.from_env()
    options = None
    if serving and settings.lock_timeout_ms and settings.database_url.startswith("postgresql"):
        options = {"options": f"-c lock_timeout={settings.lock_timeout_ms}"}
    return make_engine(settings.database_url, pool_size=settings.pool_size, pg_connect_args=options)


def build_event_groups(engine: Engine, settings: Settings | None = None) -> EventGroups | None:
    """The group-commit queues of this process, or None when the setting turns them off."""
    settings = settings or Settings.from_env()
    if not settings.group_commit:
        return None
    return EventGroups(
        engine,
        size_max=EVENT_GROUP_SIZE_MAX,
        wait_ms=settings.group_wait_ms,
        on_loop=nowait_engine(engine) if settings.group_commit_on_loop else None,
    )
