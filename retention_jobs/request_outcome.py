"""What a data-subject request left of its subject, table by table, and why.

After a request has acted, every place the subject's data lives (`subjects.subject_map`) is
counted again: rows of the subject still there are either anonymised on purpose by a rule of
the request (handled), or left, each with one reason, the first that applies:

- `forward_to_controller`: a rule of a `role: processor` policy covers the row (we hold it
  for a client; the client decides, GDPR Art. 28(3)(e)); never changed by a request;
- `legal_hold`: an active hold covers the row (its subject, its table, or its rule's purpose);
- `retention_period`: a `retain` rule keeps it, or a cascade of the row would reach a kept row;
- `kept_with_parent`: a cascade of the request's rule reaches it from a row that is kept;
- `not_yet_acted`: a rule of the request covers it and could act (a row changed by the
  application meanwhile, or a failed batch): the next processing tries again;
- `not_covered`: rules name the table, but none that covers these rows in this request
  (their `where`/`related` filters leave them out, or they declare no subject of this kind);
- `no_rule`: no rule of the request's purposes names the table at all.

A request is `done` only when nothing is left. Counts, table and rule names and case
references only: never an id or a value.
"""

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.plan import Planner, link_paths, parent_values
from retention_jobs.predicates import SubjectPredicates, alias
from retention_jobs.resolve import BoundRule
from retention_jobs.subjects import Place, rows_of, subject_map

HANDLED = "anonymised"
REASONS = (
    "forward_to_controller",
    "legal_hold",
    "retention_period",
    "kept_with_parent",
    "not_yet_acted",
    "not_covered",
    "no_rule",
)
WAITING = ("legal_hold", "retention_period", "kept_with_parent")
"""Reasons that end by themselves (a release, a date): the request waits, deferred."""
NOTES = {
    "forward_to_controller": "we hold these rows as a processor for a client: forward the "
    "request to the controller (the client); the suite does not change them",
    "legal_hold": "kept under a legal hold until it is released",
    "retention_period": "kept for a statutory minimum period",
    "kept_with_parent": "kept with a row they belong to, which is itself kept",
    "not_yet_acted": "not changed yet (changed by the application meanwhile, or a failed batch); "
    "the next processing tries again",
    "not_covered": "rules name this table but none covers these rows in this request: check "
    "the rules' filters and subject, or act on the rows by hand",
    "no_rule": "no rule of the request's purposes names this table: write a policy for it, "
    "or act on the rows by hand",
}


@dataclass(frozen=True)
class Left:
    table: str
    rows: int
    reason: str
    rules: tuple[str, ...] = ()
    case_refs: tuple[str, ...] = ()

    def entry(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rows": self.rows,
            "reason": self.reason,
            "rules": list(self.rules),
            "case_refs": list(self.case_refs),
            "note": NOTES[self.reason],
        }


@dataclass
class Account:
    """Per place of the subject: rows handled on purpose, and rows left with a reason."""

    places: list[str] = field(default_factory=list)
    anonymised: dict[str, int] = field(default_factory=dict)
    left: list[Left] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.left

    def waiting_only(self) -> bool:
        return all(x.reason in WAITING for x in self.left)

    def forward(self) -> list[dict[str, Any]]:
        return [
            {"table": x.table, "rows": x.rows, "rules": list(x.rules)}
            for x in self.left
            if x.reason == "forward_to_controller"
        ]


def request_places(planner: Planner, subject_kind: str, purposes: list[str] | None) -> list[Place]:
    """Where the request must have handled the subject: for an erasure (`purposes` None) every
    place of the subject kind; otherwise the places the named purposes' rules reach."""
    places = subject_map(planner.policies, planner.catalog, subject_kind)
    if purposes is None:
        return places
    named = {
        name
        for b in planner.bound
        if b.policy.purpose in purposes
        for name in (b.table.name, *(link.table.name for link in b.links()))
    }
    return [p for p in places if p.table.name in named]


def account(planner: Planner, places: list[Place], purposes: list[str], subject_id: str) -> Account:
    """Count the subject's rows in every place, each under the first reason that applies."""
    pred = planner.pred
    assert isinstance(pred, SubjectPredicates)  # the planner of a request
    holds = control.list_holds(planner.session, subject=(pred.subject_kind, subject_id))
    out = Account(places=[p.table.name for p in places])
    for place in places:
        counts, names = _count(planner, pred, place, purposes, subject_id)
        for reason, rows in sorted(counts.items()):
            if reason == HANDLED:
                out.anonymised[place.table.name] = rows
                continue
            cases: tuple[str, ...] = ()
            if reason == "legal_hold":
                cases = _case_refs(holds, place.table.name, names["purposes"], pred)
            out.left.append(
                Left(place.table.name, rows, reason, tuple(sorted(names.get(reason, ()))), cases)
            )
    out.left.sort(key=lambda x: (x.table, REASONS.index(x.reason)))
    return out


def _domain(b: BoundRule, table: str, t: sa.FromClause, root_test) -> list[sa.ColumnElement]:
    """Where `b` reaches the rows of `table` (in `t`): its own rows passing `root_test`, and the
    rows its cascades reach from those."""
    out = []
    if b.table.name == table:
        out.append(root_test(b, t))
    for link, path in link_paths(b):
        if link.table.name != table:
            continue
        root = alias(b.table)
        root_col = path[0].references if path else link.references
        roots = sa.select(root.c[root_col]).where(root_test(b, root))
        out.append(sa.func.coalesce(t.c[link.on].in_(parent_values(link, path, roots)), False))
    return out


def _count(
    planner: Planner,
    pred: SubjectPredicates,
    place: Place,
    purposes: list[str],
    subject_id: str,
) -> tuple[dict[str, int], dict[str, set[str]]]:
    name = place.table.name
    t = alias(place.table)
    scoped = [
        b for b in planner.bound if b.policy.purpose in purposes and b.policy.role == "controller"
    ]
    own = [b for b in scoped if pred.covers(b) and b.rule.action != "retain"]
    on_table = [b for b in own if b.table.name == name]
    processor = [b for b in planner.bound if b.policy.role == "processor"]

    names: dict[str, set[str]] = {
        "purposes": {b.policy.purpose for b in planner.bound if _names(b, name)},
        "forward_to_controller": {b.id for b in processor if _names(b, name)},
        # the retain rules of the tables a kept row's cascades reach; narrowed below to the
        # rules of this table that keep one of the rows, where any does
        "retention_period": {
            r.id for b in on_table for link in b.links() for r in pred.retain_rules(link.table.name)
        },
        "kept_with_parent": {
            b.id for b in own if any(link.table.name == name for link in b.links())
        },
        "not_yet_acted": {b.id for b in on_table},
        "not_covered": {b.id for b in scoped if _names(b, name)},
    }
    anonymised = [
        sa.and_(pred.expired(b, t), pred.done(b, t))
        for b in on_table
        if b.rule.action == "anonymise"
    ]
    forward = [pred.processor_data(name, t)] if processor else []
    held = [pred.row_held(name, t, place.paths)]
    held += [sa.and_(pred.expired(b, t), pred.held(b, t)) for b in on_table]
    retained = [pred.retained_here(name, t)]
    retained += [sa.and_(pred.expired(b, t), pred.retained(b, t)) for b in on_table]
    with_parent = [
        d for b in own for d in _domain(b, name, t, pred.expired) if b.table.name != name
    ]
    acting = [pred.expired(b, t) for b in on_table]
    whens = [
        (HANDLED, anonymised),
        ("forward_to_controller", forward),
        ("legal_hold", held),
        ("retention_period", retained),
        ("kept_with_parent", with_parent),
        ("not_yet_acted", acting),
    ]
    reason = sa.case(
        *((sa.or_(*conds), label) for label, conds in whens if conds),
        else_=sa.literal("not_covered" if names["not_covered"] else "no_rule"),
    ).label("reason")
    keeping = pred.retain_rules(name)
    flags = [
        sa.case((sa.func.coalesce(pred.inside_retain(r, t), sa.false()), 1), else_=0).label(f"k{i}")
        for i, r in enumerate(keeping)
    ]
    inner = sa.select(reason, *flags).where(rows_of(place, t, subject_id)).subquery()
    rows = planner.session.fetchall(
        sa.select(
            inner.c.reason,
            sa.func.count(),
            *(sa.func.sum(inner.c[f"k{i}"]) for i in range(len(keeping))),
        ).group_by(inner.c.reason)
    )
    counts = {}
    for reason_, n, *kept in rows:
        counts[reason_] = int(n)
        if reason_ == "retention_period":
            here = {r.id for r, k in zip(keeping, kept, strict=True) if k}
            names["retention_period"] = here or names["retention_period"]
    return counts, names


def _names(b: BoundRule, table: str) -> bool:
    return b.table.name == table or any(link.table.name == table for link in b.links())


def _case_refs(
    holds: list[control.Hold], table: str, purposes: set[str], pred: SubjectPredicates
) -> tuple[str, ...]:
    """The case references of the active holds that can cover the subject's rows of `table`."""
    out = set()
    for h in holds:
        if (
            (h.scope == "table" and h.table_name == table)
            or (h.scope == "purpose" and h.purpose in purposes)
            or (
                h.scope == "subject"
                and h.subject_kind == pred.subject_kind
                and h.subject_id == pred.subject_id
            )
        ):
            out.add(h.case_ref)
    return tuple(sorted(out))
