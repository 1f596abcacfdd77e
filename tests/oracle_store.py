"""The worlds of the oracle property test (tests/test_oracle.py) in a real store: physical
names for the oracle's logical schema (`Names`), policies rendered to YAML, a fresh store per
example (DuckDB or PostgreSQL), the rows built and read back with plain SQL written here."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from hypothesis import strategies as st
from oracle import (
    CHILD,
    CHILD_KEY,
    CHILD_LINE,
    PARENT,
    PARENT_KEY,
    HoldSpec,
    RuleSpec,
    World,
    key_secret,
)
from stores import reset_pg_database

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.load import PolicySet, load_text
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore


class NoAliases(yaml.SafeDumper):
    """Policy files refuse anchors and aliases: a value shared by two rules is written twice."""

    def ignore_aliases(self, data):
        return True


KEY_TEXT = "oracle-test-key-0123456789"
KEY = PseudonymKey.from_text(KEY_TEXT)
SECRET = key_secret(KEY_TEXT)

PARENT_COLUMNS = ("parent_id", "subject", "status", "n", "note", "d", "ts", "tstz")
CHILD_COLUMNS = ("cid", "parent_id", "c_date", "kind", "line")
"""The child's key is (cid, line): rules on w.child name a composite key. `line` is derived
(cid % 2) by `build_store`; the oracle knows a child by cid, unique on its own."""
TYPES = {
    "parent_id": "BIGINT",
    "subject": "VARCHAR",
    "status": "VARCHAR",
    "n": "INTEGER",
    "note": "VARCHAR",
    "d": "DATE",
    "ts": "TIMESTAMP",
    "tstz": "TIMESTAMPTZ",
    "cid": "BIGINT",
    "c_date": "DATE",
    "kind": "VARCHAR",
    "line": "INTEGER",
}
STRATEGY_YAML: dict[str, Any] = {
    "redact": "redact",
    "hash": "hash",
    "mask1": {"mask": {"keep_last": 1}},
}


# --- names ------------------------------------------------------------------------------------


def q(name: str) -> str:
    """A quoted SQL identifier (both stores): the name exactly, `"` doubled."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Names:
    """The physical names of the oracle's logical schema (w.parent, w.child and their columns).

    The oracle reasons in logical names; policies, DDL, holds and the rows read back use the
    physical ones. Policy-named identifiers follow the policy grammar (letters, digits, `_`:
    policy.Identifier) in any case, so they are quoted identifiers on PostgreSQL; `extra` is a
    column of each table, and `side` a table of its own, that no policy names: their names may
    hold anything (`%`, quotes, spaces), and the engine must read the catalog around them and
    leave them as they are."""

    schema: str = "w"
    parent: str = "parent"
    child_schema: str = "w"
    child: str = "child"
    columns: tuple[tuple[str, str], ...] = ()  # (logical, physical) where they differ
    extra: str = "extra"
    side_schema: str = "side"
    side: str = "side"

    def col(self, logical: str) -> str:
        return dict(self.columns).get(logical, logical)

    def parts(self, logical: str) -> tuple[str, str]:
        return (self.schema, self.parent) if logical == PARENT else (self.child_schema, self.child)

    def table(self, logical: str) -> str:
        """`schema.table` as a policy names it."""
        return ".".join(self.parts(logical))

    def sql_table(self, logical: str) -> str:
        return ".".join(q(x) for x in self.parts(logical))

    def logical_table(self, physical: str) -> str:
        return PARENT if physical == self.table(PARENT) else CHILD


PLAIN = Names()

# Names a policy may use (policy.Identifier): mixed case, leading, trailing and doubled `_`,
# SQL keywords. Distinct ignoring case: DuckDB's identifiers are case-insensitive.
POLICY_NAMES = [
    "a_b",
    "axb",
    "_x",
    "x_",
    "a__b",
    "MiXed",
    "UPPER",
    "Order",
    "select",
    "user",
    "Where_",
    "t_1",
    "_",
    "__",
]
# Names no policy can use: only the catalog sees them.
WILD_NAMES = ["we%ird", 'qu"ote', "it's", "with space", " lead", "Mixed Case%_", "a.b", "1st"]


@st.composite
def names_strategy(draw, kind: str) -> Names:
    logical = [*PARENT_COLUMNS, "cid", "c_date", "kind", "line"]
    pool = st.sampled_from([*POLICY_NAMES, *logical])
    used: set[str] = set()

    def fresh(s: st.SearchStrategy) -> str:
        name = draw(s.filter(lambda n: n.lower() not in used))
        used.add(name.lower())
        return name

    columns = tuple((c, fresh(pool)) for c in logical)
    used.clear()
    schema = fresh(st.sampled_from([*POLICY_NAMES, "w"]))
    parent, child = fresh(pool), fresh(pool)
    child_schema = schema
    twins = draw(st.sampled_from([None, None, "underscores", "long"]))
    if (
        twins == "underscores" and kind != "duckdb"
    ):  # DuckDB: no foreign key across schemas  # once one marker table: anonymised__<schema>__a__b
        parent, child_schema, child = "a__b", f"{schema}__a", "b"
    elif twins == "long":  # once one marker table on PostgreSQL, which cuts names at 63 bytes
        parent, child = "l" * 52 + "_a", "l" * 52 + "_b"
    return Names(
        schema=schema,
        parent=parent,
        child_schema=child_schema,
        child=child,
        columns=tuple((c, p) for c, p in columns if c != p),
        extra=draw(st.sampled_from(WILD_NAMES)),
        side_schema=draw(st.sampled_from(WILD_NAMES)),
        side=draw(st.sampled_from(WILD_NAMES)),
    )


# --- rendering ------------------------------------------------------------------------------


def period_text(keep: tuple[int, int, int]) -> str:
    y, m, d = keep
    days = f"{d // 7}W" if d and d % 7 == 0 else f"{d}D" if d else ""
    text = (f"{y}Y" if y else "") + (f"{m}M" if m else "") + days
    return "P" + (text or "0D")


def where_yaml(conds: tuple, names: Names) -> dict:
    by_column: dict[str, list] = {}
    for column, op, value in conds:
        by_column.setdefault(names.col(column), []).append((op, value))
    out: dict[str, Any] = {}
    for column, ops in by_column.items():
        if len(ops) == 1 and ops[0][0] == "eq":
            out[column] = ops[0][1]  # the short form, `status: closed` (or `status: null`)
        elif len(ops) == 1 and ops[0][0] == "in":
            out[column] = list(ops[0][1])
        else:
            out[column] = {op: list(v) if isinstance(v, tuple) else v for op, v in ops}
    return out


def rule_yaml(r: RuleSpec, names: Names) -> dict:
    col = names.col
    key = col(r.key) if r.table == PARENT else [col(CHILD_KEY), col(CHILD_LINE)]
    doc: dict[str, Any] = {"name": r.name, "table": names.table(r.table), "key": key}
    if r.subject:
        doc["subject"] = {"kind": r.subject[0], "column": col(r.subject[1])}
    elif r.action != "retain":
        # without it, validate refuses a rule that reaches no subject; it still honours the
        # subjects it reaches (the oracle's inferred subjects)
        doc["subject"] = {"none": "generated rule"}
    if r.clock.startswith("related:"):
        doc["clock"] = {
            "table": names.table(CHILD),
            "on": col(PARENT_KEY),
            "column": col("c_date"),
            "aggregate": r.clock.split(":")[1],
        }
    else:
        doc["clock"] = col(r.clock)
    if r.round_to:
        doc["round_clock_to"] = r.round_to
    doc["keep_for"] = period_text(r.keep)
    if r.where:
        doc["where"] = where_yaml(r.where, names)
    if r.related:
        doc["related"] = [
            {"table": names.table(CHILD), "on": col(PARENT_KEY), q: where_yaml(conds, names)}
            for q, conds in r.related
        ]
    doc["action"] = r.action
    if r.columns:
        doc["columns"] = {col(c): STRATEGY_YAML[s] for c, s in r.columns}
    if r.cascade:
        link: dict[str, Any] = {
            "table": names.table(CHILD),
            "on": col(PARENT_KEY),
            "action": r.cascade,
        }
        if r.cascade_columns:
            link["columns"] = {col(c): STRATEGY_YAML[s] for c, s in r.cascade_columns}
        doc["cascade"] = [link]
    return doc


def policy_set(rules: list[RuleSpec], names: Names = PLAIN) -> PolicySet:
    files = []
    for purpose, group in itertools.groupby(rules, key=lambda r: r.purpose):
        group = list(group)
        doc = {
            "purpose": purpose,
            "title": f"Purpose {purpose}",
            "legal_basis": "contract",
            "owner": "qa",
            "timezone": group[0].tz,
            "rules": [rule_yaml(r, names) for r in group],
        }
        files.append(
            load_text(yaml.dump(doc, Dumper=NoAliases, sort_keys=False), f"policies/{purpose}.yaml")
        )
    return PolicySet(tuple(files))


# --- the store --------------------------------------------------------------------------------


class Stores:
    """A fresh store per example: a new DuckDB file, or the module's PostgreSQL database
    emptied (every schema dropped)."""

    def __init__(self, kind: str, root: Path, pg_url: str | None = None):
        self.kind, self.root, self.pg_url = kind, root, pg_url
        self._n = itertools.count()

    def fresh(self) -> Store:
        if self.kind == "duckdb":
            return DuckDBStore(self.root / f"w{next(self._n)}.duckdb")
        assert self.pg_url
        reset_pg_database(self.pg_url)
        return SqlStore(self.pg_url)


def ddl(names: Names) -> list[str]:
    c = names.col

    def cols(logical: tuple[str, ...]) -> str:
        return ", ".join(f"{q(c(x))} {TYPES[x]}" for x in logical)

    return [
        *(f"CREATE SCHEMA {q(x)}" for x in sorted({names.schema, names.child_schema})),
        f"CREATE TABLE {names.sql_table(PARENT)} ({cols(PARENT_COLUMNS)}, "
        f"{q(names.extra)} VARCHAR, PRIMARY KEY ({q(c(PARENT_KEY))}))",
        f"CREATE TABLE {names.sql_table(CHILD)} ({cols(CHILD_COLUMNS)}, "
        f"{q(names.extra)} VARCHAR, PRIMARY KEY ({q(c(CHILD_KEY))}, {q(c(CHILD_LINE))}), "
        f"FOREIGN KEY ({q(c(PARENT_KEY))}) "
        f"REFERENCES {names.sql_table(PARENT)} ({q(c(PARENT_KEY))}))",
        f"CREATE SCHEMA {q(names.side_schema)}",
        f"CREATE TABLE {q(names.side_schema)}.{q(names.side)} "
        f"({q(names.extra)} VARCHAR, {q(names.side + '2')} BIGINT)",
    ]


SIDE_ROWS = [("x%_'\" 1", 1), (None, 2)]


def build_store(
    stores: Stores,
    parents: list[tuple],
    children: list[tuple],
    holds: list[HoldSpec],
    names: Names = PLAIN,
) -> Store:
    """The world in a fresh store. Each row gets its `extra` column: a copy of its key as text,
    which no rule may change."""
    store = stores.fresh()
    with store.connect() as s:
        for statement in ddl(names):
            s.execute(statement)
        for logical, rows, columns in (
            (PARENT, parents, PARENT_COLUMNS),
            (CHILD, children, CHILD_COLUMNS),
        ):
            if not rows:
                continue
            physical = [names.col(x) for x in columns] + [names.extra]
            schema, short = names.parts(logical)
            target = sa.table(short, *(sa.column(x) for x in physical), schema=schema)
            if logical == CHILD:
                rows = [(*row, row[0] % 2) for row in rows]  # line
            values = [dict(zip(physical, (*row, f"e{row[0]}"), strict=True)) for row in rows]
            with s.transaction():  # one statement per table (executemany runs one per row)
                s.execute(sa.insert(target).values(values))
        side = sa.table(
            names.side,
            sa.column(names.extra),
            sa.column(names.side + "2"),
            schema=names.side_schema,
        )
        with s.transaction():
            s.execute(
                sa.insert(side).values(
                    [{names.extra: a, names.side + "2": b} for a, b in SIDE_ROWS]
                )
            )
        control.ensure_control_schema(store, s)
        for h in holds:
            target = names.table(h.target) if h.scope == "table" else h.target
            kw: dict[str, Any] = {"subject": target} if h.scope == "subject" else {h.scope: target}
            hold_id = control.add_hold(
                s, scope=h.scope, case_ref="CASE-1", reason="oracle test", placed_by="test", **kw
            )
            if h.released:
                assert control.release_hold(s, hold_id, "test")
    return store


def _token_name(token: str) -> str:
    """A column's name from its token in a marker's list (`%2C` is `,`, `%25` is `%`)."""
    return token.replace("%2C", ",").replace("%25", "%")


def fetch_world(store: Store, holds: list[HoldSpec], names: Names = PLAIN) -> World:
    """The rows of both tables under their logical column names (plain SQL written here, not
    the engine's), and the columns the markers say are anonymised. The `extra` column of each
    row must still hold its key as text, and the side table must be as built."""
    c = names.col
    with store.connect(read_only=True) as s:

        def rows(logical: str, columns: tuple[str, ...]) -> dict[Any, dict]:
            got = s.fetchall(
                sa.text(
                    f"SELECT {', '.join(q(c(x)) for x in columns)}, {q(names.extra)} "
                    f"FROM {names.sql_table(logical)} ORDER BY 1"
                )
            )
            out = {}
            for r in got:
                assert r[-1] == f"e{r[0]}", f"{names.extra!r} of {logical} row {r[0]} changed"
                out[r[0]] = dict(zip(columns, r[:-1], strict=True))
            return out

        parents = rows(PARENT, PARENT_COLUMNS)
        children = rows(CHILD, CHILD_COLUMNS)
        side = s.fetchall(
            sa.text(
                f"SELECT {q(names.extra)}, {q(names.side + '2')} "
                f"FROM {q(names.side_schema)}.{q(names.side)} ORDER BY 2"
            )
        )
        assert [tuple(r) for r in side] == SIDE_ROWS, "a table no policy names changed"
        present = {
            r[0]
            for r in s.fetchall(
                sa.text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'retention_control'"
                )
            )
        }
        marked: set[tuple[str, int, str]] = set()
        by_physical = {c(x): x for x in (*PARENT_COLUMNS, *CHILD_COLUMNS)}
        for logical, key in ((PARENT, PARENT_KEY), (CHILD, CHILD_KEY)):
            name = control.marker_name(names.table(logical))
            if name not in present:
                continue
            for key_value, listed in s.fetchall(
                sa.text(f"SELECT {q(c(key))}, columns FROM retention_control.{q(name)}")
            ):
                tokens = [t for t in listed.split(",") if t]
                marked |= {(logical, key_value, by_physical[_token_name(t)]) for t in tokens}
    return World(parents, children, list(holds), marked)
