"""The delete-share guard: a run may not take more than `max_delete_fraction` of a table in one
night unless someone approved that share (`--max-delete-fraction`, Dagster config
`max_delete_fraction`).

A night is every run with the same as-of date (a Dagster partition; the CLI's default as-of
date is today), whatever its purpose: the Dagster assets run one purpose at a time, and three
policies that each take 15 % of a table take 45 % of it that night. For each table this run
deletes from:

    share = (deleted tonight + this run's deletes) / (rows now + deleted tonight)

- *this run's deletes*: the plan's counts summed over the table's delete rules and the delete
  cascades that reach it. The plan counts each row once (`claims`), so these are distinct rows.
- *deleted tonight*: the ledger's `delete` and `cascade-delete` rows for the table written by
  earlier runs (and data-subject requests) with the same as-of date.
- the denominator is the table's row count at the start of the night, read as the rows it has
  now plus the rows the ledger says left it tonight (rows the application inserted or deleted
  in between count as if they had been there, or not, from the start).

A table this run deletes nothing from is not judged: an approval given to an earlier run of
the night is not asked for again.
"""

from datetime import date

import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.errors import ApprovalRequired
from retention_jobs.plan import Plan
from retention_jobs.store.base import Catalog, Session, sa_table

DELETE_ACTIONS = ("delete", "cascade-delete")


def planned_deletes(plan: Plan) -> dict[str, int]:
    """Rows the run of `plan` deletes, per table (distinct: the plan counts a row once)."""
    out: dict[str, int] = {}
    for rp in plan.rules:
        if rp.action == "delete" and rp.to_act:
            out[rp.table] = out.get(rp.table, 0) + rp.to_act
        for c in rp.cascades:
            if c.action == "delete" and c.rows:
                out[c.table] = out.get(c.table, 0) + c.rows
    return out


def deleted_tonight(session: Session, tables: list[str], as_of: date) -> dict[str, int]:
    """Rows the ledger records as deleted from `tables` by runs with the as-of date `as_of`."""
    if not tables:
        return {}
    a = control.audit
    rows = session.fetchall(
        sa.select(a.c.table_name, sa.func.coalesce(sa.func.sum(a.c.deleted), 0))
        .where(a.c.as_of == as_of, a.c.action.in_(DELETE_ACTIONS), a.c.table_name.in_(tables))
        .group_by(a.c.table_name)
    )
    return {t: int(n) for t, n in rows}


def check_delete_share(session: Session, catalog: Catalog, plan: Plan, limit: float | None) -> None:
    """Raise `ApprovalRequired` (before anything changed) when the night's share of a table
    would pass `limit`; None: no limit."""
    if limit is None:
        return
    deleting = planned_deletes(plan)
    tonight = deleted_tonight(session, sorted(deleting), plan.as_of)
    over = []
    for table, n in sorted(deleting.items()):
        now = session.scalar(
            sa.select(sa.func.count()).select_from(sa_table(catalog.tables[table]))
        )
        before = tonight.get(table, 0)
        start = int(now or 0) + before
        share = (before + n) / start if start else 0.0
        if share > limit:
            counts = (
                f"{before} deleted earlier tonight + {n} by this run of" if before else f"{n} of"
            )
            over.append(f"{table}: {counts} {start} rows ({share:.0%})")
    if over:
        raise ApprovalRequired(
            f"this run would delete more than {limit:.0%} of a table in the night of "
            f"{plan.as_of.isoformat()} (all runs with that as-of date, every purpose), so "
            "nothing was changed: "
            + "; ".join(over)
            + ". Check the plan (`retention-jobs plan`), then approve with "
            "--max-delete-fraction (Dagster: config max_delete_fraction) set to the share you "
            "accept"
        )
