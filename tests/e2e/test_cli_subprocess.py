"""The installed ``loyalty`` console script, run as a real process on a fresh SQLite file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import head_revision
from loyalty.adapters.db.tables import api_keys, events, journal_entries, members, programs

LOYALTY = Path(sys.executable).parent / "loyalty"
DEMO_TOKEN = "key_demo.loyalty-demo-secret"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update({"NO_COLOR": "1", "COLUMNS": "200"})
    return subprocess.run(
        [str(LOYALTY), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (api_keys, programs, members, events, journal_entries)
            }
    finally:
        engine.dispose()


def test_loyalty_init_and_demo_as_a_process(tmp_path):
    assert LOYALTY.exists(), LOYALTY
    url = f"sqlite:///{tmp_path / 'shop.db'}"

    init = _run(tmp_path, "init", "--database-url", url)
    assert init.returncode == 0, init.stderr
    assert f"Database migrated from empty to {head_revision()}." in init.stdout

    first = _run(tmp_path, "demo", "--database-url", url)
    assert first.returncode == 0, first.stderr
    assert DEMO_TOKEN in first.stdout
    loaded = re.search(r"Loaded the demo program (prg_[0-9A-Z]+)\.", first.stdout)
    assert loaded is not None, first.stdout
    after_first = _counts(url)
    assert after_first["api_keys"] == 1
    assert after_first["programs"] == 1
    assert after_first["members"] == 12
    assert after_first["events"] > 12

    second = _run(tmp_path, "demo", "--database-url", url)
    assert second.returncode == 0, second.stderr
    assert DEMO_TOKEN in second.stdout
    assert f"Found the demo program {loaded.group(1)}." in second.stdout
    assert _counts(url) == after_first

    # --database-url was used: nothing was written to the default ./loyalty.db.
    assert not (tmp_path / "loyalty.db").exists()
