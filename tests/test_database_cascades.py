"""Foreign keys the database cascades itself (PostgreSQL's ON DELETE CASCADE / SET NULL) need
no `cascade` entry in a policy, and are still accounted for: the plan counts their rows, a
hold on such a row stops its parent's delete, the ledger records them. DuckDB has no such
foreign keys (it refuses them at CREATE TABLE), so there every foreign key still needs a
cascade entry."""

from datetime import date

import duckdb
import pytest
from schema_cases import policies, rows, sql

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.plan import build_plan
from retention_jobs.resolve import resolve
from retention_jobs.store.duckdb_store import DuckDBStore

KEY = PseudonymKey.from_text("database-cascade-test-key-0123456789")
AS_OF = date(2026, 5, 1)

SCHEMA = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.accounts (id BIGINT PRIMARY KEY, closed_on DATE)",
    "CREATE TABLE s.orders (id BIGINT PRIMARY KEY, "
    "account_id BIGINT NOT NULL REFERENCES s.accounts(id) ON DELETE CASCADE)",
    "CREATE TABLE s.lines (id BIGINT PRIMARY KEY, "
    "order_id BIGINT NOT NULL REFERENCES s.orders(id) ON DELETE CASCADE)",
    "CREATE TABLE s.notes (id BIGINT PRIMARY KEY, "
    "account_id BIGINT REFERENCES s.accounts(id) ON DELETE SET NULL)",
    # accounts 1..6 closed long ago, 7..10 open; two orders per account, two lines per order
    "INSERT INTO s.accounts SELECT i, CASE WHEN i <= 6 THEN DATE '2015-01-01' END "
    "FROM generate_series(1, 10) AS g(i)",
    "INSERT INTO s.orders SELECT i, 1 + (i - 1) / 2 FROM generate_series(1, 20) AS g(i)",
    "INSERT INTO s.lines SELECT i, 1 + (i - 1) / 2 FROM generate_series(1, 40) AS g(i)",
    "INSERT INTO s.notes SELECT i, i FROM generate_series(1, 10) AS g(i)",
]
POLICY = """
purpose: accounts
title: Closed accounts
legal_basis: contract
owner: qa
rules:
  - name: closed
    table: s.accounts
    key: id
    clock: closed_on
    keep_for: P1Y
    action: delete
"""


def _count(store, query: str) -> int:
    return rows(store, query)[0][0]


@pytest.mark.postgres
def test_database_cascades_are_planned_held_and_recorded(pg_url):
    from stores import reset_pg_database

    from retention_jobs.store.sql_store import SqlStore

    reset_pg_database(pg_url)
    store = SqlStore(pg_url)
    sql(store, *SCHEMA)
    ps = policies(POLICY)
    # a table hold on the grandchild table, which only the database's cascades reach
    with store.connect() as s:
        control.add_hold(
            s, scope="table", table="s.lines", case_ref="C-1", reason="t", placed_by="t"
        )
    plan = build_plan(store, ps, AS_OF)
    (rp,) = plan.rules
    # every closed account reaches held lines (a table hold): nothing may be deleted
    assert (rp.expired, rp.held, rp.to_act) == (6, 6, 0)
    run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False))
    assert _count(store, "SELECT count(*) FROM s.lines") == 40

    with store.connect() as s:
        (hold,) = control.list_holds(s)
        control.release_hold(s, hold.hold_id, "t")
    plan = build_plan(store, ps, AS_OF)
    (rp,) = plan.rules
    cascades = {(c.table, c.action): c.rows for c in rp.cascades}
    # an independent count of what the database's own cascades reach from accounts 1..6
    want = {
        ("s.orders", "delete"): _count(
            store, "SELECT count(*) FROM s.orders WHERE account_id <= 6"
        ),
        ("s.lines", "delete"): _count(
            store,
            "SELECT count(*) FROM s.lines l JOIN s.orders o ON o.id = l.order_id "
            "WHERE o.account_id <= 6",
        ),
        ("s.notes", "unlink"): _count(store, "SELECT count(*) FROM s.notes WHERE account_id <= 6"),
    }
    assert (rp.to_act, cascades) == (6, want)
    report = run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False))
    assert _count(store, "SELECT count(*) FROM s.accounts") == 4
    assert _count(store, "SELECT count(*) FROM s.orders") == 20 - want[("s.orders", "delete")]
    assert _count(store, "SELECT count(*) FROM s.lines") == 40 - want[("s.lines", "delete")]
    assert _count(store, "SELECT count(*) FROM s.notes WHERE account_id IS NULL") == 6
    # the ledger holds every row the database would have cascaded to
    with store.connect(read_only=True) as s:
        ledger = {
            (r["table_name"], r["action"]): r
            for r in control.audit_rows(s, report.run_id)
            if r["action"].startswith("cascade-")
        }
    assert ledger[("s.orders", "cascade-delete")]["deleted"] == want[("s.orders", "delete")]
    assert ledger[("s.lines", "cascade-delete")]["deleted"] == want[("s.lines", "delete")]
    assert ledger[("s.notes", "cascade-unlink")]["unlinked"] == 6


def test_duckdb_refuses_database_cascades_so_a_policy_must_name_each(tmp_path):
    con = duckdb.connect()
    con.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    with pytest.raises(duckdb.ParserException, match="CASCADE"):
        con.execute("CREATE TABLE c (id INTEGER, p INTEGER REFERENCES p (id) ON DELETE CASCADE)")
    store = DuckDBStore(tmp_path / "w.duckdb")
    sql(
        store,
        *(s.replace(" ON DELETE CASCADE", "").replace(" ON DELETE SET NULL", "") for s in SCHEMA),
    )
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    with pytest.raises(PolicyError, match="would violate foreign key"):
        resolve(policies(POLICY), catalog, store.kind)
