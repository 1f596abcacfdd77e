"""One asset per policy: the policy applied to the store as of its partition's date.

Thin on purpose: the asset reads the partition date, its run config and the resources, calls
the engine exactly as the CLI does (`run_policies`, then `run_checks`), and turns the report
into metadata and check results. Counts, rule names, hashes and ids only: never a value.
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field

from assets.checks import check_specs, to_check_result
from assets.resources import PseudonymKeyResource, StoreResource
from retention_jobs.apply import RunOptions, RunReport, run_policies
from retention_jobs.check import run_checks
from retention_jobs.errors import RetentionError, StoreRejected, database_error, safe_message
from retention_jobs.load import PolicyFile, PolicySet
from retention_jobs.policy import Cascade, Policy, RelatedClock, RelatedFilter
from retention_jobs.purge import LEAVES_BYTES, failure_message
from retention_jobs.store import mask_url

GROUP = "retention"
SOURCE_GROUP = "sources"
POOL = "retention_store"
"""Every policy asset writes to the one store; dagster.yaml limits this pool to one at a time."""
TIMEZONE_ENV = "RETENTION_TIMEZONE"
START_ENV = "RETENTION_PARTITIONS_START"
DEFAULT_TIMEZONE = "Europe/Oslo"
DEFAULT_START = "2024-01-01"
RETRY = dg.RetryPolicy(max_retries=3, delay=30)
COUNTS = ("expired", "held", "retained", "deleted", "anonymised", "kept")


class RetentionConfig(dg.Config):
    """Launchpad settings of one policy run."""

    dry_run: bool = Field(
        default=False, description="Only plan: count what would change, change nothing."
    )
    max_delete_fraction: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Refuse (before changing anything) to delete more than this share of any table "
        "in one night: every run of the partition's as-of date counts, whatever its purpose "
        "(docs/policies.md). To approve a larger deletion after reading the plan, raise it "
        "(1.0 = no limit).",
    )
    batch_size: int = Field(
        default=50_000, ge=1, description="Rows per transaction; bounds memory."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="SQL stores only: split each rule's rows into this many key ranges, one process each "
        "(docs/scaling.md). A DuckDB file takes one writer: 1.",
    )


def partitions_timezone() -> str:
    return os.environ.get(TIMEZONE_ENV, DEFAULT_TIMEZONE)


def partitions_def() -> dg.DailyPartitionsDefinition:
    """One partition per as-of date; today's partition exists (end_offset=1) for a manual run."""
    return dg.DailyPartitionsDefinition(
        start_date=os.environ.get(START_ENV, DEFAULT_START),
        timezone=partitions_timezone(),
        end_offset=1,
    )


def previous_day(moment: datetime, timezone: str) -> str:
    """The partition key of the day before `moment`, read in `timezone`."""
    local = moment.astimezone(ZoneInfo(timezone)) if moment.tzinfo else moment
    return (local.date() - timedelta(days=1)).isoformat()


# --- lineage -------------------------------------------------------------------------------


def source_key(table: str) -> dg.AssetKey:
    schema, name = table.split(".", 1)
    return dg.AssetKey(["source", schema, name])


def _cascade_tables(cascades: list[Cascade]) -> Iterator[str]:
    for c in cascades:
        yield c.table
        yield from _cascade_tables(c.cascade)


def touched_tables(policy: Policy) -> list[str]:
    """Every table a rule, cascade, related clock or related filter of the policy reads or writes."""
    seen: dict[str, None] = {}
    for rule in policy.rules:
        seen[rule.table] = None
        seen.update(dict.fromkeys(_cascade_tables(rule.cascade)))
        if isinstance(rule.clock, RelatedClock):
            seen[rule.clock.table] = None
        seen.update(dict.fromkeys(_related_tables(rule.related)))
    return list(seen)


def _related_tables(filters: list[RelatedFilter]) -> Iterator[str]:
    for f in filters:
        yield f.table
        yield from _related_tables(f.related)


def source_specs(policies: PolicySet) -> list[dg.AssetSpec]:
    tables = sorted({t for f in policies.files for t in touched_tables(f.policy)})
    return [
        dg.AssetSpec(
            source_key(t),
            group_name=SOURCE_GROUP,
            kinds={_store_kind()},
            description=f"The table {t} in the store (not built by Dagster).",
        )
        for t in tables
    ]


def _store_kind() -> str:
    return "postgres" if os.environ.get("RETENTION_STORE", "").startswith("postgres") else "duckdb"


def owner(policy: Policy) -> str:
    """Dagster owners are e-mails or `team:NAME`; a policy names a team (`customer-operations`)."""
    text = policy.owner.strip()
    if "@" in text or text.startswith("team:"):
        return text
    return "team:" + re.sub(r"\s+", "-", text)


def describe(f: PolicyFile) -> str:
    p = f.policy
    lines = [
        p.title,
        "",
        f"Legal basis: {p.legal_basis.replace('_', ' ')} (GDPR Art. 6(1)). Policy file: {f.path}.",
    ]
    if p.description:
        lines += ["", p.description.strip()]
    lines += ["", "Rules:"]
    lines += [
        f"- {r.name}: {r.action} {r.table} {r.keep_for} after {_clock(r.clock)}" for r in p.rules
    ]
    return "\n".join(lines)


def _clock(clock: str | RelatedClock) -> str:
    return clock if isinstance(clock, str) else f"{clock.aggregate}({clock.table}.{clock.column})"


# --- errors --------------------------------------------------------------------------------


@contextmanager
def engine_errors() -> Iterator[None]:
    """Terminal engine errors need a human: fail without retries. A lost store is transient:
    re-raise it for the RetryPolicy. Anything else is retried too, with its message sanitised."""
    try:
        yield
    except RetentionError as exc:
        if not exc.terminal:
            raise
        raise dg.Failure(
            description=mask_url(str(exc)),
            allow_retries=False,
            metadata=_error_metadata(exc),
        ) from None
    except dg.DagsterError:
        raise
    except Exception as exc:
        db = database_error(exc)  # a driver's error that no store wrapped: its parts only
        raise dg.Failure(
            description=safe_message(exc),
            allow_retries=db.terminal is False if db is not None else True,
            metadata=_error_metadata(db or exc),
        ) from None


def _error_metadata(exc: BaseException) -> dict[str, str]:
    """The error's class and, for a database's refusal, its SQLSTATE: never its text."""
    md = {"error": type(exc).__name__}
    if isinstance(exc, StoreRejected) and exc.sqlstate:
        md["sqlstate"] = exc.sqlstate
    return md


# --- metadata ------------------------------------------------------------------------------


def rule_counts(report: RunReport) -> dict[str, dict[str, int]]:
    out = {}
    for r in report.rules:
        p = r.plan
        out[p.rule] = {
            "expired": p.expired,
            "held": p.held,
            "retained": p.retained,
            "deleted": r.deleted,
            "anonymised": r.anonymised,
            "kept": p.kept if p.action != "retain" else p.retained,
            "to_act": p.to_act,
        }
    return out


def rows_changed(report: RunReport) -> int:
    return sum(
        r.deleted + r.anonymised + sum(c.deleted + c.anonymised + c.unlinked for c in r.cascades)
        for r in report.rules
    )


def markdown_table(report: RunReport) -> str:
    head = "| rule | table | action | " + " | ".join(COUNTS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COUNTS))]
    counts = rule_counts(report)
    for r in report.rules:
        c = counts[r.plan.rule]
        lines.append(
            f"| {r.plan.rule} | {r.plan.table} | {r.plan.action} | "
            + " | ".join(str(c[k]) for k in COUNTS)
            + " |"
        )
        for casc in r.cascades:
            lines.append(
                f"| ↳ cascade | {casc.table} | {', '.join(_cascade_actions(casc))} | | | | "
                f"{casc.deleted} | {casc.anonymised} | |"
            )
    return "\n".join(lines)


def _cascade_actions(c: Any) -> list[str]:
    return [n for n in ("deleted", "anonymised", "unlinked") if getattr(c, n)] or ["none"]


def report_metadata(f: PolicyFile, report: RunReport, store: str) -> dict[str, Any]:
    """The summary first (the UI keeps this order), then one number per rule and count."""
    md: dict[str, Any] = {
        "counts": dg.MetadataValue.md(markdown_table(report)),
        "dagster/row_count": rows_changed(report),
        "as_of": report.as_of.isoformat(),
        "dry_run": report.dry_run,
        "run_id": report.run_id,
        "duration_s": float(report.seconds),
        "policy_file": dg.MetadataValue.path(f.path),
        "policy_sha256": f.sha256,
        "policies_sha256": report.policies_sha256,
        "store": store,
    }
    if report.worker_runs:
        md["worker_runs"] = ", ".join(report.worker_runs)
    if report.key_id:
        md["key_id"] = report.key_id
    if report.audit_head:
        # a copy of the ledger's head outside the store: `retention-jobs audit verify --head`
        md["audit_head"] = report.audit_head
    if report.purge:
        md["purge_method"] = report.purge.get("method", "none")
        md.update(
            {
                f"purge_{k}": v
                for k, v in report.purge.items()
                if k in ("bytes_before", "bytes_after", "seconds", "waited_seconds")
            }
        )
        md["purge_complete"] = bool(report.purge.get("complete", True))
        # False on PostgreSQL without `purge: full`: the erased values stay in the files
        md["purge_removes_old_bytes"] = bool(report.purge.get("removes_old_bytes", True))
        if report.purge.get("held_back_by"):
            md["purge_held_back_by"] = len(report.purge["held_back_by"])
    for rule, counts in rule_counts(report).items():
        md.update({f"{rule}/{k}": v for k, v in counts.items()})
    for r in report.rules:
        for c in r.cascades:
            md.update(
                {
                    f"{r.plan.rule}/cascade/{c.table}/{k}": getattr(c, k)
                    for k in ("deleted", "anonymised", "unlinked")
                    if getattr(c, k)
                }
            )
    return md


# --- the asset -----------------------------------------------------------------------------


def op_name(purpose: str) -> str:
    return "retention__" + re.sub(r"\W", "_", purpose)


def policy_asset(
    policies: PolicySet, f: PolicyFile, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """The policy as an asset with its five checks, evaluated by the same step after the run.

    A one-spec `multi_asset` with `can_subset=True` rather than `@asset`: that makes the check
    outputs optional, so a dry run can report its plan as an observation without claiming any
    check result, and "Execute checks" alone re-reads the store without running the policy.
    """
    purpose = f.policy.purpose
    key = dg.AssetKey([GROUP, purpose])
    spec = dg.AssetSpec(
        key,
        group_name=GROUP,
        description=describe(f),
        kinds={_store_kind(), "polars"},
        owners=[owner(f.policy)],
        deps=[source_key(t) for t in touched_tables(f.policy)],
        tags={"retention/legal_basis": f.policy.legal_basis},
        metadata={"policy_file": dg.MetadataValue.path(f.path), "policy_sha256": f.sha256},
    )

    @dg.multi_asset(
        name=op_name(purpose),
        specs=[spec],
        check_specs=check_specs(key),
        can_subset=True,
        partitions_def=partitions,
        retry_policy=RETRY,
        pool=POOL,
    )
    def _policy(
        context: dg.AssetExecutionContext,
        config: RetentionConfig,
        store: StoreResource,
        pseudonym_key: PseudonymKeyResource,
    ):
        selected = {k.name for k in context.selected_asset_check_keys}
        if key not in context.selected_asset_keys:
            yield from _checks_only(context, key, policies, purpose, store, pseudonym_key, selected)
            return
        as_of = date.fromisoformat(context.partition_key)
        options = RunOptions(
            batch_size=config.batch_size,
            max_delete_fraction=config.max_delete_fraction,
            dry_run=config.dry_run,
            purposes=(purpose,),
        )
        with engine_errors():
            target = store.open()
            key_ = None if config.dry_run else pseudonym_key.get()
            if config.workers > 1:
                from retention_jobs.parallel import run_parallel

                report = run_parallel(
                    store.resolved(), policies, as_of, key_, options, config.workers
                )
            else:
                report = run_policies(target, policies, as_of, key_, options)
        metadata = report_metadata(f, report, store.describe())
        if report.purge and report.purge.get("failed"):
            # the rows changed but their old bytes are still in the store: not a success;
            # the tables stay pending and the next run purges them again
            raise dg.Failure(
                description=failure_message(report.purge),
                allow_retries=False,
                metadata=metadata,
            )
        if config.dry_run:
            # a plan changes nothing, so it is an observation, not a materialisation
            context.log.info(f"dry run of {purpose} as of {as_of}: nothing was changed")
            context.log_event(
                dg.AssetObservation(
                    asset_key=key, partition=context.partition_key, metadata=metadata
                )
            )
            return
        context.log.info(
            f"{purpose} as of {as_of}: {rows_changed(report)} rows changed (run {report.run_id})"
        )
        if report.purge and report.purge.get("removes_old_bytes") is False:
            context.log.warning(LEAVES_BYTES)
        assert key_ is not None  # read for every run but a dry run, which returned above
        with engine_errors():
            results = run_checks(
                target,
                policies,
                as_of,
                key_,
                run_id=report.worker_runs or report.run_id,
                held_before=report.held_fingerprints,
                purposes=[purpose],
            )
        yield dg.MaterializeResult(
            asset_key=key,
            metadata=metadata,
            check_results=[to_check_result(key, r) for r in results if r.name in selected],
        )

    return _policy


def _checks_only(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    policies: PolicySet,
    purpose: str,
    store: StoreResource,
    pseudonym_key: PseudonymKeyResource,
    selected: set[str],
) -> Iterator[dg.AssetCheckResult]:
    """Checks without a run: what the store shows now (read-only), as of the partition date if
    the run has one, else as of yesterday (the date the nightly run enforced). Whether held
    rows changed and what the ledger recorded belong to a run: those two need a materialisation."""
    if context.has_partition_key:
        as_of = date.fromisoformat(context.partition_key)
    else:
        as_of = date.fromisoformat(previous_day(datetime.now(UTC), partitions_timezone()))
    context.log.info(f"checking {purpose} as of {as_of} without a run")
    with engine_errors():
        results = run_checks(store.open(), policies, as_of, pseudonym_key.get(), purposes=[purpose])
    for r in results:
        if r.name in selected:
            yield to_check_result(key, r)
    skipped = selected - {r.name for r in results}
    if skipped:
        context.log.info(
            f"{', '.join(sorted(skipped))}: evaluated only with a run; materialise the "
            "partition to evaluate them (a re-run changes nothing)"
        )


def policy_assets(
    policies: PolicySet, partitions: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    return [policy_asset(policies, f, partitions) for f in policies.files]
