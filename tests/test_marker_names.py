"""G3: which columns of a row are already anonymised is decided from structured data, never by
string matching. Column and table names a SQL LIKE or a comma-separated list would misread
(`_`, `%`, quotes, spaces, mixed case, a comma) are anonymised by each rule that names them,
on both stores; the checks pass only when that is true.

The oracle is independent of the engine: the values inserted here, compared in plain Python
with what the table holds after the run."""

import textwrap
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from stores import pg_database, reset_pg_database

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.check import run_checks
from retention_jobs.load import load_policies
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("test-key-0123456789abcdef")
STORES = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]

# each pair: a rule anonymises the first, a later rule the second; a LIKE '%,<second>,%' over
# the first one's marker reads the second as done. Policies name columns with letters, digits
# and `_` only (policy.py), so `_` is the wildcard a name can carry; names with `%`, quotes,
# spaces and commas are proved on the marker functions themselves (below).
TRAPS = [
    ("axb", "a_b"),  # `_` matches any one character
    ("bxyc", "b__c"),
    ("_x", "__"),
    ("MixedCase", "Mixed_ase"),  # quoted, case kept
]
COLUMNS = [c for pair in TRAPS for c in pair]


@pytest.fixture(scope="module")
def pg_url():
    with pg_database() as url:
        yield url


@pytest.fixture(params=STORES)
def store(request, tmp_path) -> Store:
    if request.param == "duckdb":
        return DuckDBStore(tmp_path / "warehouse.duckdb")
    url = request.getfixturevalue("pg_url")
    reset_pg_database(url)
    return SqlStore(url)


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def yq(name: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + name.replace("'", "''") + "'"


def policy(table: str) -> str:
    rules = []
    for i, (first, second) in enumerate(TRAPS):
        for j, c in enumerate((first, second)):
            rules.append(
                f"""
  - name: r{i}{j}
    table: {yq(table)}
    key: id
    clock: seen
    keep_for: P1Y
    action: anonymise
    columns: {{{yq(c)}: hash}}"""
            )
    return textwrap.dedent("""
        purpose: adversarial
        title: Adversarial names
        legal_basis: contract
        owner: ops
        rules:""") + "".join(rules)


def build(store: Store, schema: str, table: str) -> dict[str, list[str]]:
    n = 50
    values = {c: [f"orig-{k}-{i}-{c}" for i in range(n)] for k, c in enumerate(COLUMNS)}
    with store.connect() as s:
        s.execute(f"CREATE SCHEMA {q(schema)}")
        cols = ", ".join(f"{q(c)} VARCHAR" for c in COLUMNS)
        s.execute(f"CREATE TABLE {q(schema)}.{q(table)} (id BIGINT PRIMARY KEY, {cols}, seen DATE)")
        data = pa.table(
            {
                "id": pa.array(range(1, n + 1), pa.int64()),
                **values,
                # every row expired: all of them must be anonymised in every column
                "seen": pa.array([date(2020, 1, 1)] * n, pa.date32()),
            }
        )
        staged = s.stage("rj_test_load", data)
        target = sa.table(table, *(sa.column(c) for c in data.column_names), schema=schema)
        with s.transaction():
            s.execute(
                sa.insert(target).from_select(
                    data.column_names, sa.select(*(staged.c[c] for c in data.column_names))
                )
            )
        s.drop_stage("rj_test_load")
        control.ensure_control_schema(store, s)
    return values


def current(store: Store, schema: str, table: str) -> dict[str, list[str]]:
    with store.connect(read_only=True) as s:
        got = s.fetchall(
            sa.text(f"SELECT {', '.join(q(c) for c in COLUMNS)} FROM {q(schema)}.{q(table)}")
        )
    return {c: [r[k] for r in got] for k, c in enumerate(COLUMNS)}


@pytest.mark.parametrize(
    "schema,table",
    [("s", "people"), ("s_x", "a_b"), ("S", "MixedCase")],
    ids=["plain", "underscore", "mixed-case"],
)
def test_every_rule_anonymises_its_column_whatever_the_names(store, tmp_path, schema, table):
    path = Path(tmp_path / "p.yaml")
    path.write_text(policy(f"{schema}.{table}"))
    policies = load_policies([str(path)])
    inserted = build(store, schema, table)
    report = run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    after = current(store, schema, table)
    kept = {c: sum(a == b for a, b in zip(after[c], inserted[c], strict=True)) for c in COLUMNS}
    assert kept == dict.fromkeys(COLUMNS, 0), "original values left in place"
    checks = {c.name: c for c in run_checks(store, policies, AS_OF, KEY, run_id=report.run_id)}
    assert checks["nothing_expired_left"].passed, checks["nothing_expired_left"].summary
    assert checks["no_original_values"].passed, checks["no_original_values"].summary
    # a second run has nothing to do (every marker read back as done, no hash of a hash)
    run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert current(store, schema, table) == after


@pytest.mark.parametrize("victim", ["a_b", "b__c", "__", "Mixed_ase"])
def test_checks_see_an_original_written_back_in_an_adversarial_column(store, tmp_path, victim):
    """The checks pass only when true: an original value put back after the run is found."""
    schema, table = "s", "people"
    path = Path(tmp_path / "p.yaml")
    path.write_text(policy(f"{schema}.{table}"))
    policies = load_policies([str(path)])
    inserted = build(store, schema, table)
    run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    with store.connect() as s:
        s.execute(
            sa.text(f"UPDATE {q(schema)}.{q(table)} SET {q(victim)} = :v WHERE id = 7").bindparams(
                v=inserted[victim][6]
            )
        )
    checks = {c.name: c for c in run_checks(store, policies, AS_OF, KEY)}
    assert not checks["no_original_values"].passed
    assert checks["no_original_values"].counts == {f"{schema}.{table}.{victim}": 1}


def test_markers_of_the_previous_format_read_as_before(store, tmp_path):
    """A store written by the previous version (",a,b," with plain names) reads as done: a
    rerun changes nothing."""
    path = Path(tmp_path / "p.yaml")
    path.write_text(
        textwrap.dedent("""
        purpose: shop
        title: Shop
        legal_basis: contract
        owner: ops
        rules:
          - name: r
            table: s.people
            key: id
            clock: seen
            keep_for: P1Y
            action: anonymise
            columns: {email: hash, phone: hash}
        """)
    )
    policies = load_policies([str(path)])
    with store.connect() as s:
        s.execute("CREATE SCHEMA s")
        s.execute(
            "CREATE TABLE s.people (id BIGINT PRIMARY KEY, email VARCHAR, phone VARCHAR, seen DATE)"
        )
        s.execute("INSERT INTO s.people VALUES (1, 'h1', 'h2', DATE '2020-01-01')")
        control.ensure_control_schema(store, s)
        s.execute(
            f'CREATE TABLE {control.C}."anonymised__s__people" (id BIGINT, columns VARCHAR NOT NULL, '
            "rule VARCHAR, original_hashes VARCHAR, anonymised_at TIMESTAMP)"
        )
        s.execute(
            f'INSERT INTO {control.C}."anonymised__s__people" VALUES '
            "(1, ',email,phone,', 'shop/r', '2:;', TIMESTAMP '2025-01-01')"
        )
    run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    with store.connect(read_only=True) as s:
        assert s.fetchall(sa.text("SELECT email, phone FROM s.people")) == [("h1", "h2")]
    checks = {c.name: c for c in run_checks(store, policies, AS_OF, KEY)}
    assert checks["nothing_expired_left"].passed


# names a policy cannot name today, but a store can hold: the marker list and its readers stay
# exact for them too, on both stores (each name against a list of its look-alikes)
ODD = [
    "a_b",
    "axb",
    "a%b",
    "a%25b",
    "a%2Cb",
    "x,y",
    "x",
    "y",
    "o'brien",
    'dq"x',
    "Mixed Case",
    "mixed case",
    "%",
    "_",
    ",",
    " ",
    "a b",
]


def test_marker_lists_name_exactly_their_columns_on_both_stores(store):
    import polars as pl

    from retention_jobs import markers

    lists = [[n] for n in ODD] + [[n for n in ODD if n != left] for left in ODD]
    with store.connect() as s:
        for names in lists:
            text = markers.listed(names)
            assert text.count(markers.SEP) == len(names) + 1
            got = s.fetchall(
                sa.select(*(markers.names(sa.literal(text, sa.String()), n) for n in ODD))
            )[0]
            assert list(got) == [n in names for n in ODD], (names, got)
            # concatenated with another marker's list, as the applier groups them
            joined = text + markers.listed(["zz"])
            got = s.fetchall(
                sa.select(*(markers.names(sa.literal(joined, sa.String()), n) for n in ODD))
            )[0]
            assert list(got) == [n in names for n in ODD]
    frame = pl.DataFrame({"columns": [markers.listed(names) for names in lists]})
    for n in ODD:
        pos = frame.select(markers.position(pl.col("columns"), n)).to_series().to_list()
        assert pos == [names.index(n) if n in names else None for names in lists]
    fresh = {n: pl.lit(i % 2 == 0) for i, n in enumerate(ODD)}
    written = pl.select(markers.listed_expr(fresh)).item()
    assert written == markers.listed([n for i, n in enumerate(ODD) if i % 2 == 0])


# --- one control table per data table -------------------------------------------------------

# (schema, table) pairs whose marker and journal tables were once the same table: the name was
# "anonymised__" + schema + "__" + table, so `w.a__b` and `w__a.b` shared one; and PostgreSQL
# cuts names at 63 bytes, so two long names shared the cut, and a long name was not found
# again under its full spelling (the next run re-anonymised: a hash of the hash).
LONG = "t" * 55
TWINS = [
    [("w", "a__b"), ("w__a", "b")],
    [("x_", "y"), ("x", "_y")],
    [("s", LONG + "_one"), ("s", LONG + "_two")],
]


def twins_policy(tables: list[tuple[str, str]], action: str) -> str:
    rules = "".join(
        f"""
  - name: r{i}
    table: {schema}.{table}
    key: id
    subject: {{none: test tables}}
    clock: seen
    keep_for: P1Y
    action: {action}"""
        + ("\n    columns: {c: hash}" if action == "anonymise" else "")
        for i, (schema, table) in enumerate(tables)
    )
    return (
        textwrap.dedent("""
        purpose: twins
        title: Twin names
        legal_basis: contract
        owner: ops
        rules:""")
        + rules
    )


@pytest.mark.parametrize("tables", TWINS, ids=["double-underscore", "trailing-underscore", "long"])
def test_each_table_has_its_own_markers_and_journal(store, tmp_path, tables):
    """Both tables' rows are anonymised (delete: deleted) by their own rule, and a second run
    changes nothing: a shared or misnamed marker table reads one table's rows as done by the
    other's markers, or loses them."""
    with store.connect() as s:
        for schema in {sc for sc, _ in tables}:
            s.execute(f"CREATE SCHEMA {q(schema)}")
        for schema, table in tables:
            s.execute(
                f"CREATE TABLE {q(schema)}.{q(table)} (id BIGINT PRIMARY KEY, c VARCHAR, seen DATE)"
            )
            s.execute(
                f"INSERT INTO {q(schema)}.{q(table)} VALUES "
                + ", ".join(f"({i}, 'orig-{table}-{i}', DATE '2020-01-01')" for i in range(1, 6))
            )
        control.ensure_control_schema(store, s)
    path = tmp_path / "twins.yaml"

    def table_rows() -> list[list[tuple]]:
        with store.connect(read_only=True) as s:
            return [
                sorted(tuple(r) for r in s.fetchall(sa.text(f"SELECT id, c FROM {q(sc)}.{q(t)}")))
                for sc, t in tables
            ]

    path.write_text(twins_policy(tables, "anonymise"))
    ps = load_policies([path])
    options = RunOptions(max_delete_fraction=None, batch_size=2)
    run_policies(store, ps, AS_OF, KEY, options)
    first = table_rows()
    for (_, table), got in zip(tables, first, strict=True):
        originals = [v for _, v in got if v.startswith("orig-")]
        assert not originals, f"{table}: {len(originals)} rows skipped as if already done"
    run_policies(store, ps, AS_OF, KEY, options)
    assert table_rows() == first, "a second run changed anonymised rows (markers not found)"

    path.write_text(twins_policy(tables, "delete"))
    run_policies(store, load_policies([path]), AS_OF, KEY, options)
    assert table_rows() == [[] for _ in tables]
