"""Stores: where the data lives. One place chooses the implementation from a URL or path."""

import os
import re
from pathlib import Path

from retention_jobs.errors import ConfigError
from retention_jobs.store.base import Store

STORE_ENV = "RETENTION_STORE"
DEFAULT_STORE = ".retention/warehouse.duckdb"


def mask_url(url: str) -> str:
    """The URL with any password replaced: safe for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def store_location(value: str | None = None) -> str:
    return value or os.environ.get(STORE_ENV) or DEFAULT_STORE


def open_store(value: str | None = None) -> Store:
    """A DuckDB path (or `duckdb:PATH`), or any SQLAlchemy URL such as postgresql+psycopg://..."""
    location = store_location(value)
    if location.startswith("duckdb:"):
        location = location.removeprefix("duckdb:").removeprefix("///")
    if "://" in location:
        try:
            from retention_jobs.store.sql_store import SqlStore
        except ImportError:
            raise ConfigError(
                f"SQL stores are not available in this build: {mask_url(location)}"
            ) from None
        return SqlStore(location)
    if location.endswith((".yaml", ".yml")):
        raise ConfigError(
            f"--store {location!r} looks like a policy file; pass a DuckDB path or a database URL"
        )
    from retention_jobs.store.duckdb_store import DuckDBStore

    return DuckDBStore(Path(location))
