"""The one place that wires settings to an engine and the engine to the entrypoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine

from loyalty.adapters.db.engine import DEFAULT_SQLITE_URL, make_engine, normalise_url


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    pool_size: int

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=normalise_url(os.environ.get("LOYALTY_DATABASE_URL", DEFAULT_SQLITE_URL)),
            pool_size=int(os.environ.get("LOYALTY_POOL_SIZE", "10")),
        )


def build_engine(settings: Settings | None = None) -> Engine:
    settings = settings or Settings.from_env()
    return make_engine(settings.database_url, pool_size=settings.pool_size)
