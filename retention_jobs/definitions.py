"""The Dagster code location: one asset per policy file, built when the location loads.

`RETENTION_POLICIES` names the policy directory (default: `policies/` in the project). A policy
file that does not validate stops the whole location from loading with the loader's
`file:line:col` messages: a half-loaded location would silently skip a purpose.

`RETENTION_EXECUTOR` chooses how a run executes its steps: `in_process` (default), or, for a
SQL store only, `multiprocess`, `k8s` or `celery`. A bad choice also stops the location
from loading, with a `ConfigError` that says what to set.
"""

import os
from pathlib import Path

import dagster as dg

from assets.policy_assets import partitions_def, policy_assets, source_specs
from assets.requests import (
    data_subject_requests,
    request_deadline_check,
    request_deadline_job,
    request_deadline_schedule,
    request_sensor,
)
from assets.resources import PROJECT_ROOT, resources
from assets.schedules import nightly_job, nightly_schedule
from retention_jobs.errors import ConfigError
from retention_jobs.load import load_policies
from retention_jobs.store import STORE_ENV, mask_url, store_location

POLICIES_ENV = "RETENTION_POLICIES"
EXECUTOR_ENV = "RETENTION_EXECUTOR"
EXECUTORS = ("in_process", "multiprocess", "k8s", "celery")


def policies_dir() -> Path:
    value = os.environ.get(POLICIES_ENV)
    if not value:
        return PROJECT_ROOT / "policies"
    path = Path(value)
    return path if path.is_absolute() else PROJECT_ROOT / path


def is_sql_store(location: str) -> bool:
    """A database URL, as `open_store` reads it: `duckdb:///file` is still a DuckDB file."""
    return "://" in location and not location.startswith("duckdb:")


def executor() -> dg.ExecutorDefinition:
    """The run executor named by `RETENTION_EXECUTOR`. in_process (default) is the only choice
    for a DuckDB file, which takes one writer process; multiprocess, k8s (dagster-k8s) and
    celery (dagster-celery) need a SQL store. The k8s and celery packages are imported only
    when chosen."""
    raw = os.environ.get(EXECUTOR_ENV, "")
    kind = raw.strip().lower() or "in_process"
    if kind not in EXECUTORS:
        raise ConfigError(
            f"{EXECUTOR_ENV}={raw.strip()!r} is not an executor: set it to one of {', '.join(EXECUTORS)} "
            "(or leave it unset for in_process)"
        )
    if kind == "in_process":
        return dg.in_process_executor
    location = store_location()
    if not is_sql_store(location):
        raise ConfigError(
            f"{EXECUTOR_ENV}={kind} needs a SQL store, but the store ({STORE_ENV}) is the DuckDB file "
            f"{mask_url(location)!r}, which takes one writer process at a time: unset {EXECUTOR_ENV} "
            f"(in_process) or point {STORE_ENV} at a database URL such as postgresql+psycopg://..."
        )
    if kind == "multiprocess":
        return dg.multiprocess_executor
    package = f"dagster-{kind}"
    try:
        if kind == "k8s":
            from dagster_k8s import k8s_job_executor as chosen
        else:
            from dagster_celery import celery_executor as chosen
    except ImportError as exc:
        raise ConfigError(
            f"{EXECUTOR_ENV}={kind} needs the package {package}, which cannot be imported ({exc}): "
            f"pip install {package} (the release that matches dagster {dg.__version__}) in the "
            f"code location's environment, or choose another {EXECUTOR_ENV}"
        ) from None
    return chosen


def build_definitions(policies: str | Path | None = None) -> dg.Definitions:
    # a PolicyError carries every problem as `file:line:col: ...`; Dagster shows it as the
    # location's load error
    policy_set = load_policies([policies or policies_dir()])
    partitions = partitions_def()
    job = nightly_job()
    return dg.Definitions(
        assets=[
            *source_specs(policy_set),
            *policy_assets(policy_set, partitions),
            data_subject_requests,
        ],
        asset_checks=[request_deadline_check],
        jobs=[job, request_deadline_job],
        schedules=[nightly_schedule(job), request_deadline_schedule],
        sensors=[request_sensor],
        resources=resources(),
        # One process per run unless RETENTION_EXECUTOR says otherwise: DuckDB takes one
        # writer process at a time (see the pool in dagster.yaml); a SQL store takes many.
        executor=executor(),
    )


defs = build_definitions()
