"""Fixtures shared by test modules that do not define their own: `store` is a fresh DuckDB
file, or the module's throw-away PostgreSQL database emptied (marked `postgres`)."""

from pathlib import Path

import pytest
from stores import pg_database, reset_pg_database

from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore

STORES = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module")
def pg_url():
    with pg_database() as url:
        yield url


@pytest.fixture(params=STORES)
def store(request, tmp_path: Path) -> Store:
    if request.param == "duckdb":
        return DuckDBStore(tmp_path / "warehouse.duckdb")
    url = request.getfixturevalue("pg_url")
    reset_pg_database(url)
    return SqlStore(url)
