"""Data-subject requests in Dagster: an asset that processes the requests that are due, a sensor
that starts it when there are any, and a daily check of the one-month deadline (GDPR Art. 12(3)).

Wired into `retention_jobs/definitions.py`: `data_subject_requests` into
`assets=`, `request_deadline_check` into `asset_checks=`, `request_sensor` into `sensors=`,
`request_deadline_job` into `jobs=` and `request_deadline_schedule` into `schedules=`. The asset
sits in its own group (`requests`), unpartitioned, so the partitioned nightly job (group
`retention`) does not pick it up; it shares the store's pool with the policy assets.

Like everything in this layer: counts, dates, statuses and request ids only, never a subject.
"""

import hashlib
import os
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from assets.policy_assets import POOL, RETRY, _store_kind, engine_errors, partitions_timezone
from assets.resources import PROJECT_ROOT, PseudonymKeyResource, StoreResource
from assets.schedules import STORE_TAG
from retention_jobs import control
from retention_jobs.errors import RetentionError
from retention_jobs.load import load_policies
from retention_jobs.requests import (
    OPEN_STATUSES,
    due_for_processing,
    list_requests,
    process_requests,
)

GROUP = "requests"
REQUESTS_KEY = dg.AssetKey(["requests", "data_subject_requests"])
DUE_SOON_DAYS = 7
POLICIES_ENV = "RETENTION_POLICIES"
DEADLINE_CRON_ENV = "RETENTION_REQUEST_DEADLINE_CRON"


def _policies_dir() -> Path:
    """As definitions.policies_dir (not imported: definitions imports this module once wired)."""
    value = os.environ.get(POLICIES_ENV)
    path = Path(value) if value else PROJECT_ROOT / "policies"
    return path if path.is_absolute() else PROJECT_ROOT / path


def _today() -> date:
    return datetime.now(ZoneInfo(partitions_timezone())).date()


@dg.asset(
    key=REQUESTS_KEY,
    group_name=GROUP,
    description="Erasure, consent withdrawal and objection requests processed as of today: the "
    "subject's rows are deleted or anonymised as the policies say, except rows under a "
    "legal hold or inside a retain period, which are deferred and finished on their date. "
    "Access requests need an operator (`retention-jobs requests process ID --out FILE.zip`).",
    kinds={_store_kind()},
    pool=POOL,
    retry_policy=RETRY,
)
def data_subject_requests(
    context: dg.AssetExecutionContext, store: StoreResource, pseudonym_key: PseudonymKeyResource
) -> dg.MaterializeResult:
    as_of = _today()
    with engine_errors():
        policies = load_policies([_policies_dir()])
        results = process_requests(store.open(), policies, as_of, pseudonym_key.get())
    by_status: dict[str, list[str]] = {}
    for p in results:
        state = "failed" if p.failed else "skipped" if p.skipped else p.status
        by_status.setdefault(state, []).append(p.request_id)
    metadata: dict[str, str | int] = {
        "as_of": as_of.isoformat(),
        "processed": len(results),
        "policies_sha256": policies.digest,
    }
    metadata.update({f"{state}": len(ids) for state, ids in sorted(by_status.items())})
    metadata.update({f"{state}_ids": ", ".join(ids) for state, ids in sorted(by_status.items())})
    context.log.info(
        f"{len(results)} requests processed as of {as_of}: "
        + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_status.items()))
        if results
        else f"no request due as of {as_of}"
    )
    if by_status.get("failed"):
        # the others were recorded; the failed ones stay open and are tried again
        raise dg.Failure(
            description=f"{len(by_status['failed'])} request(s) failed: {', '.join(by_status['failed'])}",
            metadata=metadata,
            allow_retries=True,
        )
    return dg.MaterializeResult(metadata=metadata)


@dg.sensor(
    name="request_sensor",
    asset_selection=[REQUESTS_KEY],
    minimum_interval_seconds=900,
    description="Starts the request processing when a request is pending, or a deferred one's day "
    "has come (requests waiting on a hold are looked at once a day).",
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def request_sensor(context: dg.SensorEvaluationContext, store: StoreResource):
    as_of = _today()
    try:
        with store.open().connect(read_only=True) as session:
            if not control.control_exists(session):
                return dg.SkipReason("the store has no control schema yet")
            due = [r for r in due_for_processing(session, as_of) if r.kind != "access"]
    except RetentionError as exc:  # a nightly run holds the DuckDB file: try at the next tick
        return dg.SkipReason(f"store not readable now ({type(exc).__name__})")
    if not due:
        return dg.SkipReason(f"no request due as of {as_of}")
    # one run per day and state of the due requests: a request that stays deferred (a hold)
    # does not start a run every tick
    state = "|".join(sorted(f"{r.request_id}:{r.status}" for r in due))
    run_key = hashlib.sha256(f"{as_of}|{state}".encode()).hexdigest()[:20]
    return dg.RunRequest(run_key=run_key, tags={STORE_TAG: POOL})


@dg.asset_check(
    asset=REQUESTS_KEY,
    name="request_deadlines",
    description="No open request is past its due date (one month after receipt, GDPR Art. 12(3)); "
    f"warns when one is due within {DUE_SOON_DAYS} days.",
    blocking=False,
)
def request_deadline_check(store: StoreResource) -> dg.AssetCheckResult:
    today = _today()
    with engine_errors(), store.open().connect(read_only=True) as session:
        open_ = list_requests(session, OPEN_STATUSES) if control.control_exists(session) else []
    # an open request answered within the month (deferred, with a receipt) is not late: it is
    # the pending ones, never answered, that the deadline is about
    unanswered = [r for r in open_ if r.status == "pending"]
    overdue = [r for r in unanswered if today > r.due_on]
    soon = [
        r
        for r in unanswered
        if r not in overdue and r.due_on <= today + timedelta(days=DUE_SOON_DAYS)
    ]
    metadata: dict[str, str | int] = {
        "open": len(open_),
        "pending": len(unanswered),
        "overdue": len(overdue),
        f"due_within_{DUE_SOON_DAYS}_days": len(soon),
        "overdue_ids": ", ".join(r.request_id for r in overdue),
        "due_soon_ids": ", ".join(r.request_id for r in soon),
        "oldest_due": min((r.due_on for r in unanswered), default=today).isoformat(),
    }
    if overdue:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=f"{len(overdue)} request(s) past their due date",
        )
    if soon:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
            description=f"{len(soon)} request(s) due within {DUE_SOON_DAYS} days",
        )
    return dg.AssetCheckResult(
        passed=True,
        metadata=metadata,
        description=f"{len(unanswered)} pending, none due within {DUE_SOON_DAYS} days",
    )


request_deadline_job = dg.define_asset_job(
    "request_deadlines",
    selection=dg.AssetSelection.checks(request_deadline_check),
    description="Check the data-subject requests' deadlines (reads the store only).",
)

request_deadline_schedule = dg.ScheduleDefinition(
    name="request_deadlines_daily",
    job=request_deadline_job,
    cron_schedule=os.environ.get(DEADLINE_CRON_ENV, "0 7 * * *"),
    execution_timezone=partitions_timezone(),
    description="Every morning: are data-subject requests answered in time?",
)
