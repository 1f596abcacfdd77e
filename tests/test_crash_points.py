"""A run killed at random statements, then a changed world, then a rerun (G1, G2, G7), on
DuckDB and PostgreSQL.

A child process runs the policies of `crash_worker` and dies with `os._exit(137)` at its N-th
statement to the store (N drawn with a fixed seed over every statement of an uninterrupted
run, its purge included). Before the rerun the world changes as it would overnight: a hold on
an expired customer and on an expired lead, and another of each re-activated (its clock moved
to today). The expectation is written in SQL over that changed world, with neither the
engine's predicates nor its plan: a fresh run must remove exactly the customers past their
period and not held, with their subscriptions, anonymise exactly those leads, and leave every
other row as it is. The rerun must also finish what the crash left: the journal, a pending
purge, the run marked `interrupted`.
"""

import multiprocessing
import random
from pathlib import Path

import crash_worker
import pytest
from crash_worker import AS_OF, CUTOFF
from schema_cases import rows, sql
from stores import reset_pg_database

from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore

SEED = 20261122
POINTS = 10
"""Crash points per store: each costs two child runs (about a second each on DuckDB)."""

DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.customers (id BIGINT PRIMARY KEY, ended_at DATE)",
    "CREATE TABLE s.subscriptions (id BIGINT PRIMARY KEY, "
    "customer_id BIGINT REFERENCES s.customers (id), plan VARCHAR)",
    "CREATE TABLE s.leads (id BIGINT PRIMARY KEY, email VARCHAR, seen_at DATE)",
    # customers and leads 1..9 are past their period, 10..12 are not
    "INSERT INTO s.customers VALUES "
    + ", ".join(
        f"({i}, {'DATE ' + repr('2020-03-01') if i < 10 else 'NULL'})" for i in range(1, 13)
    ),
    "INSERT INTO s.subscriptions VALUES "
    + ", ".join(f"({10 * i + k}, {i}, 'p{k}')" for i in range(1, 13) for k in (1, 2)),
    "INSERT INTO s.leads VALUES "
    + ", ".join(
        f"({i}, 'lead{i}@example.org', DATE '{'2020-03-01' if i < 10 else '2026-10-01'}')"
        for i in range(1, 13)
    ),
]

_CTX = multiprocessing.get_context("forkserver")
# the server imports the engine once; each child is a cheap fork of it that has used no
# thread pool yet (forking the test process itself, after Polars or DuckDB ran, can deadlock)
# (engine modules, not crash_worker: Python 3.11's fork server ignores the tests' sys.path)
_CTX.set_forkserver_preload(
    ["retention_jobs.apply", "retention_jobs.store.duckdb_store", "retention_jobs.store.sql_store"]
)


def child_run(store: Store, crash_at: int, tmp: Path) -> tuple[int | None, list[int]]:
    """Run in a child process that dies at statement `crash_at` (0: never); its exit code and,
    if it finished, its statement count and the first and last statement of its purge."""
    count = tmp / "count"
    count.unlink(missing_ok=True)
    p = _CTX.Process(target=crash_worker.run, args=(location(store), crash_at, str(count)))
    p.start()
    p.join(300)
    return p.exitcode, [int(x) for x in count.read_text().split()] if count.exists() else []


def location(store: Store) -> str:
    if isinstance(store, DuckDBStore):
        return str(store.path)
    assert isinstance(store, SqlStore)
    return store.engine.url.render_as_string(hide_password=False)


def fresh_world(kind: str, tmp: Path, i: int, pg_url: str | None) -> Store:
    if kind == "duckdb":
        store: Store = DuckDBStore(tmp / f"w{i}.duckdb")
    else:
        assert pg_url is not None
        reset_pg_database(pg_url)
        store = SqlStore(pg_url)
    sql(store, *DDL)
    return store


def ids(store: Store, query: str) -> list[int]:
    return [r[0] for r in rows(store, query)]


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_run_killed_at_random_statements_then_rerun_on_a_changed_world(kind, tmp_path, request):
    pg_url = request.getfixturevalue("pg_url") if kind == "postgresql" else None
    exit_code, (total, purge_from, purge_to) = child_run(
        fresh_world(kind, tmp_path, 0, pg_url), 0, tmp_path
    )
    assert exit_code == 0 and total > 20, "an uninterrupted run must finish"
    assert 0 < purge_from <= purge_to, "the run must purge"
    rng = random.Random(SEED)
    # spread over the whole run, and two inside its purge
    points = sorted(
        rng.sample(range(1, total + 1), POINTS - 2)
        + rng.sample(range(purge_from, purge_to + 1), min(2, purge_to - purge_from + 1))
    )
    for i, crash_at in enumerate(points, start=1):
        store = fresh_world(kind, tmp_path, i, pg_url)
        code, _ = child_run(store, crash_at, tmp_path)
        assert code == 137, f"statement {crash_at} of {total}: the child did not die there"

        # the world changes before the rerun
        cust = ids(
            store, f"SELECT id FROM s.customers WHERE ended_at <= DATE '{CUTOFF}' ORDER BY id"
        )
        # adversarial: the customers of a batch the crash left journalled, where there are some
        cust = [c for c in journalled(store) if c in cust] or cust
        leads = ids(store, f"SELECT id FROM s.leads WHERE seen_at <= DATE '{CUTOFF}' ORDER BY id")
        held_c = rng.sample(cust, min(1, len(cust)))
        woke_c = rng.sample([c for c in cust if c not in held_c], min(1, len(cust) - len(held_c)))
        held_l = rng.sample(leads, min(1, len(leads)))
        woke_l = rng.sample([x for x in leads if x not in held_l], min(1, len(leads) - len(held_l)))
        for c in held_c:
            crash_hold(store, f"customer:{c}")
        for x in held_l:
            crash_hold(store, f"lead:{x}")
        for c in woke_c:
            sql(store, f"UPDATE s.customers SET ended_at = DATE '{AS_OF}' WHERE id = {c}")
        for x in woke_l:
            sql(store, f"UPDATE s.leads SET seen_at = DATE '{AS_OF}' WHERE id = {x}")

        # the oracle, in SQL over the changed world
        keep_c = f"(ended_at IS NULL OR ended_at > DATE '{CUTOFF}' OR id IN ({in_list(held_c)}))"
        keep_l = f"(seen_at > DATE '{CUTOFF}' OR id IN ({in_list(held_l)}))"
        want_customers = rows(store, f"SELECT * FROM s.customers WHERE {keep_c} ORDER BY id")
        want_subs = rows(
            store,
            "SELECT * FROM s.subscriptions WHERE customer_id IN "
            f"(SELECT id FROM s.customers WHERE {keep_c}) ORDER BY id",
        )
        want_leads = rows(store, f"SELECT * FROM s.leads WHERE {keep_l} ORDER BY id")
        to_anonymise = ids(store, f"SELECT id FROM s.leads WHERE NOT {keep_l} ORDER BY id")

        code, _ = child_run(store, 0, tmp_path)
        where = f"crash at statement {crash_at} of {total}"
        assert code == 0, where
        assert rows(store, "SELECT * FROM s.customers ORDER BY id") == want_customers, where
        assert rows(store, "SELECT * FROM s.subscriptions ORDER BY id") == want_subs, where
        assert rows(store, f"SELECT * FROM s.leads WHERE {keep_l} ORDER BY id") == want_leads, where
        anonymised = rows(
            store,
            f"SELECT id, email FROM s.leads WHERE id IN ({in_list(to_anonymise)}) ORDER BY id",
        )
        assert [r[0] for r in anonymised] == to_anonymise, where
        assert all(email != f"lead{i}@example.org" for i, email in anonymised), where
        # what the crash left is finished: no journal, no pending purge, no run `running`
        assert rows(store, "SELECT count(*) FROM retention_control.purge_pending") == [(0,)], where
        assert rows(
            store, "SELECT count(*) FROM retention_control.runs WHERE status = 'running'"
        ) == [(0,)], where
        journal = "retention_control.pending__s__customers"
        assert rows(store, f"SELECT count(*) FROM {journal}") == [(0,)], where
        if isinstance(store, DuckDBStore):
            assert not Path(str(store.path) + ".compact").exists(), where


def journalled(store: Store) -> list[int]:
    try:
        return ids(store, "SELECT id FROM retention_control.pending__s__customers ORDER BY id")
    except Exception:  # noqa: BLE001 - the journal table is created by the first delete batch
        return []


def in_list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values) or "-1"


def crash_hold(store: Store, subject: str) -> None:
    import schema_cases

    schema_cases.hold(store, subject, "C-9", "investigation")
