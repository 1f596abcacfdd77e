"""`where` literals in the column's own type.

A policy writes `ended_at: {lt: "2025-01-01"}`; the store compares a DATE or TIMESTAMP column
with it. Binding the string as is fails on both stores ("Cannot compare TIMESTAMP and
VARCHAR"), and an impossible date or an integer beyond the column's range fails mid-run. So
every literal is converted here, once, to the Python value of the column's type: the
resolver calls `to_column_type` for every literal (and refuses, with the policy location, what
does not convert) and the predicates bind exactly what it returns.
"""

import difflib
import math
import re
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from retention_jobs.policy import Scalar
from retention_jobs.store.base import ColumnInfo, is_nested

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
)

# Integer ranges by the start of the column's declared type (DuckDB and PostgreSQL names).
_INT_RANGES: list[tuple[tuple[str, ...], int, int]] = [
    (("UTINYINT",), 0, 2**8 - 1),
    (("USMALLINT",), 0, 2**16 - 1),
    (("UINTEGER",), 0, 2**32 - 1),
    (("UBIGINT",), 0, 2**64 - 1),
    (("HUGEINT",), -(2**127), 2**127 - 1),
    (("TINYINT", "INT1"), -(2**7), 2**7 - 1),
    (("SMALLINT", "INT2", "SMALLSERIAL"), -(2**15), 2**15 - 1),
    (("BIGINT", "INT8", "BIGSERIAL", "LONG"), -(2**63), 2**63 - 1),
    (("INTEGER", "INT4", "INT", "SERIAL", "SIGNED"), -(2**31), 2**31 - 1),
]
_INT64 = (-(2**63), 2**63 - 1)


# A type name as the store's catalog gives it (`desk.ticket_state`, `"Mood"`, `CITEXT`,
# `NUMERIC(10, 2)`): it goes into SQL as is, so nothing else is let through.
_PART = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_TYPE_NAME = re.compile(rf"{_PART}(?:\.{_PART})*(?: [A-Za-z]+)*(?:\(\d+(?:,\s*\d+)?\))?")
# String types SQLAlchemy binds as VARCHAR and the store compares as such; any other string
# type (citext) compares differently with a VARCHAR (case-sensitively, as text).
_PLAIN_STRINGS = ("VARCHAR", "TEXT", "CHAR", "CHARACTER", "BPCHAR", "STRING", "NAME")


class StoreType(sa.types.UserDefinedType):
    """A column type by the name the store's catalog gave it (an ENUM, a DOMAIN, UUID, ...)."""

    cache_ok = True

    def __init__(self, name: str):
        self.name = name

    def get_col_spec(self, **kw) -> str:
        return self.name


def own_type(col: ColumnInfo) -> StoreType | None:
    """The type a `where` value must be cast to so that the store compares it in the column's
    own type, or None where the bound value's type already is. PostgreSQL types a bound string
    VARCHAR: an ENUM or a DOMAIN column has no operator for it (`operator does not exist`), and
    a citext column would be compared as text, with case. Arrays and other nested types take no
    `where` values (the resolver refuses them), and DuckDB names its ENUMs by their labels
    (`ENUM('a', 'b')`), which this leaves alone: DuckDB casts a VARCHAR to an ENUM itself."""
    raw = col.raw_type.strip()
    if col.type == "string" and raw.upper().startswith(_PLAIN_STRINGS):
        return None
    if col.type not in ("string", "other") or raw.endswith("]"):
        return None
    return StoreType(raw) if _TYPE_NAME.fullmatch(raw) else None


class LiteralError(ValueError):
    """A literal that does not fit its column: `message` says why, `hint` what to write."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def _int_range(raw_type: str) -> tuple[int, int]:
    t = raw_type.upper()
    for prefixes, lo, hi in _INT_RANGES:
        if t.startswith(prefixes):
            return lo, hi
    return _INT64


def _show(v: object) -> str:
    text = repr(v.isoformat() if isinstance(v, date) else v)
    return text if len(text) <= 40 else text[:37] + "..."


def _misfit(v: object, col: ColumnInfo, hint: str) -> LiteralError:
    return LiteralError(
        f"value {type(v).__name__} {_show(v)} does not fit the column's type {col.raw_type}", hint
    )


def to_column_type(v: Scalar, col: ColumnInfo, tz: str = "UTC") -> Scalar:
    """`v` as a value of `col`'s type, or LiteralError. None stays None (IS NULL).

    Dates and timestamps: a DATE column takes `YYYY-MM-DD` (a date or a string); a TIMESTAMP
    column also takes `YYYY-MM-DD HH:MM[:SS]` (a date means its midnight; an offset converts
    to UTC, the time zone naive timestamps are kept in); a TIMESTAMPTZ column reads a date or
    a time without offset in the policy's time zone `tz`."""
    if v is None:
        return None
    kind = col.type
    if col.labels is not None:
        return _label(v, col, col.labels)
    if is_nested(col):
        raise _misfit(
            v, col, "an array, struct or JSON column cannot be filtered by value; only is_null"
        )
    if kind == "other":
        return v
    if kind == "boolean":
        if isinstance(v, bool):
            return v
        raise _misfit(v, col, "write true or false")
    if kind == "string":
        if isinstance(v, str):
            return v
        raise _misfit(v, col, "quote strings, leave numbers bare, write dates as YYYY-MM-DD")
    if kind in ("integer", "float", "decimal"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _misfit(v, col, "quote strings, leave numbers bare")
        if isinstance(v, float) and not math.isfinite(v):
            raise _misfit(v, col, "write a finite number")
        if kind == "integer":
            if isinstance(v, float):
                if not v.is_integer():
                    raise _misfit(v, col, f"{col.raw_type} holds whole numbers; write one")
                v = int(v)
            lo, hi = _int_range(col.raw_type)
            if not lo <= v <= hi:
                raise LiteralError(
                    f"value {_show(v)} is outside the range of {col.raw_type} ({lo} to {hi})",
                    "check the number; no row of this column can hold it",
                )
        return v
    if kind == "date":
        d = _as_date_or_datetime(v, col, _DATE)
        if isinstance(d, datetime):
            if d.timetz().replace(tzinfo=None) != time(0) or d.tzinfo is not None:
                raise _misfit(v, col, "a DATE column compares dates; write YYYY-MM-DD")
            return d.date()
        return d
    if kind in ("timestamp", "timestamptz"):
        d = _as_date_or_datetime(v, col, _TIMESTAMP)
        if not isinstance(d, datetime):
            d = datetime.combine(d, time(0))
        if kind == "timestamptz":
            return d if d.tzinfo is not None else d.replace(tzinfo=ZoneInfo(tz))
        if d.tzinfo is not None:
            d = d.astimezone(UTC).replace(tzinfo=None)
        return d
    # binary
    raise _misfit(v, col, f"a {col.raw_type} column cannot be filtered by value; only is_null")


def _label(v: Scalar, col: ColumnInfo, labels: tuple[str, ...]) -> str:
    """An ENUM takes only its labels, exactly (the database would refuse any other string at
    run time, after other rules had already changed rows)."""
    if isinstance(v, str) and v in labels:
        return v
    shown = ", ".join(labels[:12]) + (", ..." if len(labels) > 12 else "")
    near = difflib.get_close_matches(str(v), labels, n=1)
    raise LiteralError(
        f"value {_show(v)} is not a label of the ENUM type {col.raw_type}",
        (f"did you mean {near[0]!r}? " if near else "")
        + f"write one of its labels (quoted, same case): {shown}",
    )


def _as_date_or_datetime(v: object, col: ColumnInfo, form: re.Pattern) -> date:
    shape = "YYYY-MM-DD" if form is _DATE else "YYYY-MM-DD or YYYY-MM-DD HH:MM:SS"
    if isinstance(v, date):  # datetime too
        return v
    if not isinstance(v, str):
        raise _misfit(v, col, f"write the date as {shape}")
    if not form.match(v):
        raise LiteralError(
            f"value {_show(v)} is not a date as {shape}", f"write it as {shape}, e.g. 2025-01-31"
        )
    try:
        return date.fromisoformat(v) if form is _DATE else datetime.fromisoformat(v)
    except ValueError as e:
        raise LiteralError(
            f"value {_show(v)} is not a real date or time ({e})", "check the day and month"
        ) from None
