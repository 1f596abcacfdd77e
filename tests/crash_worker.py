"""The child process of tests/test_crash_points.py: a run that dies (`os._exit(137)`, as a
SIGKILL would: no `finally`, no rollback, no flush) at its N-th statement to the store,
purge included. Statements are counted below the engine: every `execute`/`sql` on a DuckDB
connection (sessions and the purge's compaction) and every cursor execution of SQLAlchemy
(PostgreSQL, VACUUM included)."""

import os
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from schema_cases import LEADS_POLICY as LEADS
from schema_cases import SHOP_POLICY as SHOP

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.load import PolicySet, load_text
from retention_jobs.store import duckdb_store as duckdb_store_module
from retention_jobs.store import open_store

AS_OF = date(2026, 11, 22)
CUTOFF = date(2025, 11, 22)
"""The last clock date past its period on AS_OF (keep_for P1Y)."""
KEY = PseudonymKey.from_text("crash-points-key-0123456789abcdef")
BATCH = 3


def policies() -> PolicySet:
    return PolicySet((load_text(SHOP, "shop.yaml"), load_text(LEADS, "leads.yaml")))


class _Counter:
    def __init__(self, crash_at: int):
        self.n, self.crash_at = 0, crash_at

    def tick(self) -> None:
        self.n += 1
        if self.n == self.crash_at:
            os._exit(137)


class _Connection:
    """A DuckDB connection whose statements are counted."""

    def __init__(self, con: Any, counter: _Counter):
        self._con, self._counter = con, counter

    def execute(self, *a: Any, **k: Any) -> Any:
        self._counter.tick()
        return self._con.execute(*a, **k)

    def sql(self, *a: Any, **k: Any) -> Any:
        self._counter.tick()
        return self._con.sql(*a, **k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class _DuckDB:
    """The `duckdb` module as duckdb_store sees it, with counted connections."""

    def __init__(self, real: Any, counter: _Counter):
        self._real, self._counter = real, counter

    def connect(self, *a: Any, **k: Any) -> _Connection:
        return _Connection(self._real.connect(*a, **k), self._counter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def run(location: str, crash_at: int, count_file: str) -> None:
    """Run the policies on `location`; die at statement `crash_at` (0: never). A run that
    finishes writes how many statements it made, and the numbers of the first and last
    statement of its purge (`Store.purge`), to `count_file`."""
    counter = _Counter(crash_at)
    duckdb_store_module.duckdb = _DuckDB(duckdb_store_module.duckdb, counter)  # type: ignore[assignment]
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", lambda *a, **k: counter.tick())
    store = open_store(location)
    purge, span = store.purge, [0, 0]

    def counted_purge(*a: Any, **k: Any) -> Any:
        span[0] = counter.n + 1
        try:
            return purge(*a, **k)
        finally:
            span[1] = counter.n

    store.purge = counted_purge  # type: ignore[method-assign]
    run_policies(
        store, policies(), AS_OF, KEY, RunOptions(max_delete_fraction=None, batch_size=BATCH)
    )
    Path(count_file).write_text(f"{counter.n} {span[0]} {span[1]}")
