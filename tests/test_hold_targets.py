"""`holds add` checks its target against the policies and the store (G1, G8), on DuckDB and
PostgreSQL: a subject kind, table or purpose that no policy reaches, or a table the store
lacks, is refused with exit 2, the closest names and nothing written; a subject whose id is
not (yet) in the store is placed with a warning that does not print the id."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from schema_cases import rows, sql

from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore

DDL = [
    "CREATE SCHEMA shop",
    "CREATE TABLE shop.customers (customer_id BIGINT PRIMARY KEY, email VARCHAR, left_at DATE)",
    "CREATE TABLE shop.orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT "
    "REFERENCES shop.customers (customer_id), placed_on DATE)",
    "CREATE TABLE shop.audit_trail (id BIGINT PRIMARY KEY, note VARCHAR)",
    "INSERT INTO shop.customers VALUES (41, 'a@x.no', NULL)",
]

POLICY = """
purpose: customers
title: Customers
legal_basis: contract
owner: ops
rules:
  - name: left
    table: shop.customers
    key: customer_id
    subject: {kind: customer, column: customer_id}
    clock: left_at
    keep_for: P1Y
    action: delete
    cascade:
      - {table: shop.orders, on: customer_id, action: delete}
"""


@pytest.fixture
def workdir(store: Store, request, tmp_path: Path) -> tuple[Store, str, Path]:
    """The store with the schema, its URL for the CLI, and a working directory with policies."""
    sql(store, *DDL)
    url = str(store.path) if isinstance(store, DuckDBStore) else request.getfixturevalue("pg_url")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "customers.yaml").write_text(POLICY)
    return store, url, tmp_path


def holds_add(url: str, cwd: Path, *target: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    return subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "holds", "add", "--store", url, *target]
        + ["--case", "LIT-1", "--reason", "litigation"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def holds(store: Store) -> list[tuple]:
    return rows(
        store,
        "SELECT scope, subject_kind, subject_id, table_name, purpose FROM retention_control.holds",
    )


@pytest.mark.parametrize(
    ("target", "wanted"),
    [
        (("--subject", "custmer:41"), "did you mean 'customer'?"),
        (("--table", "shop.order"), "did you mean 'shop.orders'"),
        (("--table", "shop.audit_trail"), "no rule names this table"),
        (("--purpose", "customer"), "did you mean 'customers'?"),
    ],
    ids=["subject-kind", "table-typo", "table-no-rule", "purpose"],
)
def test_a_hold_that_protects_nothing_is_refused(workdir, target, wanted):
    store, url, cwd = workdir
    proc = holds_add(url, cwd, *target)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert wanted in proc.stderr and "Nothing was written" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert holds(store) == []


def test_a_subject_not_in_the_store_is_held_with_a_warning(workdir):
    store, url, cwd = workdir
    absent = holds_add(url, cwd, "--subject", "customer:987654")
    assert absent.returncode == 0, absent.stderr
    assert "warning: no row of subject kind 'customer' has this id yet" in absent.stderr
    assert "987654" not in absent.stdout + absent.stderr
    present = holds_add(url, cwd, "--subject", "customer:41")
    assert present.returncode == 0 and "warning" not in present.stderr
    tables = holds_add(url, cwd, "--table", "shop.orders")
    assert tables.returncode == 0 and tables.stderr == ""
    assert sorted(holds(store), key=str) == sorted(
        [
            ("subject", "customer", "987654", None, None),
            ("subject", "customer", "41", None, None),
            ("table", None, None, "shop.orders", None),
        ],
        key=str,
    )
