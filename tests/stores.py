"""Stores for tests: a DuckDB file, or a throw-away PostgreSQL database.

The PostgreSQL server comes from `RETENTION_TEST_PG` (a SQLAlchemy URL of a database to
connect to for CREATE/DROP DATABASE; default the local server's `test` database). Under
`CI=true` an unreachable server fails the tests; elsewhere they are skipped with the reason.

Test data is written portably: tables with DDL both databases speak, rows generated in
Python, loaded through the store's own `stage` (Arrow) and one `INSERT ... SELECT`.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from retention_jobs.store.base import Session
from retention_jobs.store.sql_store import SqlStore

PG_ENV = "RETENTION_TEST_PG"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pg_server_url() -> sa.URL:
    return sa.engine.make_url(os.environ.get(PG_ENV, PG_DEFAULT))


def _libpq(url: sa.URL, database: str | None = None) -> dict:
    args = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "dbname": database or url.database or "postgres",
        "connect_timeout": 5,
    }
    if url.password:
        args["password"] = url.password
    return args


def pg_unavailable_reason() -> str | None:
    url = pg_server_url()
    try:
        with psycopg.connect(**_libpq(url), autocommit=True) as con:
            con.execute("SELECT 1")
    except psycopg.Error as e:
        return (
            f"no PostgreSQL server at {url.render_as_string(hide_password=True)} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
            f"set {PG_ENV} to another server"
        )
    return None


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database `rj_test_<random>` on the server; dropped afterwards. Yields its URL."""
    reason = pg_unavailable_reason()
    if reason:
        if in_ci():
            pytest.fail(f"CI needs PostgreSQL: {reason}", pytrace=False)
        pytest.skip(reason)
    url = pg_server_url()
    name = f"rj_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**_libpq(url), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(**_libpq(url), autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_pg_database(url: str) -> None:
    """Drop every schema but the system ones; leave an empty `public`."""
    u = sa.engine.make_url(url)
    with psycopg.connect(**_libpq(u), autocommit=True) as con:
        schemas = [
            r[0]
            for r in con.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema'"
            ).fetchall()
        ]
        for s in schemas:
            quoted = '"' + s.replace('"', '""') + '"'  # test schemas may be named anything
            con.execute(f"DROP SCHEMA {quoted} CASCADE")
        con.execute("CREATE SCHEMA public")


def pg_store(url: str) -> SqlStore:
    return SqlStore(url)


# --- portable test data ----------------------------------------------------------------------


def load(session: Session, table: str, data: pa.Table) -> int:
    """Insert `data` into `schema.table` through the store's staging (Arrow in, one INSERT)."""
    schema, short = table.split(".")
    staged = session.stage("rj_test_load", data)
    target = sa.table(short, *(sa.column(c) for c in data.column_names), schema=schema)
    with session.transaction():
        n = session.execute(
            sa.insert(target).from_select(
                data.column_names, sa.select(*(staged.c[c] for c in data.column_names))
            )
        )
    session.drop_stage("rj_test_load")
    return n


SMOKE_DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.customers (id BIGINT PRIMARY KEY, email VARCHAR, name VARCHAR, phone VARCHAR, "
    "born DATE, ended_at DATE, last_seen TIMESTAMP)",
    "CREATE TABLE s.orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES s.customers(id), "
    "placed_at DATE)",
]


def smoke_customers() -> pa.Table:
    ids = list(range(1, 1001))
    ended = [
        date(2015, 1, 1) + timedelta(days=i)
        if i % 3 == 0
        else date(2020, 6, 1)
        if i % 3 == 1
        else None
        for i in ids
    ]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "email": [f"u{i}@x.no" for i in ids],
            "name": [f"Name {i}" for i in ids],
            "phone": [f"12345{i}" for i in ids],
            "born": pa.array([date(1980, 1, 1) + timedelta(days=i) for i in ids], pa.date32()),
            "ended_at": pa.array(ended, pa.date32()),
            "last_seen": pa.array(
                [datetime(2019, 1, 1) + timedelta(days=i) for i in ids], pa.timestamp("us")
            ),
        }
    )


def smoke_orders() -> pa.Table:
    ids = list(range(1, 3001))
    return pa.table(
        {
            "order_id": pa.array(ids, pa.int64()),
            "customer_id": pa.array([1 + (i % 1000) for i in ids], pa.int64()),
            "placed_at": pa.array(
                [date(2014, 1, 1) + timedelta(days=i % 4000) for i in ids], pa.date32()
            ),
        }
    )


def build_smoke(session: Session) -> None:
    """The two tables of the smoke scenario (/tmp/smoke/run.py), same rows in every store."""
    for ddl in SMOKE_DDL:
        session.execute(ddl)
    load(session, "s.customers", smoke_customers())
    load(session, "s.orders", smoke_orders())
