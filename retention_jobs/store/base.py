"""The store interface: what the engine needs from a database, nothing more.

The engine builds every statement with SQLAlchemy Core (identifiers quoted by the dialect,
values bound, never string-built); a store only compiles and executes them. `DuckDBStore`
and `SqlStore` are the two implementations.
"""

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, overload

import pyarrow as pa
import sqlalchemy as sa

CONTROL_SCHEMA = "retention_control"
SYSTEM_SCHEMAS = {CONTROL_SCHEMA, "information_schema", "pg_catalog", "pg_toast"}


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    """Normalised: integer, float, decimal, string, date, timestamp, timestamptz, boolean, binary, other."""
    raw_type: str
    nullable: bool
    max_length: int | None = None
    unique: bool = False
    """Part of a single-column PRIMARY KEY or UNIQUE constraint."""
    labels: tuple[str, ...] | None = None
    """An ENUM column's labels in their order; None for any other type."""


def is_nested(col: ColumnInfo) -> bool:
    """An array, struct, map or JSON column (by the catalog's type name): it can hold personal
    text, but not as a string, and no `where` value or text strategy applies to it."""
    raw = col.raw_type.strip().upper()
    return col.type == "other" and (
        raw.endswith("]") or raw.startswith(("JSON", "STRUCT", "MAP", "LIST", "UNION"))
    )


def is_array(col: ColumnInfo) -> bool:
    """A list/array column (`BIGINT[]`, `VARCHAR[]`, PostgreSQL's `ARRAY`)."""
    raw = col.raw_type.strip().upper()
    return col.type == "other" and (raw.endswith("]") or raw.startswith(("ARRAY", "LIST")))


_ARRAY_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\(\d+(,\s*\d+)?\))?(\[\])+")


def castable_array(raw_type: str) -> bool:
    """An array type name as catalogs give it (BIGINT[], VARCHAR(20)[]), safe to cast to."""
    return _ARRAY_TYPE.fullmatch(raw_type.strip()) is not None


@dataclass(frozen=True)
class ForeignKey:
    name: str | None
    """The constraint's name; None where the database keeps none (an unnamed constraint)."""
    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str | None = None
    """The database's own action when a referenced row is deleted: CASCADE or SET NULL (None:
    no action, the delete fails). DuckDB has none."""


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: dict[str, ColumnInfo]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """DuckDB only: (index or constraint name, columns it covers) for every index, PRIMARY
    KEY, UNIQUE and FOREIGN KEY constraint (DuckDB indexes each of them): DuckDB cannot update
    an indexed column of a row that a foreign key references (see `indexes_on`)."""

    def indexes_on(self, column: str) -> list[str]:
        """Names of the indexes and key constraints that cover `column`."""
        return [name for name, cols in self.indexes if column in cols]

    @property
    def schema(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[1]


@dataclass(frozen=True)
class Catalog:
    tables: dict[str, TableInfo] = field(default_factory=dict)

    def referencing(self, table: str) -> list[ForeignKey]:
        """Foreign keys in other tables that point at `table`."""
        return [fk for t in self.tables.values() for fk in t.foreign_keys if fk.ref_table == table]


_SA_TYPES = {
    "integer": sa.BigInteger,
    "float": sa.Float,
    "decimal": sa.Numeric,
    "string": sa.String,
    "date": sa.Date,
    "timestamp": sa.DateTime,
    "boolean": sa.Boolean,
    "binary": sa.LargeBinary,
}


def sa_type(info: ColumnInfo) -> sa.types.TypeEngine:
    if info.type == "timestamptz":
        return sa.DateTime(timezone=True)
    return _SA_TYPES.get(info.type, sa.types.NullType)()


@overload
def sa_table(info: TableInfo, alias: None = None) -> sa.TableClause: ...
@overload
def sa_table(info: TableInfo, alias: str) -> sa.FromClause: ...
def sa_table(info: TableInfo, alias: str | None = None) -> sa.TableClause | sa.FromClause:
    """A typed lightweight table for building statements (types make bound values cast right)."""
    t = sa.table(
        info.short,
        *(sa.column(c.name, sa_type(c)) for c in info.columns.values()),
        schema=info.schema,
    )
    return t.alias(alias) if alias else t


def safe_ident(name: str) -> str:
    """A name that goes into DDL as is (temp tables, settings): plain letters, digits, _."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ValueError(f"not a safe identifier: {name!r}")
    return name


class Session(ABC):
    """One connection. `transaction()` commits on success and rolls back on any error."""

    @abstractmethod
    def execute(self, stmt: sa.Executable | str, params: Any = None) -> int:
        """Run a statement; return the affected row count where the store knows it."""

    @abstractmethod
    def fetchall(self, stmt: sa.Executable) -> list[tuple]: ...

    def scalar(self, stmt: sa.Executable) -> Any:
        rows = self.fetchall(stmt)
        return rows[0][0] if rows else None

    @abstractmethod
    def arrow(self, stmt: sa.Executable) -> pa.Table:
        """Fetch a result as Arrow (columnar, no per-row Python objects)."""

    @abstractmethod
    def stage(self, name: str, data: pa.Table) -> sa.TableClause:
        """Create (or replace) a temporary table holding `data`; it lives as long as the session."""

    @abstractmethod
    def stage_query(self, name: str, query: sa.Select) -> sa.TableClause:
        """Create (or replace) a temporary table from a query that runs inside the store."""

    @abstractmethod
    def drop_stage(self, name: str) -> None: ...

    @abstractmethod
    def append(self, target: sa.TableClause, data: pa.Table) -> int:
        """Insert the rows of `data` into `target` (its columns by name) in the open
        transaction, without a temporary copy; return the row count."""

    def serialize(self, name: str) -> None:
        """Wait until no other session's transaction holds `name`, then hold it until this
        transaction ends. A no-op where the store takes one writer at a time (DuckDB)."""
        return None

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @contextmanager
    def transaction(self) -> Iterator["Session"]:
        self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @abstractmethod
    def close(self) -> None: ...


class Store(ABC):
    """Where the data lives."""

    kind: str

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, with any password masked: safe to print."""

    @abstractmethod
    def session(self, read_only: bool = False) -> Session: ...

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[Session]:
        s = self.session(read_only=read_only)
        try:
            yield s
        finally:
            s.close()

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Hold the store's run lock while the block runs: one run per store at a time; raise
        `RunInProgress` if another run holds it. A no-op here: a DuckDB file takes one writer
        process (its own file lock refuses a second one, see `DuckDBStore.session`)."""
        yield

    @abstractmethod
    def catalog(self, session: Session) -> Catalog:
        """Tables, columns, keys and foreign keys of the data schemas (control schema excluded)."""

    def raw_blobs(self, session: Session, tables: list[str]) -> "Iterator[tuple[str, bytes]]":
        """The stored bytes behind `tables` (files, pages), for erasure verification."""
        from retention_jobs.errors import ConfigError

        raise ConfigError(
            f"{self.kind} stores cannot show their raw bytes: erasure cannot be verified there"
        )

    def purge(self, tables: list[str], full: bool = False) -> dict[str, Any]:
        """Make deleted bytes unrecoverable where the store can; returns what it cost."""
        return {"method": "none", "note": f"{self.kind} stores have no purge step"}

    @abstractmethod
    def ddl_types(self) -> dict[str, str]:
        """Type names for the control schema: text, int, ts, bool."""
