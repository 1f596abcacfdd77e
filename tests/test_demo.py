"""The demo warehouse: deterministic, proportional, referentially whole, and the shipped
policies resolve against it."""

import re
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from retention_jobs import demo
from retention_jobs.errors import ConfigError
from retention_jobs.load import load_policies
from retention_jobs.periods import Period, expires_on
from retention_jobs.resolve import resolve
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 5, 1)
ROWS = 400
POLICIES = Path(__file__).resolve().parents[1] / "policies"


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return demo.build_tables(ROWS, AS_OF)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "warehouse.duckdb"
    demo.load_duckdb(path, ROWS, AS_OF)
    return path


def test_same_arguments_give_the_same_tables(tables):
    again = demo.build_tables(ROWS, AS_OF)
    assert list(again) == list(tables)
    for name, df in tables.items():
        assert df.equals(again[name]), name


def test_another_seed_gives_other_data(tables):
    other = demo.build_tables(ROWS, AS_OF, seed=8)
    assert not other["billing.customers"].equals(tables["billing.customers"])


def test_every_table_is_built_with_its_ddl_columns(tables):
    assert list(tables) == list(demo.TABLES)
    for name, df in tables.items():
        assert df.columns == demo.table_columns(name)
        assert df.height > 0, name


def test_row_counts_scale_with_rows(tables):
    bigger = demo.build_tables(ROWS * 4, AS_OF)
    assert tables["billing.customers"].height == ROWS
    assert bigger["billing.customers"].height == ROWS * 4
    for name in (
        "marketing.list_subscriptions",
        "billing.invoices",
        "crm.activities",
        "web.access_logs",
        "telecom.traffic_records",
        "telephony.call_records",
    ):
        ratio = bigger[name].height / tables[name].height
        assert 3.2 < ratio < 4.8, (name, ratio)
    # child tables hold several rows per parent
    assert tables["billing.invoices"].height > 2 * tables["billing.customers"].height
    assert tables["crm.activities"].height > 2 * tables["crm.contacts"].height


def test_load_returns_the_row_counts(warehouse, tables):
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        for name, df in tables.items():
            assert con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == df.height
    finally:
        con.close()


def _contents(path: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [
            f"{s}.{t}"
            for s, t in con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL"
            ).fetchall()
        ]
        return {n: con.sql(f"SELECT * FROM {n} ORDER BY ALL").pl() for n in names}
    finally:
        con.close()


def test_load_recreates_the_file(tmp_path, tables):
    """Loading over a file that was changed since (rows deleted and updated, a table added)
    gives the same tables and rows as the generator, and nothing else."""
    path = tmp_path / "w.duckdb"
    demo.load_duckdb(path, ROWS, AS_OF)
    con = duckdb.connect(str(path))
    try:
        con.execute("DELETE FROM marketing.list_subscriptions")
        con.execute("UPDATE billing.customers SET email = 'changed@example.invalid'")
        con.execute("CREATE TABLE main.left_over AS SELECT 1 AS x")
    finally:
        con.close()
    counts = demo.load_duckdb(path, ROWS, AS_OF)
    assert counts == {name: df.height for name, df in tables.items()}
    stored = _contents(path)
    assert sorted(stored) == sorted(tables)
    for name, df in tables.items():
        assert stored[name].equals(df.select(stored[name].columns).sort(pl.all())), name


@pytest.mark.parametrize(("table", "column", "parent", "parent_column"), demo.foreign_keys())
def test_every_reference_finds_its_parent(warehouse, table, column, parent, parent_column):
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        orphans = con.execute(
            f"SELECT count(*) FROM {table} c WHERE c.{column} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {parent} p WHERE p.{parent_column} = c.{column})"
        ).fetchone()[0]
    finally:
        con.close()
    assert orphans == 0


def test_declared_foreign_keys_are_in_the_catalog(warehouse):
    store = DuckDBStore(warehouse)
    with store.connect(read_only=True) as session:
        catalog = store.catalog(session)
    declared = {
        (fk.table, fk.columns, fk.ref_table, fk.ref_columns)
        for t in catalog.tables.values()
        for fk in t.foreign_keys
    }
    expected = {
        (t, (c,), p, (pc,))
        for t, c, p, pc in demo.foreign_keys()
        if (t, c, p, pc) not in demo.SOFT_FOREIGN_KEYS
    }
    assert declared == expected
    assert catalog.tables["hr.candidates"].columns["email"].unique


def test_ddl_uses_only_portable_types():
    allowed = r"(BIGINT|INTEGER|VARCHAR(\(\d+\))?|DATE|TIMESTAMP|BOOLEAN|DOUBLE PRECISION|DECIMAL\(12,2\))"
    for table in demo.TABLES:
        body = next(d for d in demo.SCHEMA_DDL if d.startswith(f"CREATE TABLE {table} "))
        for column in demo.table_columns(table):
            assert re.search(rf"\b{column} {allowed}[ ,)]", body), (table, column)


def test_no_clock_is_after_the_build_date(tables):
    for name, df in tables.items():
        for column, dtype in df.schema.items():
            if dtype == pl.Date or isinstance(dtype, pl.Datetime):
                latest = df[column].max()
                if latest is not None:
                    latest = latest if dtype == pl.Date else latest.date()
                    assert latest <= AS_OF, (name, column)


def test_candidate_emails_are_unique(tables):
    emails = tables["hr.candidates"]["email"]
    assert emails.n_unique() == emails.len()


def test_policies_resolve_against_the_demo_schema(warehouse):
    policies = load_policies([POLICIES])
    store = DuckDBStore(warehouse)
    with store.connect(read_only=True) as session:
        bound = resolve(policies, store.catalog(session), "duckdb")
    assert len(bound) == sum(len(p.rules) for p in policies.policies)
    assert {b.rule.table for b in bound} >= {
        "marketing.newsletter_subscribers",
        "billing.customers",
        "telephony.call_records",
        "telecom.traffic_records",
    }


def test_demo_holds_name_expired_customers(tables):
    holds = demo.demo_holds(tables)
    assert len(holds) == len(demo.DEMO_HOLDS)
    customers = tables["billing.customers"]
    for h in holds:
        assert set(h) == {"scope", "subject", "case_ref", "reason", "placed_by"}
        assert h["scope"] == "subject"
        kind, cid = h["subject"].split(":")
        row = customers.filter(pl.col("customer_id") == int(cid)).row(0, named=True)
        assert kind == "customer" and row["status"] == "closed"
        assert expires_on(row["relationship_ended_at"], Period(years=5), "year_end") <= AS_OF
    assert {h["reason"] for h in holds} == {"litigation", "criminal_investigation"}


def test_demo_holds_read_back_from_the_store(warehouse, tables):
    store = DuckDBStore(warehouse)
    with store.connect(read_only=True) as session:
        assert demo.demo_holds_for(store, session) == demo.demo_holds(tables)


def test_load_through_a_session_refuses_existing_tables(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    counts = demo.load_store(store, 100, AS_OF)
    assert counts == {name: df.height for name, df in demo.build_tables(100, AS_OF).items()}
    with pytest.raises(ConfigError):
        demo.load_store(store, 100, AS_OF)
