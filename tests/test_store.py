"""The store interface, the same tests on both stores: DuckDB (a temp file) and PostgreSQL
(a throw-away database on the local server, see tests/stores.py).

Under CI=true the PostgreSQL half must run; elsewhere it is skipped when no server answers.
"""

import re
import textwrap
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
import sqlalchemy as sa
from stores import build_smoke, load, pg_database, reset_pg_database

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.check import run_checks
from retention_jobs.errors import ConfigError, PolicyError, StoreRejected, StoreUnavailable
from retention_jobs.load import load_policies
from retention_jobs.store import mask_url, open_store
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore, masked

STORES = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_url():
    with pg_database() as url:
        yield url


def _make(kind: str, request, tmp_path: Path) -> Store:
    if kind == "duckdb":
        return DuckDBStore(tmp_path / "warehouse.duckdb")
    url = request.getfixturevalue("pg_url")
    reset_pg_database(url)
    return SqlStore(url)


@pytest.fixture(params=STORES)
def store(request, tmp_path) -> Store:
    return _make(request.param, request, tmp_path)


def rows(session, sql: str) -> list[tuple]:
    return session.fetchall(sa.text(sql))


# --- catalog ---------------------------------------------------------------------------------

CATALOG_DDL = [
    "CREATE SCHEMA cat",
    "CREATE TABLE cat.parent (id BIGINT PRIMARY KEY, code VARCHAR(12) UNIQUE, name TEXT NOT NULL, "
    "amount DECIMAL(10,2), score DOUBLE PRECISION, ok BOOLEAN, born DATE, seen TIMESTAMP, "
    "seen_tz TIMESTAMPTZ, blob BYTEA, n INTEGER, small SMALLINT)",
    "CREATE TABLE cat.child (id BIGINT PRIMARY KEY, parent_id BIGINT, "
    "CONSTRAINT child_parent_fk FOREIGN KEY (parent_id) REFERENCES cat.parent (id))",
    "CREATE TABLE cat.pair (a BIGINT, b VARCHAR, PRIMARY KEY (a, b), UNIQUE (b, a))",
    "CREATE VIEW cat.parent_view AS SELECT id, name FROM cat.parent",
]


def test_catalog_reflects_types_keys_and_foreign_keys(store):
    with store.connect() as s:
        for ddl in CATALOG_DDL:
            s.execute(ddl)
        control.ensure_control_schema(store, s)
        cat = store.catalog(s)
    assert set(cat.tables) == {"cat.parent", "cat.child", "cat.pair"}  # no view, no control schema
    parent = cat.tables["cat.parent"]
    assert {c.name: c.type for c in parent.columns.values()} == {
        "id": "integer",
        "code": "string",
        "name": "string",
        "amount": "decimal",
        "score": "float",
        "ok": "boolean",
        "born": "date",
        "seen": "timestamp",
        "seen_tz": "timestamptz",
        "blob": "binary",
        "n": "integer",
        "small": "integer",
    }
    assert list(parent.columns) == [
        "id",
        "code",
        "name",
        "amount",
        "score",
        "ok",
        "born",
        "seen",
        "seen_tz",
        "blob",
        "n",
        "small",
    ]
    assert parent.primary_key == ("id",)
    assert {c.name for c in parent.columns.values() if c.unique} == {"id", "code"}
    assert {c.name for c in parent.columns.values() if not c.nullable} == {"id", "name"}
    assert parent.foreign_keys == ()
    pair = cat.tables["cat.pair"]
    assert pair.primary_key == ("a", "b")
    assert not any(c.unique for c in pair.columns.values())  # composite keys make no column unique
    (fk,) = cat.tables["cat.child"].foreign_keys
    assert (fk.table, fk.columns, fk.ref_table, fk.ref_columns) == (
        "cat.child",
        ("parent_id",),
        "cat.parent",
        ("id",),
    )
    assert fk.name  # PostgreSQL keeps the declared name, DuckDB names it itself
    if store.kind == "postgresql":
        assert fk.name == "child_parent_fk"
        assert parent.columns["code"].max_length == 12  # DuckDB does not keep VARCHAR(n)
    assert [f.table for f in cat.referencing("cat.parent")] == ["cat.child"]


@pytest.mark.postgres
def test_postgresql_catalog_cross_schema_unique_index_and_other_types(pg_url):
    reset_pg_database(pg_url)
    store = SqlStore(pg_url)
    with store.connect() as s:
        s.execute("CREATE TABLE public.pub (id INTEGER PRIMARY KEY, email TEXT, j JSONB, u UUID)")
        s.execute("CREATE UNIQUE INDEX pub_email ON public.pub (email)")
        s.execute("CREATE SCHEMA other")
        s.execute(
            "CREATE TABLE other.link (x INTEGER CONSTRAINT link_pub REFERENCES public.pub (id), "
            "code CHAR(3))"
        )
        s.execute("CREATE MATERIALIZED VIEW other.mv AS SELECT * FROM public.pub")
        cat = store.catalog(s)
    assert set(cat.tables) == {"public.pub", "other.link"}
    pub = cat.tables["public.pub"]
    assert pub.columns["email"].unique
    assert (pub.columns["j"].type, pub.columns["u"].type) == ("other", "other")
    assert cat.tables["other.link"].columns["code"].max_length == 3
    (fk,) = cat.tables["other.link"].foreign_keys
    assert (fk.name, fk.ref_table) == ("link_pub", "public.pub")


# --- staging ---------------------------------------------------------------------------------


def sample() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "text": pa.array(
                ["plain", "", None, 'quote " comma , newline \n and æøå'], pa.string()
            ),
            "score": pa.array([1.5, -0.25, None, 1e300], pa.float64()),
            "ok": pa.array([True, False, None, True]),
            "day": pa.array(
                [date(2020, 1, 1), None, date(1999, 12, 31), date(2030, 6, 15)], pa.date32()
            ),
            "at": pa.array(
                [
                    datetime(2020, 1, 1, 12, 30, 15, 123456),
                    None,
                    datetime(2000, 2, 29),
                    datetime(1970, 1, 1),
                ],
                pa.timestamp("us"),
            ),
            "at_tz": pa.array(
                [
                    datetime(2020, 1, 1, 12, tzinfo=UTC),
                    None,
                    datetime(2021, 6, 1, 8, tzinfo=timezone(timedelta(hours=2))),
                    None,
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "amount": pa.array(
                [Decimal("12.34"), None, Decimal("-0.01"), Decimal("99999999.99")],
                pa.decimal128(10, 2),
            ),
            "blob": pa.array([b"\x00\x01\xff", b"", None, b"abc"], pa.binary()),
        }
    )


def comparable(table: pa.Table) -> list[dict]:
    """Rows as Python values; instants compared in UTC (stores differ in the zone they report)."""
    out = []
    for row in table.to_pylist():
        out.append(
            {
                k: (v.astimezone(UTC) if isinstance(v, datetime) and v.tzinfo else v)
                for k, v in row.items()
            }
        )
    return out


def test_stage_round_trip(store):
    data = sample()
    with store.connect() as s:
        staged = s.stage("rj_sample", data)
        assert list(staged.c.keys()) == data.column_names
        back = s.arrow(sa.select(*staged.c).order_by(staged.c.id))
        assert back.column_names == data.column_names
        assert comparable(back) == comparable(data)
        frame = pl.from_arrow(back)
        assert frame.schema["id"] == pl.Int64 and frame.schema["day"] == pl.Date
        assert frame.schema["at"] == pl.Datetime("us") and frame.schema["text"] == pl.String
        # staging again under the same name replaces the table
        s.stage("rj_sample", data.slice(0, 2))
        assert s.scalar(sa.select(sa.func.count()).select_from(staged)) == 2
        # Polars' Arrow (large and view strings) and an empty table stage too
        polars_data = pl.DataFrame({"k": [1, 2], "v": ["a", None]}).to_arrow()
        p = s.stage("rj_polars", polars_data)
        assert s.fetchall(sa.select(p.c.k, p.c.v).order_by(p.c.k)) == [(1, "a"), (2, None)]
        empty = s.stage("rj_empty", data.slice(0, 0))
        assert s.scalar(sa.select(sa.func.count()).select_from(empty)) == 0
        s.drop_stage("rj_sample")
        s.drop_stage("rj_polars")
        s.drop_stage("rj_empty")
        s.drop_stage("rj_never_made")  # dropping a missing stage is not an error


def test_bound_values_for_columns_whose_names_need_escaping(store):
    """SQLAlchemy renames a bind named after a column with `%`, a space or `.` (`we%ird_1`
    becomes `wePird_1`) in the SQL and its parameters but not in the positional order; the
    DuckDB compiler once looked the old name up and raised KeyError."""
    names = ["we%ird", "with space", "a.b", "q(x)"]
    with store.connect() as s:
        cols = ", ".join('"' + n + '" BIGINT' for n in names)
        s.execute("CREATE SCHEMA s")
        s.execute(f"CREATE TABLE s.t ({cols})")
        t = sa.table("t", *(sa.column(n) for n in names), schema="s")
        with s.transaction():
            s.execute(sa.insert(t).values([{n: i for i, n in enumerate(names)}]))
        got = s.fetchall(sa.select(*(t.c[n] for n in names)).where(t.c["we%ird"] == 0))
    assert [tuple(r) for r in got] == [tuple(range(len(names)))]


def test_stage_is_temporary_and_per_session(store):
    with store.connect() as s:
        s.stage("rj_private", sample())
        s.execute("CREATE SCHEMA IF NOT EXISTS s")
        s.execute("CREATE TABLE s.t (id BIGINT PRIMARY KEY)")
        assert "rj_private" not in {t.split(".")[1] for t in store.catalog(s).tables}
    with store.connect() as s, pytest.raises(Exception):  # noqa: B017 (each driver its own error)
        s.fetchall(sa.text("SELECT * FROM rj_private"))


def test_stage_query_round_trip(store):
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute(
            "CREATE TABLE s.people (id BIGINT PRIMARY KEY, name VARCHAR, born DATE, seen TIMESTAMP)"
        )
        load(
            s,
            "s.people",
            pa.table(
                {
                    "id": pa.array(range(1, 101), pa.int64()),
                    "name": [f"p{i}" for i in range(1, 101)],
                    "born": pa.array(
                        [date(1950, 1, 1) + timedelta(days=365 * i) for i in range(100)],
                        pa.date32(),
                    ),
                    "seen": pa.array(
                        [datetime(2020, 1, 1) + timedelta(hours=i) for i in range(100)],
                        pa.timestamp("us"),
                    ),
                }
            ),
        )
        t = sa.table(
            "people",
            sa.column("id", sa.BigInteger()),
            sa.column("name", sa.String()),
            sa.column("born", sa.Date()),
            sa.column("seen", sa.DateTime()),
            schema="s",
        )
        q = sa.select(
            t.c.id,
            t.c.name,
            (t.c.id % 7).label("m"),
            sa.func.row_number().over(order_by=t.c.id).label("rj_n"),
        ).where(
            t.c.born < sa.literal(date(2000, 1, 1), sa.Date()),
            t.c.seen >= sa.literal(datetime(2020, 1, 1, 10), sa.DateTime()),
            t.c.name.in_([f"p{i}" for i in range(1, 60)]),
            t.c.name.is_distinct_from("p20"),
        )
        staged = s.stage_query("rj_keys", q)
        assert list(staged.c.keys()) == ["id", "name", "m", "rj_n"]
        got = s.fetchall(sa.select(staged.c.id, staged.c.m, staged.c.rj_n).order_by(staged.c.id))
        expect_ids = [
            i
            for i in range(1, 60)
            if date(1950, 1, 1) + timedelta(days=365 * (i - 1)) < date(2000, 1, 1)
            and i - 1 >= 10
            and i != 20
        ]
        assert [r[0] for r in got] == expect_ids
        assert [r[1] for r in got] == [i % 7 for i in expect_ids]
        assert [r[2] for r in got] == list(range(1, len(expect_ids) + 1))
        # replace; then join the staged keys back to the table, as the applier does
        staged = s.stage_query("rj_keys", sa.select(t.c.id).where(t.c.id <= 3))
        assert s.fetchall(
            sa.select(t.c.name).where(t.c.id.in_(sa.select(staged.c.id))).order_by(t.c.name)
        ) == [("p1",), ("p2",), ("p3",)]
        s.drop_stage("rj_keys")


# --- transactions ----------------------------------------------------------------------------


def test_transactions_roll_back_on_error_and_commit_otherwise(store):
    t = sa.table("t", sa.column("id", sa.BigInteger()), sa.column("v", sa.String()), schema="s")
    with store.connect() as s:
        # DDL outside a transaction is committed at once (visible from another session)
        s.execute("CREATE SCHEMA IF NOT EXISTS s")
        s.execute(
            "CREATE TABLE IF NOT EXISTS s.t (id BIGINT PRIMARY KEY, v VARCHAR CHECK (v NOT LIKE '%forbidden%'))"
        )
        s.execute(sa.insert(t).values(id=1, v="kept"))  # outside a transaction: committed
        with pytest.raises(RuntimeError), s.transaction():
            s.execute(sa.insert(t).values(id=2, v="gone"))
            raise RuntimeError("boom")
        with (
            pytest.raises(StoreRejected, match="UNIQUE|PRIMARY KEY"),  # no key value quoted
            s.transaction(),
        ):
            s.execute(sa.insert(t).values(id=3, v="gone"))
            s.execute(sa.insert(t).values(id=1, v="duplicate key"))
        # the session is usable after both failures, and a failed statement outside a
        # transaction leaves nothing behind either
        with pytest.raises(Exception):  # noqa: B017
            s.execute(sa.insert(t).values(id=1, v="duplicate again"))
        with pytest.raises(Exception), s.transaction():  # noqa: B017 (the CHECK with a literal %)
            s.execute(sa.insert(t).values(id=5, v="a forbidden value"))
        with s.transaction():
            assert s.execute(sa.update(t).where(t.c.id == 1).values(v="changed")) == 1
            s.execute(sa.insert(t).values(id=4, v="new"))
        assert s.fetchall(sa.select(t.c.id, t.c.v).order_by(t.c.id)) == [(1, "changed"), (4, "new")]
        # a stage inside a rolled-back transaction is gone with it
        with pytest.raises(RuntimeError), s.transaction():
            s.stage("rj_inside", sample())
            raise RuntimeError("boom")
    with store.connect(read_only=True) as other:
        assert other.fetchall(sa.select(t.c.id).order_by(t.c.id)) == [(1,), (4,)]
        assert other.scalar(sa.select(sa.func.count()).select_from(t)) == 2


def test_read_only_session_refuses_writes(store):
    t = sa.table("t", sa.column("id", sa.BigInteger()), schema="s")
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute("CREATE TABLE s.t (id BIGINT)")
    with store.connect(read_only=True) as s:
        with pytest.raises(Exception):  # noqa: B017
            s.execute(sa.insert(t).values(id=1))
        assert s.scalar(sa.select(sa.func.count()).select_from(t)) == 0  # still usable
        assert control.control_exists(s) is False
        # its own temporary tables it may make, as the checks do
        staged = s.stage("rj_ro", pa.table({"id": pa.array([1, 2], pa.int64())}))
        assert s.scalar(sa.select(sa.func.count()).select_from(staged)) == 2
        again = s.stage_query("rj_ro2", sa.select(staged.c.id).where(staged.c.id > 1))
        assert s.fetchall(sa.select(again.c.id)) == [(2,)]
        s.drop_stage("rj_ro")
        s.drop_stage("rj_ro2")
        with pytest.raises(Exception):  # noqa: B017
            s.execute(sa.insert(t).values(id=1))


def test_execute_returns_row_counts_and_arrow_reads_in_chunks(store):
    n = 25_000  # more than one chunk of the PostgreSQL server-side cursor
    t = sa.table(
        "big",
        sa.column("id", sa.BigInteger()),
        sa.column("v", sa.String()),
        sa.column("d", sa.Date()),
        schema="s",
    )
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute("CREATE TABLE s.big (id BIGINT PRIMARY KEY, v VARCHAR, d DATE)")
        assert (
            load(
                s,
                "s.big",
                pa.table(
                    {
                        "id": pa.array(range(n), pa.int64()),
                        "v": [None if i % 10 == 0 else f"v{i}" for i in range(n)],
                        "d": pa.array([None] * n, pa.date32()),
                    }
                ),
            )
            == n
        )
        with s.transaction():
            assert s.execute(sa.delete(t).where(t.c.id >= n - 100)) == 100
            assert s.execute(sa.update(t).where(t.c.id < 10).values(v="x")) == 10
        data = pl.from_arrow(s.arrow(sa.select(t.c.id, t.c.v, t.c.d).order_by(t.c.id)))
        assert data.height == n - 100
        assert data["id"].to_list() == list(range(n - 100))
        assert data.schema["d"] == pl.Date  # an all-NULL column keeps its type
        assert data["v"].null_count() == len([i for i in range(10, n - 100) if i % 10 == 0])
        empty = pl.from_arrow(s.arrow(sa.select(t.c.id, t.c.v).where(t.c.id < 0)))
        assert empty.height == 0 and empty.columns == ["id", "v"]


# --- the smoke scenario, end to end ----------------------------------------------------------

SHOP = """\
    purpose: shop
    title: Shop customers
    legal_basis: contract
    owner: ops
    timezone: Europe/Oslo
    rules:
      - name: ended
        table: s.customers
        key: id
        subject: {kind: customer, column: id}
        clock: ended_at
        round_clock_to: year_end
        keep_for: P5Y
        action: delete
        cascade:
          - {table: s.orders, on: customer_id, action: delete}
      - name: inactive
        table: s.customers
        key: id
        subject: {kind: customer, column: id}
        clock: last_seen
        keep_for: P3Y
        action: anonymise
        columns: {email: hash, name: {fake: name}, phone: {mask: {keep_last: 2}}, born: {generalise: year}}
    """

BOOKKEEPING = """\
    purpose: bookkeeping
    title: Bookkeeping
    legal_basis: legal_obligation
    owner: finance
    rules:
      - name: orders-5y
        table: s.orders
        key: order_id
        clock: placed_at
        round_clock_to: year_end
        keep_for: P5Y
        action: retain
    """

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("k" * 20)

# (expired, held, retained, superseded, already_done, to_act, cascades) per rule
EXPECTED_PLAN = {
    "shop/ended": (667, 1, 297, 0, 0, 369, (("s.orders", "delete", 1107),)),
    "shop/inactive": (1000, 1, 0, 369, 0, 630, ()),
    "bookkeeping/orders-5y": (2556, 0, 444, 0, 0, 0, ()),
}


@pytest.fixture
def smoke_policies(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "shop.yaml").write_text(textwrap.dedent(SHOP))
    (tmp_path / "policies" / "bookkeeping.yaml").write_text(textwrap.dedent(BOOKKEEPING))
    return load_policies(
        [str(tmp_path / "policies" / "shop.yaml"), str(tmp_path / "policies" / "bookkeeping.yaml")]
    )


def plan_counts(report) -> dict:
    return {
        r.plan.rule_id: (
            r.plan.expired,
            r.plan.held,
            r.plan.retained,
            r.plan.superseded,
            r.plan.already_done,
            r.plan.to_act,
            tuple((c.table, c.action, c.rows) for c in r.plan.cascades),
        )
        for r in report.rules
    }


def end_state(store: Store) -> dict:
    with store.connect(read_only=True) as s:
        return {
            "customers": s.fetchall(
                sa.text(
                    "SELECT id, email, name, phone, born, ended_at, last_seen FROM s.customers ORDER BY id"
                )
            ),
            "orders": s.fetchall(
                sa.text("SELECT order_id, customer_id, placed_at FROM s.orders ORDER BY order_id")
            ),
            # the purge step differs by design (DuckDB compacts the file, PostgreSQL vacuums)
            "audit": s.fetchall(
                sa.text(
                    "SELECT purpose, rule, table_name, action, batch, expired, held, retained, deleted, anonymised "
                    "FROM retention_control.audit WHERE action NOT LIKE 'purge-%' ORDER BY seq"
                )
            ),
            "markers": markers(s),
        }


def markers(session) -> list[dict]:
    """The anonymisation markers of s.customers, whatever their columns, without timestamps."""
    m = sa.table(control.marker_name("s.customers"), schema=control.CONTROL_SCHEMA)
    data = pl.from_arrow(session.arrow(sa.select(sa.text("*")).select_from(m)))
    data = data.drop([c for c in data.columns if c.endswith("_at")])
    return data.sort(data.columns).to_dicts()


def run_smoke(store: Store, policies) -> dict:
    timings = {}
    t0 = time.perf_counter()
    with store.connect() as s:
        build_smoke(s)
        control.ensure_control_schema(store, s)
        control.add_hold(
            s,
            scope="subject",
            subject="customer:3",
            case_ref="LIT-1",
            reason="litigation",
            placed_by="test",
        )
    timings["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dry = run_policies(store, policies, AS_OF, KEY, RunOptions(dry_run=True))
    timings["dry_run"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = run_policies(
        store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None, batch_size=100)
    )
    timings["run"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    timings["second_run"] = time.perf_counter() - t0
    checks = run_checks(
        store, policies, AS_OF, KEY, run_id=first.run_id, held_before=first.held_fingerprints
    )
    return {
        "dry": dry,
        "first": first,
        "second": second,
        "checks": checks,
        "state": end_state(store),
        "timings": timings,
    }


def test_smoke_scenario(store, smoke_policies):
    out = run_smoke(store, smoke_policies)
    dry, first, second = out["dry"], out["first"], out["second"]
    assert dry.dry_run and not dry.changed
    assert plan_counts(dry) == EXPECTED_PLAN
    assert plan_counts(first) == EXPECTED_PLAN
    ended = {r.plan.rule_id: r for r in first.rules}
    assert (ended["shop/ended"].deleted, ended["shop/ended"].batches) == (369, 4)
    assert [(c.table, c.deleted) for c in ended["shop/ended"].cascades] == [("s.orders", 1107)]
    assert (ended["shop/inactive"].anonymised, ended["shop/inactive"].batches) == (630, 7)
    assert ended["shop/ended"].plan.retained_by[0].rows == 297
    # the second run changes nothing
    assert not second.changed
    assert {r.plan.rule_id: (r.plan.to_act, r.plan.already_done) for r in second.rules} == {
        "shop/ended": (0, 0),
        "shop/inactive": (0, 630),
        "bookkeeping/orders-5y": (0, 0),
    }
    failed = {c.name: c.summary for c in out["checks"] if not c.passed}
    assert set(failed) <= {"erasure_verified"}, failed  # see test_purge_vacuum_full_...
    state = out["state"]
    assert len(state["customers"]) == 631 and len(state["orders"]) == 1893
    by_id = {r[0]: r for r in state["customers"]}
    assert by_id[3] == (
        3,
        "u3@x.no",
        "Name 3",
        "123453",
        date(1980, 1, 4),
        date(2015, 1, 4),
        datetime(2019, 1, 4),
    )
    assert by_id[1][1] == "43b7396ca9d1e0d4b3c433cece926956" and by_id[1][3] == "****51"
    assert by_id[1][4] == date(1980, 1, 1)
    assert 6 not in by_id  # ended in 2015: deleted
    assert len({m["id"] for m in state["markers"]}) == 630


@pytest.mark.postgres
def test_smoke_scenario_same_end_state_on_both_stores(tmp_path, pg_url, smoke_policies):
    reset_pg_database(pg_url)
    duck = run_smoke(DuckDBStore(tmp_path / "w.duckdb"), smoke_policies)
    pg = run_smoke(SqlStore(pg_url), smoke_policies)
    for k in ("dry", "first", "second"):
        assert plan_counts(duck[k]) == plan_counts(pg[k])
        assert [(r.deleted, r.anonymised, r.batches, r.cascades) for r in duck[k].rules] == [
            (r.deleted, r.anonymised, r.batches, r.cascades) for r in pg[k].rules
        ]
    assert duck["first"].held_fingerprints == pg["first"].held_fingerprints  # Arrow reads agree too
    assert duck["state"] == pg["state"]  # same rows, same hashes, same fakes, same ledger
    print(
        "\ntimings (s):",
        {
            k: {n: round(v, 3) for n, v in x["timings"].items()}
            for k, x in (("duckdb", duck), ("postgresql", pg))
        },
    )


# --- PostgreSQL only: URLs, passwords, vacuum ------------------------------------------------


def test_passwords_never_show():
    url = "postgresql+psycopg://alice:s3cr3t-pw@db.example:5432/prod"
    store = SqlStore(url)
    assert store.describe() == "postgresql+psycopg://alice:***@db.example:5432/prod"
    assert store.kind == "postgresql"
    assert "s3cr3t" not in repr(store.engine.url) and "s3cr3t" not in str(store.engine.url)
    assert masked("postgresql://bob:p@ss@h/db").count("p@ss") == 0
    assert "hunter22" not in masked("postgresql+psycopg://h/db?user=x&password=hunter22")
    with pytest.raises(ConfigError) as e:
        SqlStore("postgresql+psycopg://alice:s3cr3t-pw@db.example:notaport/prod")
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        SqlStore("mysql://alice:s3cr3t-pw@db.example/prod")
    assert "s3cr3t" not in str(e.value)


SECRET_URLS = [
    # (url, the secrets in it)
    ("postgresql+psycopg://u:secret-A1@h/db?password=secret-B2", ["secret-A1", "secret-B2"]),
    ("postgresql+psycopg://u:sec@ret-A1@h/db", ["sec@ret-A1", "ret-A1"]),
    ("postgresql+psycopg://u@h/db?sslpassword=secret-C3&sslmode=require", ["secret-C3"]),
    ("postgresql+psycopg://h/db?user=u&PassWord=secret-D4", ["secret-D4"]),
    (
        "postgresql+psycopg://h/db?api_token=secret-E5&client_secret=secret-F6",
        ["secret-E5", "secret-F6"],
    ),
    ("postgresql+psycopg://h/db?sslkey=/keys/secret-G7.pem&options=-c%20jit%3Don", ["secret-G7"]),
    ("postgresql+psycopg://u:p%40ss-secret-H8@h/db", ["p%40ss-secret-H8", "p@ss-secret-H8"]),
]


@pytest.mark.parametrize(("url", "secrets"), SECRET_URLS)
def test_every_secret_form_of_a_url_is_masked_everywhere(url, secrets):
    """One function (`mask_url`) masks a store everywhere it is described: messages, the CLI,
    the Dagster resource's metadata. A password in the query, a raw `@` in it, any argument
    named like a secret."""
    from assets.resources import StoreResource

    texts = [mask_url(url), mask_url(f"could not open {url}: gone"), masked(url)]
    texts.append(StoreResource(location=url).describe())
    try:
        texts.append(SqlStore(url).describe())
    except ConfigError as e:  # a raw '@' is refused: SQLAlchemy would misread the host
        assert "@" in url.split("://")[1].split("@h/")[0]
        texts.append(str(e))
    for text in texts:
        for secret in secrets:
            assert secret not in text, text
    assert mask_url(url).split("://")[0] == url.split("://")[0]
    assert "h/db" in mask_url(url)  # the host and database stay visible


def test_a_password_echoed_by_the_driver_is_scrubbed():
    store = SqlStore("postgresql+psycopg://u:pw-one@h/db?password=pw-two&sslpassword=pw-three")
    assert store.scrub("bad pw-one, pw-two or pw-three") == "bad ***, *** or ***"


def test_unreachable_server_is_store_unavailable_with_masked_url():
    store = SqlStore("postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/prod?connect_timeout=2")
    with pytest.raises(StoreUnavailable) as e:
        store.session()
    text = str(e.value)
    assert "s3cr3t" not in text and "alice:***@127.0.0.1:1/prod" in text
    assert e.value.__cause__ is None and not e.value.terminal


def test_open_store_chooses_sql_store_for_urls(monkeypatch):
    monkeypatch.setenv("RETENTION_STORE", "postgresql://carol:pw12345@h/db")
    s = open_store()
    assert isinstance(s, SqlStore) and s.describe() == "postgresql://carol:***@h/db"
    assert s.engine.dialect.driver == "psycopg"


@pytest.mark.postgres
def test_session_settings_and_vacuum(pg_url):
    reset_pg_database(pg_url)
    store = SqlStore(pg_url)
    t = sa.table("t", sa.column("id", sa.BigInteger()), schema="s")
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute("CREATE TABLE s.t (id BIGINT PRIMARY KEY, payload TEXT)")
        s.execute(
            "INSERT INTO s.t SELECT i, repeat('x', 200) FROM generate_series(1, 5000) AS g(i)"
        )
        s.execute(sa.delete(t).where(t.c.id > 100))
        store.vacuum(s, ["s.t"], full=False)
        before = s.scalar(sa.text("SELECT pg_relation_filenode('s.t')"))
        store.vacuum(s, ["s.t"], full=True)
        assert (
            s.scalar(sa.text("SELECT pg_relation_filenode('s.t')")) != before
        )  # rewritten into a new file
        assert s.scalar(sa.select(sa.func.count()).select_from(t)) == 100
        s.begin()
        with pytest.raises(RuntimeError):
            store.vacuum(s, ["s.t"], full=False)
        s.rollback()
        s.execute(sa.insert(t).values(id=100_000))  # the session is back to normal transactions
        assert s.scalar(sa.text("SHOW transaction_read_only")) == "off"
    with store.connect(read_only=True) as s:
        assert s.scalar(sa.text("SHOW transaction_read_only")) == "on"
        assert s.scalar(sa.text("SELECT current_setting('application_name')")) == "retention-jobs"


@pytest.mark.postgres
def test_purge_vacuum_full_removes_deleted_values_from_the_table_files(pg_url):
    """Plain VACUUM frees the space of deleted and overwritten rows but leaves their bytes in the
    heap and index pages; VACUUM FULL rewrites the table, so only live values remain."""
    reset_pg_database(pg_url)
    store = SqlStore(pg_url)
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute("CREATE TABLE s.people (id BIGINT PRIMARY KEY, email TEXT UNIQUE, note TEXT)")
        s.execute(
            "INSERT INTO s.people SELECT i, 'secret-mail-' || i || '@x.no', repeat('n', 300) "
            "FROM generate_series(1, 2000) AS g(i)"
        )
        s.execute("UPDATE s.people SET email = 'anon-' || id WHERE id <= 1000")
        s.execute("DELETE FROM s.people WHERE id > 1500")

    def found() -> dict[str, int]:
        with store.connect(read_only=True) as s:
            hits: dict[str, int] = {}
            for source, blob in store.raw_blobs(s, ["s.people"]):
                rel = source.split("@")[0]
                hits[rel] = hits.get(rel, 0) + len(set(re.findall(rb"secret-mail-(\d+)@", blob)))
            return hits

    assert found()["s.people"] == 2000  # 500 live, 1500 deleted or overwritten
    plain = store.purge(["s.people"], full=False)
    assert plain["method"] == "vacuum" and plain["tables"] == 1
    assert found()["s.people"] > 500  # still there after a plain VACUUM
    full = store.purge(["s.people", "s.not_there"], full=True)
    assert full["method"] == "vacuum-full" and full["tables"] == 1
    assert full["bytes_after"] < full["bytes_before"]
    hits = found()
    assert hits["s.people"] == 500  # only the live rows
    assert all(n <= 520 for n in hits.values())  # indexes rebuilt: live keys (and a few separators)


@pytest.mark.postgres
def test_a_role_without_ownership_or_file_access_is_told_so(pg_url):
    """A plain role: purge names the tables it could not vacuum, raw_blobs refuses (the check
    then says "not verifiable here") instead of claiming an erasure."""
    reset_pg_database(pg_url)
    role = f"rj_test_role_{uuid.uuid4().hex[:8]}"
    admin = SqlStore(pg_url)
    with admin.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute("CREATE TABLE s.t (id BIGINT PRIMARY KEY)")
        s.execute(f"CREATE ROLE {role} LOGIN")
        s.execute(f"GRANT USAGE ON SCHEMA s TO {role}")
        s.execute(f"GRANT SELECT, DELETE ON s.t TO {role}")
    try:
        plain = SqlStore(
            sa.engine.make_url(pg_url)
            .set(username=role, password=None)
            .render_as_string(hide_password=False)
        )
        result = plain.purge(["s.t"], full=True)
        assert result["tables"] == 0 and result["skipped_not_owner"] == ["s.t"]
        with plain.connect(read_only=True) as s, pytest.raises(ConfigError):
            list(plain.raw_blobs(s, ["s.t"]))
    finally:
        with admin.connect() as s:
            s.execute(f"DROP OWNED BY {role}")
            s.execute(f"DROP ROLE {role}")


@pytest.mark.postgres
def test_arrow_types_from_postgresql_columns(pg_url):
    reset_pg_database(pg_url)
    store = SqlStore(pg_url)
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute(
            "CREATE TABLE s.t (i4 INTEGER, i2 SMALLINT, r REAL, n NUMERIC, n2 NUMERIC(8, 3), c CHAR(6), "
            "u UUID, j JSONB, iv INTERVAL, b BYTEA, tz TIMESTAMPTZ, empty DATE)"
        )
        s.execute(
            "INSERT INTO s.t VALUES (1, 2, 1.5, 12345678901234567890.5, 1.25, 'ab', "
            "'00000000-0000-0000-0000-000000000001', '{\"b\": 1, \"a\": [1, 2]}', '1 day 2 hours', "
            "'\\x00ff', '2020-01-01 12:00+02', NULL), (NULL, NULL, NULL, 0.001, NULL, NULL, NULL, NULL, "
            "NULL, NULL, NULL, NULL)"
        )
        data = s.arrow(sa.text("SELECT * FROM s.t ORDER BY i4 NULLS LAST").columns())
    types = dict(zip(data.column_names, data.schema.types, strict=True))
    assert types["i4"] == pa.int32() and types["i2"] == pa.int16() and types["r"] == pa.float32()
    assert pa.types.is_decimal(types["n"]) and types["n2"] == pa.decimal128(8, 3)
    assert types["c"] == pa.string() and types["u"] == pa.string() and types["j"] == pa.string()
    assert (
        types["iv"] == pa.duration("us")
        and types["b"] == pa.binary()
        and types["empty"] == pa.date32()
    )
    assert types["tz"] == pa.timestamp("us", tz="UTC")
    first = data.to_pylist()[0]
    assert first["c"] == "ab"  # CHAR(n) padding is not part of the value
    assert first["n"] == Decimal("12345678901234567890.5")
    assert first["u"] == "00000000-0000-0000-0000-000000000001"
    assert first["j"] == '{"a": [1, 2], "b": 1}'
    assert first["iv"] == timedelta(days=1, hours=2) and first["b"] == b"\x00\xff"
    assert first["tz"] == datetime(2020, 1, 1, 10, tzinfo=UTC)
    assert data.to_pylist()[1]["n"] == Decimal("0.001")


OTHER_TYPES = """\
    purpose: x
    title: X
    legal_basis: contract
    owner: ops
    rules:
      - name: old
        table: s.people
        key: id
        clock: seen
        keep_for: P1Y
        action: anonymise
        columns: {token: redact, note: hash, nick: {fake: first_name}}
    """


def test_anonymise_columns_of_other_types_and_char(store, tmp_path):
    """Redacting a UUID column: DuckDB casts the staged text itself; on PostgreSQL the engine
    casts it (UPDATE ... SET token = CAST(rj_anon.token AS UUID))."""
    (tmp_path / "x.yaml").write_text(textwrap.dedent(OTHER_TYPES))
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute(
            "CREATE TABLE s.people (id BIGINT PRIMARY KEY, token UUID, note VARCHAR, nick CHAR(8), seen DATE)"
        )
        # literals: both stores read a quoted UUID into the column's type
        s.execute(
            "INSERT INTO s.people VALUES (1, '00000000-0000-0000-0000-00000000000a', 'a note', 'n1', "
            "DATE '2020-01-01'), (2, NULL, 'another', 'n2', DATE '2020-01-01')"
        )
        control.ensure_control_schema(store, s)
    run_policies(
        store,
        load_policies([str(tmp_path / "x.yaml")]),
        AS_OF,
        KEY,
        RunOptions(max_delete_fraction=None),
    )
    with store.connect(read_only=True) as s:
        got = s.fetchall(sa.text("SELECT id, token, note, rtrim(nick) FROM s.people ORDER BY id"))
    assert [r[1] for r in got] == [None, None]
    hashes = {1: "a note", 2: "another"}
    assert all(len(r[2]) == 32 and r[2] != hashes[r[0]] for r in got)
    # same fakes as on DuckDB: CHAR(8) padding does not change the keyed hash
    assert [r[3] for r in got] == ["Alf", "Simen"]


def test_duckdb_memory_limit_and_threads_come_from_the_environment(tmp_path, monkeypatch):
    """An operator bounds DuckDB's buffer pool (and so the run's RSS) without code changes."""
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("RETENTION_DUCKDB_MEMORY_LIMIT", "300MB")
    monkeypatch.setenv("RETENTION_DUCKDB_THREADS", "1")
    with DuckDBStore(path).connect() as s:
        limit, threads = s.fetchall(
            sa.text("SELECT current_setting('memory_limit'), current_setting('threads')")
        )[0]
    # DuckDB reports the limit in MiB: 300 MB = 286.1 MiB
    assert limit == "286.1 MiB"
    assert int(threads) == 1
    # explicit settings win over the environment
    with DuckDBStore(path, settings={"memory_limit": "200MB"}).connect() as s:
        assert s.scalar(sa.text("SELECT current_setting('memory_limit')")) == "190.7 MiB"


def test_duckdb_checkpoints_every_256mb_of_wal_unless_told_otherwise(tmp_path, monkeypatch):
    """Not after every batch's commit (DuckDB's 16 MB default): see docs/performance.md."""
    path = tmp_path / "w.duckdb"
    monkeypatch.delenv("RETENTION_DUCKDB_CHECKPOINT_THRESHOLD", raising=False)
    with DuckDBStore(path).connect() as s:
        assert s.scalar(sa.text("SELECT current_setting('checkpoint_threshold')")) == "244.1 MiB"
    monkeypatch.setenv("RETENTION_DUCKDB_CHECKPOINT_THRESHOLD", "16MB")
    with DuckDBStore(path).connect() as s:
        assert s.scalar(sa.text("SELECT current_setting('checkpoint_threshold')")) == "15.2 MiB"


def test_duckdb_bad_setting_from_the_environment_is_a_config_error(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    with DuckDBStore(path).connect() as s:
        s.execute("CREATE TABLE t (x INTEGER)")
    before = path.read_bytes()
    monkeypatch.setenv("RETENTION_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(
        ConfigError, match="memory_limit = 'lots'.*RETENTION_DUCKDB_MEMORY_LIMIT.*such as 2GB"
    ):
        DuckDBStore(path).session()
    assert path.read_bytes() == before
    # the failed session released its lock: a good setting opens the file again
    monkeypatch.setenv("RETENTION_DUCKDB_MEMORY_LIMIT", "1GB")
    with DuckDBStore(path).connect() as s:
        assert s.scalar(sa.text("SELECT count(*) FROM t")) == 0


# --- control schema upgrades ---------------------------------------------------------------------


def test_an_erased_value_ledger_with_text_hashes_is_converted_to_the_integer_form(store):
    """Stores written before 0.2 keep the ledger's hashes as 32 hex digits; the upgrade turns
    each into the signed integer of its first 16, the form `erasure.ledger_hash` writes now."""
    import hashlib

    from retention_jobs.erasure import _h, ledger_hash

    key = PseudonymKey.from_text("ledger-upgrade-key-0123")
    values = [b"kari.nordmann@example.no", b"Storgata 1", b"+47 912 34 567", b"ffffff"]
    hexes = [hashlib.blake2b(v, key=key.secret, digest_size=16).hexdigest() for v in values]
    hexes.append("ffffffffffffffff" + "0" * 16)  # the top bit set: a negative integer
    hexes.append("7fffffffffffffff" + "f" * 16)  # the largest positive one
    text = store.ddl_types()["text"]
    with store.connect() as s:
        s.execute(f"CREATE SCHEMA {control.C}")
        s.execute(
            f"CREATE TABLE {control.C}.erased_values (run_id {text}, table_name {text}, column_name "
            f"{text}, anchor_hash {text}, value_hash {text}, value_length BIGINT, erased_at TIMESTAMP)"
        )
        for i, h in enumerate(hexes):
            s.execute(
                sa.text(
                    f"INSERT INTO {control.C}.erased_values VALUES ('old-run', 't.c', 'c', :a, :v, :n, "
                    "TIMESTAMP '2026-01-01 00:00:00')"
                ).bindparams(a=h[::-1], v=h, n=i)
            )
        control.ensure_control_schema(store, s)
        control.ensure_control_schema(store, s)  # a second upgrade changes nothing
        got = dict(
            s.fetchall(sa.text(f"SELECT value_length, value_hash FROM {control.C}.erased_values"))
        )
        anchors = dict(
            s.fetchall(sa.text(f"SELECT value_length, anchor_hash FROM {control.C}.erased_values"))
        )
    # an independent reference: Python's own two's complement of the first 8 bytes
    expected = [int.from_bytes(bytes.fromhex(h[:16]), "big", signed=True) for h in hexes]
    assert [got[i] for i in range(len(hexes))] == expected
    assert [anchors[i] for i in range(len(hexes))] == [
        int.from_bytes(bytes.fromhex(h[::-1][:16]), "big", signed=True) for h in hexes
    ]
    assert expected[4] == -1
    assert expected[5] == 2**63 - 1
    # the bytes-side hash of the verifier and the column-side form of the runs agree with it
    assert [_h(v, key) for v in values] == expected[:4]
    assert ledger_hash(pl.Series(hexes)).to_list() == expected


# --- typed `where` literals (G2, G5, G10) -----------------------------------------------------

TYPED_DDL = [
    "CREATE SCHEMA w",
    "CREATE TABLE w.events (id BIGINT PRIMARY KEY, d DATE, ts TIMESTAMP, n INTEGER, "
    "ended_at DATE NOT NULL)",
    "INSERT INTO w.events VALUES "
    "(1, DATE '2024-12-31', TIMESTAMP '2024-12-31 23:59:59.999999', 1, DATE '2020-01-01'), "
    "(2, DATE '2025-01-01', TIMESTAMP '2025-01-01 00:00:00', 2, DATE '2020-01-01'), "
    "(3, DATE '2025-01-02', TIMESTAMP '2025-01-01 00:00:00.000001', 3, DATE '2020-01-01'), "
    "(4, NULL, NULL, NULL, DATE '2020-01-01'), "
    "(5, DATE '1999-02-28', TIMESTAMP '1999-02-28 12:00:00', 5, DATE '2020-01-01'), "
    "(6, DATE '2030-01-01', TIMESTAMP '2030-01-01 00:00:00', 6, DATE '2020-01-01')",
]

TYPED_POLICY = """\
purpose: typed
title: Typed where literals
legal_basis: contract
owner: data-team
rules:
  - name: old-events
    table: w.events
    key: id
    clock: ended_at
    keep_for: P1Y
    action: delete
    where: {WHERE}
"""


def _typed_store(store: Store) -> None:
    with store.connect() as s:
        for ddl in TYPED_DDL:
            s.execute(ddl)
        control.ensure_control_schema(store, s)


@pytest.mark.parametrize(
    ("where", "independent_sql"),
    [
        ('{d: {lt: "2025-01-01"}}', "d < DATE '2025-01-01'"),
        ('{ts: {lt: "2025-01-01"}}', "ts < TIMESTAMP '2025-01-01 00:00:00'"),
        ("{d: {le: 2025-01-01}}", "d <= DATE '2025-01-01'"),
        ('{ts: {ge: "2025-01-01 00:00:00"}}', "ts >= TIMESTAMP '2025-01-01 00:00:00'"),
        ('{d: ["2025-01-01", 1999-02-28]}', "d IN (DATE '2025-01-01', DATE '1999-02-28')"),
        ('{ts: {ne: "2025-01-01"}}', "ts IS DISTINCT FROM TIMESTAMP '2025-01-01 00:00:00'"),
        ("{n: {gt: 2.0}}", "n > 2"),
    ],
)
def test_where_literals_compare_in_the_column_type(store, tmp_path, where, independent_sql):
    """A rule with a string or date literal on a DATE or TIMESTAMP column deletes exactly the
    rows an independent SQL query selects, on both stores; plan counts the same rows."""
    _typed_store(store)
    with store.connect(read_only=True) as s:
        expected = {r[0] for r in rows(s, f"SELECT id FROM w.events WHERE {independent_sql}")}
        before = {r[0] for r in rows(s, "SELECT id FROM w.events")}
    assert expected and expected != before, "the case must select some rows, not all"
    (tmp_path / "typed.yaml").write_text(TYPED_POLICY.replace("{WHERE}", where))
    policies = load_policies([str(tmp_path / "typed.yaml")])
    dry = run_policies(store, policies, AS_OF, KEY, RunOptions(dry_run=True))
    assert [r.plan.to_act for r in dry.rules] == [len(expected)]
    run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    with store.connect(read_only=True) as s:
        after = {r[0] for r in rows(s, "SELECT id FROM w.events")}
    assert before - after == expected


BAD_LITERALS = [
    ('{d: {lt: "2025-02-30"}}', "12:17", "rules[0].where.d.lt", "is not a real date"),
    ('{ts: {lt: "2025-13-01"}}', "12:18", "rules[0].where.ts.lt", "is not a real date"),
    ('{d: {lt: "31.12.2024"}}', "12:17", "rules[0].where.d.lt", "is not a date as YYYY-MM-DD"),
    ('{d: {lt: "2025-01-01 10:00"}}', "12:17", "rules[0].where.d.lt", "is not a date as"),
    ("{n: {gt: 99999999999}}", "12:17", "rules[0].where.n.gt", "outside the range of INTEGER"),
    ("{n: [1, 2.5]}", "12:20", "rules[0].where.n[1]", "holds whole numbers"),
    ('{n: {gt: "5"}}', "12:17", "rules[0].where.n.gt", "does not fit the column's type INTEGER"),
]


@pytest.mark.parametrize(("where", "at", "field", "fragment"), BAD_LITERALS)
def test_bad_where_literals_are_refused_at_validate(
    store, request, tmp_path, where, at, field, fragment
):
    """`validate --store` refuses each with exit 2 and the literal's location; the store is
    unchanged, and a run refuses the same policy before it changes anything."""
    import subprocess
    import sys

    _typed_store(store)

    def snapshot() -> list[tuple]:
        with store.connect(read_only=True) as s:
            return rows(s, "SELECT * FROM w.events ORDER BY id")

    before = snapshot()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "typed.yaml").write_text(TYPED_POLICY.replace("{WHERE}", where))
    location = (
        str(tmp_path / "warehouse.duckdb")
        if store.kind == "duckdb"
        else request.getfixturevalue("pg_url")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "validate", "policies", "--store", location],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"policies/typed.yaml:{at}: {field}: " in proc.stderr, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(PolicyError) as exc:
        run_policies(
            store,
            load_policies([str(tmp_path / "policies")]),
            AS_OF,
            KEY,
            RunOptions(max_delete_fraction=None),
        )
    assert [f"{p.line}:{p.col}" for p in exc.value.problems] == [at]
    assert snapshot() == before
