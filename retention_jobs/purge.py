"""Purge: after rows were deleted or overwritten, make their old bytes unrecoverable, and
remember what is still pending.

The store does the work (`Store.purge`: a fresh DuckDB file, a PostgreSQL VACUUM). The tables
to purge are written to the control table `purge_pending` before it starts and taken out when
it completes. A purge that was killed half-way, or could not finish (on PostgreSQL: a
transaction older than the run's changes kept the old row versions alive), leaves them there,
and every later run, and `retention-jobs purge`, purges them again until a purge completes.
The erasure check reads the same table to say "not verified yet" instead of failing or
passing wrongly.

A purge that fails (the store's copy or vacuum raised) changes nothing in the store's data:
the tables stay pending, the ledger gets a `purge-failed` row, the run that changed the rows
is marked `failed` (its changes are committed, but its erasure is not done), and the result
says `failed` so that the CLI exits 1 and Dagster fails the asset.
"""

from datetime import date
from typing import Any

from retention_jobs import control
from retention_jobs.errors import RunInProgress, safe_message
from retention_jobs.load import PolicySet
from retention_jobs.store.base import Store

LEAVES_BYTES = (
    # said by the run report and the Dagster log after every such purge
    "purge: a plain VACUUM does not remove erased values from the table files: deleted and "
    "overwritten values stay readable in heap and index pages until PostgreSQL reuses the "
    "space. Set `purge: full` in a policy for VACUUM FULL (it locks each table while it "
    "rewrites it; docs/erasure.md), or accept the trade-off knowingly"
)


def removes_old_bytes(store: Store, policies: PolicySet) -> bool:
    """Whether the configured purge leaves no erased value in the store's files: a DuckDB
    compaction always; on PostgreSQL only `purge: full` (VACUUM FULL). A plain VACUUM leaves
    the old tuples' bytes in heap and index pages until they are overwritten (measured: about
    half of the deleted e-mails of a table were still in its heap and its index after one)."""
    return store.kind == "duckdb" or any(f.policy.purge == "full" for f in policies.files)


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
    clears = removes_old_bytes(store, policies)
    # written ahead: a purge killed half-way (a crash, a lost connection) leaves these rows,
    # and the next run finds the work still to do
    with store.connect() as session:
        control.ensure_control_schema(store, session)
        with session.transaction():
            control.add_pending_purges(session, tables, run_id, method)
    try:
        result = store.purge(tables, full=full)
    except RunInProgress:
        raise  # another process holds the store: nothing was tried, the tables stay pending
    except Exception as exc:  # noqa: BLE001 - any failure leaves the purge to do again
        return _failed(store, policies, run_id, tables, as_of, method, safe_message(exc))
    if pending:
        result["retried_pending"] = len(pending)
    if not clears:
        # said every time, not once: the run's erased values stay readable in the files
        result["removes_old_bytes"] = False
    with store.connect() as session, session.transaction():
        control.append_audit(
            session,
            run_id=run_id,
            action=f"purge-{result['method']}",
            as_of=as_of,
            policy_sha256=policies.digest,
            seconds=result.get("seconds"),
        )
        if not clears:
            control.append_audit(
                session,
                run_id=run_id,
                action="purge-leaves-bytes",
                as_of=as_of,
                policy_sha256=policies.digest,
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


def _failed(
    store: Store,
    policies: PolicySet,
    run_id: str,
    tables: list[str],
    as_of: date | None,
    method: str,
    reason: str,
) -> dict[str, Any]:
    """Record a purge that failed: the tables stay pending (written ahead), the run is failed."""
    with store.connect() as session, session.transaction():
        control.append_audit(
            session,
            run_id=run_id,
            action="purge-failed",
            as_of=as_of,
            policy_sha256=policies.digest,
        )
        control.fail_run(session, run_id)
    return {
        "method": method,
        "complete": False,
        "failed": reason,
        "pending_tables": tables,
    }


def failure_message(result: dict[str, Any]) -> str:
    """What the CLI and Dagster say when a purge failed."""
    return (
        f"purge failed: {result['failed']}; the run's changes are committed but the erased values "
        "are still in the store's files, so the run is marked failed; the tables stay pending and "
        "the next run or `retention-jobs purge` purges them again"
    )
