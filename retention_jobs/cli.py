"""`retention-jobs`: validate, plan and run policies; manage holds; build the demo.

Exit codes: 0 done; 2 bad input (policy, option, environment), nothing changed; 3 approval
needed (a run would delete more than the allowed share), nothing changed; 4 the store could not
be reached (retry later); 5 not proved yet (a purge held back); 6 another run holds the store;
7 a partial run (a rule failed after others committed); 1 anything else.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from retention_jobs.errors import (
    ApprovalRequired,
    ConfigError,
    PartialRun,
    PolicyError,
    PurgeFailed,
    RetentionError,
    RunInProgress,
    StoreRejected,
    StoreUnavailable,
    safe_message,
)

if TYPE_CHECKING:
    from retention_jobs.apply import RunOptions
    from retention_jobs.load import PolicySet


class _Module:
    """A module imported on first use. The engine's modules pull in SQLAlchemy, Polars, PyArrow
    and pydantic (seconds of imports); `--help` and `validate` without a store need none of
    them, so each command imports only what it touches."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


control = _Module("retention_jobs.control")
_anonymise = _Module("retention_jobs.anonymise")
_apply = _Module("retention_jobs.apply")
_explain = _Module("retention_jobs.explain")
_load = _Module("retention_jobs.load")
_purge = _Module("retention_jobs.purge")
_store = _Module("retention_jobs.store")

out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_POLICIES = "policies"

EXIT_PARTIAL = 7
"""A rule failed after the run had started changing rows: the rules before it committed, the
rest did not; the report says which and why. The next run picks up the rest."""

EXIT_PURGE_PENDING = 5
"""Nothing failed, but something is not proved yet: a purge held back by an older
transaction, or a check that could not verify. The next run retries."""


def _holders(purge: dict) -> str:
    """What held a purge back, by kind and process id: never a query text or a user name."""
    held = purge.get("held_back_by") or []
    return ", ".join(
        f"{h['kind']} {h['id']} ({h['state'] or h['detail']}, {h['age_seconds']} s)" for h in held
    )


def _fail(exc: BaseException) -> None:
    if isinstance(exc, PolicyError):
        err.print(str(exc), markup=False, highlight=False)
        err.print(f"{len(exc.problems)} problem(s); nothing was changed", style="red")
        sys.exit(2)
    if isinstance(exc, ApprovalRequired):
        err.print(str(exc), markup=False, highlight=False)
        sys.exit(3)
    if isinstance(exc, RunInProgress):
        err.print(_store.mask_url(str(exc)), markup=False, highlight=False)
        sys.exit(6)
    if isinstance(exc, PartialRun):
        _print_partial(exc.report)
        sys.exit(EXIT_PARTIAL)
    if isinstance(exc, StoreUnavailable):
        err.print(_store.mask_url(str(exc)), markup=False, highlight=False)
        sys.exit(4)
    if isinstance(exc, PurgeFailed):
        # the changes are committed, the erasure is not done: a failure, not bad input
        err.print(f"error: {_store.mask_url(str(exc))}", markup=False, highlight=False)
        sys.exit(1)
    if isinstance(exc, StoreRejected):
        # the database refused a statement: not bad input, not retryable by waiting; the
        # message is built from the error's structured parts only (no row, no key value)
        err.print(f"error: {_store.mask_url(str(exc))}", markup=False, highlight=False)
        sys.exit(1)
    if isinstance(exc, (ConfigError, RetentionError)):
        err.print(f"error: {_store.mask_url(str(exc))}", markup=False, highlight=False)
        sys.exit(2)
    err.print(f"unexpected error: {safe_message(exc)}", markup=False, highlight=False)
    sys.exit(1)


def _print_partial(report) -> None:
    """Which rules of a stopped run committed, which did not, and why (safe parts only)."""
    failed = report.failed
    done = [r.plan.rule_id for r in report.rules]
    lines = [
        f"run {report.run_id} stopped: rule {failed.rule_id} failed: {failed.error}: "
        f"{failed.message}",
        f"committed: {', '.join(done) or 'no rule'}",
        f"not committed: {failed.rule_id} (failed"
        + (
            f"; {failed.committed_rows} row(s) of its earlier batches stand, in the ledger)"
            if failed.committed_rows
            else ")"
        )
        + (f"; not started: {', '.join(report.not_run)}" if report.not_run else ""),
        "recorded as 'partial' in retention_control.runs; fix the cause, then run again: the "
        "next run picks up the rest",
    ]
    for line in lines:
        err.print(line, markup=False, highlight=False, soft_wrap=True)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # every error leaves through one door, sanitised
            _fail(exc)


def _as_of_moment(value: str | None, policies: PolicySet) -> tuple[date, datetime | None]:
    """`--as-of` of plan, run and check: a date (the day's rules, timestamps by calendar date),
    or a moment with its offset, or `now` (timestamp clocks then compare exactly)."""
    if value is None or ("T" not in value and " " not in value and value != "now"):
        return _as_of(value, policies), None
    zones = {f.policy.timezone for f in policies.files}
    zone = ZoneInfo(zones.pop() if len(zones) == 1 else "UTC")
    if value == "now":
        moment = datetime.now(zone)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"--as-of {value!r} is neither a date nor a moment; write YYYY-MM-DD, "
                "YYYY-MM-DDTHH:MM:SS+01:00 or now"
            ) from None
        if moment.tzinfo is None:
            raise ConfigError(
                f"--as-of {value!r} has no offset: a moment needs one "
                "(e.g. 2026-12-02T02:00:00+01:00, or Z for UTC)"
            )
    return moment.astimezone(zone).date(), moment


def _as_of(value: str | None, policies: PolicySet) -> date:
    if value is None:
        zones = {f.policy.timezone for f in policies.files}
        zone = zones.pop() if len(zones) == 1 else "UTC"
        return datetime.now(ZoneInfo(zone)).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of {value!r} is not a date; write YYYY-MM-DD") from None


store_option = click.option(
    "--store",
    "store",
    default=None,
    envvar="RETENTION_STORE",
    help="DuckDB file or SQLAlchemy URL [env RETENTION_STORE; default .retention/warehouse.duckdb].",
)
policies_option = click.option(
    "--policies",
    "policy_dir",
    default=DEFAULT_POLICIES,
    show_default=True,
    help="Policy directory or file.",
)
purpose_option = click.option(
    "--purpose", "purposes", multiple=True, help="Only these purposes (repeatable)."
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


@click.group(cls=_Group)
@click.version_option(package_name="retention-jobs")
def main() -> None:
    """Keep privacy promises automatically: retention policies planned and applied to your data."""


@main.command()
@click.argument("paths", nargs=-1)
@store_option
def validate(paths: tuple[str, ...], store: str | None) -> None:
    """Check policy files; with a store, check them against its real schema too."""
    policies = _load.load_policies(paths or [DEFAULT_POLICIES])
    path = _store.duckdb_path(store)
    if path is not None and not path.exists():  # decided before a store module is imported
        out.print(
            f"{len(policies.files)} policy files are well-formed "
            f"(no store at {_store.store_location(store)}: schema not checked)"
        )
        return
    s = _store.open_store(store)
    from retention_jobs.resolve import resolve

    with s.connect(read_only=True) as session:
        bound = resolve(policies, s.catalog(session), s.kind)
    out.print(
        f"{len(policies.files)} policy files, {len(bound)} rules: valid against {s.describe()}"
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of policy files (for editors)."""
    from retention_jobs.policy import Policy

    click.echo(json.dumps(Policy.model_json_schema(), indent=2))


def _progress() -> tuple[Progress | None, Callable[[str, int, int], None] | None]:
    if not err.is_terminal:
        return None, None
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(rule_id: str, done: int, total: int) -> None:
        if rule_id not in tasks:
            tasks[rule_id] = bar.add_task(rule_id, total=total)
        bar.update(tasks[rule_id], completed=done)

    return bar, update


def _execute(
    store, policy_dir, as_of, purposes, fmt, options: RunOptions, allow_demo_key=False, workers=1
):
    policies = _load.load_policies([policy_dir])
    day, moment = _as_of_moment(as_of, policies)
    options = replace(options, as_of_instant=moment)
    s = _store.open_store(store)
    key = None if options.dry_run else _anonymise.key_from_env(allow_demo=allow_demo_key)
    bar, update = _progress() if fmt == "table" and not options.dry_run else (None, None)
    partial: PartialRun | None = None
    try:
        if workers > 1:
            from retention_jobs.parallel import run_parallel

            report = run_parallel(
                _store.store_location(store), policies, day, key, options, workers
            )
        elif bar:
            with bar:
                report = _apply.run_policies(s, policies, day, key, options, update)
        else:
            report = _apply.run_policies(s, policies, day, key, options, update)
    except PartialRun as exc:
        partial, report = exc, exc.report
    if fmt == "json":
        click.echo(_explain.to_json(report))
    else:
        _explain.render(report, out)
    if partial is not None:
        _fail(partial)
    return report


@main.command()
@store_option
@policies_option
@purpose_option
@format_option
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Date the plan is for (YYYY-MM-DD), or a moment with its offset (2026-12-02T02:00:00+01:00) or now, for exact timestamp clocks; default today.",
)
def plan(store, policy_dir, purposes, fmt, as_of) -> None:
    """Show what a run would do (changes nothing)."""
    _execute(
        store,
        policy_dir,
        as_of,
        purposes,
        fmt,
        _apply.RunOptions(dry_run=True, purposes=purposes or None),
    )


@main.command()
@store_option
@policies_option
@purpose_option
@format_option
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Date the run is for (YYYY-MM-DD), or a moment with its offset (2026-12-02T02:00:00+01:00) or now, for exact timestamp clocks; default today.",
)
@click.option("--batch-size", default=50_000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-delete-fraction",
    default=0.25,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Refuse to delete more than this share of any table in one night, counting every "
    "run with the same --as-of date whatever its purpose (exit 3, nothing changed).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="SQL stores: split each rule's rows into this many key ranges, one process each "
    "(docs/scaling.md). A DuckDB file takes one writer: 1 only.",
)
def run(store, policy_dir, purposes, fmt, as_of, batch_size, max_delete_fraction, workers) -> None:
    """Apply the policies: delete and anonymise expired rows, record the audit trail."""
    report = _execute(
        store,
        policy_dir,
        as_of,
        purposes,
        fmt,
        _apply.RunOptions(
            batch_size=batch_size,
            max_delete_fraction=max_delete_fraction,
            purposes=purposes or None,
        ),
        workers=workers,
    )
    if report.interrupted_runs:
        err.print(
            f"{report.interrupted_runs} earlier run(s) left 'running' by a run that was killed "
            "are now marked 'interrupted' in retention_control.runs",
            markup=False,
            highlight=False,
        )
    skipped = sum(r.skipped_changed for r in report.rules)
    if skipped:
        err.print(
            f"{skipped} row(s) changed by another writer while their batch ran were left as the "
            "other writer committed them (skipped_changed); the next run looks at them again",
            markup=False,
            highlight=False,
        )
    if report.purge and report.purge.get("removes_old_bytes") is False:
        err.print(_purge.LEAVES_BYTES, markup=False, highlight=False)
    if report.purge and report.purge.get("failed"):
        err.print(_purge.failure_message(report.purge), markup=False, highlight=False)
        sys.exit(1)
    if not purposes:  # then the data-subject requests that are due
        _process_requests_after_run(store, policy_dir, as_of, fmt)
    if report.purge and not report.purge.get("complete", True):
        err.print(
            "purge incomplete: older transactions still see the deleted rows "
            f"({_holders(report.purge)}); the erased values stay in the table files until the "
            "next run or `retention-jobs purge` finishes it",
            markup=False,
        )
        sys.exit(EXIT_PURGE_PENDING)


@main.command()
@store_option
@policies_option
@purpose_option
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Date to check as of (YYYY-MM-DD), or the run's moment with its offset, or now; default today.",
)
@click.option(
    "--run-id",
    "run_ids",
    multiple=True,
    help="Also check that the ledger holds this run (repeat for the workers of a parallel run).",
)
@click.option(
    "--demo-key", is_flag=True, help="Use the demo's built-in key (only for the demo warehouse)."
)
def check(store, policy_dir, purposes, as_of, run_ids, demo_key) -> None:
    """Check the store: nothing expired left, no original value in anonymised columns."""
    from retention_jobs.check import run_checks

    policies = _load.load_policies([policy_dir])
    key = (
        _anonymise.PseudonymKey.from_text(_anonymise.DEMO_KEY_TEXT)
        if demo_key
        else _anonymise.key_from_env()
    )
    day, moment = _as_of_moment(as_of, policies)
    results = run_checks(
        _store.open_store(store),
        policies,
        day,
        key,
        run_id=run_ids or None,
        purposes=list(purposes) or None,
        instant=moment,
    )
    for r in results:
        label = "PASS" if r.passed else "NOT VERIFIED" if not r.verified else "FAIL"
        out.print(f"{label} {r.name}: {r.summary}", markup=False)
    if any(r.verified and not r.passed for r in results):
        sys.exit(1)
    if not all(r.passed for r in results):
        sys.exit(EXIT_PURGE_PENDING)


@main.command()
@store_option
def init(store) -> None:
    """Create the control schema (holds, audit ledger, runs) in the store."""
    s = _store.open_store(store)
    with s.connect() as session:
        control.ensure_control_schema(s, session)
    out.print(f"control schema ready in {s.describe()}")


@main.command()
@store_option
def tables(store) -> None:
    """List the store's tables and columns (to write policies against)."""
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        catalog = s.catalog(session)
    for t in catalog.tables.values():
        out.print(
            f"{t.name}: " + ", ".join(f"{c.name} {c.raw_type}" for c in t.columns.values()),
            markup=False,
            soft_wrap=True,
        )
        if t.primary_key:
            out.print(f"  key: {', '.join(t.primary_key)}", markup=False)
        for fk in t.foreign_keys:
            out.print(
                f"  {', '.join(fk.columns)} -> {fk.ref_table} ({', '.join(fk.ref_columns)})",
                markup=False,
                soft_wrap=True,
            )
        for fk in catalog.referencing(t.name):
            out.print(
                f"  referenced by {fk.table} ({', '.join(fk.columns)})",
                markup=False,
                soft_wrap=True,
            )


@main.command()
@store_option
@policies_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown", "json"]),
    default="table",
    help="How to print the result: a table, markdown (for a pull request) or JSON.",
)
@click.option(
    "--sample",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Values read per column (the first non-null ones).",
)
@click.option(
    "--fail-on-uncovered",
    is_flag=True,
    help="Exit 1 when a personal column is covered by no rule and not in coverage.yaml.",
)
def scan(store, policy_dir, fmt, sample, fail_on_uncovered) -> None:
    """Find personal columns (by name and by a sample of their values) and say which no rule
    covers. Prints classes and counts, never a value."""
    from retention_jobs.scan import ALLOW_LIST, load_allow_list, scan_store

    policies = _load.load_policies([policy_dir])
    allow = load_allow_list(Path(policy_dir) / ALLOW_LIST)
    result = scan_store(_store.open_store(store), policies, allow, sample)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif fmt == "markdown":
        click.echo(result.markdown())
    else:
        for f in result.findings:
            state = ", ".join(f.covered_by) if f.covered else "NOT COVERED"
            out.print(
                f"{f.table}.{f.column}: {', '.join(f.classes)} ({', '.join(f.by)}) -> {state}",
                markup=False,
                soft_wrap=True,
            )
        out.print(
            f"{len(result.findings)} personal columns in {result.tables_scanned} tables; "
            f"{len(result.uncovered)} not covered",
            markup=False,
        )
    if fail_on_uncovered and result.uncovered:
        sys.exit(1)


@main.command("verify-erasure")
@store_option
@click.option("--run-id", default=None, help="Only the values erased by this run.")
@click.option(
    "--demo-key", is_flag=True, help="Use the demo's built-in key (only for the demo warehouse)."
)
@format_option
def verify_erasure(store, run_id, demo_key, fmt) -> None:
    """Look for erased values (known only as keyed hashes) in the store's raw bytes: exit 1 if
    any is found, 5 if some could not be seen by the scan and nothing proves them gone or the
    search could not run, 2 if the key cannot have made the recorded hashes."""
    from retention_jobs.erasure import verify
    from retention_jobs.errors import WrongKey

    key = (
        _anonymise.PseudonymKey.from_text(_anonymise.DEMO_KEY_TEXT)
        if demo_key
        else _anonymise.key_from_env()
    )
    s = _store.open_store(store)
    try:
        result = verify(s, key, run_id)
    except Exception as exc:  # noqa: BLE001 - a search that crashed proved nothing
        if isinstance(exc, (RetentionError, WrongKey)) and not isinstance(exc, StoreRejected):
            raise  # bad input and a wrong key 2, store unreachable 4, ...: their own codes
        # not exit 1: that means "erased values found", and a crash found nothing
        err.print(
            f"could not verify: {safe_message(exc)}; nothing was found or proved (exit 5)",
            markup=False,
            highlight=False,
        )
        sys.exit(EXIT_PURGE_PENDING)
    if result.untracked:
        err.print(
            "not tracked (nested columns: what a rule erased inside them is not proved here): "
            + ", ".join(result.untracked),
            markup=False,
            highlight=False,
        )
    if fmt == "json":
        click.echo(
            json.dumps({**result.__dict__, "verified": result.verified}, indent=2, default=str)
        )
    else:
        where = ", ".join(f"{w}: {n}" for w, n in sorted(result.found.items())) or "none"
        out.print(
            f"{result.tracked} erased values tracked; scanned {result.scanned_bytes:,} bytes "
            f"({', '.join(result.sources) or 'nothing'}) in {result.seconds:.2f} s; found again: {where}",
            markup=False,
        )
        out.print(result.describe(), markup=False)
    if not result.clean:
        sys.exit(1)
    if not result.verified:
        err.print(
            f"NOT VERIFIED: {result.blind} erased values could not have been seen by a byte scan "
            "(stored compressed, no live value to measure the scan by, or recorded without a "
            "key id) and nothing proves them gone: on DuckDB, `retention-jobs purge` compacts "
            "the file; on PostgreSQL see `purge: full` in docs/erasure.md",
            markup=False,
            highlight=False,
        )
        sys.exit(EXIT_PURGE_PENDING)


@main.command()
@store_option
@policies_option
def purge(store, policy_dir) -> None:
    """Make deleted bytes unrecoverable now (runs also do this after changing rows)."""
    from retention_jobs.purge import purge_tables

    policies = _load.load_policies([policy_dir])
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        tables = list(s.catalog(session).tables)
    result = purge_tables(s, policies, "manual-purge", tables) or {"method": "none", "tables": 0}
    out.print(json.dumps(result), markup=False)
    if result.get("failed"):
        err.print(_purge.failure_message(result), markup=False, highlight=False)
        sys.exit(1)
    if not result.get("complete", True):
        err.print(
            "purge incomplete: older transactions still see the deleted rows "
            f"({_holders(result)}); the tables stay pending and are purged again by the next "
            "run or `retention-jobs purge`",
            markup=False,
        )
        sys.exit(EXIT_PURGE_PENDING)


@main.group()
def audit() -> None:
    """The audit ledger (no personal data; tamper-evident)."""


@audit.command("verify")
@store_option
@click.option(
    "--head",
    default=None,
    help="A head hash kept outside the store (Dagster metadata): must be in the chain.",
)
def audit_verify(store, head) -> None:
    """Recompute the hash chain; name the first row that was changed, removed or reordered."""
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        n, broken = control.verify_audit_chain(session)
        hashes = {r["row_hash"] for r in control.audit_rows(session)} if head else set()
    if broken:
        out.print(f"BROKEN after {n - 1} good rows: {broken.problem}", markup=False)
        sys.exit(1)
    if head and head not in hashes:
        out.print(
            f"the chain is consistent but does not contain head {head}: rows were removed or rewritten "
            "since it was recorded",
            markup=False,
        )
        sys.exit(1)
    out.print(
        f"audit ledger intact: {n} rows chained" + (", head found" if head else ""), markup=False
    )


# --- holds -----------------------------------------------------------------------------------


@main.group()
def holds() -> None:
    """Legal holds: held rows are never deleted or changed."""


@holds.command("add")
@store_option
@policies_option
@click.option("--subject", default=None, help="KIND:ID, e.g. customer:1042")
@click.option("--table", default=None, help="schema.table")
@click.option("--purpose", default=None)
@click.option("--case", "case_ref", required=True, help="Case reference, e.g. LIT-2026-17.")
@click.option("--reason", required=True)
@click.option("--placed-by", default=None)
@click.option("--review", default=None, help="Review date YYYY-MM-DD.")
def holds_add(
    store, policy_dir, subject, table, purpose, case_ref, reason, placed_by, review
) -> None:
    """Place a hold on a subject, a table or a purpose that the policies reach (checked first:
    a typo is refused with the closest names, exit 2, nothing written). On a DuckDB store that
    a run has open, the hold is queued and takes effect before the run's next batch."""
    from retention_jobs import hold_queue
    from retention_jobs.hold_targets import check_target

    spec = control.hold_spec(
        subject=subject,
        table=table,
        purpose=purpose,
        case_ref=case_ref,
        reason=reason,
        placed_by=placed_by,
        review=review,
    )
    policies = _load.load_policies([policy_dir])
    s = _store.open_store(store)
    try:
        with s.connect() as session:
            warnings = check_target(
                s, session, policies, subject=subject, table=table, purpose=purpose
            )
            control.ensure_control_schema(s, session)
            hold_id = control.new_hold_id()
            with session.transaction():
                control.insert_hold(session, spec, hold_id, control.now())
    except RunInProgress:
        if hold_queue.queue_path(s) is None:
            raise
        # a run has the DuckDB file: a hold must not wait for it to finish. The store cannot
        # be read now, so the target is checked against the policies alone
        check_target(None, None, policies, subject=subject, table=table, purpose=purpose)
        hold_id = hold_queue.enqueue(s, spec)
        out.print(
            f"hold {hold_id} queued ({spec.scope}, case {case_ref}): takes effect before the "
            "run's next batch; the store was busy",
            markup=False,
            soft_wrap=True,
        )
        return
    for w in warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    out.print(f"hold {hold_id} placed ({spec.scope}, case {case_ref})", markup=False)


@holds.command("import")
@store_option
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
def holds_import(store, csv_file) -> None:
    """Import holds from a case-management export (CSV: case_ref, scope, target, reason,
    placed_at, and optionally placed_by, released_at, released_by, review_at), keeping their
    placed and released times. All or nothing; importing the same export again changes nothing."""
    from retention_jobs import holds_import as imp

    if not csv_file.is_file():
        raise ConfigError(f"{csv_file}: no such file")
    holds = imp.parse(csv_file)
    s = _store.open_store(store)
    with s.connect() as session:
        control.ensure_control_schema(s, session)
        result = imp.apply(session, str(csv_file), holds)
    out.print(
        f"{len(holds)} holds in {csv_file.name}: {result.placed} placed, {result.released} "
        f"released, {result.unchanged} already recorded",
        markup=False,
        soft_wrap=True,
    )


@holds.command("release")
@store_option
@policies_option
@click.argument("hold_id")
@click.option("--by", "released_by", default=None)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Date to count the freed rows for (YYYY-MM-DD); default today.",
)
def holds_release(store, policy_dir, hold_id, released_by, as_of) -> None:
    """Release a hold; its rows become eligible at the next run (prints how many, counts only)."""
    from retention_jobs.requests import hold_effect

    policies = _load.load_policies([policy_dir])
    s = _store.open_store(store)
    try:
        session = s.session()
    except RunInProgress as e:
        raise RunInProgress(
            f"{e}. A release is not queued: it takes effect only when no run has the store "
            "(a release that arrives late only keeps rows longer; a hold is queued instead)"
        ) from None
    try:
        effect = hold_effect(s, session, policies, _as_of(as_of, policies), hold_id)
        if not control.release_hold(session, hold_id, released_by):
            raise ConfigError(f"no active hold {hold_id!r}; see `retention-jobs holds list`")
    finally:
        session.close()
    out.print(
        f"hold {hold_id} released: it protected {effect.protected} rows past their period; the next run "
        f"acts on {effect.freed} of them (+{effect.cascade_rows} cascade rows)",
        markup=False,
        soft_wrap=True,
    )


@holds.command("list")
@store_option
@click.option("--all", "include_released", is_flag=True, help="Include released holds.")
@format_option
def holds_list(store, include_released, fmt) -> None:
    """List holds (they name people: the output is for authorised operators)."""
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        rows = control.list_holds(session, include_released)
    if fmt == "json":
        click.echo(json.dumps([r.__dict__ for r in rows], default=str, indent=2))
        return
    for h in rows:
        state = f"released {h.released_at:%Y-%m-%d}" if h.released_at else "active"
        out.print(
            f"{h.hold_id}  {h.target}  case {h.case_ref}  ({h.reason})  placed {h.placed_at:%Y-%m-%d}  {state}",
            markup=False,
        )
    if not rows:
        out.print("no holds")


# --- demo ------------------------------------------------------------------------------------


@main.command()
@store_option
@policies_option
@click.option("--rows", default=20_000, show_default=True, type=click.IntRange(min=100))
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Date the demo data and run are built for; default today.",
)
@format_option
def demo(store, policy_dir, rows, as_of, fmt) -> None:
    """Build the demo warehouse (deterministic, Faker), place demo holds, run the nightly retention."""
    from retention_jobs import demo as demo_mod

    policies = _load.load_policies([policy_dir])
    day = _as_of(as_of, policies)
    s = _store.open_store(store)
    t0 = time.perf_counter()
    counts = demo_mod.build(s, rows, day)
    built = time.perf_counter() - t0
    with s.connect() as session:
        control.ensure_control_schema(s, session)
        for h in demo_mod.demo_holds_for(s, session):
            control.add_hold(session, **h)
    if fmt == "table":
        out.print(
            f"demo warehouse: {sum(counts.values())} rows in {len(counts)} tables, built in {built:.1f} s "
            f"at {s.describe()}"
        )
    _execute(
        store,
        policy_dir,
        day.isoformat(),
        (),
        fmt,
        _apply.RunOptions(max_delete_fraction=None),
        allow_demo_key=True,
    )
    if fmt == "table":
        out.print(
            f"demo done in {time.perf_counter() - t0:.1f} s (with the built-in demo key; real runs need "
            "RETENTION_PSEUDONYM_KEY). Next: `retention-jobs plan` (nothing left to do), "
            "`retention-jobs check --demo-key`, `retention-jobs holds list`"
        )


# --- review: diff and lint -------------------------------------------------------------------


@main.command("diff")
@click.option(
    "--base",
    "base_ref",
    required=True,
    help="Git revision of the policies before the change, e.g. origin/main.",
)
@click.option(
    "--head",
    "head_ref",
    default=None,
    help="Git revision after the change; default: the working tree.",
)
@click.option(
    "--as-of", "as_of", default=None, help="Date both plans are for (YYYY-MM-DD); default today."
)
@store_option
@policies_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--max-delete-fraction",
    default=0.25,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Exit 3 when the change makes a run delete more than this share of a table, unless approved.",
)
@click.option(
    "--approvals",
    "approvals_dir",
    default="approvals",
    show_default=True,
    help="Directory of approval files (read at --head).",
)
def diff_command(
    base_ref, head_ref, as_of, store, policy_dir, fmt, max_delete_fraction, approvals_dir
) -> None:
    """Compare what a run would do under two revisions of the policies (read only; counts only).

    Exit 3 when the change would delete more than --max-delete-fraction of a table and no
    approval file covers it; exit 2 when a revision's policies do not load or resolve."""
    from retention_jobs import diff as diff_mod

    problems = []
    sides = {}
    for name, ref in (("base", base_ref), ("head", head_ref)):
        try:
            sides[name] = diff_mod.load_side(ref, policy_dir)
        except PolicyError as e:
            problems.extend(e.problems)
    if problems:
        raise PolicyError(problems)
    approvals = diff_mod.load_approvals(head_ref, approvals_dir)
    day = _as_of(as_of, sides["head"] if sides["head"].files else sides["base"])
    result = diff_mod.compute_diff(
        _store.open_store(store),
        sides["base"],
        sides["head"],
        day,
        base_label=base_ref,
        head_label=head_ref or diff_mod.WORKING_TREE,
        max_delete_fraction=max_delete_fraction,
        approvals=approvals,
    )
    if fmt == "json":
        click.echo(diff_mod.to_json(result))
    elif fmt == "markdown":
        click.echo(diff_mod.to_markdown(result), nl=False)
    else:
        diff_mod.render(result, out)
    if not result.passed:
        raise ApprovalRequired(result.approval_message())


@main.command("lint")
@click.argument("paths", nargs=-1)
@click.option(
    "--store",
    "store",
    default=None,
    envvar="RETENTION_STORE",
    help="Also look for personal-looking tables no policy covers (RJ106) in this store [env RETENTION_STORE].",
)
def lint_command(paths: tuple[str, ...], store: str | None) -> None:
    """Find problems validation does not catch (codes RJ101-RJ107, docs/review.md).

    Exit 0: none (notices such as RJ107 are printed, and do not count); 1: problems found
    (printed as file:line:col: field: CODE message; hint); 2: the policies do not load."""
    from retention_jobs import lint as lint_mod

    targets = list(paths) or [DEFAULT_POLICIES]
    policies = _load.load_policies(targets)
    problems = lint_mod.lint(
        policies, _store.open_store(store) if store else None, location=targets[0]
    )
    for p in problems:
        click.echo(str(p))
    notices = sum(1 for p in problems if lint_mod.is_notice(p))
    also = f" ({notices} notice(s) to review)" if notices else ""
    if len(problems) > notices:
        err.print(
            f"{len(problems) - notices} lint problem(s) in {len(policies.files)} policy files"
            + also,
            style="red",
        )
        sys.exit(1)
    out.print(f"{len(policies.files)} policy files: no lint problems{also}")


# --- data-subject requests -------------------------------------------------------------------


def _date(value: str | None, option: str, policies: PolicySet) -> date:
    try:
        return _as_of(value, policies)
    except ConfigError:
        raise ConfigError(f"{option} {value!r} is not a date; write YYYY-MM-DD") from None


def _request_line(r, today: date) -> str:
    """One request, without its subject's id."""
    purpose = f" ({r.purpose})" if r.purpose else ""
    nxt = f"  next check {r.recheck_on}" if r.recheck_on and r.is_open else ""
    late = "  OVERDUE" if r.overdue(today) else ""
    return (
        f"{r.request_id}  {r.kind}{purpose}  subject kind {r.subject_kind}  received {r.received_on}  "
        f"due {r.due_on}  {r.status}{nxt}{late}"
    )


@main.group("requests")
def requests_group() -> None:
    """Data-subject requests: erasure, consent withdrawal, objection and access, answered within a
    month (GDPR Art. 12(3)). Output never shows a subject's id or data."""


@requests_group.command("add")
@store_option
@policies_option
@click.option(
    "--kind",
    "kind",
    required=True,
    type=click.Choice(["erasure", "consent_withdrawal", "objection", "access"]),
)
@click.option(
    "--subject",
    default=None,
    help="KIND:ID as in the policies' subject fields, e.g. customer:1042.",
)
@click.option(
    "--email",
    default=None,
    help="Find the subject(s) by e-mail address instead ('-' reads it from stdin, out of the shell history).",
)
@click.option(
    "--purpose",
    default=None,
    help="consent_withdrawal: the purpose consented to; objection: optional.",
)
@click.option(
    "--received", default=None, help="Date the request was received (YYYY-MM-DD); default today."
)
@click.option(
    "--accept-shared-kind",
    is_flag=True,
    help="Record it although the subject kind's ids live in differently named columns.",
)
def requests_add(
    store, policy_dir, kind, subject, email, purpose, received, accept_shared_kind
) -> None:
    """Record a request; it is due one calendar month after it was received."""
    from retention_jobs import requests as rq

    if (subject is None) == (email is None):
        raise ConfigError("give exactly one of --subject KIND:ID or --email ADDRESS")
    policies = _load.load_policies([policy_dir])
    received_on = _date(received, "--received", policies)
    s = _store.open_store(store)
    with s.connect() as session:
        control.ensure_control_schema(s, session)
        if subject:
            subjects = [rq.parse_subject(subject)]
        else:
            address = sys.stdin.readline() if email == "-" else email
            subjects = [
                rq.parse_subject(x) for x in rq.resolve_email(s, session, policies, address)
            ]
            if not subjects:
                raise ConfigError(
                    "no subject has that address in the policies' e-mail columns; nothing was recorded"
                )
            kinds = sorted({k for k, _ in subjects})
            subjects = [
                x
                for x in subjects
                if kind in ("erasure", "access") or rq.scope_purposes(policies, kind, x[0], purpose)
            ]
            if not subjects:
                raise ConfigError(
                    f"the address belongs to subjects of kind {', '.join(kinds)}, which this "
                    f"{kind} does not apply to; nothing was recorded"
                )
            out.print(
                f"the address belongs to {len(subjects)} subject(s): one request each",
                markup=False,
                soft_wrap=True,
            )
        for subject_kind, _ in subjects:
            rq.check_request(policies, kind, subject_kind, purpose)
            scope = rq.scope_purposes(policies, kind, subject_kind, purpose)
            problem = rq.shared_kind_problem(policies, subject_kind, scope)
            if problem and not accept_shared_kind:
                raise ConfigError(
                    problem + "; nothing was recorded (--accept-shared-kind records it anyway)"
                )
        for subject_kind, subject_id in subjects:
            r = rq.add_request(
                session,
                kind=kind,
                subject_kind=subject_kind,
                subject_id=subject_id,
                received_on=received_on,
                purpose=purpose,
            )
            out.print(
                f"request {r.request_id} recorded: {kind}{f' ({purpose})' if purpose else ''}, subject kind "
                f"{subject_kind}, received {r.received_on}, due {r.due_on}",
                markup=False,
                soft_wrap=True,
            )


@requests_group.command("list")
@store_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["pending", "done", "partially_done", "deferred", "rejected"]),
)
@click.option(
    "--as-of", "as_of", default=None, help="Date for the overdue flag (YYYY-MM-DD); default today."
)
@format_option
def requests_list(store, statuses, as_of, fmt) -> None:
    """List requests: kind, dates, status (never the subject)."""
    from retention_jobs import requests as rq

    today = date.fromisoformat(as_of) if as_of else date.today()
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        rows = (
            rq.list_requests(session, statuses or None) if control.control_exists(session) else []
        )
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {k: v for k, v in r.__dict__.items() if k != "subject_id"}
                    | {"overdue": r.overdue(today)}
                    for r in rows
                ],
                default=str,
                indent=2,
            )
        )
        return
    for r in rows:
        out.print(_request_line(r, today), markup=False, soft_wrap=True)
    if not rows:
        out.print("no requests")


@requests_group.command("show")
@store_option
@click.argument("request_id")
@click.option(
    "--receipt", is_flag=True, help="Print the latest receipt as JSON (no personal data)."
)
@click.option(
    "--show-subject",
    is_flag=True,
    help="Also print the subject's KIND:ID (for authorised operators).",
)
def requests_show(store, request_id, receipt, show_subject) -> None:
    """Show a request: status, per-table outcome, deferrals, export records."""
    from retention_jobs import requests as rq

    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        r = rq.get_request(session, request_id)
        if receipt:
            body = rq.latest_receipt(session, request_id)
            if body is None:
                raise ConfigError(f"request {request_id} has not been processed yet: no receipt")
            click.echo(json.dumps(body, indent=2, sort_keys=True))
            return
        outcomes = rq.load_outcomes(session, request_id)
        exports = rq.export_records(session, request_id)
        n_receipts = len(rq.receipts(session, request_id))
    out.print(_request_line(r, date.today()), markup=False, soft_wrap=True)
    if show_subject:
        out.print(
            f"  subject {r.subject_kind}:{r.subject_id}"
            if r.subject_id
            else "  subject: forgotten (closed)",
            markup=False,
            soft_wrap=True,
        )
    if r.status_note:
        out.print(f"  note: {r.status_note}", markup=False, soft_wrap=True)
    for o in outcomes.values():
        line = f"  {o.table}: {o.deleted} deleted, {o.anonymised} anonymised, {o.unlinked} unlinked"
        if o.held:
            line += f"; {o.held} held (case {', '.join(sorted(o.hold_cases))}) until released"
        if o.retained:
            line += f"; {o.retained} retained by {', '.join(sorted(o.retained_by))} until {o.free_from or 'unknown'}"
        out.print(line, markup=False, soft_wrap=True)
    for e in exports:
        out.print(
            f"  export produced {e['produced_at']:%Y-%m-%d %H:%M} UTC: {e['row_count']} rows in "
            f"{e['table_count']} tables, sha256 {e['sha256']} (no copy kept)",
            markup=False,
            soft_wrap=True,
        )
    out.print(
        f"  {n_receipts} receipt(s); `retention-jobs requests show {request_id} --receipt`",
        markup=False,
        soft_wrap=True,
    )


@requests_group.command("process")
@store_option
@policies_option
@click.argument("request_ids", nargs=-1)
@click.option(
    "--as-of", "as_of", default=None, help="Date to process as of (YYYY-MM-DD); default today."
)
@click.option(
    "--out",
    "out_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Access request: write the export here (a new .zip file); needs exactly one request id.",
)
@format_option
def requests_process(store, policy_dir, request_ids, as_of, out_path, fmt) -> None:
    """Process the given requests, or every request that is due (pending; deferred ones whose
    day has come or that wait on a hold). Exit 1 if one failed."""
    from retention_jobs import requests as rq

    if out_path and len(request_ids) != 1:
        raise ConfigError("--out writes one access request's export: give exactly one request id")
    policies = _load.load_policies([policy_dir])
    results = rq.process_requests(
        _store.open_store(store),
        policies,
        _as_of(as_of, policies),
        _anonymise.key_from_env(),
        list(request_ids) or None,
        out_path,
    )
    _print_processed(results, fmt)


def _print_processed(results, fmt: str, console: Console | None = None) -> None:
    from retention_jobs import requests as rq

    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "request_id": p.request_id,
                        "status": p.status,
                        "skipped": p.skipped,
                        "failed": p.failed,
                        "receipt": p.receipt,
                    }
                    for p in results
                ],
                indent=2,
            )
        )
    else:
        for p in results:
            (console or out).print(rq.summary_line(p), markup=False, soft_wrap=True)
    if any(p.failed for p in results):
        sys.exit(1)


def _process_requests_after_run(store, policy_dir, as_of, fmt) -> None:
    """The nightly run's last step: the data-subject requests that are due (summary on stderr
    when the run's report is JSON on stdout)."""
    from retention_jobs import requests as rq

    policies = _load.load_policies([policy_dir])
    results = rq.process_requests(
        _store.open_store(store),
        policies,
        _as_of_moment(as_of, policies)[0],
        _anonymise.key_from_env(),
    )
    if results:
        _print_processed(results, "table", err if fmt == "json" else out)


@requests_group.command("reject")
@store_option
@policies_option
@click.argument("request_id")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(
        ["identity_not_verified", "manifestly_unfounded", "excessive", "not_applicable"]
    ),
)
def requests_reject(store, policy_dir, request_id, reason) -> None:
    """Close a request without acting on it, with the reason (a receipt records it)."""
    from retention_jobs import requests as rq

    policies = _load.load_policies([policy_dir])
    s = _store.open_store(store)
    with s.connect() as session:
        rq.reject_request(session, policies, request_id, reason, _as_of(None, policies))
    out.print(f"request {request_id} rejected ({reason})", markup=False, soft_wrap=True)


@main.command("suppressed")
@store_option
@click.argument("check_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--purpose", default=None, help="Only entries added for this purpose.")
@click.option(
    "--demo-key", is_flag=True, help="Use the demo's built-in key (only for the demo warehouse)."
)
def suppressed(store, check_file, purpose, demo_key) -> None:
    """Flag the rows of a CSV import (with a header) that hold a suppressed e-mail or phone number:
    prints row numbers and columns, never a value. Exit 1 when any row matches."""
    from retention_jobs import requests as rq

    key = (
        _anonymise.PseudonymKey.from_text(_anonymise.DEMO_KEY_TEXT)
        if demo_key
        else _anonymise.key_from_env()
    )
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        result = rq.check_suppressed(session, key, check_file, purpose)
    for row, column in result.matches:
        out.print(f"row {row}: {column}", markup=False, soft_wrap=True)
    if result.other_key_entries:
        err.print(
            f"warning: {result.other_key_entries} suppression entries were hashed with another key and "
            "were not compared; run with the key that wrote them",
            markup=False,
            soft_wrap=True,
        )
    hit = len({row for row, _ in result.matches})
    out.print(
        f"{hit} of {result.rows} rows match the suppression list (row 1 is the first line after the header)"
        + ("; do not import or contact them" if hit else ""),
        markup=False,
        soft_wrap=True,
    )
    if hit:
        sys.exit(1)


@holds.command("review")
@store_option
@policies_option
@click.option(
    "--as-of", "as_of", default=None, help="List holds whose review date is on or before this day."
)
@click.option(
    "--counts/--no-counts",
    default=True,
    show_default=True,
    help="Plan with and without each hold to count the rows it protects.",
)
def holds_review(store, policy_dir, as_of, counts) -> None:
    """Holds past their review date, with how many rows each protects: decide to keep or release."""
    from retention_jobs import requests as rq

    policies = _load.load_policies([policy_dir])
    day = _as_of(as_of, policies)
    s = _store.open_store(store)
    with s.connect(read_only=True) as session:
        due, undated = rq.holds_for_review(session, day)
        for h in due:
            assert h.review_at is not None  # a due hold has a review date
            line = (
                f"{h.hold_id}  {h.target}  case {h.case_ref}  ({h.reason})  review was due {h.review_at} "
                f"({(day - h.review_at).days} days ago)"
            )
            if counts:
                e = rq.hold_effect(s, session, policies, day, h.hold_id)
                line += (
                    f"  protects {e.protected} rows past their period; a release frees {e.freed} "
                    f"(+{e.cascade_rows} cascade rows) at the next run"
                )
            out.print(line, markup=False, soft_wrap=True)
    if not due:
        out.print(f"no hold is due for review on {day}", markup=False, soft_wrap=True)
    if undated:
        out.print(
            f"{len(undated)} active hold(s) have no review date: "
            f"{', '.join(h.hold_id for h in undated)}",
            markup=False,
            soft_wrap=True,
        )


if __name__ == "__main__":
    main()
