"""Finding a PostgreSQL for the test suite, in this order:

1. ``LOYALTY_TEST_DATABASE_URL`` if set;
2. a server at 127.0.0.1:5432 (trust or ``PG*`` environment auth);
3. a throwaway cluster started with ``initdb``/``pg_ctl`` where PostgreSQL binaries exist.

If none works, the PostgreSQL half of the suite is skipped with a loud message, except when
``CI=true``, where that is an error.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import psycopg


@dataclass
class PostgresServer:
    admin_url: str
    """A URL to a maintenance database on the server (for CREATE/DROP DATABASE)."""
    origin: str
    cleanup: list[object] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def create_database(self) -> str:
        name = f"loyalty_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"

    def close(self) -> None:
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                for name in self.databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass
        for action in reversed(self.cleanup):
            action()  # type: ignore[operator]


def _can_connect(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _local_candidates() -> list[str]:
    users = [os.environ.get("PGUSER"), "postgres", os.environ.get("USER")]
    urls = []
    for user in users:
        if not user:
            continue
        for db in ("postgres", "test"):
            urls.append(f"postgresql://{user}@127.0.0.1:5432/{db}")
    return urls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return matches[-1] if matches else None


def _throwaway_cluster() -> PostgresServer | None:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    workdir = tempfile.mkdtemp(prefix="loyalty-pg-")
    datadir = os.path.join(workdir, "data")
    port = _free_port()
    prefix: list[str] = []
    user = "postgres"
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the cluster as the postgres system user.
        if shutil.which("runuser") is None:
            return None
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(workdir, user="postgres")
    else:
        user = os.environ.get("USER", "postgres")
    try:
        subprocess.run(
            [*prefix, initdb, "-D", datadir, "-A", "trust", "-U", user],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                datadir,
                "-l",
                os.path.join(workdir, "log"),
                "-o",
                f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError):
        shutil.rmtree(workdir, ignore_errors=True)
        return None

    def stop() -> None:
        subprocess.run(
            [*prefix, pg_ctl, "-D", datadir, "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(workdir, ignore_errors=True)

    url = f"postgresql://{user}@127.0.0.1:{port}/postgres"
    for _ in range(50):
        if _can_connect(url):
            return PostgresServer(url, f"throwaway cluster on port {port}", cleanup=[stop])
        time.sleep(0.1)
    stop()
    return None


def find_postgres() -> tuple[PostgresServer | None, str]:
    """The server, and a sentence saying where it came from or why there is none."""
    explicit = os.environ.get("LOYALTY_TEST_DATABASE_URL")
    if explicit:
        url = explicit.replace("postgresql+psycopg://", "postgresql://")
        if _can_connect(url):
            return PostgresServer(url, "LOYALTY_TEST_DATABASE_URL"), f"using {url}"
        return None, f"LOYALTY_TEST_DATABASE_URL={explicit} is not reachable"
    for url in _local_candidates():
        if _can_connect(url):
            return PostgresServer(url, "local server"), f"using the server at {url}"
    server = _throwaway_cluster()
    if server is not None:
        return server, f"started a {server.origin}"
    return None, "no PostgreSQL server at 127.0.0.1:5432 and no initdb/pg_ctl to start one"
