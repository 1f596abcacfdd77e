"""Copy one attached DuckDB database into another, parents before children.

The purge of a DuckDB store is a copy of the live data into a fresh file. DuckDB's own
`COPY FROM DATABASE` inserts every table in one statement, in an order that a foreign key can
reject: a self-referencing table (`employees.manager_id`) whose child rows come before their
parents fails, and a check of one INSERT does not see the rows of the same statement. So the
schema is copied by DuckDB (`COPY FROM DATABASE ... (SCHEMA)`: tables with their constraints,
views, sequences, macros, indexes) and the rows are copied here:

- tables in foreign-key order (a referenced table before the tables that reference it);
- the rows of a self-referencing table by level: first the rows whose self-references are all
  NULL, then the rows whose references point only at rows already copied, and so on. DuckDB
  cannot create a cycle of rows (a row can only reference a row that existed before it, and a
  referenced row's foreign-key column cannot be updated) nor a cycle of tables (no
  `ALTER TABLE ... ADD FOREIGN KEY`); if either shows up anyway the copy fails, which fails
  the purge (the old file stays and the tables stay pending), never a partial file swapped in.

Every table's row count is compared between the two files before the caller swaps them.
"""

import re
from dataclasses import dataclass

import duckdb

from retention_jobs.errors import PurgeFailed


@dataclass(frozen=True)
class _Table:
    schema: str
    name: str
    columns: tuple[str, ...]
    """Stored columns in their order (generated columns are computed, never inserted)."""

    def ref(self, db: str) -> str:
        return f"{db}.{_quote(self.schema)}.{_quote(self.name)}"

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class _SelfKey:
    columns: tuple[str, ...]
    referenced: tuple[str, ...]


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_REFERENCES = re.compile(rf"REFERENCES\s+(?:({_IDENT})\.)?{_IDENT}\s*\(", re.IGNORECASE)


def referenced_schema(constraint_text: str | None, default: str) -> str:
    """The schema a DuckDB foreign key's `REFERENCES` clause names (quoted or not), else the
    referencing table's own schema (DuckDB's `duckdb_constraints()` has the referenced table
    but not its schema)."""
    m = _REFERENCES.search(constraint_text or "")
    if not m or not m.group(1):
        return default
    name = m.group(1)
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def _tables(con: duckdb.DuckDBPyConnection, db: str) -> list[_Table]:
    rows = con.execute(
        "SELECT schema_name, table_name, list(column_name ORDER BY column_index) "
        "FILTER (WHERE NOT is_generated) FROM duckdb_columns() "
        "WHERE database_name = ? AND NOT internal AND table_name IN ("
        "  SELECT table_name FROM duckdb_tables() t WHERE t.database_name = ? "
        "  AND t.schema_name = duckdb_columns.schema_name) "
        "GROUP BY ALL ORDER BY ALL",
        [db, db],
    ).fetchall()
    return [_Table(s, t, tuple(cols or ())) for s, t, cols in rows]


def _foreign_keys(
    con: duckdb.DuckDBPyConnection, db: str
) -> list[tuple[str, str, tuple[str, ...], str, str, tuple[str, ...]]]:
    rows = con.execute(
        "SELECT schema_name, table_name, constraint_column_names, constraint_text, "
        "referenced_table, referenced_column_names FROM duckdb_constraints() "
        "WHERE database_name = ? AND constraint_type = 'FOREIGN KEY'",
        [db],
    ).fetchall()
    return [
        (s, t, tuple(cols), referenced_schema(text, s), rtable, tuple(rcols))
        for s, t, cols, text, rtable, rcols in rows
    ]


def copy_order(
    tables: list[_Table], fks: list[tuple[str, str, tuple[str, ...], str, str, tuple[str, ...]]]
) -> tuple[list[_Table], dict[str, list[_SelfKey]]]:
    """Tables with every referenced table first (Kahn's algorithm, stable by name), and each
    table's self-references."""
    by_label = {t.label: t for t in tables}
    parents: dict[str, set[str]] = {t.label: set() for t in tables}
    self_keys: dict[str, list[_SelfKey]] = {}
    for s, t, cols, rs, rt, rcols in fks:
        child, parent = f"{s}.{t}", f"{rs}.{rt}"
        if child == parent:
            self_keys.setdefault(child, []).append(_SelfKey(cols, rcols))
        elif child in parents and parent in parents:
            parents[child].add(parent)
    order: list[_Table] = []
    done: set[str] = set()
    while len(order) < len(tables):
        ready = sorted(c for c, ps in parents.items() if c not in done and ps <= done)
        if not ready:
            left = sorted(set(parents) - done)
            raise PurgeFailed(
                "cannot order the tables of the DuckDB file for the copy: their foreign keys "
                f"form a cycle ({', '.join(left)}); the old file was kept"
            )
        for c in ready:
            done.add(c)
            order.append(by_label[c])
    return order, self_keys


def _refs_ok(key: _SelfKey, row: str, copied: str) -> str:
    """SQL: the row's self-reference `key` is NULL somewhere (not checked, as the database
    does) or points at a row in `copied`."""
    nulls = " OR ".join(f"{row}.{_quote(c)} IS NULL" for c in key.columns)
    match = " AND ".join(
        f"p.{_quote(r)} = {row}.{_quote(c)}"
        for c, r in zip(key.columns, key.referenced, strict=True)
    )
    return f"({nulls} OR EXISTS (SELECT 1 FROM {copied} p WHERE {match}))"


def _copy_table(
    con: duckdb.DuckDBPyConnection, table: _Table, keys: list[_SelfKey], src: str, dst: str
) -> None:
    cols = ", ".join(_quote(c) for c in table.columns)
    source, target = table.ref(src), table.ref(dst)
    if not keys:
        con.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {source}")
        return
    # By level: each round copies the rows whose every self-reference is NULL or already in
    # the copy (the target holds the copied rows; a foreign key names a unique key there).
    # Source rows are tracked by rowid: the referenced key may be NULL in several rows. The
    # depth of the hierarchy bounds the number of rounds.
    con.execute("CREATE OR REPLACE TEMP TABLE rj_copy_done (rid BIGINT)")
    con.execute("CREATE OR REPLACE TEMP TABLE rj_copy_level (rid BIGINT)")
    left = con.execute(f"SELECT count(*) FROM {source}").fetchone()[0]  # type: ignore[index]
    ready = " AND ".join(_refs_ok(k, "r", target) for k in keys)
    while left:
        con.execute("DELETE FROM rj_copy_level")
        row = con.execute(
            f"INSERT INTO rj_copy_level SELECT r.rowid FROM {source} r WHERE {ready} "
            "AND NOT EXISTS (SELECT 1 FROM rj_copy_done d WHERE d.rid = r.rowid)"
        ).fetchone()
        n = int(row[0]) if row else 0
        if n == 0:
            raise PurgeFailed(
                f"cannot copy {left} row(s) of {table.label} in the order its self-referencing "
                "foreign key needs (a cycle of rows); the old file was kept"
            )
        con.execute(
            f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {source} "
            "WHERE rowid IN (SELECT rid FROM rj_copy_level)"
        )
        con.execute("INSERT INTO rj_copy_done SELECT rid FROM rj_copy_level")
        left -= n
    con.execute("DROP TABLE rj_copy_done")
    con.execute("DROP TABLE rj_copy_level")


def copy_live_data(con: duckdb.DuckDBPyConnection, src: str, dst: str) -> dict[str, int]:
    """Copy the schema and every row of attached database `src` into the empty `dst`; return
    the row count of each table, checked equal in both."""
    con.execute(f"COPY FROM DATABASE {src} TO {dst} (SCHEMA)")
    order, self_keys = copy_order(_tables(con, src), _foreign_keys(con, src))
    counts: dict[str, int] = {}
    for table in order:
        _copy_table(con, table, self_keys.get(table.label, []), src, dst)
        a = con.execute(f"SELECT count(*) FROM {table.ref(src)}").fetchone()
        b = con.execute(f"SELECT count(*) FROM {table.ref(dst)}").fetchone()
        if a != b:
            raise PurgeFailed(
                f"the copy of {table.label} has {b[0] if b else 0} rows, the store "
                f"{a[0] if a else 0}; the old file was kept"
            )
        counts[table.label] = int(a[0]) if a else 0
    return counts
