"""The control schema inside the store: holds, runs, the audit ledger, anonymisation markers
and the suppression list. Holds name people, so they live here and never in git; the audit
ledger never holds an identifier or a value of a data subject."""

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from retention_jobs.errors import ConfigError, StoreRejected
from retention_jobs.store.base import CONTROL_SCHEMA, ColumnInfo, Session, Store, TableInfo, sa_type

C = CONTROL_SCHEMA


def _control_table(
    name: str, columns: list[tuple[str, sa.types.TypeEngine[Any]]]
) -> sa.TableClause:
    """A typed table of the control schema."""
    return sa.table(name, *(sa.column(n, t) for n, t in columns), schema=C)


holds = _control_table(
    "holds",
    [
        ("hold_id", sa.String()),
        ("scope", sa.String()),
        ("subject_kind", sa.String()),
        ("subject_id", sa.String()),
        ("table_name", sa.String()),
        ("purpose", sa.String()),
        ("case_ref", sa.String()),
        ("reason", sa.String()),
        ("placed_by", sa.String()),
        ("placed_at", sa.DateTime()),
        ("review_at", sa.Date()),
        ("released_at", sa.DateTime()),
        ("released_by", sa.String()),
    ],
)

audit = _control_table(
    "audit",
    [
        ("seq", sa.BigInteger()),
        ("run_id", sa.String()),
        ("recorded_at", sa.DateTime()),
        ("purpose", sa.String()),
        ("rule", sa.String()),
        ("table_name", sa.String()),
        ("action", sa.String()),
        ("as_of", sa.Date()),
        ("policy_sha256", sa.String()),
        ("batch", sa.BigInteger()),
        ("expired", sa.BigInteger()),
        ("held", sa.BigInteger()),
        ("retained", sa.BigInteger()),
        ("deleted", sa.BigInteger()),
        ("anonymised", sa.BigInteger()),
        ("unlinked", sa.BigInteger()),
        ("key_id", sa.String()),
        ("seconds", sa.Float()),
        ("prev_hash", sa.String()),
        ("row_hash", sa.String()),
    ],
)

erased_values = _control_table(
    "erased_values",
    [
        ("run_id", sa.String()),
        ("table_name", sa.String()),
        ("column_name", sa.String()),
        ("anchor_hash", sa.BigInteger()),
        ("value_hash", sa.BigInteger()),
        ("value_length", sa.BigInteger()),
        ("erased_at", sa.DateTime()),
        # the id of the pseudonym key the hashes were made with (`PseudonymKey.key_id`): a
        # verifier with another key would find nothing and pass; NULL on rows written before
        # key ids were kept whose run left no key id in the audit ledger (key unknown)
        ("key_id", sa.String()),
    ],
)

runs = _control_table(
    "runs",
    [
        ("run_id", sa.String()),
        ("started_at", sa.DateTime()),
        ("finished_at", sa.DateTime()),
        ("as_of", sa.Date()),
        ("mode", sa.String()),
        ("status", sa.String()),
        ("policies_sha256", sa.String()),
        ("summary", sa.String()),
    ],
)

suppression = _control_table(
    "suppression",
    [
        ("identifier_hash", sa.String()),
        ("key_id", sa.String()),
        ("purpose", sa.String()),
        ("added_at", sa.DateTime()),
    ],
)

_DDL = {
    "holds": "hold_id {text} PRIMARY KEY, scope {text} NOT NULL, subject_kind {text}, subject_id {text}, "
    "table_name {text}, purpose {text}, case_ref {text} NOT NULL, reason {text} NOT NULL, "
    "placed_by {text}, placed_at {ts} NOT NULL, review_at {date}, released_at {ts}, released_by {text}",
    "audit": "seq {int} PRIMARY KEY, run_id {text} NOT NULL, recorded_at {ts} NOT NULL, purpose {text}, "
    "rule {text}, table_name {text}, action {text} NOT NULL, as_of {date}, policy_sha256 {text}, "
    "batch {int}, expired {int}, held {int}, retained {int}, deleted {int}, anonymised {int}, "
    "unlinked {int}, key_id {text}, seconds {float}, prev_hash {text}, row_hash {text}",
    "erased_values": "run_id {text}, table_name {text}, column_name {text}, anchor_hash {int}, "
    "value_hash {int}, value_length {int}, erased_at {ts}, key_id {text}",
    "runs": "run_id {text} PRIMARY KEY, started_at {ts} NOT NULL, finished_at {ts}, as_of {date}, "
    "mode {text}, status {text}, policies_sha256 {text}, summary {text}",
    "suppression": "identifier_hash {text} PRIMARY KEY, key_id {text} NOT NULL, purpose {text}, added_at {ts}",
    # data-subject requests (requests.py): the request names its subject while it is open
    "requests": "request_id {text} PRIMARY KEY, kind {text} NOT NULL, purpose {text}, subject_kind {text} NOT NULL, "
    "subject_id {text}, received_on {date} NOT NULL, due_on {date} NOT NULL, status {text} NOT NULL, "
    "status_note {text}, recheck_on {date}, created_at {ts} NOT NULL, updated_at {ts}, completed_at {ts}",
    "request_outcomes": "request_id {text} NOT NULL, table_name {text} NOT NULL, deleted {int}, anonymised {int}, "
    "unlinked {int}, held {int}, retained {int}, hold_cases {text}, retained_by {text}, "
    "free_from {date}, updated_at {ts}, PRIMARY KEY (request_id, table_name)",
    "request_receipts": "request_id {text} NOT NULL, receipt_no {int} NOT NULL, issued_at {ts} NOT NULL, "
    "status {text} NOT NULL, body {text} NOT NULL, PRIMARY KEY (request_id, receipt_no)",
    "request_exports": "request_id {text} NOT NULL, produced_at {ts} NOT NULL, table_count {int}, row_count {int}, "
    "byte_count {int}, sha256 {text} NOT NULL",
    # runs whose erased values a check proved gone (erasure.py): a later check covers every
    # run not in here, so a retry that erased nothing cannot hide an earlier run's residue
    "erasure_proofs": "run_id {text} PRIMARY KEY, verified_at {ts} NOT NULL, how {text}",
    # tables whose purge did not complete (purge.py): purged again by every run until one does
    "purge_pending": "table_name {text} PRIMARY KEY, run_id {text} NOT NULL, method {text}, since {ts} NOT NULL",
}


erasure_proofs = _control_table(
    "erasure_proofs",
    [("run_id", sa.String()), ("verified_at", sa.DateTime()), ("how", sa.String())],
)

purge_pending = _control_table(
    "purge_pending",
    [
        ("table_name", sa.String()),
        ("run_id", sa.String()),
        ("method", sa.String()),
        ("since", sa.DateTime()),
    ],
)


def now() -> datetime:
    """UTC wall time, naive (the control schema stores UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_control_schema(store: Store, session: Session) -> None:
    types = store.ddl_types()
    session.execute(f"CREATE SCHEMA IF NOT EXISTS {C}")
    for name, cols in _DDL.items():
        session.execute(f"CREATE TABLE IF NOT EXISTS {C}.{name} ({cols.format(**types)})")
    # stores created by an earlier version get the columns added since
    have = {
        r[0]
        for r in session.fetchall(
            sa.text(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = :s AND table_name = 'audit'"
            ).bindparams(s=C)
        )
    }
    for col in ("prev_hash", "row_hash"):
        if col not in have:
            session.execute(f"ALTER TABLE {C}.audit ADD COLUMN {col} {types['text']}")
    _ledger_hashes_as_integers(store, session)
    _erased_values_key_id(session, types["text"])


def has_column(session: Session, table: str, column: str) -> bool:
    """Whether control table `table` has `column` (a store of an earlier version may not)."""
    return bool(
        session.fetchall(
            sa.text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = :s "
                "AND table_name = :t AND column_name = :c"
            ).bindparams(s=C, t=table, c=column)
        )
    )


def _erased_values_key_id(session: Session, text: str) -> None:
    """Stores of an earlier version kept no key id with the erased values. A run hashes with one
    key and records that key's id on its audit rows, so the id of an older row's run is its key
    id; rows of a run whose ledger names no key id (or two) keep NULL: key unknown."""
    if has_column(session, "erased_values", "key_id"):
        return
    with session.transaction():
        session.execute(f"ALTER TABLE {C}.erased_values ADD COLUMN key_id {text}")
        session.execute(
            f"UPDATE {C}.erased_values SET key_id = k.key_id FROM ("
            f"SELECT run_id, min(key_id) AS key_id FROM {C}.audit WHERE key_id IS NOT NULL "
            "GROUP BY run_id HAVING count(DISTINCT key_id) = 1) AS k "
            f"WHERE {C}.erased_values.run_id = k.run_id"
        )


# The erased-value ledger kept its hashes as 32 hex digits before 0.2; now as the signed 64-bit
# integer of the first 16 (`erasure.ledger_hash`): the same hashes, a third of the write.
_HEX_TO_INT = {
    "duckdb": "CAST(CAST(('0x' || substr({c}, 1, 16)) AS UBIGINT)::HUGEINT - CASE WHEN "
    "CAST(('0x' || substr({c}, 1, 16)) AS UBIGINT) >= 9223372036854775808 "
    "THEN 18446744073709551616::HUGEINT ELSE 0 END AS BIGINT)",
    "postgresql": "(('x' || substr({c}, 1, 16))::bit(64))::bigint",
}


def _ledger_hashes_as_integers(store: Store, session: Session) -> None:
    rows = session.fetchall(
        sa.text(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = :s "
            "AND table_name = 'erased_values' AND column_name IN ('anchor_hash', 'value_hash')"
        ).bindparams(s=C)
    )
    old = [name for name, dtype in rows if "char" in dtype.lower() or "text" in dtype.lower()]
    if not old:
        return
    convert = _HEX_TO_INT.get(store.kind)
    if convert is None:
        raise ConfigError(
            f"{C}.erased_values keeps its hashes as text (an earlier version); convert "
            f"{', '.join(old)} to BIGINT with the first 16 hex digits as a signed integer"
        )
    with session.transaction():
        for name in old:
            session.execute(
                f"ALTER TABLE {C}.erased_values ALTER COLUMN {name} TYPE BIGINT "
                f"USING {convert.format(c=name)}"
            )


MISSING = ("42P01", "3F000")
"""SQLSTATEs (and DuckDB's catalog errors, mapped alike) of "no such table" and "no such schema"."""


def control_exists(session: Session) -> bool:
    """Whether the control schema is there (its holds table answers). Only "the table or schema
    does not exist" means no (run `init`); every other refusal (a privilege the role lacks, a
    lost connection, a lock) propagates with its own message: telling an operator to run `init`
    over a permission problem would hide it, and `init` would fail or, worse, succeed elsewhere."""
    try:
        session.fetchall(sa.select(sa.func.count()).select_from(holds))
        return True
    except StoreRejected as e:
        if e.sqlstate in MISSING:
            return False
        raise StoreRejected(
            f"cannot read the control schema {C} (this is not a reason to run `init`): {e}",
            e.sqlstate,
            e.terminal,
        ) from None


# --- anonymisation markers -----------------------------------------------------------------


MAX_NAME_BYTES = 63
"""PostgreSQL cuts longer identifiers (NAMEDATALEN - 1), silently."""


def per_table_name(prefix: str, table: str) -> str:
    """The name of the control table that belongs to the data table `schema.table`: distinct
    for distinct tables, and whole on every store.

    `prefix__schema__table` where that names one table only: the schema has no `__` and does
    not end in `_`, so the first `__` after the prefix ends it (the names earlier versions
    wrote, kept so that their markers and journals are found), and it fits in 63 bytes.
    Otherwise `prefix_` and 16 hex digits of the SHA-256 of `schema.table`, then as much of
    the name as fits, for people reading the schema: `w.a__b` and `w__a.b` once shared
    `anonymised__w__a__b`, and two long names PostgreSQL's cut, so a rule read rows of one
    table as done by the markers of the other and skipped them."""
    schema, short = table.split(".", 1)
    plain = f"{prefix}__{schema}__{short}"
    if "__" not in schema and not schema.endswith("_") and len(plain.encode()) <= MAX_NAME_BYTES:
        return plain
    digest = hashlib.sha256(table.encode()).hexdigest()[:16]
    # a hex digit follows `prefix_`, never the `_` of a plain name
    name = f"{prefix}_{digest}_{schema}__{short}"
    return name.encode()[:MAX_NAME_BYTES].decode(errors="ignore")


def marker_name(table: str) -> str:
    return per_table_name("anonymised", table)


def marker_table(info: TableInfo, key: list[str]) -> sa.TableClause:
    """One row per anonymised row and application: `columns` lists the columns anonymised
    (",email,phone,"), `original_hashes` a short keyed hash of each original value
    ("email=ab12...;phone=..."), so a later check can prove no original value came back."""
    cols = [sa.column(k, sa_type(info.columns[k])) for k in key]
    return sa.table(
        marker_name(info.name),
        *cols,
        sa.column("columns", sa.String()),
        sa.column("rule", sa.String()),
        sa.column("original_hashes", sa.String()),
        sa.column("anonymised_at", sa.DateTime()),
        schema=C,
    )


def ensure_marker_table(store: Store, session: Session, info: TableInfo, key: list[str]) -> None:
    types = store.ddl_types()
    keycols = ", ".join(f'"{k}" {key_column_type(info.columns[k], store)}' for k in key)
    session.execute(
        f'CREATE TABLE IF NOT EXISTS {C}."{marker_name(info.name)}" ({keycols}, columns {types["text"]} NOT NULL, '
        f"rule {types['text']}, original_hashes {types['text']}, anonymised_at {types['ts']})"
    )


def key_column_type(col: ColumnInfo, store: Store) -> str:
    """The control-schema type for a copy of a data table's key column."""
    return {"integer": "BIGINT", "string": store.ddl_types()["text"], "date": "DATE"}.get(
        col.type, col.raw_type
    )


def marker_tables_present(session: Session, store: Store) -> set[str]:
    rows = session.fetchall(
        sa.text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"
        ).bindparams(s=C)
    )
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


@dataclass(frozen=True)
class HoldSpec:
    """A hold as asked for, checked (`hold_spec`), before it has an id or a row."""

    scope: str
    subject_kind: str | None
    subject_id: str | None
    table_name: str | None
    purpose: str | None
    case_ref: str
    reason: str
    placed_by: str | None
    review_at: date | None


_TABLE_NAME = re.compile(r"^\w+\.\w+$")


def hold_spec(
    *,
    subject: str | None = None,
    table: str | None = None,
    purpose: str | None = None,
    case_ref: str | None = None,
    reason: str | None = None,
    placed_by: str | None = None,
    review: str | date | None = None,
) -> HoldSpec:
    """Check a hold's fields: the one check of `holds add`, of a hold queued while a DuckDB
    store was busy (`hold_queue`) and of `add_hold`. Raises `ConfigError` saying what to fix;
    the message names no subject id."""
    given = [x for x in (subject, table, purpose) if x]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --subject KIND:ID, --table SCHEMA.TABLE, --purpose NAME"
        )
    kind = sid = None
    if subject:
        kind, _, sid = subject.partition(":")
        if not kind or not sid:
            raise ConfigError("--subject takes KIND:ID, e.g. customer:1042")
    if table and not _TABLE_NAME.match(table):
        raise ConfigError(f"--table {table!r}: write schema.table")
    if not case_ref or not case_ref.strip():
        raise ConfigError("--case is required: the case reference, e.g. LIT-2026-17")
    if not reason or not reason.strip():
        raise ConfigError("--reason is required: why the data must stay as it is")
    review_at = review if isinstance(review, date) else None
    if isinstance(review, str) and review:
        try:
            review_at = date.fromisoformat(review)
        except ValueError:
            raise ConfigError(f"--review {review!r} is not a date; write YYYY-MM-DD") from None
    return HoldSpec(
        scope="subject" if subject else "table" if table else "purpose",
        subject_kind=kind,
        subject_id=sid,
        table_name=table or None,
        purpose=purpose or None,
        case_ref=case_ref,
        reason=reason,
        placed_by=placed_by or None,
        review_at=review_at,
    )


def new_hold_id() -> str:
    return "H-" + uuid.uuid4().hex[:10]


def insert_hold(session: Session, spec: HoldSpec, hold_id: str, placed_at: datetime) -> int:
    """Insert the hold unless a hold with this id exists (placed before, or released since: a
    hold imported twice from the queue is one hold); returns the rows inserted (0 or 1). Call
    inside a transaction."""
    if session.scalar(
        sa.select(sa.func.count()).select_from(holds).where(holds.c.hold_id == hold_id)
    ):
        return 0
    session.execute(
        sa.insert(holds).values(
            hold_id=hold_id,
            scope=spec.scope,
            subject_kind=spec.subject_kind,
            subject_id=spec.subject_id,
            table_name=spec.table_name,
            purpose=spec.purpose,
            case_ref=spec.case_ref,
            reason=spec.reason,
            placed_by=spec.placed_by,
            placed_at=placed_at,
            review_at=spec.review_at,
            released_at=None,
            released_by=None,
        )
    )
    return 1


def add_hold(
    session: Session,
    *,
    scope: str,
    case_ref: str,
    reason: str,
    placed_by: str | None,
    subject: str | None = None,
    table: str | None = None,
    purpose: str | None = None,
    review_at: date | None = None,
) -> str:
    spec = hold_spec(
        subject=subject if scope == "subject" else None,
        table=table if scope == "table" else None,
        purpose=purpose if scope == "purpose" else None,
        case_ref=case_ref,
        reason=reason,
        placed_by=placed_by,
        review=review_at,
    )
    hold_id = new_hold_id()
    with session.transaction():
        insert_hold(session, spec, hold_id, now())
    return hold_id


def release_hold(session: Session, hold_id: str, released_by: str | None) -> bool:
    with session.transaction():
        n = session.execute(
            sa.update(holds)
            .where(holds.c.hold_id == hold_id, holds.c.released_at.is_(None))
            .values(released_at=now(), released_by=released_by)
        )
    return n != 0


def list_holds(
    session: Session, include_released: bool = False, subject: tuple[str, str] | None = None
) -> list[Hold]:
    """Holds in the order placed. `subject` (kind, id): only the holds that can cover that
    subject's rows (purpose and table holds, and that subject's own), not the thousands of
    other subjects' holds a store may have."""
    q = sa.select(*holds.c).order_by(holds.c.placed_at)
    if not include_released:
        q = q.where(holds.c.released_at.is_(None))
    if subject is not None:
        q = q.where(
            sa.or_(
                holds.c.scope != "subject",
                sa.and_(holds.c.subject_kind == subject[0], holds.c.subject_id == subject[1]),
            )
        )
    return [Hold(*row) for row in session.fetchall(q)]


# --- runs and the audit ledger -------------------------------------------------------------


def new_run_id() -> str:
    return now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def start_run(session: Session, run_id: str, as_of: date, mode: str, digest: str) -> None:
    with session.transaction():
        session.execute(
            sa.insert(runs).values(
                run_id=run_id,
                started_at=now(),
                finished_at=None,
                as_of=as_of,
                mode=mode,
                status="running",
                policies_sha256=digest,
                summary=None,
            )
        )


def finish_run(session: Session, run_id: str, status: str, summary: dict[str, Any]) -> None:
    with session.transaction():
        session.execute(
            sa.update(runs)
            .where(runs.c.run_id == run_id)
            .values(finished_at=now(), status=status, summary=json.dumps(summary, default=str))
        )


def fail_run(session: Session, run_id: str) -> None:
    """Mark a finished run `failed` (its purge failed), keeping its summary (held fingerprints)."""
    session.execute(sa.update(runs).where(runs.c.run_id == run_id).values(status="failed"))


def interrupt_stale_runs(session: Session) -> int:
    """Mark every run still `running` as `interrupted` (finished now); returns how many. Call
    only while holding the store's run lock: no other run can then be alive, so such a row is
    one a killed run left. Requests take no run lock (one may be processed during a run), so
    their rows are left alone."""
    with session.transaction():
        return session.execute(
            sa.update(runs)
            .where(runs.c.status == "running", runs.c.mode == "run")
            .values(finished_at=now(), status="interrupted")
        )


GENESIS = "0" * 64


def audit_row_hash(row: dict[str, Any]) -> str:
    """The hash chaining a ledger row to its predecessor: SHA-256 over the previous row's hash
    and the row's own fields in a canonical form."""
    fields = {
        k: (v.isoformat() if isinstance(v, (date, datetime)) else v)
        for k, v in sorted(row.items())
        if k != "row_hash"
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def append_audit(session: Session, **row: Any) -> str:
    """Append one ledger row chained to the last one; call inside the transaction of the change
    it records. Returns the new head hash."""
    session.serialize("retention_control.audit")  # one writer extends the chain at a time
    last = session.fetchall(
        sa.select(audit.c.seq, audit.c.row_hash).order_by(audit.c.seq.desc()).limit(1)
    )
    seq, prev = (last[0][0] + 1, last[0][1] or GENESIS) if last else (1, GENESIS)
    full: dict[str, Any] = {c.name: None for c in audit.c if c.name != "row_hash"}
    full.update(row, seq=seq, recorded_at=now(), prev_hash=prev)
    full["row_hash"] = audit_row_hash(full)
    session.execute(sa.insert(audit).values(**full))
    return full["row_hash"]


def audit_head(session: Session) -> str:
    last = session.fetchall(sa.select(audit.c.row_hash).order_by(audit.c.seq.desc()).limit(1))
    return last[0][0] if last else GENESIS


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


def verify_audit_chain(session: Session) -> tuple[int, ChainBreak | None]:
    """Recompute the chain; return how many rows were checked and the first break, if any."""
    names = [c.name for c in audit.c]
    prev, expected_seq, n = GENESIS, 1, 0
    for values in session.fetchall(sa.select(*audit.c).order_by(audit.c.seq)):
        row = dict(zip(names, values, strict=True))
        n += 1
        if row["seq"] != expected_seq:
            return n, ChainBreak(
                expected_seq, f"row {expected_seq} is missing (next row is {row['seq']})"
            )
        if row["prev_hash"] != prev:
            return n, ChainBreak(
                row["seq"],
                f"row {row['seq']} does not follow row {row['seq'] - 1}: "
                "a row before it was changed, removed or reordered",
            )
        if audit_row_hash(row) != row["row_hash"]:
            return n, ChainBreak(row["seq"], f"row {row['seq']} was changed after it was written")
        prev, expected_seq = row["row_hash"], expected_seq + 1
    return n, None


def audit_rows(session: Session, run_id: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(*audit.c).order_by(audit.c.seq)
    if run_id:
        q = q.where(audit.c.run_id == run_id)
    names = [c.name for c in audit.c]
    return [dict(zip(names, r, strict=True)) for r in session.fetchall(q)]


# --- data-subject requests -----------------------------------------------------------------
# The request row holds the subject's id while the request is open (it is needed to act) and
# forgets it when the request is closed. Outcomes, receipts and exports hold counts, dates,
# rule ids and hashes only.

subject_requests = _control_table(
    "requests",
    [
        ("request_id", sa.String()),
        ("kind", sa.String()),
        ("purpose", sa.String()),
        ("subject_kind", sa.String()),
        ("subject_id", sa.String()),
        ("received_on", sa.Date()),
        ("due_on", sa.Date()),
        ("status", sa.String()),
        ("status_note", sa.String()),
        ("recheck_on", sa.Date()),
        ("created_at", sa.DateTime()),
        ("updated_at", sa.DateTime()),
        ("completed_at", sa.DateTime()),
    ],
)

request_outcomes = _control_table(
    "request_outcomes",
    [
        ("request_id", sa.String()),
        ("table_name", sa.String()),
        ("deleted", sa.BigInteger()),
        ("anonymised", sa.BigInteger()),
        ("unlinked", sa.BigInteger()),
        ("held", sa.BigInteger()),
        ("retained", sa.BigInteger()),
        ("hold_cases", sa.String()),
        ("retained_by", sa.String()),
        ("free_from", sa.Date()),
        ("updated_at", sa.DateTime()),
    ],
)

request_receipts = _control_table(
    "request_receipts",
    [
        ("request_id", sa.String()),
        ("receipt_no", sa.BigInteger()),
        ("issued_at", sa.DateTime()),
        ("status", sa.String()),
        ("body", sa.String()),
    ],
)

request_exports = _control_table(
    "request_exports",
    [
        ("request_id", sa.String()),
        ("produced_at", sa.DateTime()),
        ("table_count", sa.BigInteger()),
        ("row_count", sa.BigInteger()),
        ("byte_count", sa.BigInteger()),
        ("sha256", sa.String()),
    ],
)


# --- purges that did not complete ----------------------------------------------------------


def pending_purges(session: Session) -> list[str]:
    """Tables whose last purge did not complete (empty when the control schema is older or
    absent: nothing can be pending there)."""
    present = session.scalar(
        sa.text(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s "
            "AND table_name = 'purge_pending'"
        ).bindparams(s=C)
    )
    if not present:
        return []
    return sorted(r[0] for r in session.fetchall(sa.select(purge_pending.c.table_name)))


def add_pending_purges(session: Session, tables: list[str], run_id: str, method: str) -> None:
    have = set(pending_purges(session))
    rows = [
        {"table_name": t, "run_id": run_id, "method": method, "since": now()}
        for t in tables
        if t not in have
    ]
    if rows:
        session.execute(sa.insert(purge_pending).values(rows))


def clear_pending_purges(session: Session, tables: list[str]) -> None:
    if tables:
        session.execute(sa.delete(purge_pending).where(purge_pending.c.table_name.in_(tables)))
