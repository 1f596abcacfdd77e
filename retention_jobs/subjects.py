"""Where a data subject's data lives: the subject map.

A subject kind lives in its identity tables (the tables whose key a rule's `subject:` names,
see `resolve.subject_identities`) and in every table whose rows reach one of them over foreign
keys (`resolve.infer_subjects`: a customer's subscriptions, their invoices). The map is read
from the policies and the store's catalog, not from the rules' tables alone: a table that holds
the subject and that no rule names is a place a request has not handled, and must say so.

Only names and SQL expressions here, never a value: the subject's id is bound into the
statements that `rows_of` builds.
"""

from dataclasses import dataclass

import sqlalchemy as sa

from retention_jobs.load import PolicySet
from retention_jobs.predicates import alias, subject_equals
from retention_jobs.resolve import Hop, SubjectPath, infer_subjects, subject_identities
from retention_jobs.store.base import Catalog, TableInfo


@dataclass(frozen=True)
class Place:
    """A table that holds data of a subject kind, and the ways its rows name the subject."""

    table: TableInfo
    paths: tuple[SubjectPath, ...]
    """Each: the subject's id is `column` of the row reached over `hops` (none: the row's own)."""

    def describe(self) -> list[str]:
        return [p.describe(self.table.name) for p in self.paths]


def subject_map(policies: PolicySet, catalog: Catalog, kind: str) -> list[Place]:
    """Every table of the store that holds data of subjects of `kind`, by table name."""
    identities = subject_identities(policies, catalog)
    out = []
    for name in sorted(catalog.tables):
        info = catalog.tables[name]
        paths = tuple(p for p in infer_subjects(catalog, identities, info) if p.kind == kind)
        if paths:
            out.append(Place(info, paths))
    return out


def rows_of(place: Place, t: sa.FromClause, subject_id: str) -> sa.ColumnElement:
    """The rows of `place` (in `t`) that name the subject `subject_id` by any of its paths."""
    return sa.or_(*(_path_is(p, p.hops, place.table, t, subject_id) for p in place.paths))


def _path_is(
    p: SubjectPath, hops: tuple[Hop, ...], info: TableInfo, t: sa.FromClause, subject_id: str
) -> sa.ColumnElement:
    if not hops:
        test = subject_equals(t.c[p.column], info.columns[p.column].type, subject_id)
        return sa.func.coalesce(test, sa.false())
    h = hops[0]
    r = alias(h.table)
    return sa.exists().where(
        *(r.c[rc] == t.c[c] for c, rc in zip(h.columns, h.ref_columns, strict=True)),
        _path_is(p, hops[1:], h.table, r, subject_id),
    )
