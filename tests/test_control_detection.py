"""Control-schema detection fails closed (G8): only "the table or schema does not exist" means
"run init"; a role without USAGE on the control schema gets its own error (PostgreSQL), with
the SQLSTATE and what to do, never "run init" and never the database's text."""

import os
import subprocess
import sys
import uuid
from datetime import date

import psycopg
import pytest
import sqlalchemy as sa
from schema_cases import policies
from stores import _libpq

from retention_jobs import control
from retention_jobs.errors import ConfigError, StoreRejected
from retention_jobs.plan import build_plan
from retention_jobs.store.base import Store
from retention_jobs.store.sql_store import SqlStore

AS_OF = date(2026, 11, 22)
POLICY = """
purpose: p
title: P
legal_basis: contract
owner: ops
rules:
  - name: r
    table: s.t
    key: id
    clock: seen
    keep_for: P1Y
    action: delete
"""


def ddl(store: Store, *statements: str) -> None:
    with store.connect() as s:
        for st in statements:
            s.execute(st)


def test_a_missing_control_schema_or_table_means_run_init(store):
    ddl(store, "CREATE SCHEMA s", "CREATE TABLE s.t (id BIGINT PRIMARY KEY, seen DATE)")
    ps = policies(POLICY)
    for step in ("no schema", "schema without tables"):
        if step == "schema without tables":
            ddl(store, f"CREATE SCHEMA {control.C}")
        with store.connect(read_only=True) as s:
            assert control.control_exists(s) is False, step
        with pytest.raises(ConfigError, match="retention-jobs init"):
            build_plan(store, ps, AS_OF)
    with store.connect() as s:
        control.ensure_control_schema(store, s)
        assert control.control_exists(s) is True
    assert build_plan(store, ps, AS_OF).rules[0].total == 0


@pytest.mark.postgres
def test_a_role_without_usage_on_the_control_schema_is_not_told_to_run_init(pg_url, tmp_path):
    from stores import reset_pg_database

    reset_pg_database(pg_url)
    owner = SqlStore(pg_url)
    ddl(owner, "CREATE SCHEMA s", "CREATE TABLE s.t (id BIGINT PRIMARY KEY, seen DATE)")
    with owner.connect() as s:
        control.ensure_control_schema(owner, s)
    role = f"rj_nousage_{uuid.uuid4().hex[:8]}"
    url = sa.engine.make_url(pg_url)
    with psycopg.connect(**_libpq(url), autocommit=True) as con:
        con.execute(f'CREATE ROLE "{role}" LOGIN')
        con.execute(f'GRANT USAGE ON SCHEMA s TO "{role}"')
        con.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA s TO "{role}"')
    try:
        limited = url.set(username=role).render_as_string(hide_password=False)
        store = SqlStore(limited)
        with store.connect(read_only=True) as s, pytest.raises(StoreRejected) as caught:
            control.control_exists(s)
        assert caught.value.sqlstate == "42501"
        message = str(caught.value)
        assert "not a reason to run `init`" in message and "lacks a privilege" in message
        assert "permission denied" not in message  # the server's own text is not passed on
        with pytest.raises(StoreRejected):
            build_plan(store, policies(POLICY), AS_OF)

        (tmp_path / "p.yaml").write_text(POLICY)
        proc = subprocess.run(
            [sys.executable, "-m", "retention_jobs.cli", "plan", "--store", limited]
            + ["--policies", str(tmp_path / "p.yaml"), "--as-of", AS_OF.isoformat()],
            env={k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        assert "42501" in proc.stderr and "init" in proc.stderr  # "not a reason to run init"
        assert "run `retention-jobs init`" not in proc.stderr
    finally:
        with psycopg.connect(**_libpq(url), autocommit=True) as con:
            con.execute(f'DROP OWNED BY "{role}"')
            con.execute(f'DROP ROLE IF EXISTS "{role}"')
