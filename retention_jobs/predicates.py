"""The expired / held / retained predicates of every rule, as SQLAlchemy Core expressions that
run inside the store. Nothing here reads data; `plan` and `apply` execute what it builds.

Semantics (the property test's oracle implements the same in plain Python):
- expired: the clock is set, `round(clock) + keep_for <= as_of` (the clock's date read in the
  policy's time zone; naive timestamps are UTC), every `where` condition and `related` filter
  holds. A NULL clock has not started.
- held: an active hold (not released, whatever the as-of date) on the rule's purpose, its
  table, the row's subject (declared, or for a rule without `subject:` every subject the row
  reaches over foreign keys, see `resolve.infer_subjects`), or on a row that a cascade would
  change or delete for this row: a row of a held table, or of a held subject under any
  `subject:` that a rule of any policy declares for the cascade's table (a table no rule
  declares a subject for: any subject its rows reach over foreign keys).
- retained: inside the period of any `retain` rule on the table (a NULL clock there keeps the
  row: the minimum cannot be shown to have passed), or a cascade would change such a row.
"""

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from retention_jobs import control, markers
from retention_jobs.literals import own_type, to_column_type
from retention_jobs.periods import cutoff, exact_cutoff
from retention_jobs.policy import ArrayRef, Condition, RelatedClock, RelatedFilter, Scalar
from retention_jobs.resolve import BoundRule, Hop, Link, SubjectPath
from retention_jobs.store.base import Catalog, ColumnInfo, TableInfo, sa_table

_alias_counter = itertools.count()


def alias(info: TableInfo) -> sa.FromClause:
    return sa_table(info, f"t{next(_alias_counter)}")


def in_stage(
    t: sa.FromClause,
    keys: Sequence[str],
    stage: sa.FromClause,
    span: tuple[Any, Any] | None = None,
) -> sa.ColumnElement:
    """`t`'s rows whose keys are in `stage`. `span`: the least and greatest first key of the
    stage; a redundant range test that lets the store skip what cannot match (DuckDB's zone
    maps, an index range scan) instead of scanning the whole table for every batch."""
    prune = [t.c[keys[0]].between(*span)] if span is not None else []
    if len(keys) == 1:
        return sa.and_(*prune, t.c[keys[0]].in_(sa.select(stage.c[keys[0]])))
    return sa.and_(*prune, sa.exists().where(*(stage.c[k] == t.c[k] for k in keys)))


def condition(
    col: sa.ColumnElement, c: Condition, info: ColumnInfo | None = None, tz: str = "UTC"
) -> sa.ColumnElement:
    """`col <op> value`, the value converted to the column's type `info` (the resolver has
    refused every value that does not convert) and bound as that type. `is_null` takes a
    flag, not a value of the column: never converted (as the resolver skips it)."""
    v = c.value
    if info is not None and c.op != "is_null":
        v = (
            [to_column_type(x, info, tz) for x in v]
            if isinstance(v, list)
            else to_column_type(v, info, tz)
        )
        target = own_type(info)
        if target is not None:
            # compared in the column's own type (an ENUM, a DOMAIN, citext), not as VARCHAR
            v = [_cast(x, target) for x in v] if isinstance(v, list) else _cast(v, target)
        c = c.model_copy(update={"value": v})
    match c.op:
        case "eq":
            return col.is_(None) if v is None else col == v
        case "ne":
            return col.is_distinct_from(v)
        case "lt":
            return col < v
        case "le":
            return col <= v
        case "gt":
            return col > v
        case "ge":
            return col >= v
        case "in":
            return col.in_(_values(c))
        case "not_in":
            return sa.not_(sa.func.coalesce(col.in_(_values(c)), sa.false()))
        case "is_null":
            return col.is_(None) if v else col.is_not(None)
    raise ValueError(c.op)


def _cast(v: Any, target: sa.types.TypeEngine) -> Any:
    return None if v is None else sa.cast(sa.literal(v), target)


def _values(c: Condition) -> list[Scalar]:
    """The list of an `in` / `not_in` condition (`parse_where` accepts no other value)."""
    if not isinstance(c.value, list):
        raise ValueError(f"{c.column}: {c.op} takes a list of values")
    return c.value


def all_of(
    t: sa.FromClause, conds: list[Condition], info: TableInfo, tz: str = "UTC"
) -> sa.ColumnElement:
    return sa.and_(
        sa.true(), *(condition(t.c[c.column], c, info.columns[c.column], tz) for c in conds)
    )


def clock_bound(clock_type: str, last_day: date, tz: str) -> tuple[str, object]:
    """(operator, value) such that `clock <op> value` holds for clocks dated on or before last_day."""
    if clock_type == "date":
        return "le", last_day
    start_next = datetime.combine(last_day + timedelta(days=1), time(0), ZoneInfo(tz))
    if clock_type == "timestamptz":
        return "lt", start_next
    return "lt", start_next.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


class Predicates:
    """Builds predicates for a set of bound rules, as of one date."""

    def __init__(
        self,
        bound: list[BoundRule],
        as_of: date,
        catalog: Catalog,
        marker_tables: set[str] | None = None,
    ):
        self.bound = bound
        self.catalog = catalog
        self.as_of = as_of
        self.marker_tables = marker_tables or set()
        self.instant: datetime | None = None
        """The run's moment, when it was given as one (`--as-of 2026-12-02T02:00:00+01:00`):
        then timestamp clocks compare exactly (strictly older than `keep_for` at this
        moment) and date clocks use its date in each policy's zone."""
        self.hidden: Callable[[str, sa.FromClause], sa.ColumnElement] | None = None
        """Planning only (`claims`): rows of a table that an earlier rule of the run deletes,
        which a related clock or filter must no longer see."""

    def _visible(self, table: str, r: sa.FromClause) -> list[sa.ColumnElement]:
        return [] if self.hidden is None else [~self.hidden(table, r)]

    # -- clocks ---------------------------------------------------------------------------

    def clock(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        clock = b.rule.clock
        if isinstance(clock, RelatedClock):
            r = alias(self.catalog.tables[clock.table])
            agg = sa.func.max if clock.aggregate == "max" else sa.func.min
            return (
                sa.select(agg(r.c[clock.column]))
                .where(r.c[clock.on] == t.c[clock.parent_column], *self._visible(clock.table, r))
                .scalar_subquery()
            )
        return t.c[clock]

    def cutoff(self, b: BoundRule) -> date:
        day = self.as_of
        if self.instant is not None:
            day = self.instant.astimezone(ZoneInfo(b.policy.timezone)).date()
        return cutoff(day, b.rule.period, b.rule.round_clock_to)

    def clock_past(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        exact = (
            self.instant is not None
            and b.clock_type in ("timestamp", "timestamptz")
            and b.rule.round_clock_to is None
        )
        if exact:
            assert self.instant is not None
            local = self.instant.astimezone(ZoneInfo(b.policy.timezone))
            bound_at = exact_cutoff(local, b.rule.period)
            if b.clock_type == "timestamp":  # naive timestamps are UTC
                bound_at = bound_at.astimezone(UTC).replace(tzinfo=None)
            clock = self.clock(b, t)
            return clock < sa.literal(bound_at, clock.type)
        op, value = clock_bound(b.clock_type, self.cutoff(b), b.policy.timezone)
        clock = self.clock(b, t)
        bound = sa.literal(value, clock.type)
        return clock <= bound if op == "le" else clock < bound

    # -- filters --------------------------------------------------------------------------

    def matches(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        tz = b.policy.timezone
        parts = [all_of(t, b.rule.where, b.table, tz)]
        parts += [self._related(rel, t, tz) for rel in b.rule.related]
        if b.rule.unreferenced:
            parts += [self._unreferenced(t, b.table)]
        return sa.and_(*parts)

    def _unreferenced(self, t: sa.FromClause, info: TableInfo) -> sa.ColumnElement:
        """No row of any table the catalog knows references the row by foreign key."""
        parts = []
        for fk in self.catalog.referencing(info.name):
            c = alias(self.catalog.tables[fk.table])
            parts.append(
                ~sa.exists().where(
                    *(c.c[a] == t.c[b] for a, b in zip(fk.columns, fk.ref_columns, strict=True))
                )
            )
        return sa.and_(sa.true(), *parts)

    def _related(self, rel: RelatedFilter, t: sa.FromClause, tz: str) -> sa.ColumnElement:
        rinfo = self.catalog.tables[rel.table]
        r = alias(rinfo)
        linked = sa.and_(r.c[rel.on] == t.c[rel.parent_column], *self._visible(rel.table, r))
        conds = sa.and_(
            all_of(r, rel.conditions, rinfo, tz), *(self._related(n, r, tz) for n in rel.related)
        )
        if rel.quantifier == "all":
            return ~sa.exists().where(linked, ~sa.func.coalesce(conds, sa.false()))
        if rel.quantifier == "any":
            return sa.exists().where(linked, conds)
        return ~sa.exists().where(linked, sa.func.coalesce(conds, sa.false()))

    def expired(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        return sa.func.coalesce(sa.and_(self.clock_past(b, t), self.matches(b, t)), sa.false())

    # -- holds ----------------------------------------------------------------------------

    def _still_active(self) -> list[sa.ColumnElement]:
        """What makes a hold active: not released (whatever the as-of date)."""
        return [control.holds.c.released_at.is_(None)]

    def _active(self, *conds: sa.ColumnElement) -> sa.ColumnElement:
        return sa.exists().where(*self._still_active(), *conds)

    def table_held(self, table: str) -> sa.ColumnElement:
        h = control.holds
        return self._active(h.c.scope == "table", h.c.table_name == table)

    def subject_held(self, kind: str, col: sa.ColumnElement) -> sa.ColumnElement:
        """`col` (a row's subject id) names a subject of `kind` under an active hold."""
        h = control.holds
        return sa.cast(col, sa.String).in_(
            sa.select(h.c.subject_id).where(
                h.c.scope == "subject", h.c.subject_kind == kind, *self._still_active()
            )
        )

    def subjects(self, table: str) -> list[tuple[str, str]]:
        """Whose data the rows of `table` are: every (kind, column) that a rule of any policy
        on the table declares (`subject:`), in policy order, without repeats."""
        out: list[tuple[str, str]] = []
        for r in self.bound:
            s = r.rule.subject
            if r.table.name == table and s is not None and (s.kind, s.column) not in out:
                out.append((s.kind, s.column))
        return out

    def row_held(
        self, table: str, t: sa.FromClause, inferred: tuple[SubjectPath, ...] = ()
    ) -> sa.ColumnElement:
        """A row of `table` (in `t`) is held for itself: its table is held, or its subject is,
        under any subject declaration of the table, or (where none declares one) any subject
        it reaches over foreign keys, `inferred` (what a cascade reaching it must honour)."""
        return sa.or_(
            self.table_held(table),
            *(self.subject_held(kind, t.c[column]) for kind, column in self.subjects(table)),
            *(self.path_held(p.kind, p.hops, p.column, t) for p in inferred),
        )

    def held(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        h = control.holds
        parts = [
            self._active(h.c.scope == "purpose", h.c.purpose == b.policy.purpose),
            self.table_held(b.table.name),
        ]
        if b.rule.subject:
            parts.append(self.subject_held(b.rule.subject.kind, t.c[b.rule.subject.column]))
        # a rule without `subject:` honours the holds of every subject its rows reach over
        # foreign keys (or a declared related link): `resolve` found the paths
        parts += [self.path_held(p.kind, p.hops, p.column, t) for p in b.inferred]
        # a cascade changes or deletes the rows it reaches: a parent with a held row anywhere
        # below it (its table held, or its subject, by any subject declaration of that table)
        # is held itself (the database's ON DELETE CASCADE reaches no other rows: `resolve`
        # requires a cascade for every foreign key into a table a rule deletes from, and turns
        # the database's own cascades into cascades of the rule)
        for link in b.cascades:
            parts.append(
                self._link_exists(
                    link, t, lambda lk, c: self.row_held(lk.table.name, c, lk.inferred)
                )
            )
        # a row whose id an array of a held row holds: removing it would change the held row
        parts += [self._in_held_array(b, a, t) for a in b.rule.remove_from]
        # a NULL subject matches no subject hold: false, not unknown
        return sa.func.coalesce(sa.or_(*parts), sa.false())

    def _in_held_array(self, b: BoundRule, a: ArrayRef, t: sa.FromClause) -> sa.ColumnElement:
        r = alias(self.catalog.tables[a.table])
        return sa.exists().where(
            in_array(r.c[a.column], t.c[a.references or b.rule.keys[0]]),
            self.row_held(a.table, r),
        )

    def path_held(
        self, kind: str, hops: tuple[Hop, ...], column: str, t: sa.FromClause
    ) -> sa.ColumnElement:
        """The subject reached from the row in `t` over `hops` (its id in `column` of the last
        row) is held: one EXISTS per foreign key followed, joined on every column pair."""
        if not hops:
            return self.subject_held(kind, t.c[column])
        h = hops[0]
        r = alias(h.table)
        return sa.exists().where(
            *(r.c[rc] == t.c[c] for c, rc in zip(h.columns, h.ref_columns, strict=True)),
            self.path_held(kind, hops[1:], column, r),
        )

    def _link_exists(self, link: Link, parent: sa.FromClause, test) -> sa.ColumnElement:
        """True where a row of `link` (or below it) linked to `parent` passes `test`."""
        c = alias(link.table)
        inner = [test(link, c)]
        inner += [self._link_exists(child, c, test) for child in link.children]
        return sa.exists().where(c.c[link.on] == parent.c[link.references], sa.or_(*inner))

    # -- retain ---------------------------------------------------------------------------

    def retain_rules(self, table: str) -> list[BoundRule]:
        return [r for r in self.bound if r.rule.action == "retain" and r.table.name == table]

    def inside_retain(self, r: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        clock = self.clock(r, t)
        return sa.and_(self.matches(r, t), sa.or_(clock.is_(None), ~self.clock_past(r, t)))

    def retained_here(self, table: str, t: sa.FromClause) -> sa.ColumnElement:
        rules = self.retain_rules(table)
        if not rules:
            return sa.false()
        return sa.func.coalesce(sa.or_(*(self.inside_retain(r, t) for r in rules)), sa.false())

    def retained(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        parts = [self.retained_here(b.table.name, t)]
        for link in b.cascades:
            if self._has_retain(link):
                parts.append(
                    self._link_exists(link, t, lambda lk, c: self.retained_here(lk.table.name, c))
                )
        return sa.func.coalesce(sa.or_(*parts), sa.false())

    def _has_retain(self, link: Link) -> bool:
        return bool(self.retain_rules(link.table.name)) or any(
            self._has_retain(c) for c in link.children
        )

    # -- anonymisation markers ------------------------------------------------------------

    def marked(
        self, info: TableInfo, key: list[str] | tuple[str, ...], t: sa.FromClause, column: str
    ) -> sa.ColumnElement:
        if control.marker_name(info.name) not in self.marker_tables:
            return sa.false()
        m = control.marker_table(info, list(key))
        return sa.exists().where(
            markers.names(m.c.columns, column), *(m.c[k] == t.c[k] for k in key)
        )

    def done(
        self, b: BoundRule, t: sa.FromClause, span: tuple[object, object] | None = None
    ) -> sa.ColumnElement:
        """Every column the rule anonymises is already anonymised (one subquery for all
        columns: a row's markers, grouped, mention each column in at least one of them).
        `span`: the least and greatest first key of the rows asked about (one batch): only
        their markers are grouped, not every marker of the table."""
        if control.marker_name(b.table.name) not in self.marker_tables:
            return sa.false()
        keys = list(b.rule.keys)
        m = control.marker_table(b.table, keys)
        in_span = [m.c[keys[0]].between(*span)] if span is not None else []
        # the usual marker is one row naming exactly this rule's columns, in its order (the
        # applier writes them so): found by equality, one hashed semi join. Only the other
        # markers (several rules, several runs) are grouped to see if together they name every
        # column. Both uncorrelated, so PostgreSQL hashes each once (a correlated EXISTS with
        # GROUP BY would rescan the markers for every row) and DuckDB runs semi joins.
        whole = markers.listed(b.rule.columns)
        exact = sa.select(*(m.c[k] for k in keys)).where(m.c.columns == whole, *in_span)
        pieced = (
            sa.select(*(m.c[k] for k in keys))
            .where(m.c.columns != whole, *in_span)
            .group_by(*(m.c[k] for k in keys))
            .having(
                sa.and_(
                    *(
                        sa.func.max(sa.case((markers.names(m.c.columns, c), 1), else_=0)) == 1
                        for c in b.rule.columns
                    )
                )
            )
        )
        row = t.c[keys[0]] if len(keys) == 1 else sa.tuple_(*(t.c[k] for k in keys))
        return sa.or_(row.in_(exact), row.in_(pieced))

    # -- what the rule acts on ------------------------------------------------------------

    def free(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        return sa.and_(self.expired(b, t), ~self.held(b, t), ~self.retained(b, t))

    def superseded(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        """Deletion wins: rows that a delete rule on the same table removes anyway."""
        deleters = [
            d
            for d in self.bound
            if d.rule.action == "delete" and d.table.name == b.table.name and d is not b
        ]
        if b.rule.action != "anonymise" or not deleters:
            return sa.false()
        return sa.or_(*(self.deleter_frees(d, t) for d in deleters))

    def deleter_frees(self, d: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        """The delete rule `d` removes the row (for `superseded`)."""
        return self.free(d, t)

    def in_share(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        """Rows of `b`'s keys (in `t`, a table with those key columns) that this run may act on:
        all of them, except in one worker of a parallel run (`KeyRangePredicates`)."""
        return sa.true()

    def actionable(
        self, b: BoundRule, t: sa.FromClause, span: tuple[object, object] | None = None
    ) -> sa.ColumnElement:
        parts = [self.free(b, t)]
        if b.rule.action == "anonymise":
            parts += [~self.superseded(b, t), ~self.done(b, t, span)]
        return sa.and_(*parts)

    def resumed(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        """The rows of a journalled delete batch (left by an interrupted run) that the rerun
        still deletes: actionable exactly as for a fresh run (expired, not retained, no hold on
        the row or on any row its cascades reach), with one allowance: the interrupted run may
        already have deleted the batch's cascade children, and with them a related clock or
        `related` filter the parent's expiry read. Where no linked row of such a table is left,
        that clock or filter counts as satisfied (the batch was expired when journalled); a row
        the application linked since (a new activity) is read as usual."""
        emptied = self._emptied(b, t)
        expired = self.expired(b, t) if emptied is None else sa.or_(self.expired(b, t), emptied)
        return sa.and_(
            sa.func.coalesce(expired, sa.false()), ~self.held(b, t), ~self.retained(b, t)
        )

    def _emptied(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement | None:
        """`b`'s expiry with every related clock and filter over a table the rule's cascades
        delete from (directly under the rule's table) read as satisfied, where no row of that
        table is linked to the row any more; None when the expiry reads no such table."""
        # (child table, its linking column, the parent's column): the direct delete cascades
        gone = {
            (link.table.name, link.on, link.references)
            for link in b.cascades
            if link.spec.action == "delete"
        }
        clock = b.rule.clock
        emptied = {(rel.table, rel.on, rel.parent_column) for rel in b.rule.related} & gone
        if (
            isinstance(clock, RelatedClock)
            and (link := (clock.table, clock.on, clock.parent_column)) in gone
        ):
            emptied.add(link)
            clock_part = []
        else:
            clock_part = [self.clock_past(b, t)]
        if not emptied:
            return None
        tz = b.policy.timezone
        parts = [all_of(t, b.rule.where, b.table, tz), *clock_part]
        parts += [
            self._related(rel, t, tz)
            for rel in b.rule.related
            if (rel.table, rel.on, rel.parent_column) not in emptied
        ]
        if b.rule.unreferenced:
            parts.append(self._unreferenced(t, b.table))
        for table, on, mine in sorted(emptied):
            r = alias(self.catalog.tables[table])
            parts.append(~sa.exists().where(r.c[on] == t.c[mine]))
        return sa.and_(*parts)


# --- other selections: a data subject's rows; holds as if released --------------------------


def in_array(array: sa.ColumnElement, value: sa.ColumnElement) -> sa.ColumnElement:
    """`value` is an element of `array` (PostgreSQL and DuckDB both have array_position, NULL
    where the value is not there)."""
    return sa.func.array_position(array, value).is_not(None)


def subject_equals(col: sa.ColumnElement, info_type: str, subject_id: str) -> sa.ColumnElement:
    """`col`, compared as text, equals `subject_id` (the comparison holds use). An integer column
    compares as a number when the id is an integer's canonical text, so an index still serves."""
    if info_type == "integer":
        if re.fullmatch(r"-?(0|[1-9][0-9]*)", subject_id):
            return col == int(subject_id)
        return sa.false()
    return sa.cast(col, sa.String) == subject_id


class SubjectPredicates(Predicates):
    """A data-subject request: a rule's *expired* rows are the rows of one subject that the
    rule covers, whatever the clock says, for rules whose subject kind matches, whose purpose is
    in scope and that we hold as controller. The rule's `where`/`related` filters still apply
    (they say which rows are the rule's: our own tenant, not a client's), unless the rule says
    they only time the expiry (`filters_in_requests: false`). Holds and `retain` periods keep
    their meaning (as of the date), so planning and applying with this class erase what may be
    erased and count the rest as held or retained."""

    def __init__(
        self,
        bound: list[BoundRule],
        as_of: date,
        catalog: Catalog,
        marker_tables: set[str] | None = None,
        *,
        subject_kind: str,
        subject_id: str,
        purposes: Iterable[str] | None = None,
    ):
        super().__init__(bound, as_of, catalog, marker_tables)
        self.subject_kind = subject_kind
        self.subject_id = subject_id
        self.purposes = None if purposes is None else frozenset(purposes)

    def covers(self, b: BoundRule) -> bool:
        s = b.rule.subject
        return (
            s is not None
            and s.kind == self.subject_kind
            # data we process for a client is the client's to erase (GDPR Art. 28(3)(e))
            and b.policy.role == "controller"
            and (self.purposes is None or b.policy.purpose in self.purposes)
        )

    def belongs(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        subject = b.rule.subject
        if subject is None or not self.covers(b):
            return sa.false()
        column = subject.column
        return subject_equals(t.c[column], b.table.columns[column].type, self.subject_id)

    def expired(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        parts = [self.belongs(b, t), ~self.processor_data(b.table.name, t)]
        if b.rule.filters_in_requests:
            parts.append(sa.func.coalesce(self.matches(b, t), sa.false()))
        return sa.and_(*parts)

    def processor_data(self, table: str, t: sa.FromClause) -> sa.ColumnElement:
        """The row of `table` (in `t`) is one a `role: processor` policy covers: its rule's
        filters match the row, or the row a cascade reaches it from (the clock does not
        matter: a client's running contract is the client's data too). A request never acts
        on it, whatever a rule of ours would say (GDPR Art. 28(3)(e))."""
        parts: list[sa.ColumnElement] = []
        for b in self.bound:
            if b.policy.role != "processor":
                continue
            if b.table.name == table:
                parts.append(sa.func.coalesce(self.matches(b, t), sa.false()))
            parts += [self._under(b, chain, t) for chain in _chains(b.cascades, table)]
        return sa.or_(sa.false(), *parts)

    def _under(self, b: BoundRule, chain: tuple[Link, ...], t: sa.FromClause) -> sa.ColumnElement:
        """A row of the last link's table (in `t`) hangs, over `chain`, off a row of `b`'s
        table that `b`'s filters match."""
        link = chain[-1]
        parent = alias(chain[-2].table if len(chain) > 1 else b.table)
        above = (
            self._under(b, chain[:-1], parent)
            if len(chain) > 1
            else sa.func.coalesce(self.matches(b, parent), sa.false())
        )
        return sa.exists().where(parent.c[link.references] == t.c[link.on], above)


def _chains(
    links: Iterable[Link], table: str, above: tuple[Link, ...] = ()
) -> list[tuple[Link, ...]]:
    """Every chain of cascade links from a rule's table down to a link into `table`."""
    out = []
    for link in links:
        here = (*above, link)
        if link.table.name == table:
            out.append(here)
        out += _chains(link.children, table, here)
    return out


class KeyRangePredicates(Predicates):
    """One worker's share of a parallel run: a rule's expired rows whose first key column lies
    in the worker's half-open range [lo, hi) (None: unbounded). A rule without a range is not
    this worker's: nothing of it is expired here. The ranges of one rule are disjoint and cover
    its key space, so the workers together act on what one run would; a cascade follows its
    parent's keys, so the workers' children are disjoint too. Deletion still wins over
    anonymisation across ranges: `superseded` asks whether a delete rule frees the row at all,
    whichever worker deletes it."""

    def __init__(
        self,
        bound: list[BoundRule],
        as_of: date,
        catalog: Catalog,
        marker_tables: set[str] | None = None,
        *,
        ranges: dict[str, tuple[object, object]],
    ):
        super().__init__(bound, as_of, catalog, marker_tables)
        self.ranges = dict(ranges)

    def in_share(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        if b.id not in self.ranges:
            return sa.false()
        lo, hi = self.ranges[b.id]
        col = t.c[b.rule.keys[0]]
        return sa.and_(
            sa.true(),
            *([col >= lo] if lo is not None else []),
            *([col < hi] if hi is not None else []),
        )

    def expired(self, b: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        return sa.and_(super().expired(b, t), self.in_share(b, t))

    def deleter_frees(self, d: BoundRule, t: sa.FromClause) -> sa.ColumnElement:
        # whichever worker's range holds the row: deletion wins across ranges
        return sa.and_(super().expired(d, t), ~self.held(d, t), ~self.retained(d, t))


class HoldsReleased(Predicates):
    """The normal predicates as if the holds `released` (ids) were released: planning with and
    without them tells how many rows a release would free. Counts only."""

    def __init__(
        self,
        bound: list[BoundRule],
        as_of: date,
        catalog: Catalog,
        marker_tables: set[str] | None = None,
        *,
        released: Iterable[str] = (),
    ):
        super().__init__(bound, as_of, catalog, marker_tables)
        self.released = sorted(released)

    def _still_active(self) -> list[sa.ColumnElement]:
        h = control.holds
        return [
            h.c.released_at.is_(None),
            *([h.c.hold_id.not_in(self.released)] if self.released else []),
        ]
