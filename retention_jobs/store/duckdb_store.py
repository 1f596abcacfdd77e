"""The embedded default: one DuckDB file.

Statements are SQLAlchemy Core, compiled with the PostgreSQL dialect (whose SQL DuckDB
speaks) and `$n` parameters, then run on a plain duckdb connection.
"""

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.compiler import SQLCompiler

from retention_jobs.errors import ConfigError, RunInProgress, StoreUnavailable, rejected_by_duckdb
from retention_jobs.store.base import (
    SYSTEM_SCHEMAS,
    Catalog,
    ColumnInfo,
    ForeignKey,
    Session,
    Store,
    TableInfo,
    safe_ident,
)
from retention_jobs.store.duckdb_copy import copy_live_data, referenced_schema

_DIALECT = postgresql.dialect(paramstyle="numeric_dollar")
CATALOG = "rj_store"


def compile_for_duckdb(stmt: sa.Executable) -> tuple[str, list[Any]]:
    if not isinstance(stmt, sa.ClauseElement):  # every SQLAlchemy statement is one
        raise TypeError(f"not a SQLAlchemy statement: {stmt!r}")
    compiled = stmt.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    if not isinstance(compiled, SQLCompiler):  # DDL constructs are not run through here
        raise TypeError(f"not a DML or query statement: {stmt!r}")
    params = compiled.params
    # a bind named after a column with `%`, a space, `.`... is renamed in the SQL text and in
    # `params` (`we%ird_1` -> `wePird_1`), but not in `positiontup`
    escaped = compiled.escaped_bind_names
    return str(compiled), [params[escaped.get(name, name)] for name in (compiled.positiontup or [])]


def normalise_type(raw: str) -> str:
    t = raw.upper()
    if t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION", "LIST")):
        # nested (VARCHAR[], BIGINT[3], STRUCT(...)): not a string because it starts with
        # VARCHAR; no text strategy, `where` value or LIKE applies to it
        return "other"
    if t.startswith(
        (
            "TINYINT",
            "SMALLINT",
            "INTEGER",
            "BIGINT",
            "HUGEINT",
            "UTINYINT",
            "USMALLINT",
            "UINTEGER",
            "UBIGINT",
            "INT",
        )
    ):
        return "integer"
    if t.startswith(("DOUBLE", "FLOAT", "REAL")):
        return "float"
    if t.startswith(("DECIMAL", "NUMERIC")):
        return "decimal"
    if t.startswith(("VARCHAR", "TEXT", "CHAR", "STRING")):
        return "string"
    if t == "DATE":
        return "date"
    if t in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
        return "timestamptz"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    if t == "BOOLEAN":
        return "boolean"
    if t in ("BLOB", "BYTEA"):
        return "binary"
    return "other"


def enum_labels(raw: str) -> tuple[str, ...] | None:
    """The labels of DuckDB's `ENUM('a', 'b''c')` type name, None for any other type."""
    if not raw.startswith("ENUM("):
        return None
    return tuple(m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", raw))


def _index_words(expressions: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Every word of an index's expressions (`[email]`, `['(lower(Note))', a]`) and its
    lower-case form: DuckDB gives them as text without quoting, so a column counts as covered
    when its name is one of the words (a function named like a column only refuses more)."""
    text = expressions if isinstance(expressions, str) else " ".join(expressions)
    words = re.findall(r"[^\W\d][\w$]*", text)
    return tuple(words) + tuple(w.lower() for w in words)


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _target(stmt: Any) -> str:
    """The table a DML statement writes to (`schema.table`), for a refusal's message."""
    table = getattr(stmt, "table", None)
    name = getattr(table, "name", None)
    if not isinstance(name, str):
        return ""
    schema = getattr(table, "schema", None)
    return f"{schema}.{name}" if schema else name


@contextlib.contextmanager
def _refusals(where: str = "") -> Iterator[None]:
    """DuckDB's errors, without DuckDB's text: a constraint error quotes the key (`Duplicate
    key "email: ..."`), a conversion error the value. A lost connection may be retried."""
    try:
        yield
    except duckdb.ConnectionException:
        raise StoreUnavailable("lost the DuckDB connection") from None
    except duckdb.Error as e:
        raise rejected_by_duckdb(e, where) from None


class DuckDBSession(Session):
    def __init__(self, con: duckdb.DuckDBPyConnection, lock=None):
        self.con = con
        self._lock = lock

    def _run(self, stmt: sa.Executable | str, params: Any = None) -> duckdb.DuckDBPyConnection:
        sql, args = (stmt, params or []) if isinstance(stmt, str) else compile_for_duckdb(stmt)
        with _refusals(_target(stmt)):
            return self.con.execute(sql, args)

    def execute(self, stmt: sa.Executable | str, params: Any = None) -> int:
        cur = self._run(stmt, params)
        # DuckDB returns the affected row count as a one-row result of DML statements;
        # reading it also finishes the result, which the next statement needs.
        try:
            row = cur.fetchone()
        except duckdb.InvalidInputException:
            return -1
        return int(row[0]) if row and isinstance(row[0], int) else -1

    def fetchall(self, stmt: sa.Executable) -> list[tuple]:
        return self._run(stmt).fetchall()

    def arrow(self, stmt: sa.Executable) -> pa.Table:
        sql, args = compile_for_duckdb(stmt)
        with _refusals():
            return self.con.sql(sql, params=args).to_arrow_table()

    def stage(self, name: str, data: pa.Table) -> sa.TableClause:
        self.con.register("_staging_input", data)
        try:
            self.con.execute(
                f'CREATE OR REPLACE TEMP TABLE "{safe_ident(name)}" AS SELECT * FROM _staging_input'
            )
        finally:
            self.con.unregister("_staging_input")
        return sa.table(name, *(sa.column(c) for c in data.column_names))

    def stage_query(self, name: str, query: sa.Select) -> sa.TableClause:
        sql, args = compile_for_duckdb(query)
        with _refusals():
            self.con.execute(f'CREATE OR REPLACE TEMP TABLE "{safe_ident(name)}" AS {sql}', args)
        return sa.table(name, *(sa.column(c.name) for c in query.selected_columns))

    def drop_stage(self, name: str) -> None:
        self.con.execute(f'DROP TABLE IF EXISTS temp."{safe_ident(name)}"')

    def append(self, target: sa.TableClause, data: pa.Table) -> int:
        """Insert straight from the Arrow table (a replacement scan): no temporary copy."""
        cols = ", ".join(_quote(c) for c in data.column_names)
        name = (
            f"{_quote(target.schema)}.{_quote(target.name)}"
            if target.schema
            else _quote(target.name)
        )
        self.con.register("_append_input", data)
        try:
            with _refusals(name):
                self.con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _append_input")
        finally:
            self.con.unregister("_append_input")
        return data.num_rows

    def begin(self) -> None:
        self.con.execute("BEGIN TRANSACTION")

    def commit(self) -> None:
        with _refusals():
            self.con.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.execute("ROLLBACK")

    def close(self) -> None:
        # Drop the native connection, not only close it: a closed session object can outlive
        # its `with` block in someone else's keeping (Dagster's records copy the locals of the
        # frame that first builds one), and DuckDB objects alive at exit are reported as leaks.
        con = self.__dict__.pop("con", None)
        if con is not None:
            con.close()
        if self._lock is not None:
            self._lock.close()  # releases the shared lock
            self._lock = None

    def __getattr__(self, name: str) -> Any:
        if name == "con":
            raise RuntimeError("this DuckDB session is closed; open a new one with store.connect()")
        raise AttributeError(name)


# DuckDB settings an operator sets from the environment (docs/operations.md, docs/scaling.md).
# DuckDB keeps the blocks it read up to `memory_limit` (80 % of RAM by default), so without
# one a run's RSS follows the table's size, not the batch size.
SETTING_ENV = {
    "memory_limit": "RETENTION_DUCKDB_MEMORY_LIMIT",
    "threads": "RETENTION_DUCKDB_THREADS",
    "checkpoint_threshold": "RETENTION_DUCKDB_CHECKPOINT_THRESHOLD",
}

# DuckDB checkpoints when its WAL passes 16 MB; a run commits every batch (its rows, markers
# and erased-value fingerprints), so at the default each batch of a large anonymisation ended
# in a checkpoint that rewrote the touched row groups again: 15 of 42 s at 10M rows. At 256 MB
# a checkpoint comes every few batches (29 s; RSS 1.3 GB with memory_limit 1GB); a crash
# replays at most that much WAL. See docs/performance.md.
DEFAULT_SETTINGS = {"checkpoint_threshold": "256MB"}


class DuckDBStore(Store):
    kind = "duckdb"

    def __init__(self, path: str | Path, settings: dict[str, str] | None = None):
        self.path = Path(path)
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(
            {
                name: os.environ[env]
                for name, env in SETTING_ENV.items()
                if os.environ.get(env, "").strip()
            }
        )
        self.settings.update(settings or {})
        """DuckDB settings for every session: the defaults above, then `memory_limit`, `threads`
        and `checkpoint_threshold` from the environment, then the caller's, e.g.
        {"force_compression": "uncompressed"} in tests that search the file's bytes."""

    def describe(self) -> str:
        return f"duckdb:{self.path}"

    def session(self, read_only: bool = False) -> DuckDBSession:
        if read_only and not self.path.exists():
            raise ConfigError(
                f"the DuckDB store {self.path} does not exist; run `retention-jobs demo` to build "
                "the demo warehouse, or pass --store"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A shared lock for the session's life: compaction takes it exclusively, so it never
        # swaps the file under an open connection.
        lock = self._lock(fcntl.LOCK_SH)
        # Attach under a fixed catalog name: a file named like one of its schemas
        # (billing.duckdb holding schema billing) would make `billing.customers` ambiguous.
        con = duckdb.connect(":memory:")
        try:
            con.execute(
                f"ATTACH ? AS {CATALOG} {'(READ_ONLY)' if read_only else ''}", [str(self.path)]
            )
            con.execute(f"USE {CATALOG}")
            self._apply_settings(con)
        except duckdb.IOException as e:
            con.close()
            lock.close()
            if "conflicting lock" in str(e).lower():
                # another process has the file open for writing: a run (DuckDB takes one
                # writer process); say so as PostgreSQL's run lock does
                pid = re.search(r"PID (\d+)", str(e))
                who = f" (pid {pid.group(1)})" if pid else ""
                raise RunInProgress(
                    f"another process{who} holds the DuckDB file {self.path} for writing, "
                    "most likely a run: one run per store at a time, so nothing was changed; "
                    "run again when it has finished"
                ) from None
            raise StoreUnavailable(f"cannot open {self.path}: {e}") from e
        except ConfigError:
            con.close()
            lock.close()
            raise
        session = DuckDBSession(con, lock)
        if not read_only:
            # holds queued while another process had the file (`hold_queue`) take effect at the
            # first writable open, before anything else can change a row
            from retention_jobs.hold_queue import import_queued

            try:
                import_queued(self, session)
            except BaseException:
                session.close()
                raise
        return session

    def _apply_settings(
        self, con: duckdb.DuckDBPyConnection, only: tuple[str, ...] | None = None
    ) -> None:
        for name, value in self.settings.items():
            if only is not None and name not in only:
                continue
            try:
                con.execute(f"SET {safe_ident(name)} = ?", [value])
            except (
                duckdb.InvalidInputException,
                duckdb.ParserException,
                duckdb.CatalogException,
                duckdb.ConversionException,
                duckdb.OutOfRangeException,
            ) as e:
                source = SETTING_ENV.get(name)
                where = (
                    f"environment variable {source}"
                    if source and os.environ.get(source) == value
                    else "store settings"
                )
                raise ConfigError(
                    f"DuckDB refused the setting {name} = {value!r} (from the {where}): {str(e).splitlines()[0]}; "
                    + (
                        "use a size such as 2GB or 512MB"
                        if name in ("memory_limit", "checkpoint_threshold")
                        else "use a whole number of threads"
                        if name == "threads"
                        else "fix or remove the setting"
                    )
                ) from e

    def _lock(self, mode: int):
        f = open(str(self.path) + ".lock", "a+")  # noqa: SIM115 - held for the session's life
        fcntl.flock(f, mode)
        return f

    def raw_blobs(self, session: Session, tables: list[str]):
        """The whole database file and its WAL: deleted values hide in freed blocks anywhere."""
        for p in (self.path, Path(str(self.path) + ".wal")):
            if p.exists():
                yield str(p.name), p.read_bytes()

    def purge(self, tables: list[str], full: bool = False) -> dict[str, Any]:
        """Copy the live database into a fresh file and swap it in atomically.

        DELETE, UPDATE, CHECKPOINT and VACUUM leave old values in freed blocks; only a copy of
        the live data into a new file drops them. Crash-safe: the copy is fsynced before an
        atomic rename, so the path holds either the old or the new complete file.
        """
        t0 = time.perf_counter()
        before = self.path.stat().st_size
        tmp = self.path.with_name(self.path.name + ".compact")
        lock = self._lock(fcntl.LOCK_EX)
        try:
            for leftover in (tmp, Path(str(tmp) + ".wal")):
                leftover.unlink(missing_ok=True)  # from a compaction that crashed
            con = duckdb.connect(str(self.path))
            con.execute("CHECKPOINT")  # fold the WAL into the file: the copy must see everything
            con.close()
            wal = Path(str(self.path) + ".wal")
            if wal.exists() and wal.stat().st_size:
                raise StoreUnavailable(
                    f"{self.path}.wal is not empty after a checkpoint; another writer?"
                )
            con = duckdb.connect(":memory:")
            try:
                self._apply_settings(
                    con, only=tuple(SETTING_ENV)
                )  # the copy stays within the same memory
                con.execute("ATTACH ? AS rj_src (READ_ONLY)", [str(self.path)])
                con.execute("ATTACH ? AS rj_dst", [str(tmp)])
                # not DuckDB's `COPY FROM DATABASE` alone: its row order can break a
                # self-referencing foreign key (duckdb_copy.py)
                with _refusals():
                    copy_live_data(con, "rj_src", "rj_dst")
                con.execute("DETACH rj_dst")
                con.execute("DETACH rj_src")
            finally:
                con.close()
            Path(str(tmp) + ".wal").unlink(missing_ok=True)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            wal.unlink(missing_ok=True)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            lock.close()
        return {
            "method": "compact",
            "bytes_before": before,
            "bytes_after": self.path.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def ddl_types(self) -> dict[str, str]:
        return {
            "text": "VARCHAR",
            "int": "BIGINT",
            "ts": "TIMESTAMP",
            "bool": "BOOLEAN",
            "date": "DATE",
            "float": "DOUBLE",
        }

    def catalog(self, session: Session) -> Catalog:
        con = session.con  # type: ignore[attr-defined]
        cols = con.execute(
            "SELECT schema_name, table_name, column_name, data_type, is_nullable, character_maximum_length "
            "FROM duckdb_columns() WHERE database_name = current_database() AND NOT internal "
            "ORDER BY schema_name, table_name, column_index"
        ).fetchall()
        cons = con.execute(
            "SELECT schema_name, table_name, constraint_type, constraint_column_names, constraint_name, "
            "constraint_text, referenced_table, referenced_column_names FROM duckdb_constraints() "
            "WHERE database_name = current_database()"
        ).fetchall()
        views = {
            (s, t)
            for s, t in con.execute(
                "SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = current_database()"
            ).fetchall()
        }
        indexed: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for schema, table, iname, exprs in con.execute(
            "SELECT schema_name, table_name, index_name, expressions FROM duckdb_indexes() "
            "WHERE database_name = current_database()"
        ).fetchall():
            indexed.setdefault(f"{schema}.{table}", []).append((iname, _index_words(exprs)))
        unique: set[tuple[str, str, str]] = set()
        pks: dict[str, tuple[str, ...]] = {}
        fks: dict[str, list[ForeignKey]] = {}
        for schema, table, ctype, ccols, cname, ctext, rtable, rcols in cons:
            name = f"{schema}.{table}"
            if ctype in ("PRIMARY KEY", "UNIQUE", "FOREIGN KEY"):
                label = cname or f"{ctype} ({', '.join(ccols)})"
                indexed.setdefault(name, []).append((label, tuple(ccols)))
            if ctype in ("PRIMARY KEY", "UNIQUE") and len(ccols) == 1:
                unique.add((schema, table, ccols[0]))
            if ctype == "PRIMARY KEY":
                pks[name] = tuple(ccols)
            elif ctype == "FOREIGN KEY":
                ref_schema = referenced_schema(ctext, schema)
                fks.setdefault(name, []).append(
                    ForeignKey(cname, name, tuple(ccols), f"{ref_schema}.{rtable}", tuple(rcols))
                )
        tables: dict[str, TableInfo] = {}
        by_table: dict[str, dict[str, ColumnInfo]] = {}
        for schema, table, column, dtype, nullable, maxlen in cols:
            if schema in SYSTEM_SCHEMAS or (schema, table) in views:
                continue
            by_table.setdefault(f"{schema}.{table}", {})[column] = ColumnInfo(
                name=column,
                type=normalise_type(dtype),
                raw_type=dtype,
                nullable=bool(nullable),
                max_length=maxlen,
                unique=(schema, table, column) in unique,
                labels=enum_labels(dtype),
            )
        for name, columns in by_table.items():
            covered = tuple(
                (iname, tuple(c for c in columns if c in words or c.lower() in words))
                for iname, words in indexed.get(name, [])
            )
            tables[name] = TableInfo(
                name, columns, pks.get(name, ()), tuple(fks.get(name, [])), covered
            )
        return Catalog(tables)
