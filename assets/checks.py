"""Asset checks of a policy asset, evaluated by the asset itself right after its run.

`held_rows_unchanged` compares fingerprints of the held rows taken by the run before it changed
anything with the same fingerprints after it; only the run has the "before", so the checks are
yielded from the materialisation (`check_specs=`) rather than run as separate ops. All five
block: a failed check fails the step, so nothing downstream builds on a broken erasure. A check
that could not verify (say, a purge an older transaction held back) is neither: it is a warning
with `status: not verified`, and the next run retries.
"""

import dagster as dg

from retention_jobs.check import CheckResult

CHECKS: dict[str, str] = {
    "nothing_expired_left": "No row past its retention period is left unprocessed, other than held or "
    "retained rows.",
    "held_rows_unchanged": "Every row under a legal hold is byte-for-byte what it was before the run.",
    "no_original_values": "No anonymised column still holds its original value (compared by keyed hash).",
    "audit_recorded": "The audit ledger holds this run's rows: a plan row for every rule of the policy.",
    "erasure_verified": "None of the values this run deleted or anonymised can be found in the store's raw "
    "bytes after the purge (searched by keyed hash).",
}


def check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset_key, description=text, blocking=True)
        for name, text in CHECKS.items()
    ]


def to_check_result(asset_key: dg.AssetKey, result: CheckResult) -> dg.AssetCheckResult:
    """Counts and rule names only: engine check results never carry a value."""
    metadata: dict[str, str | int] = {
        "summary": result.summary,
        "status": "passed" if result.passed else "failed" if result.verified else "not verified",
    }
    metadata.update({name: int(n) for name, n in result.counts.items()})
    # "could not verify" is its own state: not green, and a warning rather than a failed
    # erasure (the next run retries what kept it from verifying)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=result.name,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR if result.verified else dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=result.summary,
    )
