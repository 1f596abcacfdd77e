"""Data-subject requests: erasure (GDPR Art. 17), consent withdrawal (Art. 7(3)), objection
(Art. 21) and access (Art. 15), answered within a month of receipt (Art. 12(3)).

A request names one subject, `kind:id`, as the policies' `subject:` fields do. Processing runs
the ordinary engine (`Planner`, `Applier`) with `SubjectPredicates`: a rule's "expired" rows
become the subject's rows, so every rule whose subject kind matches deletes or anonymises them
as its action says, while legal holds and `retain` periods keep their meaning. What they keep
is deferred, with the reason and the day it becomes free; the nightly run processes deferred
requests again when that day comes. A request is `done` when a fresh plan for the subject finds
nothing left to do and nothing held or retained, and every place the subject's data lives (the
subject map, `subjects.py`) was handled; what is left is named with its reason
(`request_outcome.py`), data we hold as a processor among it, to forward to the controller.

The request row holds the subject's id while the request is open and forgets it when it is
closed. Outcomes, receipts, exports records, the audit ledger and everything printed hold
counts, dates, table and rule names and hashes, never an identifier or a value.
"""

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey, keyed_hashes
from retention_jobs.apply import Applier, RunOptions, RunReport
from retention_jobs.errors import ConfigError, PurgeFailed
from retention_jobs.load import PolicySet
from retention_jobs.periods import Period, add_period
from retention_jobs.plan import Plan, Planner
from retention_jobs.predicates import HoldsReleased, SubjectPredicates, alias
from retention_jobs.purge import failure_message, purge_tables
from retention_jobs.request_outcome import account, request_places
from retention_jobs.resolve import BoundRule
from retention_jobs.store.base import Session, Store

KINDS = ("erasure", "consent_withdrawal", "objection", "access")
STATUSES = ("pending", "done", "partially_done", "deferred", "rejected")
OPEN_STATUSES = ("pending", "deferred", "partially_done")
REJECT_REASONS = {
    "identity_not_verified": "the requester's identity could not be verified (GDPR Art. 12(6))",
    "manifestly_unfounded": "the request is manifestly unfounded (GDPR Art. 12(5))",
    "excessive": "the request is excessive, in particular repetitive (GDPR Art. 12(5))",
    "not_applicable": "the right invoked does not apply to this processing",
}
RESPONSE_TIME = Period(months=1)
"""GDPR Art. 12(3): information on action taken within one month of receipt."""
EMAIL_COLUMN = re.compile(r"e_?mail", re.IGNORECASE)
IDENTIFIER_COLUMN = re.compile(r"e_?mail|phone|msisdn", re.IGNORECASE)
"""Columns whose values go to the suppression list (keyed hashes) when a subject is erased or opts out."""
RECEIPT_VERSION = 1


@dataclass(frozen=True)
class Request:
    request_id: str
    kind: str
    purpose: str | None
    subject_kind: str
    subject_id: str | None = field(repr=False)
    """None once the request is closed: the id is kept only while it is needed to act."""
    received_on: date
    due_on: date
    status: str
    status_note: str | None
    recheck_on: date | None
    created_at: datetime
    updated_at: datetime | None
    completed_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def overdue(self, today: date) -> bool:
        return self.is_open and today > self.due_on

    def subject(self) -> tuple[str, str]:
        """(kind, id) of the request's subject, while the request still names it."""
        if self.subject_id is None:
            raise ConfigError(
                f"request {self.request_id} is closed and no longer names its subject"
            )
        return self.subject_kind, self.subject_id

    def options(self, purposes: Iterable[str] | None) -> dict[str, Any]:
        """Keyword options of `SubjectPredicates` for this request."""
        subject_kind, subject_id = self.subject()
        return {
            "subject_kind": subject_kind,
            "subject_id": subject_id,
            "purposes": None if purposes is None else list(purposes),
        }


def due_date(received: date) -> date:
    """One calendar month after receipt (31 January -> 28 or 29 February)."""
    return add_period(received, RESPONSE_TIME)


def parse_subject(text: str) -> tuple[str, str]:
    kind, sep, sid = (text or "").partition(":")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", kind) or not sid.strip():
        raise ConfigError(
            "a subject is KIND:ID, e.g. customer:1042 (the kind as in the policies' subject fields)"
        )
    return kind, sid.strip()


# --- what the policies say about subjects ----------------------------------------------------


def kind_columns(
    policies: PolicySet, purposes: Iterable[str] | None = None
) -> dict[str, set[tuple[str, str]]]:
    """Per subject kind, the (table, column) pairs that hold its ids."""
    wanted = None if purposes is None else set(purposes)
    out: dict[str, set[tuple[str, str]]] = {}
    for p in policies.policies:
        if wanted is not None and p.purpose not in wanted:
            continue
        for r in p.rules:
            if r.subject:
                out.setdefault(r.subject.kind, set()).add((r.table, r.subject.column))
    return out


def shared_kind_problem(
    policies: PolicySet, subject_kind: str, purposes: Iterable[str]
) -> str | None:
    """A kind whose ids live in columns of different names may name different people (the
    newsletter's subscriber_id and a phone subscription's msisdn_id): acting on one id would
    act on two people. Say so, or None."""
    columns = kind_columns(policies, purposes).get(subject_kind, set())
    if len({c for _, c in columns}) <= 1:
        return None
    where = ", ".join(f"{t}.{c}" for t, c in sorted(columns))
    return (
        f"subject kind {subject_kind!r} names ids in differently named columns ({where}); if these are "
        "different people, this request would act on all of them. Give the policies distinct kinds, "
        "or confirm that the columns hold the same person's id"
    )


def scope_purposes(
    policies: PolicySet, kind: str, subject_kind: str, purpose: str | None
) -> list[str]:
    """The purposes whose rules a request acts on (export: every purpose that knows the kind).
    erasure and access: all; consent_withdrawal: the named purpose (legal basis consent);
    objection: purposes on legitimate interests (the named one, if given)."""
    out = []
    for p in policies.policies:
        if not any(r.subject and r.subject.kind == subject_kind for r in p.rules):
            continue
        if kind == "consent_withdrawal" and (p.purpose != purpose or p.legal_basis != "consent"):
            continue
        if kind == "objection" and (
            p.legal_basis != "legitimate_interests" or purpose not in (None, p.purpose)
        ):
            continue
        out.append(p.purpose)
    return sorted(out)


def check_request(policies: PolicySet, kind: str, subject_kind: str, purpose: str | None) -> None:
    """Refuse a request the policies cannot act on, with the reason."""
    if kind not in KINDS:
        raise ConfigError(f"unknown request kind {kind!r}; use one of: {', '.join(KINDS)}")
    kinds = kind_columns(policies)
    if subject_kind not in kinds:
        raise ConfigError(
            f"no policy rule has subject kind {subject_kind!r}; kinds in the policies: "
            f"{', '.join(sorted(kinds)) or 'none'}"
        )
    purposes = {p.purpose: p for p in policies.policies}
    if kind == "consent_withdrawal":
        if not purpose:
            raise ConfigError(
                "a consent withdrawal names the purpose the consent was given for: --purpose NAME"
            )
        if purpose not in purposes:
            raise ConfigError(f"no policy has purpose {purpose!r}")
        if purposes[purpose].legal_basis != "consent":
            raise ConfigError(
                f"purpose {purpose!r} rests on {purposes[purpose].legal_basis}, not consent: there is "
                "no consent to withdraw; record an objection or an erasure instead"
            )
    elif kind == "objection":
        if purpose and purpose not in purposes:
            raise ConfigError(f"no policy has purpose {purpose!r}")
        if purpose and purposes[purpose].legal_basis != "legitimate_interests":
            raise ConfigError(
                f"purpose {purpose!r} rests on {purposes[purpose].legal_basis}: an objection "
                "(Art. 21) applies to processing on legitimate interests"
            )
    elif purpose:
        raise ConfigError(f"--purpose is for consent withdrawals and objections, not for {kind}")


def resolve_email(store: Store, session: Session, policies: PolicySet, email: str) -> list[str]:
    """The subjects (`kind:id`) whose rows hold this address in a column named like e-mail,
    compared trimmed and lower-cased. Only the subjects are returned; the address is not kept."""
    from retention_jobs.resolve import resolve

    value = email.strip().lower()
    if "@" not in value:
        raise ConfigError("--email takes an e-mail address")
    found: set[str] = set()
    seen: set[tuple[str, str, str, str]] = set()
    for b in resolve(policies, store.catalog(session), store.kind):
        s = b.rule.subject
        if s is None:
            continue
        for col in b.table.columns.values():
            if col.type != "string" or not EMAIL_COLUMN.search(col.name):
                continue
            if (b.table.name, col.name, s.kind, s.column) in seen:
                continue
            seen.add((b.table.name, col.name, s.kind, s.column))
            t = alias(b.table)
            q = (
                sa.select(sa.cast(t.c[s.column], sa.String))
                .where(
                    sa.func.lower(sa.func.trim(t.c[col.name])) == value, t.c[s.column].is_not(None)
                )
                .distinct()
            )
            found |= {f"{s.kind}:{row[0]}" for row in session.fetchall(q)}
    return sorted(found)


# --- the request table ----------------------------------------------------------------------

R = control.subject_requests


def _request(row: tuple) -> Request:
    return Request(*row)


def add_request(
    session: Session,
    *,
    kind: str,
    subject_kind: str,
    subject_id: str,
    received_on: date,
    purpose: str | None = None,
) -> Request:
    request_id = "R-" + uuid.uuid4().hex[:10]
    with session.transaction():
        session.execute(
            sa.insert(R).values(
                request_id=request_id,
                kind=kind,
                purpose=purpose,
                subject_kind=subject_kind,
                subject_id=subject_id,
                received_on=received_on,
                due_on=due_date(received_on),
                status="pending",
                status_note=None,
                recheck_on=None,
                created_at=control.now(),
                updated_at=None,
                completed_at=None,
            )
        )
    return get_request(session, request_id)


def get_request(session: Session, request_id: str) -> Request:
    rows = session.fetchall(sa.select(*R.c).where(R.c.request_id == request_id))
    if not rows:
        raise ConfigError(f"no request {request_id!r}; see `retention-jobs requests list`")
    return _request(rows[0])


def list_requests(session: Session, statuses: Iterable[str] | None = None) -> list[Request]:
    q = sa.select(*R.c).order_by(R.c.received_on, R.c.created_at)
    if statuses:
        q = q.where(R.c.status.in_(list(statuses)))
    return [_request(r) for r in session.fetchall(q)]


def due_for_processing(session: Session, as_of: date) -> list[Request]:
    """Open requests to (re)process as of a date: pending ones, and deferred ones whose
    recheck day has come or that wait on a hold (no day: checked every run)."""
    return [
        r
        for r in list_requests(session, OPEN_STATUSES)
        if r.status == "pending" or r.recheck_on is None or r.recheck_on <= as_of
    ]


def _update(session: Session, request_id: str, **values: Any) -> None:
    session.execute(
        sa.update(R).where(R.c.request_id == request_id).values(updated_at=control.now(), **values)
    )


# --- outcomes and receipts --------------------------------------------------------------------


@dataclass
class TableOutcome:
    table: str
    deleted: int = 0
    anonymised: int = 0
    unlinked: int = 0
    held: int = 0
    retained: int = 0
    hold_cases: set[str] = field(default_factory=set)
    retained_by: set[str] = field(default_factory=set)
    free_from: date | None = None
    free_unknown: bool = False
    """A retained row's clock is not set: the day it becomes free is not known yet."""

    @property
    def changed(self) -> int:
        return self.deleted + self.anonymised + self.unlinked


OUT = control.request_outcomes


def load_outcomes(session: Session, request_id: str) -> dict[str, TableOutcome]:
    out = {}
    for row in session.fetchall(
        sa.select(*OUT.c).where(OUT.c.request_id == request_id).order_by(OUT.c.table_name)
    ):
        d = dict(zip([c.name for c in OUT.c], row, strict=True))
        out[d["table_name"]] = TableOutcome(
            table=d["table_name"],
            deleted=d["deleted"] or 0,
            anonymised=d["anonymised"] or 0,
            unlinked=d["unlinked"] or 0,
            held=d["held"] or 0,
            retained=d["retained"] or 0,
            hold_cases=set(filter(None, (d["hold_cases"] or "").split(","))),
            retained_by=set(filter(None, (d["retained_by"] or "").split(","))),
            free_from=d["free_from"],
        )
    return out


def _save_outcomes(session: Session, request_id: str, outcomes: dict[str, TableOutcome]) -> None:
    session.execute(sa.delete(OUT).where(OUT.c.request_id == request_id))
    for o in outcomes.values():
        if not (o.changed or o.held or o.retained):
            continue
        session.execute(
            sa.insert(OUT).values(
                request_id=request_id,
                table_name=o.table,
                deleted=o.deleted,
                anonymised=o.anonymised,
                unlinked=o.unlinked,
                held=o.held,
                retained=o.retained,
                hold_cases=",".join(sorted(o.hold_cases)),
                retained_by=",".join(sorted(o.retained_by)),
                free_from=o.free_from,
                updated_at=control.now(),
            )
        )


REC = control.request_receipts


def _issue_receipt(session: Session, request_id: str, status: str, body: dict[str, Any]) -> None:
    n = (
        session.scalar(
            sa.select(sa.func.count()).select_from(REC).where(REC.c.request_id == request_id)
        )
        or 0
    )
    session.execute(
        sa.insert(REC).values(
            request_id=request_id,
            receipt_no=n + 1,
            issued_at=control.now(),
            status=status,
            body=json.dumps(body, default=str, sort_keys=True),
        )
    )


def receipts(session: Session, request_id: str) -> list[dict[str, Any]]:
    rows = session.fetchall(
        sa.select(REC.c.body).where(REC.c.request_id == request_id).order_by(REC.c.receipt_no)
    )
    return [json.loads(r[0]) for r in rows]


def latest_receipt(session: Session, request_id: str) -> dict[str, Any] | None:
    found = receipts(session, request_id)
    return found[-1] if found else None


def export_records(session: Session, request_id: str) -> list[dict[str, Any]]:
    e = control.request_exports
    names = [c.name for c in e.c]
    return [
        dict(zip(names, r, strict=True))
        for r in session.fetchall(
            sa.select(*e.c).where(e.c.request_id == request_id).order_by(e.c.produced_at)
        )
    ]


def _receipt(
    req: Request,
    policies: PolicySet,
    status: str,
    as_of: date,
    key: PseudonymKey | None,
    **extra: Any,
) -> dict[str, Any]:
    answered = control.now().date()
    body: dict[str, Any] = {
        "receipt_version": RECEIPT_VERSION,
        "request_id": req.request_id,
        "kind": req.kind,
        "purpose": req.purpose,
        "subject_kind": req.subject_kind,
        "received_on": req.received_on.isoformat(),
        "due_on": req.due_on.isoformat(),
        "answered_on": answered.isoformat(),
        "answered_in_time": answered <= req.due_on,
        "as_of": as_of.isoformat(),
        "status": status,
        "policies_sha256": policies.digest,
        "key_id": key.key_id if key else None,
    }
    body.update(extra)
    return body


def _table_entries(outcomes: dict[str, TableOutcome]) -> list[dict[str, Any]]:
    return [
        {"table": o.table, "deleted": o.deleted, "anonymised": o.anonymised, "unlinked": o.unlinked}
        for o in sorted(outcomes.values(), key=lambda o: o.table)
        if o.changed
    ]


def _deferred_entries(outcomes: dict[str, TableOutcome]) -> list[dict[str, Any]]:
    out = []
    for o in sorted(outcomes.values(), key=lambda o: o.table):
        if o.held:
            out.append(
                {
                    "table": o.table,
                    "rows": o.held,
                    "reason": "legal_hold",
                    "case_refs": sorted(o.hold_cases),
                    "until": None,
                    "until_note": "until the hold is released",
                }
            )
        if o.retained:
            out.append(
                {
                    "table": o.table,
                    "rows": o.retained,
                    "reason": "retention_period",
                    "rules": sorted(o.retained_by),
                    "until": None
                    if o.free_unknown or o.free_from is None
                    else o.free_from.isoformat(),
                    "until_note": "when the clock of the retaining rule is set"
                    if o.free_unknown
                    else "the day the rows leave their statutory minimum period",
                }
            )
    return out


# --- processing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    request_id: str
    status: str
    receipt: dict[str, Any] | None = None
    skipped: str | None = None
    """Why the request was not processed (e.g. an access request needs an output file)."""
    failed: str | None = None
    run_id: str | None = None
    tables_changed: tuple[str, ...] = ()


def _hold_cases(holds: list[control.Hold], b: BoundRule, req: Request) -> set[str]:
    tables = {b.table.name, *(link.table.name for link in b.links())}
    out = set()
    for h in holds:
        if (
            (h.scope == "purpose" and h.purpose == b.policy.purpose)
            or (h.scope == "table" and h.table_name in tables)
            or (
                h.scope == "subject"
                and b.rule.subject is not None
                and h.subject_kind == req.subject_kind
                and h.subject_id == req.subject_id
            )
        ):
            out.add(h.case_ref)
    return out


def _count_changes(report: RunReport, outcomes: dict[str, TableOutcome]) -> None:
    for r in report.rules:
        o = outcomes.setdefault(r.plan.table, TableOutcome(r.plan.table))
        o.deleted += r.deleted
        o.anonymised += r.anonymised
        for c in r.cascades:
            oc = outcomes.setdefault(c.table, TableOutcome(c.table))
            oc.deleted += c.deleted
            oc.anonymised += c.anonymised
            oc.unlinked += c.unlinked


def _count_left(
    plan: Plan,
    planner: Planner,
    holds: list[control.Hold],
    req: Request,
    outcomes: dict[str, TableOutcome],
) -> int:
    """Fill held/retained per table from a fresh plan; return the rows still to act on."""
    pred = planner.pred
    assert isinstance(pred, SubjectPredicates)  # the planner of a request
    for o in outcomes.values():
        o.held = o.retained = 0
        o.hold_cases, o.retained_by, o.free_from, o.free_unknown = set(), set(), None, False
    bound = {b.id: b for b in planner.bound}
    to_act = 0
    for rp in plan.rules:
        b = bound[rp.rule_id]
        if rp.action == "retain" or not pred.covers(b):
            continue
        to_act += rp.to_act
        if not (rp.held or rp.retained):
            continue
        o = outcomes.setdefault(rp.table, TableOutcome(rp.table))
        # several rules can cover the same rows (two delete rules on one table): the most, not the sum
        o.held = max(o.held, rp.held)
        o.retained = max(o.retained, rp.retained)
        if rp.held:
            o.hold_cases |= _hold_cases(holds, b, req)
        for n in rp.retained_by:
            o.retained_by.add(n.rule_id)
            if n.free_from is None:
                o.free_unknown = True
            elif o.free_from is None or n.free_from > o.free_from:
                o.free_from = n.free_from
    return to_act


def suppress_subject(session: Session, planner: Planner, key: PseudonymKey) -> int:
    """Keyed hashes of the subject's e-mail addresses and phone numbers (trimmed, lower-cased,
    as the engine's `suppress` does) into the suppression list; returns the entries added."""
    pred = planner.pred
    assert isinstance(pred, SubjectPredicates)  # the planner of a request
    by_purpose: dict[str, list[pl.Series]] = {}
    seen: set[tuple[str, str]] = set()
    for b in planner.bound:
        if not pred.covers(b):
            continue
        cols = [
            c.name
            for c in b.table.columns.values()
            if c.type == "string"
            and (IDENTIFIER_COLUMN.search(c.name) or c.name in b.rule.suppress)
        ]
        cols = [c for c in cols if (b.table.name, c) not in seen]
        if not cols:
            continue
        seen |= {(b.table.name, c) for c in cols}
        t = alias(b.table)
        data = pl.from_arrow(
            # the rows the request acts on: not a client's (processor) rows, nor rows the
            # rule's filters leave out
            session.arrow(sa.select(*(t.c[c] for c in cols)).where(pred.expired(b, t)))
        )
        if isinstance(data, pl.DataFrame) and not data.is_empty():
            by_purpose.setdefault(b.policy.purpose, []).extend(
                data[c].cast(pl.String).str.strip_chars().str.to_lowercase() for c in cols
            )
    added = 0
    s = control.suppression
    for purpose, parts in sorted(by_purpose.items()):
        values = pl.concat(parts).drop_nulls()
        values = values.filter(values != "")
        if values.is_empty():
            continue
        hashes = keyed_hashes(values, key).unique()
        staged = session.stage("rj_suppress", pl.DataFrame({"identifier_hash": hashes}).to_arrow())
        with session.transaction():
            n = session.execute(
                sa.insert(s).from_select(
                    ["identifier_hash", "key_id", "purpose", "added_at"],
                    sa.select(
                        staged.c.identifier_hash,
                        sa.literal(key.key_id),
                        sa.literal(purpose),
                        sa.literal(control.now(), sa.DateTime()),
                    ).where(~staged.c.identifier_hash.in_(sa.select(s.c.identifier_hash))),
                )
            )
        session.drop_stage("rj_suppress")
        added += max(n, 0)
    return added


def process_request(
    store: Store,
    session: Session,
    policies: PolicySet,
    req: Request,
    as_of: date,
    key: PseudonymKey,
    out: str | Path | None = None,
) -> Processed:
    """Act on one open request as of a date; record outcomes and a receipt; return them."""
    if not req.is_open:
        raise ConfigError(f"request {req.request_id} is {req.status}: nothing to process")
    control.ensure_control_schema(store, session)
    if req.kind == "access":
        return _process_access(store, session, policies, req, as_of, key, out)
    purposes = scope_purposes(policies, req.kind, req.subject_kind, req.purpose)
    outcomes = load_outcomes(session, req.request_id)
    suppressed = 0
    run_id = None
    to_act = 0
    options = req.options(purposes)
    if purposes:
        if req.status == "pending":
            planner = Planner(store, session, policies, as_of, SubjectPredicates, **options)
            suppressed = suppress_subject(session, planner, key)
        report = Applier(
            store,
            session,
            policies,
            as_of,
            key,
            RunOptions(max_delete_fraction=None, purposes=tuple(purposes), mode="request"),
            predicates=SubjectPredicates,
            **options,
        ).run()
        run_id = report.run_id
        _count_changes(report, outcomes)
    check = Planner(store, session, policies, as_of, SubjectPredicates, **options)
    if purposes:
        holds = control.list_holds(session, subject=req.subject())
        to_act = _count_left(check.plan(purposes), check, holds, req, outcomes)
    # `done` only when every place the subject lives in was handled (an erasure: every table
    # that holds the kind; a withdrawal or objection: the tables its purposes' rules reach)
    places = request_places(check, req.subject_kind, None if req.kind == "erasure" else purposes)
    left = account(check, places, purposes, req.subject()[1])
    held = sum(o.held for o in outcomes.values())
    retained = sum(o.retained for o in outcomes.values())
    status, recheck, deferred_until = "done", None, None
    if to_act or held or retained or not left.complete:
        changed = any(o.changed for o in outcomes.values())
        status = "deferred" if not changed and left.waiting_only() else "partially_done"
        dated = [
            o.free_from
            for o in outcomes.values()
            if o.retained and not o.free_unknown and o.free_from
        ]
        if (
            not (held or to_act)
            and left.waiting_only()
            and dated  # rows kept only by a table's own retain rule carry no date here
            and len(dated) == sum(1 for o in outcomes.values() if o.retained)
        ):
            # only retain periods with known end dates: look again on the first, done on the last
            recheck, deferred_until = min(dated), max(dated)
    note = (
        None
        if purposes
        else "no rule of the policies applies to this request's subject kind and purpose"
    )
    body = _receipt(
        req,
        policies,
        status,
        as_of,
        key,
        run_id=run_id,
        purposes=purposes,
        tables=_table_entries(outcomes),
        deferred=_deferred_entries(outcomes),
        deferred_until=deferred_until.isoformat() if deferred_until else None,
        suppression_entries_added=suppressed,
        places=left.places,
        left=[x.entry() for x in left.left],
        forward_to_controller=left.forward(),
        note=note,
    )
    with session.transaction():
        _save_outcomes(session, req.request_id, outcomes)
        _close_or_update(session, req, status, recheck, note)
        _issue_receipt(session, req.request_id, status, body)
    return Processed(
        req.request_id,
        status,
        body,
        run_id=run_id,
        tables_changed=tuple(report.tables_changed) if run_id else (),
    )


def _close_or_update(
    session: Session, req: Request, status: str, recheck: date | None, note: str | None
) -> None:
    if status in ("done", "rejected"):
        # the id was needed to act; a closed request forgets it
        _update(
            session,
            req.request_id,
            status=status,
            recheck_on=None,
            status_note=note,
            subject_id=None,
            completed_at=control.now(),
        )
    else:
        _update(session, req.request_id, status=status, recheck_on=recheck, status_note=note)


def _process_access(
    store: Store,
    session: Session,
    policies: PolicySet,
    req: Request,
    as_of: date,
    key: PseudonymKey | None,
    out: str | Path | None,
) -> Processed:
    from retention_jobs.export import write_export

    if out is None:
        raise ConfigError(
            f"access request {req.request_id} needs an output file: "
            f"`retention-jobs requests process {req.request_id} --out FILE.zip`"
        )
    record = write_export(store, session, policies, req, as_of, Path(out))
    body = _receipt(
        req,
        policies,
        "done",
        as_of,
        key,
        export={
            "produced_at": record["produced_at"].isoformat(),
            "tables": record["table_count"],
            "rows": record["row_count"],
            "bytes": record["byte_count"],
            "sha256": record["sha256"],
        },
        note="the export was handed to the operator; no copy is kept",
    )
    with session.transaction():
        session.execute(
            sa.insert(control.request_exports).values(request_id=req.request_id, **record)
        )
        _close_or_update(session, req, "done", None, None)
        _issue_receipt(session, req.request_id, "done", body)
    return Processed(req.request_id, "done", body)


def reject_request(
    session: Session, policies: PolicySet, request_id: str, reason: str, as_of: date
) -> Processed:
    if reason not in REJECT_REASONS:
        raise ConfigError(f"unknown reason {reason!r}; use one of: {', '.join(REJECT_REASONS)}")
    req = get_request(session, request_id)
    if not req.is_open:
        raise ConfigError(f"request {request_id} is {req.status}: it cannot be rejected now")
    body = _receipt(
        req,
        policies,
        "rejected",
        as_of,
        None,
        reason=reason,
        note=REJECT_REASONS[reason],
        tables=_table_entries(load_outcomes(session, request_id)),
    )
    with session.transaction():
        _close_or_update(session, req, "rejected", None, reason)
        _issue_receipt(session, request_id, "rejected", body)
    return Processed(request_id, "rejected", body)


def process_requests(
    store: Store,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey,
    request_ids: Iterable[str] | None = None,
    out: str | Path | None = None,
) -> list[Processed]:
    """Process the given requests, or every request due as of the date (pending ones, and
    deferred ones whose day has come or that wait on a hold). An access request is processed
    only when named with an output file. A failing request does not stop the others."""
    done: list[Processed] = []
    with store.connect() as session:
        control.ensure_control_schema(store, session)
        if request_ids:
            todo = [get_request(session, i) for i in request_ids]
        else:
            todo = due_for_processing(session, as_of)
        for req in todo:
            if req.kind == "access" and out is None:
                done.append(
                    Processed(
                        req.request_id,
                        req.status,
                        skipped="an access request needs --out FILE.zip; process it by its id",
                    )
                )
                continue
            if not req.is_open:
                done.append(Processed(req.request_id, req.status, skipped=f"already {req.status}"))
                continue
            try:
                done.append(process_request(store, session, policies, req, as_of, key, out))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken request must not block the rest
                done.append(Processed(req.request_id, req.status, failed=type(exc).__name__))
    _purge(store, policies, as_of, done)
    return done


def _purge(store: Store, policies: PolicySet, as_of: date, done: list[Processed]) -> None:
    """As after a nightly run: make the erased rows' old bytes unrecoverable (after the
    session closed: a DuckDB compaction needs the file to itself), recorded in the ledger and
    left pending for the next run if it fails (purge.py)."""
    tables = sorted({t for p in done for t in p.tables_changed})
    if not tables:
        return
    run_id = next((p.run_id for p in done if p.tables_changed and p.run_id), "request-purge")
    result = purge_tables(store, policies, run_id, tables, as_of)
    if result is not None and result.get("failed"):
        raise PurgeFailed(failure_message(result))


# --- holds: review and the effect of a release -----------------------------------------------


@dataclass(frozen=True)
class HoldEffect:
    hold_id: str
    protected: int
    """Rows past their period that this hold (and no other) keeps from being acted on."""
    freed: int
    """Rows the next run would act on after a release (the rest stay retained or held otherwise)."""
    cascade_rows: int
    """Child rows that cascades of the freed rows would change."""
    by_rule: dict[str, int]


def _purposes_a_hold_touches(policies: PolicySet, hold: control.Hold) -> list[str]:
    def tables(cascades) -> set[str]:
        out: set[str] = set()
        for c in cascades:
            out |= {c.table} | tables(c.cascade)
        return out

    out = []
    for p in policies.policies:
        if hold.scope == "purpose":
            hit = p.purpose == hold.purpose
        elif hold.scope == "table":
            hit = any(
                r.table == hold.table_name or hold.table_name in tables(r.cascade) for r in p.rules
            )
        else:
            hit = any(r.subject and r.subject.kind == hold.subject_kind for r in p.rules)
        if hit:
            out.append(p.purpose)
    return out


def hold_effect(
    store: Store, session: Session, policies: PolicySet, as_of: date, hold_id: str
) -> HoldEffect:
    """Plan with and without the hold (counts only) to tell what releasing it would free."""
    hold = next(
        (h for h in control.list_holds(session, include_released=True) if h.hold_id == hold_id),
        None,
    )
    if hold is None:
        raise ConfigError(f"no hold {hold_id!r}; see `retention-jobs holds list`")
    purposes = _purposes_a_hold_touches(policies, hold)
    if not purposes or hold.released_at is not None:
        return HoldEffect(hold_id, 0, 0, 0, {})
    with_hold = Planner(store, session, policies, as_of).plan(purposes)
    without = Planner(store, session, policies, as_of, HoldsReleased, released=[hold_id]).plan(
        purposes
    )
    after = {r.rule_id: r for r in without.rules}
    by_rule, protected, freed, cascade_rows = {}, 0, 0, 0
    for r in with_hold.rules:
        a = after[r.rule_id]
        protected += r.held - a.held
        gained = a.to_act - r.to_act
        if gained:
            by_rule[r.rule_id] = gained
            freed += gained
            cascade_rows += sum(c.rows for c in a.cascades) - sum(c.rows for c in r.cascades)
    return HoldEffect(hold_id, protected, freed, cascade_rows, by_rule)


def holds_for_review(
    session: Session, as_of: date
) -> tuple[list[control.Hold], list[control.Hold]]:
    """Active holds whose review date is on or before the date, and active holds with none."""
    active = control.list_holds(session)
    due = [(h.review_at, h) for h in active if h.review_at is not None and h.review_at <= as_of]
    undated = [h for h in active if h.review_at is None]
    return [h for _, h in sorted(due, key=lambda d: d[0])], undated


# --- the suppression list ---------------------------------------------------------------------


@dataclass(frozen=True)
class SuppressionCheck:
    rows: int
    matches: list[tuple[int, str]]
    """(row number, column name): row 1 is the first line after the header."""
    other_key_entries: int
    """Entries hashed with another key: they cannot be compared with this key."""


def check_suppressed(
    session: Session, key: PseudonymKey, path: str | Path, purpose: str | None = None
) -> SuppressionCheck:
    """Which rows of a CSV file (with a header) hold a value on the suppression list, compared
    as keyed hashes of the trimmed, lower-cased text of every cell. Never returns a value."""
    try:
        data = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise ConfigError(f"cannot read {path} as CSV with a header: {type(e).__name__}") from None
    s = control.suppression
    q = sa.select(s.c.identifier_hash, s.c.key_id)
    if purpose:
        q = q.where(s.c.purpose == purpose)
    entries = session.fetchall(q)
    known = pl.Series([h for h, k in entries if k == key.key_id], dtype=pl.String)
    other = sum(1 for _, k in entries if k != key.key_id)
    matches: list[tuple[int, str]] = []
    if not known.is_empty():
        for col in data.columns:
            values = data[col].str.strip_chars().str.to_lowercase()
            values = pl.select(pl.when(values != "").then(values)).to_series()
            hit = keyed_hashes(values, key).is_in(known).fill_null(False)
            matches += [(i + 1, col) for i in hit.arg_true().to_list()]
    return SuppressionCheck(data.height, sorted(matches), other)


def summary_line(p: Processed) -> str:
    """One line about a processed request: counts, dates, rule names and case references only."""
    if p.skipped:
        return f"{p.request_id}: skipped ({p.skipped})"
    if p.failed:
        return (
            f"{p.request_id}: failed ({p.failed}); it stays {p.status} and is tried again next time"
        )
    r = p.receipt or {}
    parts = [f"{p.request_id} {r.get('kind')}: {p.status}"]
    if r.get("export"):
        e = r["export"]
        parts.append(
            f"export of {e['rows']} rows in {e['tables']} tables written (sha256 {e['sha256'][:16]}…)"
        )
    tables = r.get("tables") or []
    if tables:
        parts.append(
            f"{sum(t['deleted'] for t in tables)} deleted, {sum(t['anonymised'] for t in tables)} "
            f"anonymised, {sum(t['unlinked'] for t in tables)} unlinked in {len(tables)} tables"
        )
    for d in r.get("deferred") or []:
        if d["reason"] == "legal_hold":
            parts.append(
                f"{d['rows']} in {d['table']} held (case {', '.join(d['case_refs']) or '?'}) until released"
            )
        else:
            parts.append(
                f"{d['rows']} in {d['table']} retained by {', '.join(d['rules'])} until {d['until'] or 'unknown'}"
            )
    for x in r.get("left") or []:
        if x["reason"] not in ("legal_hold", "retention_period"):  # said above, as deferred
            parts.append(f"{x['rows']} in {x['table']} left: {x['reason']}")
    if r.get("suppression_entries_added"):
        parts.append(f"{r['suppression_entries_added']} suppression entries added")
    if r.get("note"):
        parts.append(r["note"])
    return "; ".join(parts)
