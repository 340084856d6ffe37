"""Creating engines for SQLite and PostgreSQL, and running one transaction with retries.

SQLite: WAL, a busy timeout, foreign keys on, and ``BEGIN IMMEDIATE`` for write transactions so
two writers serialise at ``BEGIN`` instead of failing at ``COMMIT`` (SQLAlchemy's SQLite dialect
emits nothing for ``FOR UPDATE``). PostgreSQL: psycopg 3, READ COMMITTED, row locks taken by
``adapters.db.locking``.

A SQLite write appends its pages to the WAL at commit; copying the WAL back into the database
(a checkpoint) is done by the commit that finds the WAL past ``wal_autocheckpoint`` pages, which
waits for it. A long-running process (the server) runs ``background_checkpoints`` instead: a
thread of its own copies the WAL every 25 ms, on the other core, while the writers go on. The
commit-time threshold stays, higher, as the bound where no such thread runs.

Copied is not yet restarted: SQLite writes the WAL from its start again only when a write
transaction begins with every frame already copied, and under steady writes the next one
always begins before the thread's copy ends. Left alone, the WAL grew to the commit-time
threshold, and the commit that found it there copied what the thread had not yet copied and
synced both files while its requests waited: at 8 clients one group of purchases in 70 took
about 30 ms instead of 4, which is what set the p99. So the thread restarts it itself, rarely:
when it finds the WAL past ``SQLITE_WAL_RESTART_PAGES``, it copies the rest again while this
process's writers wait their turn (mostly the sync of the database file: 2 to 30 ms on a busy
disk), and the next write begins on a WAL copied to its end. A writer of another process may
slip in first; the thread then tries again on its next pass.

What the writers wait for there is mostly the two files' syncs. A checkpoint that copies while
writers go on never syncs the database file (SQLite syncs it only when a pass ends with every
frame copied), so the restart's sync wrote out every page copied since the last one: 5 to 30
ms under load, growing as the file grew. The thread therefore syncs both files first, before it
takes the turn (``_flush_files``), and the syncs under the turn find little left to write.

The WAL's file grows only until the WAL is restarted, and each commit of a single purchase
appends about 60 KB: on a disk with a few megabytes left, the log took the room the data
needed. So the thread also restarts the WAL once it holds a quarter of the room it has, its
own file and the free space of its file system (``_room_for_wal``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from loyalty.adapters.json_bytes import json_bytes

T = TypeVar("T")

DEFAULT_SQLITE_URL = "sqlite:///loyalty.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 40_000
"""A commit that finds this many pages in the WAL (about 160 MB) checkpoints it (SQLite's
default is 1,000); ``background_checkpoints`` keeps it to half that where it runs."""
SQLITE_CHECKPOINT_INTERVAL_S = 0.025
_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
SQLITE_WAL_RESTART_PAGES = 20_000
"""Past this many pages in the WAL (about 80 MB), ``background_checkpoints`` makes SQLite write
it from its start again (the module's notes): at 8 clients, once in about 150 groups."""
SQLITE_WAL_FREE_SHARE = 4
"""Where the disk has little room left, ``background_checkpoints`` restarts the WAL sooner:
once it holds a quarter of the room it has (its own file and the free space of its file
system), so the log never takes the room the data needs."""
SQLITE_WAL_RESTART_PAGES_MIN = 64
"""The soonest the WAL is restarted for want of room, however little is left (256 KB of 4 KB
pages)."""
TRANSACTION_ATTEMPTS_MAX = 8


class RetryTransaction(Exception):
    """Raised inside a transaction to roll it back and run it again from the start, e.g. after
    losing an idempotency-key race to a request that has since committed."""


class WouldWait(Exception):
    """A transaction run with ``nowait`` would have waited: for this process's SQLite write
    turn, for another process's SQLite write, for a PostgreSQL lock held longer than
    ``NOWAIT_LOCK_TIMEOUT_MS``, or for a statement running past
    ``NOWAIT_STATEMENT_TIMEOUT_MS``. It was rolled back, so nothing was written; run it again
    where waiting is fine."""


SERVER_LOCK_TIMEOUT_MS = 2_000
"""How long a request's transaction waits for a row another transaction holds, on PostgreSQL
(``LOYALTY_LOCK_TIMEOUT_MS``; the server's sessions only, jobs wait as long as it takes):
past it the request is answered ``503`` with ``Retry-After``, with nothing written."""
NOWAIT_LOCK_TIMEOUT_MS = 10
"""How long a ``nowait`` transaction on PostgreSQL waits for a lock before giving up."""
NOWAIT_STATEMENT_TIMEOUT_MS = 500
"""How long one statement of a ``nowait`` transaction on PostgreSQL may run before giving up."""
PG_PREPARED_STATEMENTS_MAX = 256
"""Statements a PostgreSQL session keeps prepared (psycopg's ``prepared_max``; its default is
100). The bulk inserts alone prepare a text per table and statement size, and groups of mixed
sizes used more than 100: the least recently used was deallocated and prepared again."""


class StorageUnavailable(Exception):
    """The database could not complete the transaction (down, locked, or contended past the
    retry budget). Nothing was written; the caller may retry later."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def json_text(value: Any) -> str:
    """The text of a JSON column (``json_bytes``: orjson, a tenth of the standard library's
    time for the answers kept for idempotency)."""
    return json_bytes(value).decode()


def make_engine(
    url: str, *, pool_size: int = 10, pg_connect_args: dict[str, Any] | None = None
) -> Engine:
    """``pg_connect_args``: what a PostgreSQL session is opened with (psycopg's arguments)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            json_serializer=json_text,
            pool_size=pool_size,
            max_overflow=pool_size,
            # The connection returned last is taken first. A SQLite connection keeps its page
            # cache only while no other connection has written since its last transaction:
            # taken in turn (the default), every write reloaded the pages it touched.
            pool_use_lifo=True,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
        json_serializer=json_text,
        connect_args=pg_connect_args or {},
    )
    event.listen(engine, "connect", _configure_postgresql_session)
    return engine


def _configure_postgresql_session(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.prepared_max = PG_PREPARED_STATEMENTS_MAX


def _sqlite_file(engine: Engine) -> bool:
    """A SQLite database in a file of its own: not in memory, not a SQLite URI."""
    database = engine.url.database
    return (
        engine.dialect.name == "sqlite"
        and bool(database)
        and database != ":memory:"
        and "uri" not in engine.url.query
    )


def nowait_engine(engine: Engine) -> Engine:
    """The engine for transactions run with ``nowait`` beside ``engine``: a pool of its own, so
    it never waits for a connection the engine's threads hold. On SQLite, one connection that
    shares ``engine``'s write turn (``connect`` takes the turn without waiting and turns the
    busy timeout off; an in-memory database is ``engine`` itself, as a second pool would open
    another database). On PostgreSQL, sessions that give up on a lock after
    ``NOWAIT_LOCK_TIMEOUT_MS`` and on a statement after ``NOWAIT_STATEMENT_TIMEOUT_MS`` (set
    when a session starts: no statement of their own per transaction). The caller disposes of
    it when it is not ``engine``."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        if not _sqlite_file(engine):
            return engine
        nowait = make_engine(url, pool_size=1)
        with _sqlite_writers_guard:
            _sqlite_writers[nowait] = _sqlite_writer_locked(engine)
        return nowait
    options = (
        f"-c lock_timeout={NOWAIT_LOCK_TIMEOUT_MS}"
        f" -c statement_timeout={NOWAIT_STATEMENT_TIMEOUT_MS}"
    )
    return make_engine(url, pool_size=1, pg_connect_args={"options": options, "connect_timeout": 5})


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module so BEGIN is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("loyalty_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def background_checkpoints(
    engine: Engine,
    *,
    interval_s: float = SQLITE_CHECKPOINT_INTERVAL_S,
    restart_pages: int = SQLITE_WAL_RESTART_PAGES,
) -> Iterator[None]:
    """While the block runs, on a SQLite file: a thread that checkpoints the WAL every
    ``interval_s`` on a connection of its own, ``PASSIVE`` (it copies what no reader still
    needs and waits for no one), so commits rarely find the WAL long enough to checkpoint it
    themselves. sqlite3 lets go of Python's lock while SQLite works, so the copy runs beside
    the requests. When it finds ``restart_pages`` or more in the WAL, it copies the rest
    holding the process's write turn, so that the next write restarts the WAL. Elsewhere
    (PostgreSQL, an in-memory SQLite) the block runs alone."""
    database = engine.url.database
    # PostgreSQL, a SQLite in memory, or a SQLite URI (left to the commits, as without a server).
    if not _sqlite_file(engine) or not database:
        yield
        return
    stop = threading.Event()

    wal = f"{database}-wal"

    def run() -> None:
        with closing(sqlite3.connect(database, check_same_thread=False)) as conn:
            conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            frame_bytes = int(conn.execute("PRAGMA page_size").fetchone()[0]) + _WAL_FRAME_HEADER
            while not stop.wait(interval_s):
                try:
                    _busy, pages, _copied = conn.execute(_CHECKPOINT).fetchone()
                    if pages >= restart_pages or (
                        pages >= SQLITE_WAL_RESTART_PAGES_MIN
                        and pages * frame_bytes >= _room_for_wal(wal)
                    ):
                        # Written out while the writers go on, so that the syncs under the
                        # turn find little left to write.
                        _flush_files(database, wal)
                        # What the writers committed meanwhile, copied while they wait
                        # their turn: the next one begins on a WAL copied to its end.
                        with _sqlite_writer(engine):
                            conn.execute(_CHECKPOINT).fetchall()
                except sqlite3.Error:
                    continue  # the next turn tries again; a commit still bounds the WAL

    thread = threading.Thread(target=run, name="sqlite-checkpoints", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


_WAL_FRAME_HEADER = 24


def _room_for_wal(wal: str) -> int:
    """How long the WAL may grow, in bytes, as far as the disk goes: a share
    (``SQLITE_WAL_FREE_SHARE``) of the room it has, its own file (which a restarted WAL writes
    over) and what its file system has free. As the WAL grows the two change places and the
    sum holds, so restarting past it keeps the file within that share. Unbounded where the
    file system can't be read."""
    try:
        held = os.stat(wal).st_size
        disk = os.statvfs(wal)
    except OSError:
        return 2**62
    return (held + disk.f_bavail * disk.f_frsize) // SQLITE_WAL_FREE_SHARE


_OPEN_FILES = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
"""Where this process's open file descriptors are listed (Linux, then the BSDs and macOS)."""


def _flush_files(*paths: str) -> int:
    """Write each file's changed pages to disk (``fdatasync``, else ``fsync``), through a
    descriptor the process already has open on it: SQLite's own. Opening one of our own would
    not do, since closing any descriptor of a file drops every POSIX lock the process holds on
    it, SQLite's included. Returns how many of the files were synced; a file with no open
    descriptor, or a system that can't list them, is skipped (the checkpoint's own sync still
    writes it out)."""
    if _OPEN_FILES is None:
        return 0
    wanted: set[tuple[int, int]] = set()  # the files, by device and inode
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    sync = getattr(os, "fdatasync", os.fsync)
    synced = 0
    try:
        listed = os.listdir(_OPEN_FILES)
    except OSError:
        return 0
    for name in listed:
        if not wanted:
            break
        try:
            fd = int(name)
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key not in wanted:
                continue
            # Closed and reused meanwhile: a sync of another file, or EBADF; both harmless.
            sync(fd)
        except (ValueError, OSError):
            continue
        wanted.discard(key)
        synced += 1
    return synced


def _is_unique_violation(exc: DBAPIError) -> bool:
    """Two transactions inserted the same natural key (an event's source id, a member's
    external id). Re-running the loser finds the winner's row and replays or refuses."""
    if getattr(exc.orig, "sqlstate", None) == "23505":
        return True
    return "unique constraint failed" in str(exc.orig).lower()


def _is_retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in {"40001", "40P01"}:  # serialization failure, deadlock
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database table is locked" in message


def is_lock_timeout(exc: DBAPIError) -> bool:
    """PostgreSQL gave up waiting for a lock (``lock_timeout``; the engine asks for no lock
    with ``NOWAIT``): something holds it for longer than a request should wait, and trying
    again at once would only wait as long again."""
    return getattr(exc.orig, "sqlstate", None) == "55P03"


def _is_timed_out(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "57014"  # statement timeout, or cancelled


def _is_unavailable(exc: DBAPIError) -> bool:
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith(("08", "57P"))


_sqlite_writers: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_sqlite_writers_guard = threading.Lock()


def _sqlite_writer(engine: Engine) -> threading.RLock:
    """The lock the write transactions of one process take in turn on a SQLite engine.

    SQLite has one writer at a time. Without this, threads that find the database locked wait
    in SQLite's busy handler, which sleeps 1, 2, 5, ... up to 100 ms between tries: under
    concurrent writes a few unlucky requests waited a second or more while the writer was long
    done (p99 over 1 s at 8 clients, docs/performance.md). Queued on a lock instead, the next
    writer starts the moment the last one commits. Other processes on the same file still meet
    the busy handler, as before."""
    with _sqlite_writers_guard:
        return _sqlite_writer_locked(engine)


def _sqlite_writer_locked(engine: Engine) -> threading.RLock:
    """``_sqlite_writer``, for a caller holding ``_sqlite_writers_guard``."""
    lock = _sqlite_writers.get(engine)
    if lock is None:
        lock = _sqlite_writers[engine] = threading.RLock()
    return lock


@contextmanager
def _turn_now(lock: threading.RLock) -> Iterator[None]:
    """``lock``, only if it is free now; else ``WouldWait``."""
    if not lock.acquire(blocking=False):
        raise WouldWait("another transaction of this process is writing")
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _busy_timeout_off(conn: Connection) -> Iterator[None]:
    """SQLite answers at once that another process is writing, instead of waiting for it."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


@contextmanager
def connect(
    engine: Engine, *, write: bool, snapshot: bool = False, nowait: bool = False
) -> Iterator[Connection]:
    """One transaction: committed if the block returns, rolled back if it raises. With
    ``snapshot``, every statement of a read-only transaction sees the same committed state
    (``REPEATABLE READ`` on PostgreSQL, whose ``READ COMMITTED`` gives each statement its
    own; a SQLite read transaction is one snapshot already). With ``nowait`` (on SQLite; on
    PostgreSQL, see ``nowait_engine``), ``WouldWait`` rather than a wait for this process's
    write turn (a write) or for another process holding the database (any transaction)."""
    assert not (write and snapshot), "a snapshot is for reads: writes take locks instead"
    sqlite = engine.dialect.name == "sqlite"
    turn: AbstractContextManager[Any] = nullcontext()
    if write and sqlite:
        lock = _sqlite_writer(engine)
        turn = _turn_now(lock) if nowait else lock
    with (
        turn,
        engine.connect() as conn,
        _busy_timeout_off(conn) if nowait and sqlite else nullcontext(),
    ):
        if snapshot and not sqlite:
            # Set on the driver's connection before BEGIN: no round trip of its own.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        conn = conn.execution_options(loyalty_write=write)
        with conn.begin():
            yield conn


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction for reads that don't go through ``run_transaction``: a
    database that is unreachable surfaces as ``StorageUnavailable`` (503), never as a 500."""
    try:
        with connect(engine, write=False) as conn:
            yield conn
    except DBAPIError as exc:
        if _is_retryable(exc) or is_lock_timeout(exc) or _is_unavailable(exc):
            raise StorageUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
        raise


def run_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    write: bool = True,
    snapshot: bool = False,
    nowait: bool = False,
) -> T:
    """Run ``work`` in one transaction, retrying on deadlock, serialization failure or a busy
    SQLite; a database that stays unreachable, or a lock waited for past the session's
    ``lock_timeout`` (``SERVER_LOCK_TIMEOUT_MS``), surfaces as ``StorageUnavailable``.
    ``snapshot``: see ``connect``. With ``nowait`` (see ``connect`` and ``nowait_engine``),
    what would wait (a lock, a busy SQLite, a statement past its time) raises ``WouldWait``
    at once, with nothing written, and nothing sleeps."""
    delay_s = 0.005
    for attempt in range(1, TRANSACTION_ATTEMPTS_MAX + 1):
        try:
            with connect(engine, write=write, snapshot=snapshot, nowait=nowait) as conn:
                return work(conn)
        except RetryTransaction:
            if attempt < TRANSACTION_ATTEMPTS_MAX:
                continue
            raise StorageUnavailable("transaction kept conflicting; retry later") from None
        except DBAPIError as exc:
            if nowait and (_is_retryable(exc) or is_lock_timeout(exc) or _is_timed_out(exc)):
                raise WouldWait(str(exc.orig)) from exc
            if is_lock_timeout(exc):
                raise StorageUnavailable("a row it needs is held by another transaction") from exc
            if _is_unique_violation(exc):
                if attempt < TRANSACTION_ATTEMPTS_MAX:
                    continue
                raise
            if _is_retryable(exc) and attempt < TRANSACTION_ATTEMPTS_MAX:
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.2)
                continue
            if _is_retryable(exc) or _is_unavailable(exc):
                raise StorageUnavailable(
                    f"database unavailable: {type(exc.orig).__name__}"
                ) from exc
            raise
    raise AssertionError("unreachable")
