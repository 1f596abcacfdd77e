"""A brute-force retention oracle in plain Python, written apart from the engine.

It knows nothing of `retention_jobs`: rules are plain `RuleSpec`s (the test renders them to
YAML for the engine), rows are the dicts a `SELECT *` returns, and the calendar arithmetic is
re-implemented here. The semantics follow the docstring of `retention_jobs.predicates`:

- expired: the clock is set, round(clock) + keep_for <= as_of (the clock's date read in the
  policy's zone; naive timestamps are UTC; year_end / month_end start the period on the first
  day after the clock's year / month), every `where` condition and `related` filter holds
  (SQL three-valued logic, an unknown result counts as "no").
- held: an active (unreleased) hold on the purpose, the table, the row's subject
  (CAST(subject AS VARCHAR)), or, when the rule cascades, a hold on one of the row's children:
  a table hold on the child table, or a subject hold on a child's subject under any subject a
  rule declares for the child table.
- inferred subjects: when some rule declares `person` on w.parent's key (parent_id), the
  key is a person's id. A non-retain rule without a subject, on w.parent or on w.child (whose
  parent_id references the key), is then held by a hold on person:<parent_id>, and a child row of a table no rule declares a subject for is
  held by person:<its parent_id> (it references that key).
- retained: inside a retain rule's period (a NULL clock retains) on the row, or on any of the
  row's cascade children.
- to_act: expired, not held, not retained; for anonymise also not superseded by a free delete
  rule on the same table and not already done (every column carries a marker).

`RequestOracle` is the same oracle for an erasure request of one subject (request mode).

`simulate_run` applies a run the way the engine orders it (deletes, then anonymisations, then
retains; policy order within each), each rule acting on the rows it planned at the start of the
run that are still actionable when it is applied.
"""

from __future__ import annotations

import calendar
import copy
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

PARENT = "w.parent"
CHILD = "w.child"
PARENT_KEY = "parent_id"
CHILD_KEY = "cid"
CHILD_LINE = "line"  # the second column of the child's key (the oracle needs cid only)

Cond = tuple[str, str, Any]  # (column, op, value)


@dataclass(frozen=True)
class RuleSpec:
    purpose: str
    tz: str
    name: str
    table: str
    clock: str  # a column, or "related:max" / "related:min" (max/min of w.child.c_date)
    keep: tuple[int, int, int]  # years, months, days
    action: str  # delete | anonymise | retain
    round_to: str | None = None
    where: tuple[Cond, ...] = ()
    related: tuple[tuple[str, tuple[Cond, ...]], ...] = ()  # (all|any|none, conditions on w.child)
    columns: tuple[tuple[str, str], ...] = ()  # (column, redact | hash | mask1)
    cascade: str | None = None  # delete | unlink | anonymise (w.child on parent_id)
    cascade_columns: tuple[tuple[str, str], ...] = ()
    subject: tuple[str, str] | None = None  # (kind, column)

    @property
    def key(self) -> str:
        return PARENT_KEY if self.table == PARENT else CHILD_KEY

    @property
    def rule_id(self) -> str:
        return f"{self.purpose}/{self.name}"


@dataclass(frozen=True)
class HoldSpec:
    scope: str  # subject | table | purpose
    target: str  # "kind:id" | table | purpose
    released: bool = False


@dataclass
class World:
    parents: dict[int, dict]
    children: dict[int, dict]
    holds: list[HoldSpec] = field(default_factory=list)
    marked: set[tuple[str, int, str]] = field(default_factory=set)  # (table, key, column)

    def rows(self, table: str) -> dict[int, dict]:
        return self.parents if table == PARENT else self.children

    def copy(self) -> World:
        return World(
            copy.deepcopy(self.parents),
            copy.deepcopy(self.children),
            list(self.holds),
            set(self.marked),
        )


# --- calendar ---------------------------------------------------------------------------------


def last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def add_ymd(d: date, years: int, months: int, days: int) -> date:
    """Years and months first, the day clamped to the month's end; then days."""
    index = d.year * 12 + d.month - 1 + years * 12 + months
    y, m = index // 12, index % 12 + 1
    return date(y, m, min(d.day, last_day(y, m))) + timedelta(days=days)


def round_date(d: date, to: str | None) -> date:
    """Where the period starts: year_end on 1 January after the clock's (fiscal = calendar)
    year has ended, month_end on the first day of the next month."""
    if to == "year_end":
        return date(d.year + 1, 1, 1)
    if to == "month_end":
        return date(d.year, d.month, last_day(d.year, d.month)) + timedelta(days=1)
    return d


def local_date(value: date | datetime | None, tz: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(ZoneInfo(tz)).date()
    return value


def expiry(clock: date, rule: RuleSpec) -> date:
    return add_ymd(round_date(clock, rule.round_to), *rule.keep)


# --- predicates -------------------------------------------------------------------------------


def cond_true(v: Any, op: str, arg: Any) -> bool:
    """Whether the SQL condition is TRUE (not FALSE, not unknown)."""
    if op == "eq":
        return v is None if arg is None else (v is not None and v == arg)
    if op == "ne":  # IS DISTINCT FROM
        return v is not None if arg is None else (v is None or v != arg)
    if op in ("lt", "le", "gt", "ge"):
        if v is None or arg is None:
            return False
        return {"lt": v < arg, "le": v <= arg, "gt": v > arg, "ge": v >= arg}[op]
    if op == "in":
        return v is not None and v in [a for a in arg if a is not None]
    if op == "not_in":  # NOT coalesce(v IN (...), false)
        return not (v is not None and v in [a for a in arg if a is not None])
    if op == "is_null":
        return (v is None) == bool(arg)
    raise ValueError(op)


def all_true(row: dict, conds: tuple[Cond, ...]) -> bool:
    return all(cond_true(row[c], op, v) for c, op, v in conds)


class Oracle:
    def __init__(self, rules: list[RuleSpec], as_of: date):
        self.rules = rules
        self.as_of = as_of

    # -- building blocks ------------------------------------------------------------------

    @staticmethod
    def children_of(world: World, row: dict) -> list[dict]:
        pid = row[PARENT_KEY]
        if pid is None:
            return []
        return [c for c in world.children.values() if c[PARENT_KEY] == pid]

    def clock(self, world: World, rule: RuleSpec, row: dict) -> date | None:
        if rule.clock.startswith("related:"):
            dates = [c["c_date"] for c in self.children_of(world, row) if c["c_date"] is not None]
            if not dates:
                return None
            return max(dates) if rule.clock.endswith("max") else min(dates)
        return local_date(row[rule.clock], rule.tz)

    def matches(self, world: World, rule: RuleSpec, row: dict) -> bool:
        if not all_true(row, rule.where):
            return False
        for quantifier, conds in rule.related:
            kids = self.children_of(world, row) if rule.table == PARENT else []
            hits = [all_true(c, conds) for c in kids]
            ok = {"all": all(hits), "any": any(hits), "none": not any(hits)}[quantifier]
            if not ok:
                return False
        return True

    def clock_past(self, world: World, rule: RuleSpec, row: dict) -> bool | None:
        c = self.clock(world, rule, row)
        if c is None:
            return None
        return expiry(c, rule) <= self.as_of

    def expired(self, world: World, rule: RuleSpec, row: dict) -> bool:
        return bool(self.clock_past(world, rule, row)) and self.matches(world, rule, row)

    @staticmethod
    def active(world: World) -> list[HoldSpec]:
        return [h for h in world.holds if not h.released]

    def table_held(self, world: World, table: str) -> bool:
        return any(h.scope == "table" and h.target == table for h in self.active(world))

    def held(self, world: World, rule: RuleSpec, row: dict) -> bool:
        active = self.active(world)
        if any(h.scope == "purpose" and h.target == rule.purpose for h in active):
            return True
        if self.table_held(world, rule.table):
            return True
        if rule.subject is not None:
            kind, column = rule.subject
            value = row[column]
            if value is not None and any(
                h.scope == "subject" and h.target == f"{kind}:{value}" for h in active
            ):
                return True
        elif (
            rule.action != "retain"
            and self.person_is_parent_key()
            and row[PARENT_KEY] is not None  # a parent's key, or a child's reference to it
            and any(
                h.scope == "subject" and h.target == f"person:{row[PARENT_KEY]}" for h in active
            )
        ):
            return True
        # a cascade reaches the row's children: a held child (its table, or its subject under
        # any subject a rule declares for the child table) holds the parent
        return bool(rule.cascade) and any(
            self.child_held(world, c) for c in self.children_of(world, row)
        )

    def person_is_parent_key(self) -> bool:
        """Some rule says w.parent's rows are persons, by their key."""
        return any(r.table == PARENT and r.subject == ("person", PARENT_KEY) for r in self.rules)

    def child_held(self, world: World, child: dict) -> bool:
        if self.table_held(world, CHILD):
            return True
        declared = {r.subject for r in self.rules if r.table == CHILD and r.subject is not None}
        if not declared and self.person_is_parent_key():
            declared = {("person", PARENT_KEY)}  # inferred: child.parent_id references the key
        return any(
            child[column] is not None
            and any(
                h.scope == "subject" and h.target == f"{kind}:{child[column]}"
                for h in self.active(world)
            )
            for kind, column in declared
        )

    def retain_rules(self, table: str) -> list[RuleSpec]:
        return [r for r in self.rules if r.action == "retain" and r.table == table]

    def inside_retain(self, world: World, r: RuleSpec, row: dict) -> bool:
        return self.matches(world, r, row) and not self.clock_past(world, r, row)

    def retained_here(self, world: World, table: str, row: dict) -> bool:
        return any(self.inside_retain(world, r, row) for r in self.retain_rules(table))

    def retained(self, world: World, rule: RuleSpec, row: dict) -> bool:
        if self.retained_here(world, rule.table, row):
            return True
        return bool(rule.cascade) and any(
            self.retained_here(world, CHILD, c) for c in self.children_of(world, row)
        )

    def free(self, world: World, rule: RuleSpec, row: dict) -> bool:
        return (
            self.expired(world, rule, row)
            and not self.held(world, rule, row)
            and not self.retained(world, rule, row)
        )

    def superseded(self, world: World, rule: RuleSpec, row: dict) -> bool:
        if rule.action != "anonymise":
            return False
        return any(
            self.free(world, d, row)
            for d in self.rules
            if d.action == "delete" and d.table == rule.table and d is not rule
        )

    def done(self, world: World, rule: RuleSpec, row: dict) -> bool:
        return all((rule.table, row[rule.key], c) in world.marked for c, _ in rule.columns)

    def actionable(self, world: World, rule: RuleSpec, row: dict) -> bool:
        if rule.action == "retain" or not self.free(world, rule, row):
            return False
        return rule.action != "anonymise" or not (
            self.superseded(world, rule, row) or self.done(world, rule, row)
        )

    def acted(self, world: World, rule: RuleSpec) -> list[int]:
        return sorted(
            k for k, row in world.rows(rule.table).items() if self.actionable(world, rule, row)
        )

    # -- plan -----------------------------------------------------------------------------

    def plan(self, world: World) -> dict[str, dict[str, int]]:
        """Counts per rule as the run will find them: rules in run order (deletes, then
        anonymisations, policy order within), each row counted once, for the first rule or
        cascade that acts on it; a later rule counts it `superseded`. A related clock or filter
        no longer sees the children earlier steps deleted, and a row whose columns earlier
        rules of the run anonymised is `already_done`."""
        taken: set[tuple[str, object]] = set()  # rows deleted by an earlier step
        anonymised: dict[tuple[str, object], set[str]] = {}  # columns done earlier in the run
        out: dict[str, dict[str, int]] = {}
        for rule in sorted(self.rules, key=lambda r: RUN_ORDER[r.action]):
            table = world.rows(rule.table)
            counts = dict.fromkeys(
                ("total", "expired", "held", "retained", "superseded", "already_done", "to_act"), 0
            )
            counts["total"] = len(table)
            view = _without(world, taken)
            acted: list[dict] = []
            for k, row in table.items():
                if rule.action == "retain":  # its own rows: past the minimum, or inside it
                    counts["retained"] += self.inside_retain(world, rule, row)
                    counts["expired"] += self.expired(world, rule, row)
                    continue
                if not self.expired(world, rule, row):
                    continue
                counts["expired"] += 1
                if self.held(world, rule, row):
                    counts["held"] += 1
                elif self.retained(world, rule, row):
                    counts["retained"] += 1
                elif (
                    self.superseded(world, rule, row)
                    or (rule.table, k) in taken
                    or not self.expired(view, rule, view.rows(rule.table)[k])
                ):
                    counts["superseded"] += 1
                elif rule.action == "anonymise" and (
                    self.done(world, rule, row)
                    or {c for c, _ in rule.columns} <= anonymised.get((rule.table, k), set())
                ):
                    counts["already_done"] += 1
                else:
                    counts["to_act"] += 1
                    acted.append(row)
            if rule.cascade:
                kids = [
                    c
                    for row in acted
                    for c in self.children_of(world, row)
                    if (CHILD, c[CHILD_KEY]) not in taken
                ]
                counts["cascade_rows"] = len(kids)
                for c in kids:
                    if rule.cascade == "delete":
                        taken.add((CHILD, c[CHILD_KEY]))
                    elif rule.cascade == "anonymise":
                        anonymised.setdefault((CHILD, c[CHILD_KEY]), set()).update(
                            col for col, _ in rule.cascade_columns
                        )
            key = PARENT_KEY if rule.table == PARENT else CHILD_KEY
            for row in acted:
                if rule.action == "delete":
                    taken.add((rule.table, row[key]))
                else:
                    anonymised.setdefault((rule.table, row[key]), set()).update(
                        c for c, _ in rule.columns
                    )
            out[rule.rule_id] = counts
        return {r.rule_id: out[r.rule_id] for r in self.rules}

    # -- a run ----------------------------------------------------------------------------

    def simulate_run(
        self, world: World, key_secret: bytes
    ) -> tuple[World, dict[str, dict[str, int]]]:
        """The world after one run, and per rule the rows it changed."""
        before = world
        world = world.copy()
        planned = {r.rule_id: set(self.acted(before, r)) for r in self.rules}
        order = sorted(
            self.rules, key=lambda r: {"delete": 0, "anonymise": 1, "retain": 2}[r.action]
        )
        results: dict[str, dict[str, int]] = {}
        for rule in order:
            res = {"rows": 0, "cascade_rows": 0}
            results[rule.rule_id] = res
            if rule.action == "retain":
                continue
            table = world.rows(rule.table)
            keys = [
                k
                for k in sorted(planned[rule.rule_id])
                if k in table and self.actionable(world, rule, table[k])
            ]
            for k in keys:
                row = table[k]
                kids = self.children_of(world, row) if rule.cascade else []
                for c in kids:
                    if rule.cascade == "delete":
                        del world.children[c[CHILD_KEY]]
                        world.marked = {m for m in world.marked if m[:2] != (CHILD, c[CHILD_KEY])}
                    elif rule.cascade == "unlink":
                        c[PARENT_KEY] = None
                    else:
                        anonymise(world, CHILD, c, rule.cascade_columns, key_secret)
                res["cascade_rows"] += len(kids)
                if rule.action == "delete":
                    del table[k]
                    world.marked = {m for m in world.marked if m[:2] != (rule.table, k)}
                else:
                    anonymise(world, rule.table, row, rule.columns, key_secret)
                res["rows"] += 1
        return world, results


RUN_ORDER = {"delete": 0, "anonymise": 1, "retain": 2}


def _without(world: World, taken: set[tuple[str, object]]) -> World:
    """`world` without the rows earlier steps of a run deleted (what a later rule's related
    clock or filter still sees)."""
    if not taken:
        return world
    return World(
        {k: r for k, r in world.parents.items() if (PARENT, k) not in taken},
        {k: r for k, r in world.children.items() if (CHILD, k) not in taken},
        world.holds,
        world.marked,
    )


@dataclass(frozen=True, eq=False)
class Hashed:
    """The keyed hash of `original`: the key and digest are the engine's business, so this
    equals any hex string (16 to 64 characters) other than the original."""

    original: str

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Hashed):
            return other.original == self.original
        return (
            isinstance(other, str)
            and other != self.original
            and re.fullmatch(r"[0-9a-f]{16,64}", other) is not None
        )

    def __hash__(self) -> int:
        return hash(self.original)


def anonymise(
    world: World, table: str, row: dict, columns: tuple[tuple[str, str], ...], secret: bytes
) -> None:
    key = row[PARENT_KEY if table == PARENT else CHILD_KEY]
    for column, strategy in columns:
        if (table, key, column) in world.marked:
            continue  # anonymising twice would hash a hash
        row[column] = anonymised_value(row[column], strategy, secret)
        world.marked.add((table, key, column))


def anonymised_value(v: Any, strategy: str, secret: bytes) -> Any:
    if strategy == "redact" or v is None:
        return None
    if strategy == "hash":
        return Hashed(str(v))
    if strategy == "mask1":  # {mask: {keep_last: 1}}
        return "*" * len(v) if len(v) <= 1 else "*" * (len(v) - 1) + v[-1]
    raise ValueError(strategy)


def key_secret(text: str) -> bytes:
    """The secret of a pseudonym key given as text (SHA-256 of the text)."""
    return hashlib.sha256(text.encode()).digest()


class RequestOracle(Oracle):
    """An erasure request for one subject (`kind:id`), processed as a run in request mode: a
    non-retain rule whose subject kind is the request's acts on the subject's rows (the subject
    column, as text, equals the id), whatever its clock says, but only on rows its `where` and
    `related` filters cover: they say which rows are the rule's (issue 15, processor boundary).
    Holds, retain periods (with their clocks), cascades, deletion winning over anonymisation and
    markers keep their meaning, so `plan` and `simulate_run` need nothing else.

    `honour_filters=False` is the engine before the processor-boundary fix (filters ignored),
    kept to tell that known failure apart from any other."""

    def __init__(self, rules: list[RuleSpec], as_of: date, subject: str, honour_filters=True):
        super().__init__(rules, as_of)
        self.kind, self.subject_id = subject.split(":", 1)
        self.honour_filters = honour_filters

    def belongs(self, rule: RuleSpec, row: dict) -> bool:
        if rule.subject is None or rule.subject[0] != self.kind:
            return False
        value = row[rule.subject[1]]
        return value is not None and str(value) == self.subject_id

    def expired(self, world: World, rule: RuleSpec, row: dict) -> bool:
        if rule.action == "retain":
            return super().expired(world, rule, row)
        if not self.belongs(rule, row):
            return False
        return not self.honour_filters or self.matches(world, rule, row)
