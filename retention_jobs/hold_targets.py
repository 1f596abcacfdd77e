"""A legal hold's target, checked before the hold is placed.

A hold protects only what the policies can reach: a purpose a policy has, a table a rule names
(as its table or in a cascade), a subject kind a rule declares. A typo (`custmer:1042`,
`billing.invoice`) would place a hold that protects nothing while everyone believes the rows
safe, so such a target is refused with the closest names. A subject whose id is in no table of
its kind may be legitimate (a hold placed before the data arrives): that is a warning, and the
hold is placed. Messages name kinds, tables and purposes, never the subject's id.
"""

import difflib

import sqlalchemy as sa

from retention_jobs.errors import ConfigError
from retention_jobs.load import PolicySet
from retention_jobs.predicates import alias, subject_equals
from retention_jobs.store.base import Session, Store


def _closest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "known: " + (", ".join(options) or "none")


def rule_tables(policies: PolicySet) -> set[str]:
    """Every table a rule names, as its table or in a cascade (at any depth)."""
    out: set[str] = set()

    def walk(cascades) -> None:
        for c in cascades:
            out.add(c.table)
            walk(c.cascade)

    for p in policies.policies:
        for r in p.rules:
            out.add(r.table)
            walk(r.cascade)
    return out


def check_target(
    store: Store | None,
    session: Session | None,
    policies: PolicySet,
    *,
    subject: str | None = None,
    table: str | None = None,
    purpose: str | None = None,
) -> list[str]:
    """Refuse (ConfigError) a target that no policy reaches or the store lacks; return warnings.
    Without a store (it is busy with a run), only what the policies say is checked."""
    if purpose is not None:
        purposes = sorted(p.purpose for p in policies.policies)
        if purpose not in purposes:
            raise ConfigError(
                f"--purpose {purpose!r}: no policy has this purpose, so the hold would protect "
                f"nothing; {_closest(purpose, purposes)} Nothing was written."
            )
        return []
    catalog = store.catalog(session) if store is not None and session is not None else None
    if table is not None:
        if catalog is not None and table not in catalog.tables:
            raise ConfigError(
                f"--table {table!r}: the store has no such table; "
                f"{_closest(table, sorted(catalog.tables))} Nothing was written."
            )
        named = sorted(rule_tables(policies))
        if table not in named:
            raise ConfigError(
                f"--table {table!r}: no rule names this table (as its table or in a cascade), so "
                f"the suite never changes it and the hold would protect nothing; "
                f"{_closest(table, named)} Nothing was written."
            )
        return []
    from retention_jobs.requests import kind_columns, parse_subject

    assert subject is not None
    kind, sid = parse_subject(subject)
    kinds = kind_columns(policies)
    if kind not in kinds:
        raise ConfigError(
            f"--subject: no rule declares subject kind {kind!r}, so the hold would protect "
            f"nothing; {_closest(kind, sorted(kinds))} Nothing was written."
        )
    if catalog is None or session is None:
        return []
    places = sorted((t, c) for t, c in kinds[kind] if t in catalog.tables)
    for name, column in places:
        info = catalog.tables[name]
        if column not in info.columns:
            continue
        t = alias(info)
        found = session.scalar(
            sa.select(sa.literal(1))
            .select_from(t)
            .where(subject_equals(t.c[column], info.columns[column].type, sid))
            .limit(1)
        )
        if found:
            return []
    where = ", ".join(f"{t}.{c}" for t, c in places) or "no table of the store"
    return [
        f"no row of subject kind {kind!r} has this id yet ({where}); the hold is placed "
        "anyway and protects such rows when they appear. Check the id if you expected the "
        "subject to be there."
    ]
