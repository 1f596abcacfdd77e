"""Holds from a case-management system: a CSV export with each hold's placed and released
times, imported whole or not at all.

A hold's history is evidence (when was the data frozen, when was it let go), so the import
keeps the times the case system recorded instead of stamping "now". Re-importing the same
export changes nothing; a later export that releases a hold releases it; an export that
contradicts what is stored (a released hold placed again, other times) is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.errors import PolicyError, Problem
from retention_jobs.store.base import Session

REQUIRED = ("case_ref", "scope", "target", "reason", "placed_at")
OPTIONAL = ("placed_by", "released_at", "released_by", "review_at")
SCOPES = ("subject", "table", "purpose")
MAX_BYTES = 16 * 1024 * 1024

_TABLE = re.compile(r"^[A-Za-z_][\w$]*\.[A-Za-z_][\w$]*$")
_PURPOSE = re.compile(r"^[a-z][a-z0-9_-]*$")
_SUBJECT = re.compile(r"^[a-z][a-z0-9_-]*:.+$")


@dataclass(frozen=True)
class ImportedHold:
    line: int
    hold_id: str
    scope: str
    target: str
    case_ref: str
    reason: str
    placed_at: datetime
    placed_by: str | None
    released_at: datetime | None
    released_by: str | None
    review_at: date | None


@dataclass(frozen=True)
class ImportResult:
    placed: int
    released: int
    unchanged: int


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("has no time zone")
    return value.astimezone(UTC)


def hold_id_for(case_ref: str, scope: str, target: str, placed_at: datetime) -> str:
    """The same hold in every export gets the same id, so a re-import finds it."""
    text = "\x1f".join((case_ref, scope, target, placed_at.isoformat()))
    return "H-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def parse(path: Path, now: datetime | None = None) -> list[ImportedHold]:
    """Every row of the export, or a PolicyError listing every bad cell as file:line: column.
    Cell values are never quoted back: a reason or a subject id may name a person."""
    now = now or datetime.now(UTC)
    where = str(path)
    raw = path.read_bytes()
    if len(raw) > MAX_BYTES:
        raise PolicyError(
            [Problem(where, 1, 1, "file", f"is larger than {MAX_BYTES // 2**20} MiB", "split it")]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PolicyError(
            [Problem(where, 1, 1, "file", f"is not UTF-8 ({e.reason})", "export as UTF-8")]
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    headers = reader.fieldnames or []
    missing = [h for h in REQUIRED if h not in headers]
    unknown = [h for h in headers if h not in REQUIRED + OPTIONAL]
    if missing or unknown:
        msg = "; ".join(
            part
            for part in (
                f"missing column(s) {', '.join(missing)}" if missing else "",
                f"unknown column(s) {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise PolicyError(
            [
                Problem(
                    where, 1, 1, "header", msg, f"the columns are: {', '.join(REQUIRED + OPTIONAL)}"
                )
            ]
        )
    problems: list[Problem] = []
    out: list[ImportedHold] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        bad = len(problems)

        def problem(column: str, what: str, fix: str, line: int = line) -> None:
            col = headers.index(column) + 1 if column in headers else 1
            problems.append(Problem(where, line, col, column, what, fix))

        if None in row:
            problem(headers[-1], "more cells than columns", "quote cells that contain commas")
            continue
        cells = {k: (v or "").strip() for k, v in row.items()}
        for column in REQUIRED:
            if not cells[column]:
                problem(column, "is empty", "every hold needs it")
        scope, target = cells["scope"], cells["target"]
        if scope and scope not in SCOPES:
            problem("scope", "is not subject, table or purpose", "use one of those")
        elif scope and target:
            pattern = {"subject": _SUBJECT, "table": _TABLE, "purpose": _PURPOSE}[scope]
            if not pattern.match(target):
                problem(
                    "target",
                    f"is not a {scope} target",
                    {
                        "subject": "write KIND:ID, e.g. customer:1042",
                        "table": "write schema.table",
                        "purpose": "write the policy's purpose, e.g. newsletter",
                    }[scope],
                )
        times: dict[str, datetime | None] = {"placed_at": None, "released_at": None}
        for column in times:
            if cells.get(column):
                try:
                    times[column] = _instant(cells[column])
                except ValueError as e:
                    reason = "has no time zone" if "zone" in str(e) else "is not a timestamp"
                    problem(
                        column,
                        reason,
                        "write ISO 8601 with an offset, e.g. 2026-03-01T09:30:00+01:00",
                    )
        placed, released = times["placed_at"], times["released_at"]
        if placed and placed > now:
            problem("placed_at", "is in the future", "export holds already placed")
        if released and released > now:
            problem("released_at", "is in the future", "leave it empty until the hold is released")
        if placed and released and released < placed:
            problem("released_at", "is before placed_at", "check the export")
        if cells.get("released_by") and not released:
            problem("released_by", "is given for a hold that is not released", "add released_at")
        review: date | None = None
        if cells.get("review_at"):
            try:
                review = date.fromisoformat(cells["review_at"])
            except ValueError:
                problem("review_at", "is not a date", "write YYYY-MM-DD")
        if len(problems) > bad or placed is None:
            continue
        hold_id = hold_id_for(cells["case_ref"], scope, target, placed)
        if hold_id in seen:
            problem("case_ref", f"repeats the hold of line {seen[hold_id]}", "list each hold once")
            continue
        seen[hold_id] = line
        out.append(
            ImportedHold(
                line=line,
                hold_id=hold_id,
                scope=scope,
                target=target,
                case_ref=cells["case_ref"],
                reason=cells["reason"],
                placed_at=placed,
                placed_by=cells.get("placed_by") or None,
                released_at=released,
                released_by=cells.get("released_by") or None,
                review_at=review,
            )
        )
    if problems:
        raise PolicyError(problems)
    return out


def _same(stored: datetime | None, given: datetime | None) -> bool:
    if stored is None or given is None:
        return stored is given
    if stored.tzinfo is None:  # the control tables keep UTC without a zone on some stores
        stored = stored.replace(tzinfo=UTC)
    return stored == given


def apply(session: Session, where: str, holds: list[ImportedHold]) -> ImportResult:
    """Write the holds in one transaction: new ones placed (released ones with their release),
    stored ones released where the export now releases them; a contradiction refuses all."""
    h = control.holds
    placed = released = unchanged = 0
    with session.transaction():
        stored: dict[str, datetime | None] = {
            r[0]: r[1]
            for r in session.fetchall(
                sa.select(h.c.hold_id, h.c.released_at).where(
                    h.c.hold_id.in_([x.hold_id for x in holds])
                )
            )
        }
        problems = [
            Problem(
                where,
                x.line,
                1,
                "released_at",
                "the hold is stored as released at another time",
                "a hold's release cannot be moved or undone: place a new hold instead",
            )
            for x in holds
            if x.hold_id in stored
            and stored[x.hold_id] is not None
            and not _same(stored[x.hold_id], x.released_at)
        ]
        if problems:
            raise PolicyError(problems)
        for x in holds:
            if x.hold_id not in stored:
                spec = control.hold_spec(
                    **{x.scope: x.target},
                    case_ref=x.case_ref,
                    reason=x.reason,
                    placed_by=x.placed_by,
                    review=x.review_at,
                )
                control.insert_hold(session, spec, x.hold_id, _naive_utc(x.placed_at))
                if x.released_at is not None:
                    _release(session, x)
                placed += 1
            elif stored[x.hold_id] is None and x.released_at is not None:
                _release(session, x)
                released += 1
            else:
                unchanged += 1
    return ImportResult(placed, released, unchanged)


def _release(session: Session, x: ImportedHold) -> None:
    h = control.holds
    session.execute(
        sa.update(h)
        .where(h.c.hold_id == x.hold_id, h.c.released_at.is_(None))
        .values(released_at=_stored_time(x.released_at), released_by=x.released_by)
    )


def _naive_utc(value: datetime) -> datetime:
    """The control tables keep times as naive UTC (see control.now)."""
    return value.astimezone(UTC).replace(tzinfo=None)


def _stored_time(value: datetime | None) -> datetime | None:
    return None if value is None else _naive_utc(value)
