"""The Dagster code location: one asset per policy file, built when the location loads.

`RETENTION_POLICIES` names the policy directory (default: `policies/` in the project). A policy
file that does not validate stops the whole location from loading with the loader's
`file:line:col` messages: a half-loaded location would silently skip a purpose.
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
from retention_jobs.load import load_policies

POLICIES_ENV = "RETENTION_POLICIES"


def policies_dir() -> Path:
    value = os.environ.get(POLICIES_ENV)
    if not value:
        return PROJECT_ROOT / "policies"
    path = Path(value)
    return path if path.is_absolute() else PROJECT_ROOT / path


def build_definitions(policies: str | Path | None = None) -> dg.Definitions:
    # a PolicyError carries every problem as `file:line:col: ...`; Dagster shows it as the
    # location's load error
    policy_set = load_policies([policies or policies_dir()])
    partitions = partitions_def()
    job = nightly_job()
    return dg.Definitions(
        assets=[*source_specs(policy_set), *policy_assets(policy_set, partitions), data_subject_requests],
        asset_checks=[request_deadline_check],
        jobs=[job, request_deadline_job],
        schedules=[nightly_schedule(job), request_deadline_schedule],
        sensors=[request_sensor],
        resources=resources(),
        # One process per run: DuckDB takes one writer process at a time, and the policy
        # steps of a run share the store anyway (see the pool in dagster.yaml).
        executor=dg.in_process_executor,
    )


defs = build_definitions()
