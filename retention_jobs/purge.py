"""Purge: after rows were deleted or overwritten, make their old bytes unrecoverable, and
remember what is still pending.

The store does the work (`Store.purge`: a fresh DuckDB file, a PostgreSQL VACUUM). A purge
that could not finish (on PostgreSQL: a transaction older than the run's changes kept the old
row versions alive) leaves its tables in the control table `purge_pending`; every later run,
and `retention-jobs purge`, purges them again until a purge completes. The erasure check
reads the same table to say "not verified yet" instead of failing or passing wrongly.
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
            left = result.get("pending_tables") or tables
            control.add_pending_purges(session, left, run_id, result["method"])
            control.append_audit(
                session,
                run_id=run_id,
                action="purge-pending",
                as_of=as_of,
                policy_sha256=policies.digest,
                held=len(result.get("held_back_by") or []),
            )
    return result
