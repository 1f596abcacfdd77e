"""What the rules before a rule in run order will already have done, while planning: the plan
counts each row once, for the first rule (or cascade) that acts on it, as the run does.

A run applies its rules one after the other (`run_order`): every delete rule, then every
anonymise rule, each in policy order. A row that an earlier rule deletes, directly or by a
cascade, is gone when a later rule or cascade reaches it; a row whose columns earlier rules
have all anonymised in this run is done. Planning walks the rules in that order and keeps,
for each table that more than one step touches, the rows each step takes, staged in the store
(keys never leave it). Tables only one step touches need nothing: no overlap is possible."""

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from retention_jobs.policy import RelatedClock
from retention_jobs.predicates import Predicates, in_stage
from retention_jobs.resolve import BoundRule, Link
from retention_jobs.store.base import Session

RUN_ORDER = {"delete": 0, "anonymise": 1, "retain": 2}
"""The order in which a run applies rules, by action; policy order within one action."""

RowTest = Callable[[sa.FromClause], sa.ColumnElement]


def run_rank(action: str) -> int:
    return RUN_ORDER[action]


def link_tables(b: BoundRule) -> list[str]:
    """Every table a rule's cascades reach (a table reached twice, listed twice)."""
    out: list[str] = []

    def walk(link: Link) -> None:
        out.append(link.table.name)
        for child in link.children:
            walk(child)

    for link in b.cascades:
        walk(link)
    return out


def shared_tables(rules: Iterable[BoundRule]) -> set[str]:
    """Tables that more than one step of a run touches (a rule's own table, a cascade's table,
    a table a cascade passes through): the only ones where steps can overlap."""
    seen: Counter[str] = Counter()
    for b in rules:
        if b.rule.action == "retain":
            continue
        seen[b.table.name] += 1
        seen.update(link_tables(b))
    return {t for t, n in seen.items() if n > 1}


@dataclass
class _Anonymised:
    columns: frozenset[str]
    rows: RowTest


@dataclass
class Claims:
    """The rows earlier steps of the run delete or anonymise, per shared table."""

    session: Session
    shared: set[str]
    gone: dict[str, list[RowTest]] = field(default_factory=dict)
    anonymised: dict[str, list[_Anonymised]] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)

    def is_gone(self, table: str, t: sa.FromClause) -> sa.ColumnElement:
        """The row of `table` in `t` is deleted by an earlier step."""
        tests = self.gone.get(table, [])
        return (
            sa.func.coalesce(sa.or_(*(test(t) for test in tests)), sa.false())
            if tests
            else sa.false()
        )

    def reads_gone(self, b: BoundRule) -> bool:
        """Whether `b`'s clock or `related` filters read a table earlier steps delete from:
        its expiry may then change before it is applied."""
        clock = b.rule.clock
        read = {rel.table for rel in b.rule.related}
        if isinstance(clock, RelatedClock):
            read.add(clock.table)
        return any(self.gone.get(table) for table in read)

    def done_in_run(self, b: BoundRule, t: sa.FromClause, pred: Predicates) -> sa.ColumnElement:
        """Every column `b` anonymises is anonymised already: by an earlier run (its marker) or
        by an earlier step of this run. False where no earlier step of this run anonymises one
        of them (the marker alone is `Predicates.done`'s)."""
        steps = self.anonymised.get(b.table.name, [])
        per_column = []
        for c in b.rule.columns:
            mine = [s.rows(t) for s in steps if c in s.columns]
            if not mine:
                return sa.false()
            per_column.append(sa.or_(pred.marked(b.table, b.rule.keys, t, c), *mine))
        return sa.and_(*per_column) if per_column else sa.false()

    def _stage(self, query: sa.Select) -> sa.TableClause:
        name = f"rj_claim_{len(self.stages)}"
        self.stages.append(name)
        return self.session.stage_query(name, query)

    def take_rows(
        self,
        table: str,
        keys: Sequence[str],
        rows: sa.Select,
        columns: Iterable[str] | None = None,
    ) -> None:
        """A step deletes (`columns` None) or anonymises `columns` of the rows whose `keys`
        `rows` selects."""
        if table not in self.shared:
            return
        stage = self._stage(rows)
        key_list = list(keys)
        self._record(table, lambda t: in_stage(t, key_list, stage), columns)

    def take_linked(
        self, table: str, on: str, values: sa.Select, columns: Iterable[str] | None = None
    ) -> None:
        """A cascade deletes (`columns` None) or anonymises `columns` of the rows of `table`
        whose `on` is one of `values`."""
        if table not in self.shared:
            return
        stage = self._stage(values)
        col = stage.c[list(stage.c.keys())[0]]
        # a row whose link is NULL is linked to no parent: not taken (false, never NULL, which
        # would drop the row from every count of the plan)
        self._record(
            table,
            lambda t: sa.func.coalesce(
                t.c[on].in_(sa.select(col).where(col.is_not(None))), sa.false()
            ),
            columns,
        )

    def _record(self, table: str, test: RowTest, columns: Iterable[str] | None) -> None:
        if columns is None:
            self.gone.setdefault(table, []).append(test)
        else:
            self.anonymised.setdefault(table, []).append(_Anonymised(frozenset(columns), test))

    def drop(self) -> None:
        for name in self.stages:
            self.session.drop_stage(name)
        self.stages.clear()
