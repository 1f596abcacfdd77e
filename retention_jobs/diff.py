"""What a change to the policies does to tonight's run: plan two revisions on one store state.

`retention-jobs diff --base origin/main` loads the policy files as they were at the base
revision (`git ls-tree` + `git show`) and as they are at the head (a revision or the working
tree), resolves and plans both against the same store, on one read-only connection inside one
transaction (so both see the same rows), and reports per rule and per table how many rows a
run would newly delete or anonymise, how many it would no longer act on, and which definitions
changed (rules added or removed, keep_for, strategies, anonymised columns).

Counts only: the comparisons run inside the store as `count(*)` over the two plans'
predicates; no key and no value ever reaches Python.

The guard: a change that makes a run delete more than `max_delete_fraction` of a table needs
an approval file (`approvals/*.yaml`, reviewed like code) that names a rule acting on that
table and a `max_fraction` covering the measured share. The share is measured like the run's
own guard: the head plan's rows to delete in the table (rule rows plus cascade rows) over the
table's rows. Only tables where the change adds deletions are held to it: rows that the base
revision deletes anyway are not the change's doing.
"""

import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.dialects import postgresql

from retention_jobs.errors import ConfigError, PolicyError, Problem
from retention_jobs.load import (
    PolicySet,
    _locate,
    _MarkedLoader,
    _to_python,
    format_loc,
    load_policies,
    load_texts,
    policy_paths,
)
from retention_jobs.plan import Plan, Planner, link_paths, parent_values
from retention_jobs.policy import (
    Constant,
    Fake,
    Generalise,
    Hash,
    Json,
    Mask,
    Redact,
    RelatedClock,
    Rule,
    Strategy,
)
from retention_jobs.predicates import alias
from retention_jobs.store.base import Session, Store

WORKING_TREE = "working tree"
DEFAULT_APPROVALS = "approvals"


# --- loading a revision ----------------------------------------------------------------------


def _git(args: list[str], cwd: Path | None) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ConfigError("git is not installed; `diff` reads the base revision with git") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise ConfigError(f"git {' '.join(args[:2])}: {msg}")
    return proc.stdout


def verify_revision(ref: str, cwd: Path | None = None) -> str:
    """The commit `ref` names; ConfigError when git does not know it."""
    if ref.startswith("-"):
        raise ConfigError(f"{ref!r} is not a revision")
    try:
        return _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd).strip()
    except ConfigError:
        raise ConfigError(
            f"unknown revision {ref!r}; fetch it first (CI: checkout with fetch-depth: 0)"
        ) from None


def revision_files(
    ref: str, path: str, cwd: Path | None = None, suffixes: tuple[str, ...] = (".yaml", ".yml")
) -> list[tuple[str, str]]:
    """`(shown name, text)` of the files that `path` (a directory: its files with `suffixes`,
    not recursive, as `load_policies` reads a directory; or one file) holds at `ref`.
    Names are shown as `REF:path`, git's own notation. Paths are relative to `cwd`."""
    verify_revision(ref, cwd)
    rel = PurePosixPath(Path(path).as_posix())
    listing = _git(["ls-tree", "-r", "--name-only", ref, "--", str(rel)], cwd).splitlines()
    wanted: list[str] = []
    for name in listing:
        p = PurePosixPath(name)
        if name == str(rel) or (p.parent == rel and p.suffix in suffixes):
            wanted.append(name)
    out = []
    for name in sorted(wanted, key=lambda n: (PurePosixPath(n).suffix != ".yaml", n)):
        text = _git(["show", f"{ref}:./{name}"], cwd)
        out.append((f"{ref}:{name}", text))
    return out


def load_side(ref: str | None, policy_dir: str, cwd: Path | None = None) -> PolicySet:
    """The policies at `ref`, or in the working tree when `ref` is None. A revision without
    policy files is an empty set (the change adds them all)."""
    if ref is None:
        return load_policies([policy_dir])
    return load_texts(revision_files(ref, policy_dir, cwd))


# --- approvals -------------------------------------------------------------------------------


class Approval(BaseModel):
    """An approved deletion share, reviewed in the pull request like the policy change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    purpose: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    rule: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    max_fraction: float = Field(gt=0, le=1)
    """The largest share of a table the rule's change may delete in one run (0 < x <= 1)."""
    approved_by: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires: date | None = None
    """Optional last as-of date on which the approval counts."""

    @property
    def rule_id(self) -> str:
        return f"{self.purpose}/{self.rule}"


@dataclass(frozen=True)
class ApprovalFile:
    approval: Approval
    path: str


def load_approval_texts(items: Iterable[tuple[str, str]]) -> list[ApprovalFile]:
    problems: list[Problem] = []
    out: list[ApprovalFile] = []
    for shown, text in items:
        marks: dict = {(): (1, 1)}
        loader = _MarkedLoader(text)
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problems.append(
                Problem(shown, line, col, "", "not valid YAML", "check indentation and quoting")
            )
            continue
        finally:
            loader.dispose()
        found: list[Problem] = []
        data = _to_python(node, (), marks, found, shown, loader) if node is not None else None
        problems.extend(found)
        if not isinstance(data, dict):
            problems.append(
                Problem(
                    shown,
                    1,
                    1,
                    "",
                    "an approval is a mapping",
                    "purpose, rule, max_fraction, approved_by, reason",
                )
            )
            continue
        try:
            out.append(ApprovalFile(Approval.model_validate(data), shown))
        except ValidationError as e:
            for err in e.errors():
                loc = tuple(err["loc"])
                line, col = _locate(marks, loc)
                msg = err["msg"].removeprefix("Value error, ")
                hint = "add it (see approvals/README.md)" if err["type"] == "missing" else ""
                problems.append(Problem(shown, line, col, format_loc(loc), msg, hint))
    if problems:
        raise PolicyError(problems)
    return out


def load_approvals(
    ref: str | None, approvals_dir: str, cwd: Path | None = None
) -> list[ApprovalFile]:
    """Approval files at the head: `approvals_dir/*.yaml` at `ref` or in the working tree."""
    if ref is not None:
        return load_approval_texts(revision_files(ref, approvals_dir, cwd))
    base = Path(cwd or ".") / approvals_dir
    if not base.exists():
        return []
    items = []
    for p in policy_paths([base]):
        shown = str(Path(approvals_dir) / p.name) if base.is_dir() else approvals_dir
        items.append((shown, p.read_text(encoding="utf-8")))
    return load_approval_texts(items)


# --- describing definitions ------------------------------------------------------------------


def strategy_text(s: Strategy) -> str:
    """A strategy in its short form, for people."""
    if isinstance(s, Redact):
        return "redact"
    if isinstance(s, Hash):
        text = f"hash {s.length}" if s.length else "hash"
        return text + (f" @{s.email_domain}" if s.email_domain else "")
    if isinstance(s, Fake):
        return f"fake {s.provider}" + (f"/{s.locale}" if s.locale else "")
    if isinstance(s, Mask):
        opts = [f"{k} {getattr(s, k)}" for k in ("keep_first", "keep_last") if getattr(s, k)]
        if s.char != "*":
            opts.append(f"char {s.char}")
        return "mask" + (f" ({', '.join(opts)})" if opts else "")
    if isinstance(s, Generalise):
        return f"generalise {s.to}" if s.to else f"generalise band {s.band:g}"
    if isinstance(s, Constant):
        return "constant"
    if isinstance(s, Json):
        if s.clear:
            return f"json clear {s.clear}"
        parts = [f"{how} {', '.join(getattr(s, how))}" for how in ("drop", "redact", "hash")]
        return "json (" + "; ".join(p for p in parts if not p.endswith(" ")) + ")"
    return type(s).__name__.lower()


def clock_text(r: Rule) -> str:
    c = r.clock
    if isinstance(c, RelatedClock):
        return f"{c.aggregate}({c.table}.{c.column})"
    return c


def rule_changes(base: Rule | None, head: Rule | None) -> tuple[list[str], list[str], list[str]]:
    """(changes, new anonymised columns, changed strategies) between two versions of a rule."""
    if base is None and head is None:
        return [], [], []
    if base is None:
        assert head is not None
        cols = [f"{c} ({strategy_text(s)})" for c, s in head.columns.items()]
        return (
            ["added"] + ([f"anonymises {', '.join(cols)}"] if cols else []),
            list(head.columns),
            [],
        )
    if head is None:
        return ["removed"], [], []
    out: list[str] = []
    if base.table != head.table:
        out.append(f"table {base.table} → {head.table}")
    if base.action != head.action:
        out.append(f"action {base.action} → {head.action}")
    if base.keep_for != head.keep_for:
        out.append(f"keep_for {base.keep_for} → {head.keep_for}")
    if base.round_clock_to != head.round_clock_to:
        out.append(
            f"round_clock_to {base.round_clock_to or 'none'} → {head.round_clock_to or 'none'}"
        )
    if base.clock != head.clock:
        out.append(f"clock {clock_text(base)} → {clock_text(head)}")
    if base.where != head.where:
        out.append("where changed")
    if base.related != head.related:
        out.append("related changed")
    if base.keys != head.keys:
        out.append("key changed")
    if (base.subject, base.no_subject_reason) != (head.subject, head.no_subject_reason):
        out.append("subject changed")
    new_cols = [c for c in head.columns if c not in base.columns]
    gone = [c for c in base.columns if c not in head.columns]
    changed = [c for c in head.columns if c in base.columns and base.columns[c] != head.columns[c]]
    if new_cols:
        out.append(
            "anonymises also "
            + ", ".join(f"{c} ({strategy_text(head.columns[c])})" for c in new_cols)
        )
    if gone:
        out.append("no longer anonymises " + ", ".join(gone))
    for c in changed:
        out.append(f"{c}: {strategy_text(base.columns[c])} → {strategy_text(head.columns[c])}")
    if base.cascade != head.cascade:
        out.append("cascade changed")
    if base.suppress != head.suppress:
        out.append("suppress changed")
    return out, new_cols, changed


# --- the diff --------------------------------------------------------------------------------


@dataclass
class RuleDiff:
    rule_id: str
    table: str
    status: str
    """added, removed, changed (definition), affected (same definition, other counts) or unchanged."""
    base_action: str | None
    head_action: str | None
    base_keep_for: str | None
    head_keep_for: str | None
    changes: list[str]
    new_columns: list[str]
    changed_strategies: list[str]
    base_to_act: int
    head_to_act: int
    newly: int
    """Rows the head acts on tonight that the base would not."""
    no_longer: int
    """Rows the base acts on tonight that the head leaves alone."""
    base_retained: int
    head_retained: int

    @property
    def action(self) -> str:
        if self.base_action and self.head_action and self.base_action != self.head_action:
            return f"{self.base_action} → {self.head_action}"
        return self.head_action or self.base_action or ""


@dataclass
class TableDiff:
    table: str
    rows: int
    deleted_base: int
    deleted_head: int
    newly_deleted: int
    no_longer_deleted: int
    anonymised_base: int
    anonymised_head: int
    newly_anonymised: int
    no_longer_anonymised: int
    head_delete_rows: int
    """The head plan's rows to delete as the run's guard counts them (rule rows + cascade rows)."""
    share: float
    """head_delete_rows / rows."""
    over: bool = False
    """Over the limit, and the change adds deletions here."""
    approved_by: str | None = None
    """The approval file that covers this table, if it is over."""
    rules: list[str] = field(default_factory=list)
    """Rules (either revision) acting on the table directly or through a cascade."""

    @property
    def changed(self) -> bool:
        return any(
            (
                self.newly_deleted,
                self.no_longer_deleted,
                self.newly_anonymised,
                self.no_longer_anonymised,
                self.deleted_base != self.deleted_head,
                self.anonymised_base != self.anonymised_head,
            )
        )


@dataclass
class PlanDiff:
    base: str
    head: str
    as_of: date
    store: str
    max_delete_fraction: float | None
    rules: list[RuleDiff]
    tables: list[TableDiff]
    notes: list[str]
    unchanged_rules: int
    approvals: list[str]

    @property
    def over(self) -> list[TableDiff]:
        return [t for t in self.tables if t.over and not t.approved_by]

    @property
    def passed(self) -> bool:
        return not self.over

    def totals(self) -> dict[str, int]:
        return {
            "rules_changed": sum(r.status == "changed" for r in self.rules),
            "rules_added": sum(r.status == "added" for r in self.rules),
            "rules_removed": sum(r.status == "removed" for r in self.rules),
            "rules_unchanged": self.unchanged_rules,
            "newly_deleted": sum(t.newly_deleted for t in self.tables),
            "newly_anonymised": sum(t.newly_anonymised for t in self.tables),
            "no_longer_acted_on": sum(
                t.no_longer_deleted + t.no_longer_anonymised for t in self.tables
            ),
        }

    def approval_message(self) -> str:
        over = "; ".join(
            f"{t.table}: {t.head_delete_rows} of {t.rows} rows ({t.share:.1%})" for t in self.over
        )
        return (
            f"this change makes a run delete more than {self.max_delete_fraction:.0%} of a table: {over}. "
            "Check the diff, then add an approval (approvals/*.yaml: purpose, rule, max_fraction, "
            "approved_by, reason) to the pull request; see docs/review.md"
        )


def _snapshot(store: Store, session: Session) -> None:
    """One transaction for both plans, so both count the same rows."""
    session.begin()
    if store.kind == "postgresql":
        session.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def _coalesced(parts: list[sa.ColumnElement]) -> sa.ColumnElement:
    if not parts:
        return sa.false()
    return sa.func.coalesce(sa.or_(*parts), sa.false())


def _acting_on(p: Planner, table: str, action: str, t: sa.FromClause) -> sa.ColumnElement:
    """Rows of `table` that plan `p` deletes (or anonymises): by a rule on the table, or by a
    cascade from another rule's rows."""
    parts: list[sa.ColumnElement] = []
    for b in p.bound:
        if b.rule.action == action and b.table.name == table:
            parts.append(p.pred.actionable(b, t))
        if b.rule.action == "retain":
            continue
        for link, path in link_paths(b):
            if link.table.name == table and link.spec.action == action:
                root_col = path[0].references if path else link.references
                parts.append(t.c[link.on].in_(parent_values(link, path, p.acted_keys(b, root_col))))
    return _coalesced(parts)


def _flags(t: sa.FromClause, **predicates: sa.ColumnElement) -> sa.Subquery:
    """One boolean column per predicate, each evaluated once per row: counting over this
    subquery is much faster than repeating the predicates (with their correlated subqueries)
    inside several sums."""
    return (
        sa.select(*(sa.func.coalesce(p, sa.false()).label(name) for name, p in predicates.items()))
        .select_from(t)
        .subquery("rj_flags")
    )


_DIALECT = postgresql.dialect()
_ALIAS = re.compile(r"\bt\d+\b")


def _canonical(expr: sa.ColumnElement) -> tuple[str, tuple]:
    """SQL and parameters of a predicate with its table aliases numbered by first appearance:
    two predicates with the same canonical form select the same rows."""
    compiled = expr.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    names: dict[str, str] = {}
    sql = _ALIAS.sub(lambda m: names.setdefault(m.group(0), f"a{len(names)}"), str(compiled))
    return sql, tuple(repr(compiled.params[k]) for k in sorted(compiled.params))


def _same(a: sa.ColumnElement, b: sa.ColumnElement) -> bool:
    return _canonical(a) == _canonical(b)


def _sum(cond: sa.ColumnElement) -> sa.ColumnElement:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)


def _touching(p: Planner, table: str) -> set[str]:
    out = set()
    for b in p.bound:
        if b.table.name == table or any(link.table.name == table for link, _ in link_paths(b)):
            out.add(b.id)
    return out


def _guard_counts(plan: Plan) -> dict[str, int]:
    """Rows to delete per table as `Applier.check_delete_share` counts them."""
    deleting: dict[str, int] = {}
    for rp in plan.rules:
        if rp.action == "delete":
            deleting[rp.table] = deleting.get(rp.table, 0) + rp.to_act
        for c in rp.cascades:
            if c.action == "delete":
                deleting[c.table] = deleting.get(c.table, 0) + c.rows
    return deleting


def _policy_notes(base: PolicySet, head: PolicySet) -> list[str]:
    b = {f.policy.purpose: f.policy for f in base.files}
    h = {f.policy.purpose: f.policy for f in head.files}
    notes = []
    for purpose in sorted(set(b) | set(h)):
        if purpose not in b:
            notes.append(f"purpose {purpose} added")
            continue
        if purpose not in h:
            notes.append(f"purpose {purpose} removed")
            continue
        for name in ("legal_basis", "owner", "timezone", "locale"):
            old, new = getattr(b[purpose], name), getattr(h[purpose], name)
            if old != new:
                notes.append(f"purpose {purpose}: {name} {old} → {new}")
    return notes


def compute_diff(
    store: Store,
    base: PolicySet,
    head: PolicySet,
    as_of: date,
    *,
    base_label: str,
    head_label: str = WORKING_TREE,
    max_delete_fraction: float | None = 0.25,
    approvals: Sequence[ApprovalFile] = (),
) -> PlanDiff:
    """Plan both revisions on one read-only connection, in one transaction, and compare."""
    with store.connect(read_only=True) as session:
        _snapshot(store, session)
        try:
            return _compare(
                store,
                session,
                base,
                head,
                as_of,
                base_label,
                head_label,
                max_delete_fraction,
                list(approvals),
            )
        finally:
            session.rollback()


def _planners(
    store: Store, session: Session, base: PolicySet, head: PolicySet, as_of: date
) -> tuple[Planner, Planner]:
    problems: list[Problem] = []
    planners: list[Planner] = []
    for side in (base, head):
        try:
            planners.append(Planner(store, session, side, as_of))
        except PolicyError as e:
            problems.extend(e.problems)
    if problems:
        raise PolicyError(problems)
    return planners[0], planners[1]


def _compare(
    store: Store,
    session: Session,
    base: PolicySet,
    head: PolicySet,
    as_of: date,
    base_label: str,
    head_label: str,
    limit: float | None,
    approvals: list[ApprovalFile],
) -> PlanDiff:
    pb, ph = _planners(store, session, base, head, as_of)
    plan_b, plan_h = pb.plan(), ph.plan()
    bound_b = {b.id: b for b in pb.bound}
    bound_h = {b.id: b for b in ph.bound}
    rp_b = {r.rule_id: r for r in plan_b.rules}
    rp_h = {r.rule_id: r for r in plan_h.rules}

    rules: list[RuleDiff] = []
    unchanged = 0
    for rid in sorted(set(bound_b) | set(bound_h)):
        bb, bh = bound_b.get(rid), bound_h.get(rid)
        either = bh or bb
        assert either is not None  # the id of a rule of at least one revision
        rb, rh = rp_b.get(rid), rp_h.get(rid)
        changes, new_cols, changed_cols = rule_changes(
            bb.rule if bb else None, bh.rule if bh else None
        )
        base_act = rb.to_act if rb else 0
        head_act = rh.to_act if rh else 0
        if bb and bh and bb.rule.action == bh.rule.action and bb.table.name == bh.table.name:
            t = alias(bh.table)
            act_h, act_b = ph.pred.actionable(bh, t), pb.pred.actionable(bb, t)
            if (base_act or head_act) and not _same(act_h, act_b):
                f = _flags(t, h=act_h, b=act_b)
                newly, no_longer = session.fetchall(
                    sa.select(
                        _sum(sa.and_(f.c.h, ~f.c.b)), _sum(sa.and_(f.c.b, ~f.c.h))
                    ).select_from(f)
                )[0]
            else:
                newly = no_longer = 0
        else:
            newly, no_longer = head_act, base_act
        status = (
            "added"
            if bb is None
            else "removed"
            if bh is None
            else "changed"
            if changes
            else "affected"
            if (
                newly
                or no_longer
                or base_act != head_act
                or (rb and rh and rb.retained != rh.retained)
            )
            else "unchanged"
        )
        if status == "unchanged":
            unchanged += 1
            continue
        rules.append(
            RuleDiff(
                rule_id=rid,
                table=either.table.name,
                status=status,
                base_action=bb.rule.action if bb else None,
                head_action=bh.rule.action if bh else None,
                base_keep_for=bb.rule.keep_for if bb else None,
                head_keep_for=bh.rule.keep_for if bh else None,
                changes=changes,
                new_columns=new_cols,
                changed_strategies=changed_cols,
                base_to_act=base_act,
                head_to_act=head_act,
                newly=int(newly),
                no_longer=int(no_longer),
                base_retained=rb.retained if rb and rb.action == "retain" else 0,
                head_retained=rh.retained if rh and rh.action == "retain" else 0,
            )
        )

    guard = _guard_counts(plan_h)
    names: set[str] = set()
    for p in (pb, ph):
        for b in p.bound:
            names.add(b.table.name)
            names.update(link.table.name for link, _ in link_paths(b))
    tables: list[TableDiff] = []
    for name in sorted(names):
        info = ph.catalog.tables.get(name) or pb.catalog.tables[name]
        t = alias(info)
        flags = dict(
            dh=_acting_on(ph, name, "delete", t),
            db=_acting_on(pb, name, "delete", t),
            ah=_acting_on(ph, name, "anonymise", t),
            ab=_acting_on(pb, name, "anonymise", t),
        )
        if _same(flags["dh"], flags["db"]) and _same(flags["ah"], flags["ab"]):
            continue  # the same rows either way: nothing to report, nothing new for the guard
        f = _flags(t, **flags)
        c = f.c
        row = session.fetchall(
            sa.select(
                sa.func.count(),
                _sum(c.db),
                _sum(c.dh),
                _sum(sa.and_(c.dh, ~c.db)),
                _sum(sa.and_(c.db, ~c.dh)),
                _sum(c.ab),
                _sum(c.ah),
                _sum(sa.and_(c.ah, ~c.ab)),
                _sum(sa.and_(c.ab, ~c.ah)),
            ).select_from(f)
        )[0]
        (
            total,
            deleted_base,
            deleted_head,
            newly_deleted,
            no_longer_deleted,
            anonymised_base,
            anonymised_head,
            newly_anonymised,
            no_longer_anonymised,
        ) = (int(v) for v in row)
        n = guard.get(name, 0)
        td = TableDiff(
            name,
            total,
            deleted_base,
            deleted_head,
            newly_deleted,
            no_longer_deleted,
            anonymised_base,
            anonymised_head,
            newly_anonymised,
            no_longer_anonymised,
            head_delete_rows=n,
            share=(n / total if total else 0.0),
            rules=sorted(_touching(pb, name) | _touching(ph, name)),
        )
        if limit is not None and td.share > limit and td.newly_deleted > 0:
            td.over = True
            for a in approvals:
                if a.approval.expires and a.approval.expires < as_of:
                    continue
                if a.approval.rule_id in td.rules and a.approval.max_fraction >= td.share:
                    td.approved_by = f"{a.approval.approved_by} ({a.path})"
                    break
        tables.append(td)

    known = set(bound_b) | set(bound_h)
    notes = _policy_notes(base, head)
    for r in rules:
        if r.changed_strategies:
            notes.append(
                f"{r.rule_id}: rows anonymised before keep what the old strategy wrote into "
                f"{', '.join(r.changed_strategies)}; the new strategy applies to rows anonymised from now on"
            )
    for a in approvals:
        if a.approval.rule_id not in known:
            notes.append(
                f"approval {a.path} names {a.approval.rule_id}, which is in neither revision"
            )
        if a.approval.expires and a.approval.expires < as_of:
            notes.append(f"approval {a.path} expired on {a.approval.expires}")
    return PlanDiff(
        base=base_label,
        head=head_label,
        as_of=as_of,
        store=store.describe(),
        max_delete_fraction=limit,
        rules=rules,
        tables=[t for t in tables if t.changed or t.over],
        notes=notes,
        unchanged_rules=unchanged,
        approvals=[a.path for a in approvals],
    )


# --- output ----------------------------------------------------------------------------------


def _arrow(a: int | str, b: int | str) -> str:
    return str(a) if a == b else f"{a} → {b}"


def _rule_to_act(r: RuleDiff) -> str:
    if "retain" in (r.base_action, r.head_action) and r.base_action == r.head_action:
        return "retains " + _arrow(r.base_retained, r.head_retained)
    return _arrow(r.base_to_act, r.head_to_act)


def _rule_change(r: RuleDiff) -> str:
    return "; ".join(r.changes) if r.changes else "unchanged; other rules changed"


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _guard_cell(t: TableDiff) -> str:
    if not t.over:
        return "ok"
    if t.approved_by:
        return f"approved by {t.approved_by}"
    return "**approval needed**"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def summary_line(d: PlanDiff, markdown: bool = True) -> str:
    s = d.totals()
    bold = "**" if markdown else ""
    code = "`" if markdown else ""
    parts = [
        f"{_n(s['rules_changed'], 'rule')} changed",
        f"{s['rules_added']} added",
        f"{s['rules_removed']} removed",
    ]
    text = (
        f"{bold}Retention diff{bold} {code}{d.base}{code} → {code}{d.head}{code} as of {d.as_of}: "
        f"{', '.join(parts)}; a run would newly delete {s['newly_deleted']} rows, newly anonymise "
        f"{s['newly_anonymised']}, no longer act on {s['no_longer_acted_on']}."
    )
    if d.max_delete_fraction is None:
        return text + " Guard: off."
    if d.over:
        over = ", ".join(f"{t.table} {t.share:.1%}" for t in d.over)
        return (
            text
            + f" Guard: {bold}approval needed{bold} (over {d.max_delete_fraction:.0%}: {over})."
        )
    approved = [t for t in d.tables if t.over]
    if approved:
        return (
            text
            + f" Guard: passed with approval ({', '.join(f'{t.table} {t.share:.1%}' for t in approved)})."
        )
    return text + f" Guard: passed (no change deletes over {d.max_delete_fraction:.0%} of a table)."


def to_markdown(d: PlanDiff) -> str:
    """A pull-request comment: the summary line first, then the tables. Counts only."""
    lines = [summary_line(d), ""]
    if not d.rules and not d.tables:
        lines.append("No change in what a run would do.")
    if d.rules:
        lines += [
            "| rule | table | action | change | to act | newly acted on | no longer acted on |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for r in d.rules:
            lines.append(
                f"| {r.rule_id} | {r.table} | {r.action} | {_md(_rule_change(r))} | {_rule_to_act(r)} "
                f"| {r.newly} | {r.no_longer} |"
            )
        lines.append("")
    if d.tables:
        lines += [
            "| table | rows | deleted | newly deleted | no longer deleted | anonymised | newly anonymised "
            "| no longer anonymised | share deleted | guard |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for t in d.tables:
            lines.append(
                f"| {t.table} | {t.rows} | {_arrow(t.deleted_base, t.deleted_head)} | {t.newly_deleted} "
                f"| {t.no_longer_deleted} | {_arrow(t.anonymised_base, t.anonymised_head)} | {t.newly_anonymised} "
                f"| {t.no_longer_anonymised} | {t.share:.1%} | {_md(_guard_cell(t))} |"
            )
        lines.append("")
    for note in d.notes:
        lines.append(f"- {_md(note)}")
    if d.notes:
        lines.append("")
    if d.over:
        lines.append(
            f"A run would delete more than {d.max_delete_fraction:.0%} of "
            + ", ".join(f"`{t.table}`" for t in d.over)
            + ". If that is intended, add `approvals/<name>.yaml` (`purpose`, `rule`, `max_fraction` at least "
            "the share above, `approved_by`, `reason`) to this pull request; see docs/review.md."
        )
        lines.append("")
    others = f"; {_n(d.unchanged_rules, 'other rule')} unchanged" if d.unchanged_rules else ""
    lines.append(
        f"<sub>Both revisions planned on one snapshot of the store{others}. Counts only, no values.</sub>"
    )
    return "\n".join(lines) + "\n"


def to_dict(d: PlanDiff) -> dict[str, Any]:
    return {
        "base": d.base,
        "head": d.head,
        "as_of": d.as_of.isoformat(),
        "store": d.store,
        "max_delete_fraction": d.max_delete_fraction,
        "passed": d.passed,
        "summary": d.totals(),
        "rules": [asdict(r) for r in d.rules],
        "tables": [asdict(t) for t in d.tables],
        "over": [t.table for t in d.over],
        "notes": d.notes,
        "approvals": d.approvals,
    }


def to_json(d: PlanDiff) -> str:
    return json.dumps(to_dict(d), indent=2)


def render(d: PlanDiff, console) -> None:
    """For a terminal: the same content as the markdown, as rich tables."""
    from rich.console import JustifyMethod
    from rich.markup import escape
    from rich.table import Table

    console.print(summary_line(d, markdown=False), markup=False, highlight=False)
    if d.rules:
        rt = Table(title="Rules", title_justify="left")
        columns: list[tuple[str, JustifyMethod]] = [
            ("rule", "left"),
            ("table", "left"),
            ("action", "left"),
            ("change", "left"),
            ("to act", "right"),
            ("newly", "right"),
            ("no longer", "right"),
        ]
        for name, justify in columns:
            rt.add_column(name, justify=justify)
        for r in d.rules:
            rt.add_row(
                r.rule_id,
                r.table,
                r.action,
                escape(_rule_change(r)),
                _rule_to_act(r),
                str(r.newly),
                str(r.no_longer),
            )
        console.print(rt)
    if d.tables:
        tt = Table(title="Tables", title_justify="left")
        for name in (
            "table",
            "rows",
            "deleted",
            "newly deleted",
            "no longer deleted",
            "anonymised",
            "newly anonymised",
            "no longer anonymised",
            "share deleted",
            "guard",
        ):
            tt.add_column(name, justify="left" if name in ("table", "guard") else "right")
        for t in d.tables:
            tt.add_row(
                t.table,
                str(t.rows),
                _arrow(t.deleted_base, t.deleted_head),
                str(t.newly_deleted),
                str(t.no_longer_deleted),
                _arrow(t.anonymised_base, t.anonymised_head),
                str(t.newly_anonymised),
                str(t.no_longer_anonymised),
                f"{t.share:.1%}",
                escape(_guard_cell(t).replace("**", "")),
            )
        console.print(tt)
    for note in d.notes:
        console.print(f"  note: {note}", markup=False, highlight=False)
    if not d.rules and not d.tables:
        console.print("no change in what a run would do")
