"""The control schema inside the store: holds, runs, the audit ledger, anonymisation markers
and the suppression list. Holds name people, so they live here and never in git; the audit
ledger never holds an identifier or a value of a data subject."""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from retention_jobs.errors import ConfigError
from retention_jobs.store.base import CONTROL_SCHEMA, ColumnInfo, Session, Store, TableInfo, sa_type

C = CONTROL_SCHEMA

holds = sa.table(
    "holds", *(sa.column(n, t) for n, t in [
        ("hold_id", sa.String()), ("scope", sa.String()), ("subject_kind", sa.String()),
        ("subject_id", sa.String()), ("table_name", sa.String()), ("purpose", sa.String()),
        ("case_ref", sa.String()), ("reason", sa.String()), ("placed_by", sa.String()),
        ("placed_at", sa.DateTime()), ("review_at", sa.Date()), ("released_at", sa.DateTime()),
        ("released_by", sa.String())]), schema=C)

audit = sa.table(
    "audit", *(sa.column(n, t) for n, t in [
        ("seq", sa.BigInteger()), ("run_id", sa.String()), ("recorded_at", sa.DateTime()),
        ("purpose", sa.String()), ("rule", sa.String()), ("table_name", sa.String()),
        ("action", sa.String()), ("as_of", sa.Date()), ("policy_sha256", sa.String()),
        ("batch", sa.BigInteger()), ("expired", sa.BigInteger()), ("held", sa.BigInteger()),
        ("retained", sa.BigInteger()), ("deleted", sa.BigInteger()), ("anonymised", sa.BigInteger()),
        ("unlinked", sa.BigInteger()), ("key_id", sa.String()), ("seconds", sa.Float())]), schema=C)

runs = sa.table(
    "runs", *(sa.column(n, t) for n, t in [
        ("run_id", sa.String()), ("started_at", sa.DateTime()), ("finished_at", sa.DateTime()),
        ("as_of", sa.Date()), ("mode", sa.String()), ("status", sa.String()),
        ("policies_sha256", sa.String()), ("summary", sa.String())]), schema=C)

suppression = sa.table(
    "suppression", *(sa.column(n, t) for n, t in [
        ("identifier_hash", sa.String()), ("key_id", sa.String()), ("purpose", sa.String()),
        ("added_at", sa.DateTime())]), schema=C)

_DDL = {
    "holds": "hold_id {text} PRIMARY KEY, scope {text} NOT NULL, subject_kind {text}, subject_id {text}, "
             "table_name {text}, purpose {text}, case_ref {text} NOT NULL, reason {text} NOT NULL, "
             "placed_by {text}, placed_at {ts} NOT NULL, review_at {date}, released_at {ts}, released_by {text}",
    "audit": "seq {int} PRIMARY KEY, run_id {text} NOT NULL, recorded_at {ts} NOT NULL, purpose {text}, "
             "rule {text}, table_name {text}, action {text} NOT NULL, as_of {date}, policy_sha256 {text}, "
             "batch {int}, expired {int}, held {int}, retained {int}, deleted {int}, anonymised {int}, "
             "unlinked {int}, key_id {text}, seconds {float}",
    "runs": "run_id {text} PRIMARY KEY, started_at {ts} NOT NULL, finished_at {ts}, as_of {date}, "
            "mode {text}, status {text}, policies_sha256 {text}, summary {text}",
    "suppression": "identifier_hash {text} PRIMARY KEY, key_id {text} NOT NULL, purpose {text}, added_at {ts}",
}


def now() -> datetime:
    """UTC wall time, naive (the control schema stores UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_control_schema(store: Store, session: Session) -> None:
    types = store.ddl_types()
    session.execute(f"CREATE SCHEMA IF NOT EXISTS {C}")
    for name, cols in _DDL.items():
        session.execute(f"CREATE TABLE IF NOT EXISTS {C}.{name} ({cols.format(**types)})")


def control_exists(session: Session) -> bool:
    try:
        session.fetchall(sa.select(sa.func.count()).select_from(holds))
        return True
    except Exception:
        return False


# --- anonymisation markers -----------------------------------------------------------------


def marker_name(table: str) -> str:
    return "anonymised__" + table.replace(".", "__")


def marker_table(info: TableInfo, key: list[str]) -> sa.TableClause:
    """One row per anonymised row and application: `columns` lists the columns anonymised
    (",email,phone,"), `original_hashes` a short keyed hash of each original value
    ("email=ab12...;phone=..."), so a later check can prove no original value came back."""
    cols = [sa.column(k, sa_type(info.columns[k])) for k in key]
    return sa.table(marker_name(info.name), *cols, sa.column("columns", sa.String()),
                    sa.column("rule", sa.String()), sa.column("original_hashes", sa.String()),
                    sa.column("anonymised_at", sa.DateTime()), schema=C)


def ensure_marker_table(store: Store, session: Session, info: TableInfo, key: list[str]) -> None:
    types = store.ddl_types()
    keycols = ", ".join(f'"{k}" {key_column_type(info.columns[k], store)}' for k in key)
    session.execute(
        f'CREATE TABLE IF NOT EXISTS {C}."{marker_name(info.name)}" ({keycols}, columns {types["text"]} NOT NULL, '
        f'rule {types["text"]}, original_hashes {types["text"]}, anonymised_at {types["ts"]})'
    )


def key_column_type(col: ColumnInfo, store: Store) -> str:
    """The control-schema type for a copy of a data table's key column."""
    return {"integer": "BIGINT", "string": store.ddl_types()["text"], "date": "DATE"}.get(col.type, col.raw_type)


def marker_tables_present(session: Session, store: Store) -> set[str]:
    rows = session.fetchall(sa.text(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"
    ).bindparams(s=C))
    return {r[0] for r in rows}


# --- holds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    hold_id: str
    scope: str
    subject_kind: str | None
    subject_id: str | None
    table_name: str | None
    purpose: str | None
    case_ref: str
    reason: str
    placed_by: str | None
    placed_at: datetime
    review_at: date | None
    released_at: datetime | None
    released_by: str | None

    @property
    def target(self) -> str:
        if self.scope == "subject":
            return f"subject {self.subject_kind}:{self.subject_id}"
        if self.scope == "table":
            return f"table {self.table_name}"
        return f"purpose {self.purpose}"


def add_hold(session: Session, *, scope: str, case_ref: str, reason: str, placed_by: str | None,
             subject: str | None = None, table: str | None = None, purpose: str | None = None,
             review_at: date | None = None) -> str:
    kind = sid = None
    if scope == "subject":
        if not subject or ":" not in subject:
            raise ConfigError("--subject takes KIND:ID, e.g. customer:1042")
        kind, sid = subject.split(":", 1)
    hold_id = "H-" + uuid.uuid4().hex[:10]
    with session.transaction():
        session.execute(sa.insert(holds).values(
            hold_id=hold_id, scope=scope, subject_kind=kind, subject_id=sid, table_name=table,
            purpose=purpose, case_ref=case_ref, reason=reason, placed_by=placed_by, placed_at=now(),
            review_at=review_at, released_at=None, released_by=None))
    return hold_id


def release_hold(session: Session, hold_id: str, released_by: str | None) -> bool:
    with session.transaction():
        n = session.execute(
            sa.update(holds).where(holds.c.hold_id == hold_id, holds.c.released_at.is_(None))
            .values(released_at=now(), released_by=released_by))
    return n != 0


def list_holds(session: Session, include_released: bool = False) -> list[Hold]:
    q = sa.select(*holds.c).order_by(holds.c.placed_at)
    if not include_released:
        q = q.where(holds.c.released_at.is_(None))
    return [Hold(*row) for row in session.fetchall(q)]


# --- runs and the audit ledger -------------------------------------------------------------


def new_run_id() -> str:
    return now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def start_run(session: Session, run_id: str, as_of: date, mode: str, digest: str) -> None:
    with session.transaction():
        session.execute(sa.insert(runs).values(run_id=run_id, started_at=now(), finished_at=None,
                                               as_of=as_of, mode=mode, status="running",
                                               policies_sha256=digest, summary=None))


def finish_run(session: Session, run_id: str, status: str, summary: dict[str, Any]) -> None:
    with session.transaction():
        session.execute(sa.update(runs).where(runs.c.run_id == run_id).values(
            finished_at=now(), status=status, summary=json.dumps(summary, default=str)))


def append_audit(session: Session, **row: Any) -> None:
    """Append one ledger row; call inside the transaction of the change it records."""
    seq = (session.scalar(sa.select(sa.func.max(audit.c.seq))) or 0) + 1
    session.execute(sa.insert(audit).values(seq=seq, recorded_at=now(), **row))


def audit_rows(session: Session, run_id: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(*audit.c).order_by(audit.c.seq)
    if run_id:
        q = q.where(audit.c.run_id == run_id)
    names = [c.name for c in audit.c]
    return [dict(zip(names, r, strict=True)) for r in session.fetchall(q)]
