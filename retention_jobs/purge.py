"""Purge: after rows were deleted or overwritten, make their old bytes unrecoverable, and
remember what is still pending.

The store does the work (`Store.purge`: a fresh DuckDB file, a PostgreSQL VACUUM). The tables
to purge are written to the control table `purge_pending` before it starts and taken out when
it completes. A purge that was killed half-way, or could not finish (on PostgreSQL: a
transaction older than the run's changes kept the old row versions alive), leaves them there,
and every later run, and `retention-jobs purge`, purges them again until a purge completes.
The erasure check reads the same table to say "not verified yet" instead of failing or
passing wrongly.
"""

from datetime import date
from typing import Any

from retention_jobs import control
from retention_jobs.load import PolicySet
from retention_jobs.store.base import Store


def purge_tables(
    store: Store,
    policies: PolicySet,
    run_id: str,
    changed: list[str],
    as_of: date | None = None,
) -> dict[str, Any] | None:
    """Purge `changed` plus every table a former purge left pending; record the purge (and,
    if it did not complete, what is pending) in the ledger. None when there is nothing to do."""
    with store.connect(read_only=True) as session:
        pending = control.pending_purges(session)
    tables = sorted(set(changed) | set(pending))
    if not tables:
        return None
    full = any(f.policy.purge == "full" for f in policies.files)
    method = "full" if full else "default"
    # written ahead: a purge killed half-way (a crash, a lost connection) leaves these rows,
    # and the next run finds the work still to do
    with store.connect() as session:
        control.ensure_control_schema(store, session)
        with session.transaction():
            control.add_pending_purges(session, tables, run_id, method)
    result = store.purge(tables, full=full)
    if pending:
        result["retried_pending"] = len(pending)
    with store.connect() as session, session.transaction():
        control.append_audit(
            session,
            run_id=run_id,
            action=f"purge-{result['method']}",
            as_of=as_of,
            policy_sha256=policies.digest,
            seconds=result.get("seconds"),
        )
        if result.get("complete", True):
            control.clear_pending_purges(session, tables)
        else:
            left = set(result.get("pending_tables") or tables)
            control.clear_pending_purges(session, [t for t in tables if t not in left])
            control.append_audit(
                session,
                run_id=run_id,
                action="purge-pending",
                as_of=as_of,
                policy_sha256=policies.digest,
                held=len(result.get("held_back_by") or []),
            )
    return result
