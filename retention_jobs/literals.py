"""`where` literals in the column's own type.

A policy writes `ended_at: {lt: "2025-01-01"}`; the store compares a DATE or TIMESTAMP column
with it. Binding the string as is fails on both stores ("Cannot compare TIMESTAMP and
VARCHAR"), and an impossible date or an integer beyond the column's range fails mid-run. So
every literal is converted here, once, to the Python value of the column's type: the
resolver calls `to_column_type` for every literal (and refuses, with the policy location, what
does not convert) and the predicates bind exactly what it returns.
"""

import math
import re
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from retention_jobs.policy import Scalar
from retention_jobs.store.base import ColumnInfo

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
