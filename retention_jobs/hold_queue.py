"""Holds placed while a DuckDB store is busy.

DuckDB takes one writer process: while a run has the file open, `holds add` cannot write the
holds table. A hold that arrives late is not safe (the run could change the held rows), so it
is queued instead: one JSON line appended to `<file>.holds-queue` beside the DuckDB file, under
an exclusive `flock`, with `O_APPEND` and an fsync before `holds add` says "queued". The run
imports the queue into the holds table before planning and before every batch, and every
writable open of the store does too (`DuckDBStore.session`).

Crash safety: each queued hold carries the id it was given when queued, and the import inserts
only ids the holds table does not have, in one transaction, before it empties the queue. A
crash between the commit and the truncation leaves lines that the next import finds already
imported (one hold, not two; a hold released since is not placed again). A line that does not
parse (a `holds add` killed mid-write, a hand edit) is refused with its location, never
skipped: the run stops before its next batch rather than act without a hold it was given.

Releases are never queued: a release that arrives late only keeps rows a little longer.
"""

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from retention_jobs import control
from retention_jobs.errors import ConfigError
from retention_jobs.store.base import Session, Store

VERSION = 1
_FIELDS = ("subject", "table", "purpose", "case_ref", "reason", "placed_by", "review")


@dataclass(frozen=True)
class Queued:
    hold_id: str
    placed_at: datetime
    spec: control.HoldSpec


def queue_path(store: Store) -> Path | None:
    """Where `store` queues holds while it is busy; None for stores that take holds at any time
    (PostgreSQL: a run locks rows, not the holds table)."""
    path = getattr(store, "path", None)
    if store.kind != "duckdb" or not isinstance(path, Path):
        return None
    return path.with_name(path.name + ".holds-queue")


@contextmanager
def _locked(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, flags, 0o600)  # holds name people: owner only
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def enqueue(store: Store, spec: control.HoldSpec) -> str:
    """Append `spec` to the store's queue, durably; return the hold's id."""
    path = queue_path(store)
    if path is None:
        raise ConfigError(f"{store.kind} stores take holds at any time; they have no hold queue")
    hold_id, placed_at = control.new_hold_id(), control.now()
    entry = {
        "v": VERSION,
        "hold_id": hold_id,
        "placed_at": placed_at.isoformat(),
        "subject": f"{spec.subject_kind}:{spec.subject_id}" if spec.scope == "subject" else None,
        "table": spec.table_name,
        "purpose": spec.purpose,
        "case_ref": spec.case_ref,
        "reason": spec.reason,
        "placed_by": spec.placed_by,
        "review": spec.review_at.isoformat() if spec.review_at else None,
    }
    line = (json.dumps(entry, ensure_ascii=True) + "\n").encode()
    existed = path.exists()
    with _locked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as fd:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    if not existed:  # the new file's name must survive a crash too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return hold_id


def _refuse(path: Path, line: int, what: str) -> ConfigError:
    # the line itself is not shown: it names a subject
    return ConfigError(
        f"{path}:{line}:1: queued hold: {what}; nothing was imported from the queue. Check with "
        "`retention-jobs holds list` whether the hold is in place, place it again with "
        "`retention-jobs holds add` if not, then delete this line from the file"
    )


def parse(path: Path, data: bytes) -> list[Queued]:
    """The queued holds in `data`, each checked as `holds add` checks it (`control.hold_spec`).
    Any line that is not a complete, valid entry refuses the whole queue with its location."""
    out: list[Queued] = []
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, start=1):
        last = n == len(lines)
        if last and not raw:
            break  # the file ends with a newline, as every complete entry does
        if last:
            raise _refuse(
                path, n, "the line is incomplete (a `holds add` stopped while writing it)"
            )
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _refuse(path, n, "the line is not a JSON object") from None
        if not isinstance(entry, dict) or entry.get("v") != VERSION:
            raise _refuse(path, n, f"the line is not a version-{VERSION} queue entry")
        fields = {k: entry.get(k) for k in _FIELDS}
        if not all(v is None or isinstance(v, str) for v in fields.values()):
            raise _refuse(path, n, "a field is neither text nor null")
        try:
            spec = control.hold_spec(**fields)
            hold_id, placed_at = entry.get("hold_id"), entry.get("placed_at")
            if not isinstance(hold_id, str) or not hold_id.startswith("H-"):
                raise ConfigError("hold_id: not a hold id")
            if not isinstance(placed_at, str):
                raise ConfigError("placed_at: missing")
            at = datetime.fromisoformat(placed_at)
        except ConfigError as e:
            raise _refuse(path, n, str(e)) from None
        except ValueError:
            raise _refuse(path, n, "placed_at: not a date and time") from None
        out.append(Queued(hold_id, at, spec))
    return out


def import_queued(
    store: Store, session: Session, ledger: Callable[[int], None] | None = None
) -> int:
    """Move the queued holds of `store` into its holds table; return how many were new. Cheap
    when the queue is empty (one stat). Call with a writable session, outside a transaction.
    `ledger(n)` runs inside the import's transaction when it placed n > 0 holds (a run writes
    its audit row there)."""
    path = queue_path(store)
    if path is None:
        return 0
    try:
        if path.stat().st_size == 0:
            return 0
    except FileNotFoundError:
        return 0
    with _locked(path, os.O_RDWR) as fd:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        if not data:
            return 0
        queued = parse(path, data)
        control.ensure_control_schema(store, session)
        with session.transaction():
            new = sum(control.insert_hold(session, q.spec, q.hold_id, q.placed_at) for q in queued)
            if new and ledger is not None:
                ledger(new)
        # committed: a crash from here on leaves lines the next import finds already in place
        os.ftruncate(fd, 0)
        os.fsync(fd)
    return new
