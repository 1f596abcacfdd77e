"""One nightly run split into key ranges, each applied by a worker process of its own.

For SQL stores (PostgreSQL takes many writers; row locks keep the ranges apart). A DuckDB
file takes one writer process, so a parallel run on it is refused.

What is decided once, before the fan-out, on one snapshot of the whole tables:
- the plan and the delete-share guard (per-range guards would each pass while the sum does not);
- the control tables, markers and journals the workers will write to (created here, so that
  no two workers race on `CREATE TABLE IF NOT EXISTS`);
- per rule, the boundaries of `workers` ranges of equal work: quantiles of the first key
  column over the rows the rule acts on (expired rows cluster in old keys, so quantiles of the
  whole key space would leave most workers idle).

Each worker then runs the ordinary engine (`run_policies`) with `KeyRangePredicates`: its own
connection, its own run id, batches, per-batch re-check of holds and markers, audit rows in
each batch's transaction (the ledger's chain is extended under an advisory lock). A worker
that fails leaves whole batches, like any run; the others finish theirs; a rerun completes
the rest (markers and journals make it idempotent). The purge runs once, after every worker.
"""

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import date
from multiprocessing import get_context
from typing import Any

import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import (
    Applier,
    RuleResult,
    RunOptions,
    RunReport,
    TableCounts,
    held_fingerprint,
    run_policies,
)
from retention_jobs.errors import ConfigError
from retention_jobs.load import PolicySet
from retention_jobs.plan import link_paths
from retention_jobs.predicates import alias
from retention_jobs.purge import purge_tables
from retention_jobs.store import mask_url, open_store
from retention_jobs.store.base import Store

MAX_WORKERS = 64


def key_ranges(
    applier: Applier, rule_ids: list[str], workers: int
) -> dict[str, list[tuple[Any, Any]]]:
    """Per rule, up to `workers` half-open ranges [lo, hi) of its first key column that together
    cover every key, cut at quantiles of the keys the rule acts on (fewer ranges where there are
    fewer distinct keys than workers; one unbounded range where it acts on nothing)."""
    out: dict[str, list[tuple[Any, Any]]] = {}
    bound = {b.id: b for b in applier.planner.bound}
    for rule_id in rule_ids:
        b = bound[rule_id]
        t = alias(b.table)
        k = t.c[b.rule.keys[0]]
        tiles = (
            sa.select(k.label("k"), sa.func.ntile(workers).over(order_by=k).label("tile"))
            .where(applier.pred.actionable(b, t))
            .subquery()
        )
        starts = applier.session.fetchall(
            sa.select(sa.func.min(tiles.c.k)).group_by(tiles.c.tile).order_by(tiles.c.tile)
        )
        cuts = sorted({row[0] for row in starts[1:]})  # the first tile starts at -infinity
        edges: list[Any] = [None, *cuts, None]
        out[rule_id] = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    return out


def _prepare(applier: Applier, rule_ids: list[str]) -> None:
    """Create the markers and journals the workers will write to, once."""
    store, session = applier.store, applier.session
    bound = {b.id: b for b in applier.planner.bound}
    with session.transaction():
        for rule_id in rule_ids:
            b = bound[rule_id]
            if b.rule.action == "anonymise":
                control.ensure_marker_table(store, session, b.table, list(b.rule.keys))
            if b.rule.action == "delete" and b.cascades:
                applier._pending_table(b)
            for link, _path in link_paths(b):
                if link.key:
                    control.ensure_marker_table(store, session, link.table, list(link.key))


def _worker(
    location: str, policies: PolicySet, as_of: date, key: PseudonymKey | None, options: RunOptions
) -> RunReport:
    return run_policies(open_store(location), policies, as_of, key, options)


def _merge(results: list[RuleResult]) -> RuleResult:
    cascades: dict[str, dict[str, int]] = {}
    for r in results:
        for c in r.cascades:
            acc = cascades.setdefault(c.table, {"deleted": 0, "anonymised": 0, "unlinked": 0})
            for f in acc:
                acc[f] += getattr(c, f)
    return results[0].model_copy(
        update={
            "deleted": sum(r.deleted for r in results),
            "anonymised": sum(r.anonymised for r in results),
            "batches": sum(r.batches for r in results),
            "seconds": max(r.seconds for r in results),
            "cascades": tuple(TableCounts(table=t, **v) for t, v in cascades.items()),
        }
    )


def run_parallel(
    location: str,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey | None,
    options: RunOptions | None = None,
    workers: int = 2,
) -> RunReport:
    """Run the policies as of `as_of` with `workers` processes over key ranges (SQL stores).
    The report sums the workers' counts under the whole-table plan; its run id is the first
    worker's, `worker_runs` names them all."""
    options = options or RunOptions()
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be between 1 and {MAX_WORKERS}, not {workers}")
    store = open_store(location)
    if workers > 1 and store.kind == "duckdb":
        raise ConfigError(
            f"--workers {workers} needs a SQL store: the DuckDB file {mask_url(location)} takes one writer "
            "process (DuckDB already runs each statement on all cores); run with --workers 1"
        )
    if workers == 1 or options.dry_run:
        return run_policies(store, policies, as_of, key, options)
    # the coordinator holds the store's run lock for the whole run, purge included; the
    # workers run under it (`run_lock=False`)
    with store.run_lock():
        return _run_parallel(store, location, policies, as_of, key, options, workers)


def _run_parallel(
    store: Store,
    location: str,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey | None,
    options: RunOptions,
    workers: int,
) -> RunReport:
    t0 = time.perf_counter()
    purposes = list(options.purposes) if options.purposes else None
    with store.connect() as session:
        applier = Applier(store, session, policies, as_of, key, replace(options, purge=False))
        interrupted = control.interrupt_stale_runs(session)
        plan = applier.planner.plan(purposes)
        applier.check_delete_share(plan)
        bound = {b.id: b for b in applier.planner.bound}
        # the held rows of the whole tables, before any worker changes anything (the check
        # `held_rows_unchanged` compares them after the run)
        fingerprints = (
            {
                rp.rule_id: held_fingerprint(session, applier.planner, bound[rp.rule_id])
                for rp in plan.rules
                if rp.held
            }
            if applier.has_work(plan, bound)
            else {}
        )
        acting = [rp.rule_id for rp in plan.rules if rp.action != "retain"]
        if acting:
            _prepare(applier, acting)
            ranges = key_ranges(applier, acting, workers)
    if not acting:
        # every selected rule retains: nothing to split, so no worker; an ordinary run (under
        # the run lock this coordinator holds) records that it did nothing
        return run_policies(store, policies, as_of, key, replace(options, run_lock=False))
    shares = [{rule: rs[i] for rule, rs in ranges.items() if i < len(rs)} for i in range(workers)]
    worker_options = replace(options, purge=False, max_delete_fraction=None, run_lock=False)
    reports: list[RunReport] = []
    errors: list[BaseException] = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _worker, location, policies, as_of, key, replace(worker_options, key_ranges=share)
            )
            for share in shares
            if share
        ]
        for f in futures:  # every worker finishes its batches even when another one failed
            try:
                reports.append(f.result())
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the others
                errors.append(e)
    if errors:
        raise errors[0]
    by_rule = {rp.rule_id: rp for rp in plan.rules}
    rules = tuple(
        _merge([r for rep in reports for r in rep.rules if r.plan.rule_id == rule_id]).model_copy(
            update={"plan": by_rule[rule_id]}
        )
        for rule_id in by_rule
    )
    first = reports[0]
    report = first.model_copy(
        update={
            "rules": rules,
            "seconds": round(time.perf_counter() - t0, 3),
            "held_fingerprints": fingerprints,
            "worker_runs": tuple(rep.run_id for rep in reports),
            "interrupted_runs": interrupted,
        }
    )
    purge = None
    head = None
    if options.purge:
        changed = report.tables_changed if report.changed else []
        purge = purge_tables(store, policies, report.run_id, changed, as_of)
    with store.connect(read_only=True) as session:
        head = control.audit_head(session)
    return report.model_copy(update={"audit_head": head, "purge": purge})
