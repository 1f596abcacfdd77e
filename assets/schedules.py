"""The nightly job and its schedule: every policy, as of yesterday, at 02:30 Oslo time.

The run at 02:30 on the 5th enforces the policies as of the 4th: the last whole day. Cron and
zone come from the environment so a deployment can move the window without a code change. The
schedule starts stopped: switching on a job that deletes data is a decision for a person (the
switch is kept in the Dagster instance, so it is made once per deployment).
"""

import os

import dagster as dg

from assets.policy_assets import GROUP, POOL, previous_day

JOB = "nightly_retention"
CRON_ENV = "RETENTION_SCHEDULE_CRON"
SCHEDULE_TZ_ENV = "RETENTION_SCHEDULE_TIMEZONE"
DEFAULT_CRON = "30 2 * * *"
DEFAULT_SCHEDULE_TZ = "Europe/Oslo"
STORE_TAG = "retention/store"


def nightly_job():
    # partitioned like its assets: Dagster infers the daily partitions from the selection
    return dg.define_asset_job(
        JOB,
        selection=dg.AssetSelection.groups(GROUP),
        description="Apply every retention policy as of the partition's date, then check the store.",
        tags={STORE_TAG: POOL},
    )


def nightly_schedule(job) -> dg.ScheduleDefinition:
    timezone = os.environ.get(SCHEDULE_TZ_ENV, DEFAULT_SCHEDULE_TZ)

    @dg.schedule(
        name=f"{JOB}_schedule",
        cron_schedule=os.environ.get(CRON_ENV, DEFAULT_CRON),
        execution_timezone=timezone,
        job=job,
        description="Every night: the policies as of yesterday.",
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        key = previous_day(context.scheduled_execution_time, timezone)
        return dg.RunRequest(run_key=key, partition_key=key)

    return _nightly
