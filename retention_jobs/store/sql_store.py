"""A store behind a SQLAlchemy URL: PostgreSQL (psycopg 3) for now.

Same interface as the DuckDB store. Statements are SQLAlchemy Core, compiled by the
connection's own dialect with bound values. A session is one connection in "commit as you go"
mode: outside `begin()` each operation commits on its own (as DuckDB autocommits), inside it
nothing commits until `commit()`. Keys travel as Arrow: `stage` loads an Arrow table into a
temporary table with `COPY ... FROM STDIN` (CSV written by Arrow, no per-row INSERTs), and
`arrow` reads a query through a server-side cursor in chunks.

No message raised from here carries the password of the URL: connection errors are wrapped
into `StoreUnavailable` with the masked URL, and bound parameters (which may be personal data)
are hidden from SQLAlchemy's error texts.
"""

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.engine.reflection import ObjectKind
from sqlalchemy.pool import NullPool

from retention_jobs.errors import (
    ConfigError,
    RunInProgress,
    StoreRejected,
    StoreUnavailable,
    rejected_by_postgres,
)
from retention_jobs.store import mask_url, url_secrets
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

FETCH_ROWS = 10_000
"""Rows per round trip of a server-side cursor (and per chunk of the Arrow result)."""

COPY_ROWS = 50_000
"""Rows per CSV chunk written to COPY."""

CONNECT_TIMEOUT = 10

RAW_CHUNK = 16 * 1024 * 1024
"""Bytes per read of a table file (a multiple of the 8 kB page: a row never spans two reads)."""

SEGMENT_BYTES = 1024 * 1024 * 1024
"""PostgreSQL splits a relation into files of 1 GB (`path`, `path.1`, ...)."""

RUN_LOCK = "retention_jobs.run"
"""The name of the session-level advisory lock a run holds: one run per database at a time."""


def advisory_key(name: str) -> int:
    """A fixed, non-negative 64-bit advisory lock key for `name` (stable across versions)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") & (2**63 - 1)


# --- passwords -------------------------------------------------------------------------------


def masked(url: str) -> str:
    """`mask_url`: kept under this name for callers that import it from here."""
    return mask_url(url)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def _first_line(exc: BaseException) -> str:
    """The driver's message of a database error, without SQLAlchemy's statement/parameter text."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(orig).__name__


# --- types -----------------------------------------------------------------------------------


def normalise_type(t: sa.types.TypeEngine) -> str:
    """integer, float, decimal, string, date, timestamp, timestamptz, boolean, binary or other."""
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.Float):  # before Numeric: Float is a Numeric
        return "float"
    if isinstance(t, sa.Numeric):
        return "decimal"
    if isinstance(t, sa.DateTime):
        return "timestamptz" if t.timezone else "timestamp"
    if isinstance(t, sa.Date):
        return "date"
    if isinstance(t, sa.Enum):
        return "other"
    if isinstance(t, sa.String):
        return "string"
    if isinstance(t, sa.LargeBinary):
        return "binary"
    return "other"


def pg_type_for_arrow(t: pa.DataType) -> str:
    """The PostgreSQL column type that holds an Arrow column of type `t`."""
    if pa.types.is_dictionary(t):
        return pg_type_for_arrow(t.value_type)
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return "SMALLINT"
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "INTEGER"
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return "BIGINT"
    if pa.types.is_uint64(t):
        return "NUMERIC(20)"
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return "REAL"
    if pa.types.is_float64(t):
        return "DOUBLE PRECISION"
    if pa.types.is_decimal(t):
        return f"NUMERIC({t.precision}, {t.scale})"
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_null(t)
    ):
        return "TEXT"
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return "BYTEA"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP WITHOUT TIME ZONE"
    if pa.types.is_time(t):
        return "TIME"
    raise TypeError(f"cannot stage an Arrow column of type {t} in PostgreSQL")


def sa_type_for_arrow(t: pa.DataType) -> sa.types.TypeEngine:
    pg = pg_type_for_arrow(t)
    if pg in ("SMALLINT", "INTEGER", "BIGINT"):
        return sa.BigInteger()
    types: dict[str, sa.types.TypeEngine] = {
        "BOOLEAN": sa.Boolean(),
        "REAL": sa.Float(),
        "DOUBLE PRECISION": sa.Float(),
        "TEXT": sa.String(),
        "BYTEA": sa.LargeBinary(),
        "DATE": sa.Date(),
        "TIME": sa.Time(),
        "TIMESTAMP WITH TIME ZONE": sa.DateTime(timezone=True),
        "TIMESTAMP WITHOUT TIME ZONE": sa.DateTime(),
    }
    return types.get(pg, sa.Numeric())


def _csv_ready(table: pa.Table) -> pa.Table:
    """Columns the Arrow CSV writer can write in a form PostgreSQL's CSV COPY reads back."""
    cols, names = [], []
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if pa.types.is_dictionary(t):
            col, t = col.cast(t.value_type), t.value_type
        if pa.types.is_string_view(t):
            col = col.cast(pa.large_string())
        elif (
            pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
            or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t)
        ):
            col = pa.array(
                [None if v is None else "\\x" + v.hex() for v in col.to_pylist()], pa.large_string()
            )
        elif pa.types.is_uint64(t):
            col = col.cast(pa.decimal128(20, 0))
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


# Arrow types of the columns of a result, from the PostgreSQL type OIDs in the cursor
# description (so an all-NULL column still gets its real type). Others are inferred per chunk.
_ARROW_BY_OID: dict[int, pa.DataType] = {
    16: pa.bool_(),
    17: pa.binary(),
    18: pa.string(),
    19: pa.string(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    25: pa.string(),
    26: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    1042: pa.string(),
    1043: pa.string(),
    1082: pa.date32(),
    1083: pa.time64("us"),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
    1186: pa.duration("us"),
}
_JSON_OIDS = {114, 3802}
_UUID_OID = 2950
_BPCHAR_OID = 1042
_NUMERIC_OID = 1700


def _arrow_type(col: Any) -> pa.DataType | None:
    oid = getattr(col, "type_code", None)
    if oid in _ARROW_BY_OID:
        return _ARROW_BY_OID[oid]
    if oid in _JSON_OIDS or oid == _UUID_OID:
        return pa.string()
    if oid == _NUMERIC_OID:
        precision, scale = getattr(col, "precision", None), getattr(col, "scale", None)
        if precision:
            return (
                pa.decimal128(precision, scale or 0)
                if precision <= 38
                else pa.decimal256(precision, scale or 0)
            )
    return None


def _to_arrow(values: list, t: pa.DataType | None, oid: int | None) -> pa.Array:
    if oid == _BPCHAR_OID:
        # CHAR(n) pads with blanks that PostgreSQL itself treats as insignificant ('a'::char(3)
        # = 'a'); without them a value hashes, fakes and compares as in any other store
        values = [None if v is None else v.rstrip(" ") for v in values]
    elif oid in _JSON_OIDS:
        values = [None if v is None else json.dumps(v, default=str, sort_keys=True) for v in values]
    elif oid == _UUID_OID:
        values = [None if v is None else str(v) for v in values]
    try:
        return pa.array(values, type=t, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if t is not None and pa.types.is_decimal(t):
            return pa.array(values)
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _unify(chunks: list[pa.Array]) -> pa.ChunkedArray:
    types = {c.type for c in chunks if not pa.types.is_null(c.type)}
    if not types:
        return pa.chunked_array(chunks, pa.null()) if chunks else pa.chunked_array([], pa.null())
    if len(types) == 1:
        t = types.pop()
        return pa.chunked_array([c.cast(t) if pa.types.is_null(c.type) else c for c in chunks], t)
    if all(pa.types.is_decimal(t) for t in types):
        scale = max(t.scale for t in types)
        digits = max(t.precision - t.scale for t in types)
        wide = (
            pa.decimal128(digits + scale, scale)
            if digits + scale <= 38
            else pa.decimal256(min(76, digits + scale), scale)
        )
        return pa.chunked_array([c.cast(wide) for c in chunks], wide)
    return pa.chunked_array(
        [
            pa.array([None if v is None else str(v) for v in c.to_pylist()], pa.string())
            for c in chunks
        ],
        pa.string(),
    )


# --- session ---------------------------------------------------------------------------------


class SqlSession(Session):
    def __init__(self, store: "SqlStore", conn: Connection, read_only: bool):
        self.store = store
        self.conn = conn
        self.read_only = read_only
        self._explicit = False

    # -- plumbing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _op(self, temp_tables: bool = False) -> Iterator[Connection]:
        """Run one operation: outside `begin()` it commits (or rolls back) on its own.

        `temp_tables`: the operation only creates, fills or drops this session's temporary
        tables. PostgreSQL refuses CREATE/DROP even of a temporary table in a read-only
        transaction, so in a read-only session such an operation runs in a transaction of its
        own that starts READ WRITE (as DuckDB lets a read-only connection keep temp tables).
        """
        if temp_tables and self.read_only:
            if self._explicit:
                raise RuntimeError("a read-only session stages outside transactions only")
            if self.conn.in_transaction():
                self.conn.commit()
        try:
            if temp_tables and self.read_only:
                self.conn.exec_driver_sql("SET TRANSACTION READ WRITE")
            yield self.conn
        except (sa.exc.DBAPIError, psycopg.Error) as e:
            # the driver's text can quote the row (`Failing row contains (...)`) or a key
            # (`Key (email)=(...)`): only its structured diagnostics leave this method
            self._after_error()
            orig = getattr(e, "orig", None) or e
            sqlstate = str(getattr(orig, "sqlstate", None) or "")
            if (
                getattr(e, "connection_invalidated", False)
                or (isinstance(orig, psycopg.OperationalError) and not sqlstate)
                or sqlstate.startswith(("08", "57P"))
            ):
                raise StoreUnavailable(
                    f"lost the connection to {self.store.describe()}: "
                    f"{type(orig).__name__} (SQLSTATE {sqlstate or 'none'})"
                ) from None
            raise rejected_by_postgres(e) from None
        except BaseException:
            self._after_error()
            raise
        if not self._explicit and self.conn.in_transaction():
            self.conn.commit()

    def _after_error(self) -> None:
        if not self._explicit:
            with contextlib.suppress(Exception):
                self.conn.rollback()

    def _exec(
        self, stmt: sa.Executable | str, params: Any = None, **options: Any
    ) -> sa.CursorResult:
        if isinstance(stmt, str):
            return self.conn.exec_driver_sql(
                stmt, params if params is not None else {}, options or None
            )
        return self.conn.execute(stmt, params, execution_options=options or None)

    # -- the interface -------------------------------------------------------------------

    def execute(self, stmt: sa.Executable | str, params: Any = None) -> int:
        """Run a statement. A string runs as written; with `params` it uses the driver's
        `%(name)s` placeholders (and `%%` for a literal percent sign)."""
        if isinstance(stmt, str) and params is None:
            stmt = stmt.replace("%", "%%")  # psycopg reads placeholders in every statement
        with self._op():
            return self._exec(stmt, params, preserve_rowcount=True).rowcount

    def serialize(self, name: str) -> None:
        """A transaction-scoped advisory lock: concurrent writers (parallel workers, a request
        processed during the nightly run) append to the hash-chained ledger one at a time."""
        self.fetchall(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.literal(name)))))

    def fetchall(self, stmt: sa.Executable) -> list[tuple]:
        with self._op():
            return [tuple(r) for r in self._exec(stmt).all()]

    def arrow(self, stmt: sa.Executable) -> pa.Table:
        """The result as Arrow, read through a server-side cursor `FETCH_ROWS` rows at a time
        (the driver never holds more than one chunk of Python rows)."""
        with self._op():
            result = self._exec(stmt, stream_results=True, yield_per=FETCH_ROWS)
            names = list(result.keys())
            description = result.cursor.description or []
            oids = [getattr(d, "type_code", None) for d in description]
            types = [_arrow_type(d) for d in description]
            chunks: list[list[pa.Array]] = [[] for _ in names]
            for part in result.partitions():
                columns = list(zip(*part, strict=True)) if part else [()] * len(names)
                for i, values in enumerate(columns):
                    chunks[i].append(_to_arrow(list(values), types[i], oids[i]))
            result.close()
        if not any(chunks):
            return pa.table(
                {n: pa.array([], t or pa.null()) for n, t in zip(names, types, strict=True)}
            )
        return pa.table(
            [
                _unify(c) if c else pa.chunked_array([], types[i] or pa.null())
                for i, c in enumerate(chunks)
            ],
            names=names,
        )

    def stage(self, name: str, data: pa.Table) -> sa.TableClause:
        """A temporary table holding `data`, filled with one `COPY ... FROM STDIN` (CSV)."""
        ident = safe_ident(name)
        quote = self.conn.dialect.identifier_preparer.quote
        cols = ", ".join(
            f"{quote(c)} {pg_type_for_arrow(t)}"
            for c, t in zip(data.column_names, data.schema.types, strict=True)
        )
        col_list = ", ".join(quote(c) for c in data.column_names)
        ready = _csv_ready(data)
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
        with self._op(temp_tables=True):
            self._exec(f"DROP TABLE IF EXISTS pg_temp.{quote(ident)}")
            self._exec(f"CREATE TEMP TABLE {quote(ident)} ({cols}) ON COMMIT PRESERVE ROWS")
            self._copy(f"pg_temp.{quote(ident)} ({col_list})", ready, options)
        return sa.table(
            name,
            *(
                sa.column(c, sa_type_for_arrow(t))
                for c, t in zip(data.column_names, data.schema.types, strict=True)
            ),
        )

    def _copy(self, target: str, ready: pa.Table, options: pacsv.WriteOptions) -> None:
        if not ready.num_rows:
            return
        raw = self.conn.connection.driver_connection
        if raw is None:
            raise StoreUnavailable(f"{self.store.describe()}: the connection is closed")
        with raw.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN WITH (FORMAT csv)") as copy:
            for batch in ready.to_batches(max_chunksize=COPY_ROWS):
                sink = pa.BufferOutputStream()
                pacsv.write_csv(pa.Table.from_batches([batch], ready.schema), sink, options)
                copy.write(sink.getvalue().to_pybytes())

    def append(self, target: sa.TableClause, data: pa.Table) -> int:
        """Rows of `data` into `target` with one `COPY` straight into the table (no temporary
        copy): the values are parsed as the target's column types, in the open transaction."""
        quote = self.conn.dialect.identifier_preparer.quote
        name = (
            f"{quote(target.schema)}.{quote(target.name)}" if target.schema else quote(target.name)
        )
        col_list = ", ".join(quote(c) for c in data.column_names)
        with self._op():
            if not self.conn.in_transaction():
                self.conn.begin()  # the COPY goes through the driver: let the session own its transaction
            self._copy(
                f"{name} ({col_list})",
                _csv_ready(data),
                pacsv.WriteOptions(include_header=False, quoting_style="all_valid"),
            )
        return data.num_rows

    def stage_query(self, name: str, query: sa.Select) -> sa.TableClause:
        """A temporary table from a query that runs inside the database (values stay bound)."""
        ident = safe_ident(name)
        quote = self.conn.dialect.identifier_preparer.quote
        compiled = query.compile(
            dialect=self.conn.dialect, compile_kwargs={"render_postcompile": True}
        )
        with self._op(temp_tables=True):
            self._exec(f"DROP TABLE IF EXISTS pg_temp.{quote(ident)}")
            self._exec(
                f"CREATE TEMP TABLE {quote(ident)} ON COMMIT PRESERVE ROWS AS {compiled}",
                dict(compiled.params),
            )
        return sa.table(name, *(sa.column(c.name, c.type) for c in query.selected_columns))

    def drop_stage(self, name: str) -> None:
        quote = self.conn.dialect.identifier_preparer.quote
        with self._op(temp_tables=True):
            self._exec(f"DROP TABLE IF EXISTS pg_temp.{quote(safe_ident(name))}")

    def begin(self) -> None:
        if self._explicit:
            raise RuntimeError("a transaction is already open on this session")
        if self.conn.in_transaction():
            self.conn.commit()
        with self._op():
            self.conn.begin()
        self._explicit = True

    def commit(self) -> None:
        self._explicit = False
        with self._op():
            self.conn.commit()

    def rollback(self) -> None:
        self._explicit = False
        with contextlib.suppress(Exception):
            self.conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.rollback()
        with contextlib.suppress(Exception):
            self.conn.close()


def _qualified(s: "SqlSession", table: str) -> str:
    quote = s.conn.dialect.identifier_preparer.quote
    schema, _, short = table.rpartition(".")
    return f"{quote(schema)}.{quote(short)}" if schema else quote(short)


# --- store -----------------------------------------------------------------------------------


class SqlStore(Store):
    """A database behind a SQLAlchemy URL, e.g. `postgresql+psycopg://user@host:5432/db`."""

    kind = "postgresql"

    def __init__(self, url: str):
        self._masked = masked(url)
        try:
            parsed = sa.engine.make_url(url)
        except Exception:
            raise ConfigError(f"not a database URL: {self._masked}") from None
        self._secrets = url_secrets(url)
        if "@" in (parsed.host or "") or "@" in (parsed.database or ""):
            raise ConfigError(
                f"the user or password of {self._masked} holds a raw '@': percent-encode it as %40 "
                "(SQLAlchemy would read part of the password as the host)"
            )
        if parsed.get_backend_name() != "postgresql":
            raise ConfigError(
                f"SQL stores support PostgreSQL only so far (postgresql+psycopg://user@host/db), not "
                f"{parsed.get_backend_name()}: {self._masked}"
            )
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we ship
        elif parsed.drivername != "postgresql+psycopg":
            raise ConfigError(
                f"use the psycopg 3 driver (postgresql+psycopg://...), not {parsed.drivername}: "
                f"{self._masked}"
            )
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in parsed.query:
            connect_args["application_name"] = "retention-jobs"
        # The planner's predicates are large expression trees evaluated once per row: LLVM JIT
        # compiles them for seconds per statement (a 40 ms count took 6 s), so it is off unless
        # the URL sets it (`?options=-c%20jit%3Don`).
        options = parsed.query.get("options", "")
        if isinstance(options, str) and "jit" not in options:
            connect_args["options"] = f"{options} -c jit=off".strip()
        try:
            # NullPool: a session is a connection of its own, closed with it (temp tables and
            # session settings never leak into the next session)
            self.engine = sa.create_engine(
                parsed, poolclass=NullPool, hide_parameters=True, connect_args=connect_args
            )
        except ImportError as e:
            raise ConfigError(
                f"the database driver is not installed ({e.name}): {self._masked}"
            ) from None
        except Exception as e:
            raise ConfigError(f"cannot use {self._masked}: {self.scrub(_first_line(e))}") from None
        self.kind = self.engine.dialect.name

    def describe(self) -> str:
        return self._masked

    def scrub(self, text: str) -> str:
        """`text` with the password (if it appears at all) replaced."""
        return _scrub(text, self._secrets)

    def session(self, read_only: bool = False) -> SqlSession:
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as e:
            raise StoreUnavailable(
                f"cannot connect to {self.describe()}: {self.scrub(_first_line(e))}"
            ) from None
        except Exception as e:
            raise StoreUnavailable(
                f"cannot connect to {self.describe()}: {type(e).__name__}: {self.scrub(_first_line(e))}"
            ) from None
        session = SqlSession(self, conn, read_only)
        if read_only:
            session.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        return session

    @contextlib.contextmanager
    def run_lock(self) -> Iterator[None]:
        """One run per database at a time: a session-level advisory lock (`pg_try_advisory_lock`
        on `RUN_LOCK`'s key) on a connection of its own, held until the block ends (the purge
        included). The connection idles outside any transaction meanwhile, so it holds back no
        VACUUM. A second run is refused at once with `RunInProgress`, before it changes
        anything (it used to wait on row locks and then fail on a concurrent CREATE TABLE)."""
        key = advisory_key(RUN_LOCK)
        with self.connect() as s:
            if not s.scalar(sa.select(sa.func.pg_try_advisory_lock(key))):
                holder = s.scalar(
                    sa.text(
                        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                        "LIMIT 1"
                    ).bindparams(hi=key >> 32, lo=key & 0xFFFFFFFF)
                )
                who = f" (database session pid {holder})" if holder is not None else ""
                raise RunInProgress(
                    f"another run holds {self.describe()}{who}: one run per store at a time, so "
                    "nothing was changed; run again when it has finished"
                )
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    s.scalar(sa.select(sa.func.pg_advisory_unlock(key)))

    def ddl_types(self) -> dict[str, str]:
        return {
            "text": "TEXT",
            "int": "BIGINT",
            "ts": "TIMESTAMP",
            "bool": "BOOLEAN",
            "date": "DATE",
            "float": "DOUBLE PRECISION",
        }

    def vacuum(self, session: Session, tables: list[str], full: bool = False) -> None:
        """`VACUUM` each table, or `VACUUM FULL`, which rewrites it (and its indexes and TOAST)
        into new files and unlinks the old ones. Runs outside any transaction (autocommit)."""
        s: SqlSession = session  # type: ignore[assignment]
        if s._explicit:
            raise RuntimeError("VACUUM cannot run inside a transaction; commit first")
        if s.conn.in_transaction():
            s.conn.commit()
        previous = s.conn.default_isolation_level
        s.conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            for table in tables:
                with s._op():
                    s._exec(
                        f"VACUUM {'(FULL, ANALYZE)' if full else '(ANALYZE)'} {_qualified(s, table)}"
                    )
        finally:
            s.conn.execution_options(isolation_level=previous)

    def purge(self, tables: list[str], full: bool = False) -> dict[str, Any]:
        """After deletions: VACUUM the changed tables (`full`: VACUUM FULL, which rewrites them
        into fresh files, so deleted rows leave the table's files; it locks each table while it
        runs). Returns the method, the tables' total size before and after, and the time.

        VACUUM keeps every row version that a transaction still open in this database could see:
        a report, an idle-in-transaction session, a prepared transaction or a replication slot
        older than the run's changes holds the erased values in the table files. The purge
        first waits (up to `RETENTION_PURGE_WAIT_SECONDS`, default 120) for such holders to
        finish, vacuums, and then looks again: any holder still there is reported under
        `held_back_by` (process ids and kinds, never a query text) and the purge is not
        complete; the next run purges these tables again."""
        t0 = time.perf_counter()
        with self.connect() as session:
            s = cast(SqlSession, session)  # self.session() makes SqlSessions
            present = [
                t for t in tables if s.scalar(sa.select(sa.func.to_regclass(_qualified(s, t))))
            ]
            # VACUUM skips, with only a warning, a table the role neither owns nor owns the
            # database of: say so instead of reporting a purge that did not happen
            allowed = [
                t
                for t in present
                if s.scalar(
                    sa.text(
                        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') OR pg_has_role(current_user, d.datdba, 'USAGE') "
                        "FROM pg_class c, pg_database d WHERE c.oid = to_regclass(:t) AND d.datname = current_database()"
                    ).bindparams(t=_qualified(s, t))
                )
            ]
            # every change made before the purge started has an xid below this one
            horizon = str(s.scalar(sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")))
            waited = _wait_for_horizon(s, horizon, purge_wait_seconds()) if allowed else 0.0
            before = self._bytes(s, allowed)
            self.vacuum(s, allowed, full=full)
            after = self._bytes(s, allowed)
            # a holder still older than the horizon now was there while VACUUM ran
            holders = horizon_holders(s, horizon) if allowed else []
        result: dict[str, Any] = {
            "method": "vacuum-full" if full else "vacuum",
            "tables": len(allowed),
            "bytes_before": before,
            "bytes_after": after,
            "seconds": round(time.perf_counter() - t0, 3),
            "waited_seconds": round(waited, 3),
            "complete": not holders,
        }
        if holders:
            result["held_back_by"] = holders
            result["pending_tables"] = sorted(allowed)
        if len(allowed) < len(present):
            result["skipped_not_owner"] = sorted(set(present) - set(allowed))
        return result

    @staticmethod
    def _bytes(s: "SqlSession", tables: list[str]) -> int:
        return sum(
            int(
                s.scalar(
                    sa.select(
                        sa.func.pg_total_relation_size(
                            sa.cast(_qualified(s, t), postgresql.REGCLASS)
                        )
                    )
                )
                or 0
            )
            for t in tables
        )

    def raw_blobs(self, session: Session, tables: list[str]) -> Iterator[tuple[str, bytes]]:
        """The on-disk files of `tables`: heap, TOAST and every index, read page-aligned through
        `pg_read_binary_file` after a CHECKPOINT (so no changed page is only in memory). Needs
        a role allowed to do both (superuser, or pg_checkpoint and pg_read_server_files).
        WAL segments and backups are outside this view."""
        s: SqlSession = session  # type: ignore[assignment]
        try:
            s.execute("CHECKPOINT")
        except StoreRejected:
            raise ConfigError(
                f"{self.describe()}: reading table files needs CHECKPOINT "
                "(superuser or the pg_checkpoint role)"
            ) from None
        oids = [
            s.scalar(sa.select(sa.cast(sa.func.to_regclass(_qualified(s, t)), sa.BigInteger)))
            for t in tables
        ]
        oids = [int(o) for o in oids if o]
        if not oids:
            return
        rels = s.fetchall(
            sa.text(
                "WITH t AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = ANY(:oids)), "
                "r AS (SELECT oid FROM t UNION SELECT reltoastrelid FROM t WHERE reltoastrelid <> 0), "
                "x AS (SELECT oid FROM r UNION SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM r)) "
                "SELECT oid::regclass::text, pg_relation_filepath(oid), pg_relation_size(oid) FROM x "
                "WHERE pg_relation_filepath(oid) IS NOT NULL ORDER BY 1"
            ).bindparams(oids=oids)
        )
        for name, path, size in rels:
            for offset in range(0, int(size), RAW_CHUNK):
                segment, within = divmod(offset, SEGMENT_BYTES)
                file = path if segment == 0 else f"{path}.{segment}"
                try:
                    blob = s.scalar(
                        sa.select(
                            sa.func.pg_read_binary_file(
                                file, within, min(RAW_CHUNK, int(size) - offset)
                            )
                        )
                    )
                except StoreRejected as e:
                    if not e.sqlstate.startswith("42"):
                        raise
                    raise ConfigError(
                        f"{self.describe()}: reading table files needs pg_read_binary_file "
                        "(superuser or the pg_read_server_files role)"
                    ) from None
                yield f"{name}@{offset}", bytes(blob or b"")

    def catalog(self, session: Session) -> Catalog:
        s: SqlSession = session  # type: ignore[assignment]
        with s._op() as conn:
            insp = sa.inspect(conn)
            default_schema = insp.default_schema_name
            tables: dict[str, TableInfo] = {}
            for schema in insp.get_schema_names():
                if schema in SYSTEM_SCHEMAS or schema.startswith("pg_"):
                    continue
                kind = ObjectKind.TABLE
                columns = insp.get_multi_columns(schema=schema, kind=kind)
                if not columns:
                    continue
                pks = insp.get_multi_pk_constraint(schema=schema, kind=kind)
                uniques = insp.get_multi_unique_constraints(schema=schema, kind=kind)
                indexes = insp.get_multi_indexes(schema=schema, kind=kind)
                fks = insp.get_multi_foreign_keys(schema=schema, kind=kind)
                for key, cols in columns.items():
                    _, short = key
                    name = f"{schema}.{short}"
                    pk_info = pks.get(key)
                    pk = tuple((pk_info.get("constrained_columns") if pk_info else None) or ())
                    single = {pk[0]} if len(pk) == 1 else set()
                    single |= {
                        u["column_names"][0]
                        for u in uniques.get(key, [])
                        if len(u["column_names"]) == 1
                    }
                    single |= {
                        ix["column_names"][0]
                        for ix in indexes.get(key, [])
                        if ix.get("unique")
                        and len(ix["column_names"]) == 1
                        and ix["column_names"][0]
                        and not ix.get("expressions")
                        and not (ix.get("dialect_options") or {}).get("postgresql_where")
                    }
                    # a unique index on an expression (lower(email)) makes the columns it
                    # reads unique for our purposes: equal anonymised values could collide
                    single |= {
                        c["name"]
                        for ix in indexes.get(key, [])
                        if ix.get("unique") and ix.get("expressions")
                        for c in cols
                        if any(
                            re.search(
                                rf'(?<![\w"]){re.escape(c["name"])}(?![\w"])|"{re.escape(c["name"])}"',
                                e or "",
                            )
                            for e in ix["expressions"]
                        )
                    }
                    infos = {}
                    for c in cols:
                        t = c["type"]
                        try:
                            raw = t.compile(dialect=conn.dialect)
                        except Exception:
                            raw = str(t)
                        infos[c["name"]] = ColumnInfo(
                            name=c["name"],
                            type=normalise_type(t),
                            raw_type=raw,
                            nullable=bool(c["nullable"]),
                            max_length=getattr(t, "length", None)
                            if isinstance(t, sa.String)
                            else None,
                            unique=c["name"] in single,
                            labels=tuple(t.enums) if isinstance(t, sa.Enum) else None,
                        )
                    foreign = tuple(
                        ForeignKey(
                            fk["name"],
                            name,
                            tuple(fk["constrained_columns"]),
                            f"{fk['referred_schema'] or default_schema}.{fk['referred_table']}",
                            tuple(fk["referred_columns"]),
                            _on_delete(fk),
                        )
                        for fk in fks.get(key, [])
                    )
                    tables[name] = TableInfo(name, infos, pk, foreign)
        return Catalog(dict(sorted(tables.items())))


# --- what holds erased row versions back from VACUUM ----------------------------------------

PURGE_WAIT_ENV = "RETENTION_PURGE_WAIT_SECONDS"
PURGE_WAIT_DEFAULT = 120.0


def purge_wait_seconds() -> float:
    """How long a purge waits for older transactions to end (`RETENTION_PURGE_WAIT_SECONDS`)."""
    text = os.environ.get(PURGE_WAIT_ENV, "").strip()
    if not text:
        return PURGE_WAIT_DEFAULT
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"{PURGE_WAIT_ENV}={text!r} is not a number of seconds; set it to e.g. 120, or unset it"
        ) from None
    if not 0 <= value <= 86_400:
        raise ConfigError(f"{PURGE_WAIT_ENV}={text!r}: give between 0 and 86400 seconds")
    return value


# A session's snapshot (backend_xmin) or own transaction id (backend_xid) older than the
# horizon keeps row versions deleted before it; so do prepared transactions and replication
# slots. age() compares 32-bit xids across wraparound. Only kinds and ages are read: the query
# text and the user name of another session may hold personal data.
_HOLDERS = """
SELECT 'session' AS kind, pid::text AS id, coalesce(backend_type, '') AS detail,
       coalesce(state, '') AS state,
       coalesce(extract(epoch FROM now() - xact_start), 0)::bigint AS age_seconds
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND ((backend_xmin IS NOT NULL AND age(backend_xmin) > age(xid(CAST(:h AS xid8))))
    OR (backend_xid IS NOT NULL AND age(backend_xid) > age(xid(CAST(:h AS xid8)))))
UNION ALL
SELECT 'prepared transaction', gid, '', 'prepared',
       extract(epoch FROM now() - prepared)::bigint
FROM pg_prepared_xacts
WHERE database = current_database() AND age(transaction) > age(xid(CAST(:h AS xid8)))
UNION ALL
SELECT 'replication slot', slot_name::text, coalesce(slot_type, ''), CASE WHEN active THEN 'active' ELSE 'inactive' END, 0
FROM pg_replication_slots
WHERE xmin IS NOT NULL AND (database IS NULL OR database = current_database())
  AND age(xmin) > age(xid(CAST(:h AS xid8)))
ORDER BY 1, 2
"""


def horizon_holders(session: "SqlSession", horizon: str) -> list[dict[str, Any]]:
    """Everything in this database that can still see row versions older than `horizon` (an
    xid8 as text): such versions survive VACUUM."""
    rows = session.fetchall(sa.text(_HOLDERS).bindparams(h=horizon))
    return [
        {"kind": k, "id": i, "detail": d, "state": st, "age_seconds": int(a or 0)}
        for k, i, d, st, a in rows
    ]


def _wait_for_horizon(session: "SqlSession", horizon: str, limit: float) -> float:
    """Wait until nothing older than `horizon` is open, at most `limit` seconds; returns the
    time waited."""
    t0 = time.monotonic()
    delay = 0.05
    while horizon_holders(session, horizon) and time.monotonic() - t0 < limit:
        time.sleep(min(delay, max(0.0, limit - (time.monotonic() - t0))))
        delay = min(delay * 2, 1.0)
    return time.monotonic() - t0


def _on_delete(fk: Any) -> str | None:
    """CASCADE or SET NULL where the database itself acts on a deleted parent, else None."""
    action = str((fk.get("options") or {}).get("ondelete") or "").upper()
    return action if action in ("CASCADE", "SET NULL") else None
