"""Apply a plan: delete or anonymise the staged rows in bounded batches.

Each table batch commits with its audit rows in one transaction. DuckDB cannot delete a parent
row in the transaction that deleted its children (its foreign-key check sees the old child
rows), so a parent with cascades goes through a journal: the batch's keys are written to a
pending table first, the children are handled, and the parent delete clears the journal in
its own transaction. A crash anywhere leaves whole batches; the next run finishes pending
batches before planning new ones, so a clock that lived in the deleted children (the last
activity of a contact) cannot strand its parent. A pending batch is re-checked first, as a
fresh run checks (expiry, retain rules, holds on the parent and on every row its cascades
reach: `Predicates.resumed`); a parent no longer actionable leaves the journal untouched, with
its children.
"""

import hashlib
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import polars as pl
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.dialects import postgresql

from retention_jobs import control, erasure, guard, hold_queue, markers
from retention_jobs.anonymise import (
    MARKER_HASHES_V2,
    PseudonymKey,
    anonymise_frame,
    keyed_hashes,
    needs_digest,
    original_token,
)
from retention_jobs.claims import run_rank
from retention_jobs.errors import ConfigError, PartialRun, describe
from retention_jobs.load import PolicySet
from retention_jobs.plan import Plan, Planner, RulePlan, link_paths, parent_values
from retention_jobs.policy import ArrayRef
from retention_jobs.predicates import KeyRangePredicates, Predicates, alias, in_stage
from retention_jobs.purge import purge_tables
from retention_jobs.resolve import BoundRule, Link
from retention_jobs.store.base import (
    CONTROL_SCHEMA,
    ColumnInfo,
    Session,
    Store,
    TableInfo,
    castable_array,
    sa_table,
    sa_type,
)

Progress = Callable[[str, int, int], None]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class TableCounts(_Frozen):
    table: str
    deleted: int = 0
    anonymised: int = 0
    unlinked: int = 0


class RuleResult(_Frozen):
    plan: RulePlan
    deleted: int = 0
    anonymised: int = 0
    cascades: tuple[TableCounts, ...] = ()
    batches: int = 0
    seconds: float = 0.0
    skipped_changed: int = 0
    """Rows of the rule's own table that were chosen for a batch but not changed because they
    changed (or stopped being actionable) between the batch's read and its write: an
    application's update committed in between wins (SQL stores)."""


class RuleFailure(_Frozen):
    """The rule that stopped a run, and why (`errors.describe`: never a database's text)."""

    rule_id: str
    tables: tuple[str, ...]
    """The rule's table and the tables its cascades reach (purged after the failure: batches
    committed before it may have changed them)."""
    error: str
    message: str
    committed_rows: int = 0
    """Rows the rule's batches changed before the failing one (its own table and cascades, from
    the ledger): they stand, and are in the ledger."""
    terminal: bool = True
    """Whether a retry cannot help without a human (as the error that stopped the run)."""


class RunReport(_Frozen):
    run_id: str
    as_of: date
    store: str
    dry_run: bool
    policies_sha256: str
    key_id: str | None
    started_at: datetime
    seconds: float
    rules: tuple[RuleResult, ...]
    held_fingerprints: dict[str, str] = {}
    """Per rule, a hash over the held rows' full contents before the run (for the check)."""
    audit_head: str | None = None
    """The ledger's head hash after the run: keep a copy outside the store (tamper evidence)."""
    purge: dict[str, Any] | None = None
    """What the purge step did and cost (method, bytes before/after, seconds)."""
    worker_runs: tuple[str, ...] = ()
    """A parallel run (`retention_jobs.parallel`): the run id of each worker, in range order."""
    interrupted_runs: int = 0
    """Runs left `running` by a killed run, marked `interrupted` when this run started."""
    failed: RuleFailure | None = None
    """A rule failed (`errors.PartialRun`): `rules` holds the rules that committed before it."""
    not_run: tuple[str, ...] = ()
    """Rules the failure kept from starting; the next run does them."""
    holds_imported: int = 0
    """Holds queued while the DuckDB store was busy (`hold_queue`) that this run placed before
    planning or before one of its batches."""

    @property
    def tables_changed(self) -> list[str]:
        out = {r.plan.table for r in self.rules if r.deleted or r.anonymised}
        if self.failed is not None and self.failed.committed_rows:
            out |= set(self.failed.tables)
        out |= {
            c.table
            for r in self.rules
            for c in r.cascades
            if c.deleted or c.anonymised or c.unlinked
        }
        return sorted(out)

    @property
    def partial(self) -> bool:
        """A rule failed after this run had committed changes (which stand)."""
        return self.failed is not None and (self.changed_rules or self.failed.committed_rows > 0)

    @property
    def changed_rules(self) -> bool:
        """Whether a rule that completed changed a row."""
        return any(
            r.deleted
            or r.anonymised
            or any(c.deleted or c.anonymised or c.unlinked for c in r.cascades)
            for r in self.rules
        )

    @property
    def changed(self) -> bool:
        return self.partial or any(
            r.deleted
            or r.anonymised
            or any(c.deleted or c.anonymised or c.unlinked for c in r.cascades)
            for r in self.rules
        )


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 50_000
    max_delete_fraction: float | None = 0.25
    """Refuse (before changing anything) to delete more than this share of any table; None: no limit."""
    dry_run: bool = False
    purposes: tuple[str, ...] | None = None
    mode: str = "run"
    """Recorded in the runs table: run (the policies) or request (a data-subject request)."""
    overlap: bool = True
    """DuckDB: prepare anonymise batch n+1 in a thread while batch n is written (see
    `Applier._anonymise_overlapped`); False runs strictly one batch after the other."""
    purge: bool = True
    """After a run that changed rows, make the old bytes unrecoverable (DuckDB: compact into a
    fresh file; PostgreSQL: VACUUM, or VACUUM FULL where a policy asks for `purge: full`)."""
    key_ranges: dict[str, tuple[Any, Any]] | None = None
    """One worker of a parallel run (`retention_jobs.parallel`): rule id -> [lo, hi) of the
    rule's first key column; the worker acts on those ranges only."""
    as_of_instant: datetime | None = None
    """The run's moment (aware), when given as one: timestamp clocks then compare exactly
    (see `Predicates.instant`); `as_of` is its date."""
    run_lock: bool = True
    """Take the store's run lock (one run per store at a time, `Store.run_lock`). False only
    for the workers of a parallel run, whose coordinator holds the lock for them."""


def _span(session: Session, stage: sa.FromClause, key: str) -> tuple[Any, Any] | None:
    lo, hi = session.fetchall(sa.select(sa.func.min(stage.c[key]), sa.func.max(stage.c[key])))[0]
    return None if lo is None else (lo, hi)


def held_fingerprint(session: Session, planner: Planner, b: BoundRule) -> str:
    """A hash over every column of every held row of the rule, in key order."""
    t = alias(b.table)
    q = (
        sa.select(*t.c)
        .where(planner.pred.expired(b, t), planner.pred.held(b, t))
        .order_by(*(t.c[k] for k in b.rule.keys))
    )
    data = cast(pl.DataFrame, pl.from_arrow(session.arrow(q)))
    return hashlib.sha256(canonical_csv(data).encode()).hexdigest()


def canonical_csv(data: pl.DataFrame) -> str:
    """The frame as CSV, nested columns (arrays, structs, maps) as JSON with sorted keys and
    binary as hex: Polars' CSV writer refuses nested data, and a fingerprint must not depend on
    the order a store returns a struct's or a JSON document's keys in. Flat frames give the
    CSV they always gave, so fingerprints recorded before stay comparable."""
    nested = [
        n
        for n, t in data.schema.items()
        if isinstance(t, (pl.List, pl.Array, pl.Struct, pl.Object)) or t == pl.Binary
    ]
    if not nested:
        return data.write_csv()
    return data.with_columns(
        pl.col(n).map_elements(_canonical, return_dtype=pl.String, skip_nulls=False) for n in nested
    ).write_csv()


def _canonical(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, pl.Series):
        v = v.to_list()
    return json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)


class Applier:
    def __init__(
        self,
        store: Store,
        session: Session,
        policies: PolicySet,
        as_of: date,
        key: PseudonymKey | None,
        options: RunOptions,
        progress: Progress | None = None,
        predicates: type[Predicates] = Predicates,
        **predicate_options,
    ):
        self.store, self.session, self.policies = store, session, policies
        self.as_of, self.key, self.options = as_of, key, options
        self.progress = progress or (lambda *_: None)
        if not options.dry_run:
            control.ensure_control_schema(store, session)
        self.planner = Planner(store, session, policies, as_of, predicates, **predicate_options)
        self.planner.pred.instant = options.as_of_instant
        self.run_id = ("dry-run-" if options.dry_run else "") + control.new_run_id()
        self._span: tuple[Any, Any] | None = None
        """The current batch's least and greatest first key (see `in_stage`)."""
        self._concurrent = store.kind != "duckdb"
        """Other writers (the application) may change rows between a batch's read and its write:
        writes re-check the rule's predicate and the rows' versions (PostgreSQL's `xmin`)."""
        self._skipped = 0
        """Rows of the current rule skipped because they changed since they were read."""
        self.interrupted_runs = 0
        """Stale `running` runs marked `interrupted` before this run (see `run_policies`)."""
        self.holds_imported = 0
        """Queued holds this run placed (`_import_holds`)."""
        self.failure: Exception | None = None
        """The error that stopped a rule (`run` records it and returns the report)."""

    @property
    def pred(self):
        return self.planner.pred

    # -- guard ----------------------------------------------------------------------------

    def check_delete_share(self, plan: Plan) -> None:
        """The night's delete share of every table this run deletes from (`guard`)."""
        guard.check_delete_share(
            self.session, self.planner.catalog, plan, self.options.max_delete_fraction
        )

    # -- run ------------------------------------------------------------------------------

    def _import_holds(self) -> int:
        """Place the holds queued since the last look (`hold_queue`: a DuckDB store takes no
        other writer during a run) and ledger them; returns how many. Before planning and
        before every batch, so a hold queued during a run wins from the next batch on."""
        if self.options.dry_run:
            return 0

        def ledger(n: int) -> None:
            control.append_audit(
                self.session,
                run_id=self.run_id,
                action="holds-queued",
                as_of=self.as_of,
                policy_sha256=self.policies.digest,
                held=n,
            )

        n = hold_queue.import_queued(self.store, self.session, ledger)
        self.holds_imported += n
        return n

    def run(self) -> RunReport:
        started, t0 = control.now(), time.perf_counter()
        purposes = list(self.options.purposes) if self.options.purposes else None
        self._import_holds()
        plan = self.planner.plan(purposes)
        bound = {b.id: b for b in self.planner.rules(purposes)}
        if self.options.dry_run:
            return self._report(
                started, t0, [RuleResult(plan=rp) for rp in plan.rules], {}, dry=True
            )
        # a run that will change no row cannot change a held one: the fingerprints (a read of
        # every column of every held row) are taken only when some rule has work
        fingerprints = (
            {
                rp.rule_id: held_fingerprint(self.session, self.planner, bound[rp.rule_id])
                for rp in plan.rules
                if rp.held
            }
            if self.has_work(plan, bound)
            else {}
        )
        self.check_delete_share(plan)
        control.start_run(
            self.session, self.run_id, self.as_of, self.options.mode, self.policies.digest
        )
        results: dict[str, RuleResult] = {}
        failure: tuple[RulePlan, Exception] | None = None
        try:
            # the order the plan counted in (`claims`): each row is counted for the rule that acts on it first
            ordered = sorted(plan.rules, key=lambda rp: run_rank(rp.action))
            # every rule's rows are chosen before any rule changes anything: a rule must not act
            # on rows that an earlier rule of the same run turned into matches (its plan did not
            # count them); the per-batch re-check can only drop rows
            staged = {
                rp.rule_id: self._stage_keys(bound[rp.rule_id], f"rj_keys_{i}")
                for i, rp in enumerate(ordered)
                if rp.action != "retain" and rp.to_act
            }
            for rp in ordered:
                try:
                    results[rp.rule_id] = self.apply_rule(
                        bound[rp.rule_id], rp, staged.get(rp.rule_id)
                    )
                except Exception as exc:  # the rule's batch rolled back; earlier rules stand
                    failure = (rp, exc)
                    break
        except BaseException:
            control.finish_run(self.session, self.run_id, "failed", {})
            raise
        done = [results[rp.rule_id] for rp in plan.rules if rp.rule_id in results]
        report = self._report(started, t0, done, fingerprints, dry=False)
        summary: dict[str, Any] = {
            "held_fingerprints": fingerprints,
            "rules": {
                r.plan.rule_id: {
                    "deleted": r.deleted,
                    "anonymised": r.anonymised,
                    "skipped_changed": r.skipped_changed,
                }
                for r in report.rules
            },
            "interrupted_runs": self.interrupted_runs,
            "holds_imported": self.holds_imported,
        }
        if failure is None:
            control.finish_run(self.session, self.run_id, "succeeded", summary)
            return report
        rp, cause = failure
        self.failure = cause
        error, message = describe(cause)
        b = bound[rp.rule_id]
        report = report.model_copy(
            update={
                "failed": RuleFailure(
                    rule_id=rp.rule_id,
                    tables=tuple(sorted({b.table.name} | {c.table for c in rp.cascades})),
                    error=error,
                    message=message,
                    committed_rows=self._committed_rows(b),
                    terminal=getattr(cause, "terminal", True),
                ),
                "not_run": tuple(
                    o.rule_id for o in ordered if o.rule_id not in results and o is not rp
                ),
            }
        )
        summary["failed"] = {"rule": rp.rule_id, "error": error, "message": message}
        summary["not_run"] = list(report.not_run)
        try:
            # partial: some rule committed changes that stand; failed: none did
            status = "partial" if report.partial else "failed"
            control.finish_run(self.session, self.run_id, status, summary)
        except Exception:  # noqa: BLE001 - the store is gone: the next run marks it interrupted
            pass
        return report

    def _committed_rows(self, b: BoundRule) -> int:
        """Rows this run's committed batches of `b` changed, as its ledger rows count them."""
        a = control.audit
        try:
            n = self.session.scalar(
                sa.select(
                    sa.func.sum(
                        sa.func.coalesce(a.c.deleted, 0)
                        + sa.func.coalesce(a.c.anonymised, 0)
                        + sa.func.coalesce(a.c.unlinked, 0)
                    )
                ).where(
                    a.c.run_id == self.run_id,
                    a.c.purpose == b.policy.purpose,
                    a.c.rule == b.rule.name,
                    a.c.action != "plan",
                )
            )
        except Exception:  # noqa: BLE001 - the store is gone; the ledger still has them
            return 0
        return int(n or 0)

    def has_work(self, plan: Plan, bound: dict[str, BoundRule]) -> bool:
        """Whether applying `plan` may change a row: a rule with rows to act on, or a journalled
        delete batch left by an interrupted run."""
        if any(rp.to_act for rp in plan.rules if rp.action != "retain"):
            return True
        for rp in plan.rules:
            b = bound[rp.rule_id]
            if b.rule.action == "delete" and b.cascades:
                pending = self._pending_table(b)
                if self.session.scalar(
                    sa.select(sa.func.count())
                    .select_from(pending)
                    .where(pending.c.rule == b.id, self.pred.in_share(b, pending))
                ):
                    return True
        return False

    def _report(self, started, t0, results, fingerprints, dry) -> RunReport:
        return RunReport(
            run_id=self.run_id,
            as_of=self.as_of,
            store=self.store.describe(),
            dry_run=dry,
            policies_sha256=self.policies.digest,
            key_id=self.key.key_id if self.key else None,
            started_at=started,
            seconds=round(time.perf_counter() - t0, 3),
            rules=tuple(results),
            held_fingerprints=fingerprints,
            interrupted_runs=self.interrupted_runs,
            holds_imported=self.holds_imported,
        )

    def _audit(
        self, b: BoundRule, table: str, action: str, batch: int, seconds: float, **counts: int
    ) -> None:
        control.append_audit(
            self.session,
            run_id=self.run_id,
            purpose=b.policy.purpose,
            rule=b.rule.name,
            table_name=table,
            action=action,
            as_of=self.as_of,
            policy_sha256=b.file.sha256,
            batch=batch,
            # a change records the keyed hashes of what it erased (erasure.py): name the key
            key_id=self.key.key_id if self.key and action != "plan" else None,
            seconds=round(seconds, 4),
            **counts,
        )

    def _stage_keys(self, b: BoundRule, name: str) -> sa.TableClause:
        t = alias(b.table)
        key_cols = [t.c[k] for k in b.rule.keys]
        return self.session.stage_query(
            name,
            sa.select(*key_cols, sa.func.row_number().over(order_by=key_cols).label("rj_n")).where(
                self.pred.actionable(b, t)
            ),
        )

    def apply_rule(
        self, b: BoundRule, rp: RulePlan, staged: sa.TableClause | None = None
    ) -> RuleResult:
        t0 = time.perf_counter()
        with self.session.transaction():
            self._audit(
                b,
                b.table.name,
                "plan",
                0,
                0.0,
                expired=rp.expired,
                held=rp.held,
                retained=rp.retained,
            )
        if b.rule.action == "retain":
            return RuleResult(plan=rp, seconds=time.perf_counter() - t0)
        counts: dict[str, TableCounts] = {}
        done = batches = 0
        self._skipped = 0
        journal = b.rule.action == "delete" and bool(b.cascades)
        if journal:
            self._import_holds()
            stage = self._resume_journal(b)
            n = self.session.scalar(sa.select(sa.func.count()).select_from(stage))
            if n:
                self._span = _span(self.session, stage, b.rule.keys[0])
                done += self._delete_batch(b, stage, counts, batches, resumed=True)
                batches += 1
        if staged is not None:
            total = self.session.scalar(sa.select(sa.func.count()).select_from(staged))
            size = self.options.batch_size
            if b.rule.action == "anonymise" and self._overlap(b):
                n, nb = self._anonymise_overlapped(b, staged, total, size, counts, batches)
                done, batches = done + n, batches + nb
            else:
                for lo in range(0, total, size):
                    self._import_holds()
                    confirmed, self._span = self._confirm(b, staged, lo, size, "rj_confirmed")
                    if b.rule.action == "delete":
                        done += self._delete_batch(b, confirmed, counts, batches)
                    else:
                        done += self._anonymise_batch(b, confirmed, counts, batches)
                    batches += 1
                    self.progress(b.id, min(lo + size, total), total)
            self.session.drop_stage(staged.name)
        self._span = None
        for name in ("rj_confirmed", "rj_confirmed_0", "rj_confirmed_1"):
            self.session.drop_stage(name)
        return RuleResult(
            plan=rp,
            deleted=done if b.rule.action == "delete" else 0,
            anonymised=done if b.rule.action == "anonymise" else 0,
            cascades=tuple(counts.values()),
            batches=batches,
            seconds=round(time.perf_counter() - t0, 3),
            skipped_changed=self._skipped,
        )

    def _resume_journal(self, b: BoundRule) -> sa.TableClause:
        """Stage the keys of a journalled batch of an interrupted run (in a parallel run, of this
        worker's range) that are still to be deleted, re-checked as a fresh run would check
        them (`Predicates.resumed`: expiry, retain rules, every hold on the row and on the rows
        its cascades reach). The others leave the journal untouched, with their children: a
        hold placed or a clock moved since the crash wins over the journal."""
        keys = list(b.rule.keys)
        pending = self._pending_table(b)
        mine = sa.and_(pending.c.rule == b.id, self.pred.in_share(b, pending))
        journalled = sa.select(*(pending.c[k] for k in keys)).where(mine).subquery()
        t = alias(b.table)
        stage = self.session.stage_query(
            "rj_confirmed",
            sa.select(*(t.c[k] for k in keys)).where(
                in_stage(t, keys, journalled), self.pred.resumed(b, t)
            ),
        )
        with self.session.transaction():
            self.session.execute(sa.delete(pending).where(mine, ~in_stage(pending, keys, stage)))
        return stage

    def _confirm(
        self, b: BoundRule, staged: sa.TableClause, lo: int, size: int, name: str
    ) -> tuple[sa.TableClause, tuple[Any, Any] | None]:
        """Stage the keys of the batch (staged keys numbered lo+1 .. lo+size) that are still
        actionable, and return them with the batch's key span. Re-checked at the start of each
        batch: a hold placed or a clock moved since the run began wins over the staged plan."""
        t = alias(b.table)
        batch = sa.select(*(staged.c[k] for k in b.rule.keys)).where(
            staged.c.rj_n > lo, staged.c.rj_n <= lo + size
        )
        # keys are numbered in key order: a batch spans a narrow range of the first key
        span = _span(self.session, batch.subquery(), b.rule.keys[0])
        confirmed = self.session.stage_query(
            name,
            sa.select(*(t.c[k] for k in b.rule.keys)).where(
                in_stage(t, b.rule.keys, batch.subquery(), span), self.pred.actionable(b, t, span)
            ),
        )
        return confirmed, span

    def _overlap(self, b: BoundRule) -> bool:
        """Whether batch n+1 of an anonymise rule may be read and transformed while batch n is
        written: on a store with one writer process (DuckDB), where nothing else can change
        the rows in between, and when no cascade of the rule reaches its own table (a cascade
        of batch n could then change rows of batch n+1 after they were read)."""
        return (
            self.options.overlap
            and self.store.kind == "duckdb"
            and all(link.table.name != b.table.name for link, _ in link_paths(b))
        )

    def _anonymise_overlapped(
        self,
        b: BoundRule,
        staged: sa.TableClause,
        total: int,
        size: int,
        counts: dict[str, TableCounts],
        first_batch: int,
    ) -> tuple[int, int]:
        """The batches of an anonymise rule with the Python work of batch n+1 (keyed hashes,
        fingerprints, strategies, markers) in a worker thread while batch n is written and
        committed (DuckDB releases the GIL while it runs a statement). Same rows, same values,
        same transactions as the serial path; at most three batches in memory."""
        keys, columns = list(b.rule.keys), b.rule.columns
        self._key()
        control.ensure_marker_table(self.store, self.session, b.table, keys)
        starts = list(range(0, total, size))
        done = 0
        with ThreadPoolExecutor(1, thread_name_prefix="rj-prepare") as pool:

            def fetch(i: int):
                confirmed, span = self._confirm(b, staged, starts[i], size, f"rj_confirmed_{i % 2}")
                data = self._read_rows(
                    b.table, keys, columns, sa.select(*(confirmed.c[k] for k in keys)), span
                )
                return (
                    confirmed,
                    span,
                    pool.submit(self._prepare_rows, b, b.table, keys, columns, data),
                )

            upcoming = fetch(0)
            for i, lo in enumerate(starts):
                if self._import_holds():
                    # batch i was chosen before these holds arrived: choose it again
                    upcoming = fetch(i)
                confirmed, span, prepared = upcoming
                # read batch i+1 while batch i is prepared; prepare i+1 while batch i is written
                upcoming = fetch(i + 1) if i + 1 < len(starts) else None
                self._span = span
                done += self._anonymise_batch(
                    b, confirmed, counts, first_batch + i, prepared.result()
                )
                self.progress(b.id, min(lo + size, total), total)
        return done, len(starts)

    # -- delete ---------------------------------------------------------------------------

    def _pending_table(self, b: BoundRule) -> sa.TableClause:
        name = control.per_table_name("pending", b.table.name)
        types = self.store.ddl_types()
        cols = ", ".join(
            f'"{k}" {control.key_column_type(b.table.columns[k], self.store)}' for k in b.rule.keys
        )
        self.session.execute(
            f'CREATE TABLE IF NOT EXISTS {CONTROL_SCHEMA}."{name}" ({cols}, rule {types["text"]} NOT NULL)'
        )
        return sa.table(
            name,
            *(sa.column(k, sa_type(b.table.columns[k])) for k in b.rule.keys),
            sa.column("rule", sa.String()),
            schema=CONTROL_SCHEMA,
        )

    def _delete_batch(
        self,
        b: BoundRule,
        confirmed: sa.TableClause,
        counts: dict[str, TableCounts],
        batch_no: int,
        resumed: bool = False,
    ) -> int:
        keys = b.rule.keys
        if b.cascades:
            pending = self._pending_table(b)
            if not resumed:
                with self.session.transaction():
                    self.session.execute(
                        sa.insert(pending).from_select(
                            [*keys, "rule"],
                            sa.select(*(confirmed.c[k] for k in keys), sa.literal(b.id)),
                        )
                    )
            for link, path in link_paths(b):
                self._cascade_step(b, link, path, confirmed, counts, batch_no)
        t0 = time.perf_counter()
        target = sa_table(b.table)
        t = alias(b.table)
        # holds always win, even over a journalled batch
        span = self._span
        recheck = self._concurrent and not b.cascades
        victims = sa.select(*(t.c[k] for k in keys)).where(
            in_stage(t, keys, confirmed, span),
            # another writer may have changed a row since the batch began: the whole predicate
            # again (a journalled batch's children are gone, and with them maybe its clock)
            self.pred.actionable(b, t, span) if recheck else ~self.pred.held(b, t),
        )
        with self.session.transaction():
            if recheck:
                # lock what is still actionable: the application's writes to these rows wait
                # for this transaction; a row it changed first no longer matches and stays
                lt = alias(b.table)
                locked = sa.select(lt.c[keys[0]]).where(
                    in_stage(lt, keys, confirmed, span), self.pred.actionable(b, lt, span)
                )
                n_locked = self.session.scalar(
                    sa.select(sa.func.count()).select_from(locked.with_for_update(of=lt).subquery())
                )
                n_confirmed = self.session.scalar(sa.select(sa.func.count()).select_from(confirmed))
                self._skipped += max(0, int(n_confirmed or 0) - int(n_locked or 0))
            if b.rule.suppress:
                self._suppress(b, victims)
            erasure.record_where(
                self.session,
                self._key(),
                self.run_id,
                b.table,
                erasure.tracked_columns(b.table, b.rule.suppress),
                lambda r: in_stage(r, keys, victims.subquery(), span),
                lambda r, c: self.pred.marked(b.table, keys, r, c),
            )
            self._drop_markers(b.table, keys, victims, span)
            for a in b.rule.remove_from:
                self._remove_from_array(b, a, victims, counts, batch_no)
            n = self.session.execute(
                sa.delete(target).where(in_stage(target, keys, victims.subquery(), span))
            )
            if b.cascades:
                self.session.execute(
                    sa.delete(pending).where(
                        pending.c.rule == b.id, in_stage(pending, keys, confirmed)
                    )
                )
            self._audit(b, b.table.name, "delete", batch_no, time.perf_counter() - t0, deleted=n)
        return n

    def _remove_from_array(
        self,
        b: BoundRule,
        a: ArrayRef,
        victims: sa.Select,
        counts: dict[str, TableCounts],
        batch_no: int,
    ) -> None:
        """Take the ids of the rows this batch deletes out of `a`'s array column, in the batch's
        transaction. Rows whose arrays hold a held row's id never reach here (`held`)."""
        t0 = time.perf_counter()
        t = alias(b.table)
        ref = a.references or b.rule.keys[0]
        ids = [
            r[0]
            for r in self.session.fetchall(
                sa.select(t.c[ref]).where(
                    in_stage(t, b.rule.keys, victims.subquery(), self._span), t.c[ref].is_not(None)
                )
            )
        ]
        if not ids:
            return
        info = self.planner.catalog.tables[a.table]
        n = self.session.execute(array_removal(self.store.kind, info, a.column, ids))
        self._audit(b, a.table, "remove-from-array", batch_no, time.perf_counter() - t0, unlinked=n)
        prev = counts.get(a.table, TableCounts(table=a.table))
        counts[a.table] = prev.model_copy(update={"unlinked": prev.unlinked + n})

    def _cascade_step(
        self,
        b: BoundRule,
        link: Link,
        path: list[Link],
        confirmed: sa.TableClause,
        counts: dict[str, TableCounts],
        batch_no: int,
    ) -> None:
        t0 = time.perf_counter()
        root = alias(b.table)
        root_col = path[0].references if path else link.references
        roots = sa.select(root.c[root_col]).where(
            in_stage(root, b.rule.keys, confirmed, self._span)
        )
        values = parent_values(link, path, roots)
        child = sa_table(link.table)
        action = link.spec.action
        with self.session.transaction():
            if action == "delete":
                if link.key:
                    c = alias(link.table)
                    self._drop_markers(
                        link.table,
                        list(link.key),
                        sa.select(*(c.c[k] for k in link.key)).where(c.c[link.on].in_(values)),
                    )
                erasure.record_where(
                    self.session,
                    self._key(),
                    self.run_id,
                    link.table,
                    erasure.tracked_columns(link.table),
                    lambda r: r.c[link.on].in_(values),
                    (lambda r, c: self.pred.marked(link.table, link.key, r, c))
                    if link.key
                    else None,
                )
                n = self.session.execute(sa.delete(child).where(child.c[link.on].in_(values)))
            elif action == "unlink":
                n = self.session.execute(
                    sa.update(child).where(child.c[link.on].in_(values)).values({link.on: None})
                )
            else:
                c = alias(link.table)
                rows = sa.select(*(c.c[k] for k in link.key)).where(c.c[link.on].in_(values))
                n = self._anonymise_rows(b, link.table, list(link.key), link.spec.columns, rows)
            self._audit(
                b,
                link.table.name,
                f"cascade-{action}",
                batch_no,
                time.perf_counter() - t0,
                **{_COUNT[action]: n},
            )
        prev = counts.get(link.table.name, TableCounts(table=link.table.name))
        counts[link.table.name] = prev.model_copy(
            update={_COUNT[action]: getattr(prev, _COUNT[action]) + n}
        )

    def _drop_markers(
        self, info: TableInfo, keys: list[str], rows: sa.Select, span: tuple[Any, Any] | None = None
    ) -> None:
        if control.marker_name(info.name) not in self.pred.marker_tables:
            return
        m = control.marker_table(info, keys)
        self.session.execute(sa.delete(m).where(in_stage(m, keys, rows.subquery(), span)))

    def _suppress(self, b: BoundRule, victims: sa.Select) -> None:
        t = alias(b.table)
        cols = b.rule.suppress
        data = pl.from_arrow(
            self.session.arrow(
                sa.select(*(t.c[c] for c in cols)).where(
                    in_stage(t, b.rule.keys, victims.subquery(), self._span)
                )
            )
        )
        if not isinstance(data, pl.DataFrame) or data.is_empty():
            return
        values = pl.concat(
            [data[c].cast(pl.String).str.strip_chars().str.to_lowercase() for c in cols]
        ).drop_nulls()
        hashes = keyed_hashes(values, self._key()).unique()
        staged = self.session.stage(
            "rj_suppress", pl.DataFrame({"identifier_hash": hashes}).to_arrow()
        )
        s = control.suppression
        self.session.execute(
            sa.insert(s).from_select(
                ["identifier_hash", "key_id", "purpose", "added_at"],
                sa.select(
                    staged.c.identifier_hash,
                    sa.literal(self._key().key_id),
                    sa.literal(b.policy.purpose),
                    sa.literal(control.now(), sa.DateTime()),
                ).where(~staged.c.identifier_hash.in_(sa.select(s.c.identifier_hash))),
            )
        )
        self.session.drop_stage("rj_suppress")

    def _key(self) -> PseudonymKey:
        if self.key is None:
            from retention_jobs.anonymise import key_from_env

            self.key = key_from_env()
        return self.key

    # -- anonymise ------------------------------------------------------------------------

    def _anonymise_batch(
        self,
        b: BoundRule,
        confirmed: sa.TableClause,
        counts: dict[str, TableCounts],
        batch_no: int,
        prepared: "_Prepared | None" = None,
    ) -> int:
        """One batch of an anonymise rule: its cascades, then its own rows in one transaction.
        `prepared`: the rows already read and transformed (the overlapped path)."""
        for link, path in link_paths(b):
            self._cascade_step(b, link, path, confirmed, counts, batch_no)
        t0 = time.perf_counter()
        rows = sa.select(*(confirmed.c[k] for k in b.rule.keys))
        with self.session.transaction():
            if b.rule.suppress:
                self._suppress(b, rows)
            if prepared is None:
                n = self._anonymise_rows(b, b.table, b.rule.keys, b.rule.columns, rows)
            else:
                n = self._write_rows(b.table, b.rule.keys, b.rule.columns, prepared, self._span)
            self._audit(
                b, b.table.name, "anonymise", batch_no, time.perf_counter() - t0, anonymised=n
            )
        return n

    def _anonymise_rows(
        self, b: BoundRule, info: TableInfo, keys: list[str], columns: dict, rows: sa.Select
    ) -> int:
        """Anonymise `columns` of the rows whose keys `rows` selects; call inside a transaction."""
        own = info.name == b.table.name and list(keys) == list(b.rule.keys)
        span = self._span if own else None
        # other writers: the rule's own rows are read with their row version and written only
        # where it is unchanged and the rule's predicate still holds (an application's update
        # committed in between wins, the row is counted as skipped); a cascade's rows follow
        # their parent's decision, so they are locked as they are read instead
        versioned = self._concurrent and own
        data = self._read_rows(
            info, keys, columns, rows, span, versioned=versioned, lock=self._concurrent and not own
        )
        if data.is_empty():
            return 0
        return self._write_rows(
            info,
            keys,
            columns,
            self._prepare_rows(b, info, keys, columns, data),
            span,
            check=b if versioned else None,
        )

    def _read_rows(
        self,
        info: TableInfo,
        keys: list[str],
        columns: dict,
        rows: sa.Select,
        span: tuple[Any, Any] | None,
        versioned: bool = False,
        lock: bool = False,
    ) -> pl.DataFrame:
        """The keys and `columns` of the rows `rows` selects, with a `_done__<column>` flag per
        column already anonymised by an earlier run (from the batch's own markers).
        `versioned`: with each row's version (`rj_xmin`, PostgreSQL's `xmin`) for
        `_write_rows` to compare. `lock`: lock the rows read (`FOR UPDATE`) until the
        transaction ends."""
        control.ensure_marker_table(self.store, self.session, info, keys)
        self.pred.marker_tables.add(control.marker_name(info.name))
        t = _versioned_table(info).alias() if versioned or lock else alias(info)
        # the batch's markers, grouped once per key (not one subquery per column over every marker)
        m = control.marker_table(info, keys)
        marks = (
            sa.select(
                *(m.c[k] for k in keys),
                sa.func.string_agg(m.c.columns, sa.literal("")).label("cols"),
            )
            .where(in_stage(m, keys, rows.subquery(), span))
            .group_by(*(m.c[k] for k in keys))
            .subquery()
        )
        done_flags = [
            sa.func.coalesce(markers.names(marks.c.cols, c), sa.false()).label(f"_done__{c}")
            for c in columns
        ]
        q = (
            sa.select(
                *(t.c[k] for k in keys),
                *(t.c[c] for c in columns),
                *done_flags,
                *([_row_version(t).label("rj_xmin")] if versioned else []),
            )
            .select_from(t.outerjoin(marks, sa.and_(*(marks.c[k] == t.c[k] for k in keys))))
            .where(in_stage(t, keys, rows.subquery(), span))
        )
        if lock:
            q = q.with_for_update(of=t)
        return cast(pl.DataFrame, pl.from_arrow(self.session.arrow(q)))

    def _prepare_rows(
        self, b: BoundRule, info: TableInfo, keys: list[str], columns: dict, data: pl.DataFrame
    ) -> "_Prepared":
        """Everything a batch writes, computed without the store: keyed hashes, the erased-value
        fingerprints, the anonymised values, the markers. Safe in a worker thread."""
        key = self._key()
        if data.is_empty():
            return _Prepared(0, None, data, data)
        digests = {c: keyed_hashes(data[c], key) for c, s in columns.items() if needs_digest(s)}
        fingerprints = self._fingerprints(info, columns, data, digests)
        out = anonymise_frame(
            data, columns, {c: info.columns[c] for c in columns}, key, b.policy.locale, digests
        )
        fresh = {c: ~pl.col(f"_done__{c}") for c in columns}
        marker_rows = (
            data.with_columns(
                markers.listed_expr(fresh).alias("columns"),
                pl.concat_str(
                    [
                        pl.lit(MARKER_HASHES_V2),
                        *(
                            pl.when(fresh[c])
                            .then(
                                pl.concat_str(
                                    [
                                        original_token(pl.lit(digests[c])).fill_null("")
                                        if c in digests
                                        else pl.lit(""),
                                        pl.lit(";"),
                                    ]
                                )
                            )
                            .otherwise(pl.lit(""))
                            for c in columns
                        ),
                    ]
                )
                .str.strip_suffix(";")
                .alias("original_hashes"),
                pl.lit(b.id).alias("rule"),
                pl.lit(control.now()).alias("anonymised_at"),
            )
            .select(*keys, "columns", "rule", "original_hashes", "anonymised_at")
            .filter(pl.col("columns") != markers.EMPTY)
        )
        versioned = "rj_xmin" in data.columns
        return _Prepared(
            data.height,
            fingerprints,
            out.select(*keys, *columns, *(["rj_xmin"] if versioned else [])),
            marker_rows,
            (data, digests) if versioned else None,
        )

    def _fingerprints(
        self, info: TableInfo, columns: dict, data: pl.DataFrame, digests: dict[str, pl.Series]
    ) -> pl.DataFrame | None:
        """The erased-value ledger rows of the values of `data` that are about to be replaced
        (columns not anonymised by an earlier run)."""
        fresh_rows = ~data.select(
            pl.all_horizontal(*(pl.col(f"_done__{c}") for c in columns))
        ).to_series()
        return erasure.fingerprint_rows(
            self._key(),
            self.run_id,
            info,
            [c for c, s in columns.items() if needs_digest(s) and info.columns[c].type == "string"],
            data.filter(fresh_rows),
            {c: d.filter(fresh_rows) for c, d in digests.items()},
        )

    def _write_rows(
        self,
        info: TableInfo,
        keys: list[str],
        columns: dict,
        p: "_Prepared",
        span: tuple[Any, Any] | None,
        check: BoundRule | None = None,
    ) -> int:
        """Write a prepared batch: fingerprints, the new values, the markers. In-transaction.
        `check`: the batch was read with row versions; write only rows whose version is
        unchanged and on which `check`'s predicate still holds (see `_write_checked`)."""
        if not p.height:
            return 0
        if check is not None and "rj_xmin" in p.values.columns:
            return self._write_checked(info, keys, columns, p, span, check)
        erasure.insert_fingerprints(self.session, p.fingerprints)
        staged = self.session.stage("rj_anon", p.values.to_arrow())
        target = sa_table(info)
        self.session.execute(
            sa.update(target)
            .values({c: _as_column_type(staged.c[c], info.columns[c]) for c in columns})
            .where(
                *(target.c[k] == staged.c[k] for k in keys),
                *([target.c[keys[0]].between(*span)] if span else []),
            )
        )
        if not p.markers.is_empty():
            self.session.append(control.marker_table(info, keys), p.markers.to_arrow())
        self.session.drop_stage("rj_anon")
        return p.height

    def _write_checked(
        self,
        info: TableInfo,
        keys: list[str],
        columns: dict,
        p: "_Prepared",
        span: tuple[Any, Any] | None,
        b: BoundRule,
    ) -> int:
        """The write of a batch read while other writers run (PostgreSQL, READ COMMITTED): one
        `UPDATE ... FROM staged` that changes a row only where its version (`xmin`) is the one
        read and the rule's predicate (expired, not held, not retained, not done) still holds.
        A row changed by an update committed before the UPDATE, or while it waited for the
        row's lock, fails the test (PostgreSQL re-evaluates the conditions on the newest version
        of a row it waited for) and keeps the application's values; it is counted as skipped.
        Fingerprints and markers are written for the rows actually changed only."""
        values = p.values.with_row_index("rj_row")
        staged = self.session.stage("rj_anon", values.to_arrow())
        target = _versioned_table(info)
        written = {
            int(r[0])
            for r in self.session.fetchall(
                sa.update(target)
                .values({c: _as_column_type(staged.c[c], info.columns[c]) for c in columns})
                .where(
                    *(target.c[k] == staged.c[k] for k in keys),
                    *([target.c[keys[0]].between(*span)] if span else []),
                    _row_version(target) == staged.c.rj_xmin,
                    self.pred.actionable(b, target, span),
                )
                .returning(staged.c.rj_row)
            )
        }
        self.session.drop_stage("rj_anon")
        fingerprints, markers = p.fingerprints, p.markers
        if len(written) < p.height:
            self._skipped += p.height - len(written)
            kept = values.filter(pl.col("rj_row").is_in(sorted(written))).select(*keys)
            markers = markers.join(kept, on=keys, how="semi")
            if p.source is not None:
                data, digests = p.source
                mask = pl.int_range(0, data.height, eager=True).is_in(sorted(written))
                fingerprints = self._fingerprints(
                    info,
                    columns,
                    data.filter(mask),
                    {c: d.filter(mask) for c, d in digests.items()},
                )
        erasure.insert_fingerprints(self.session, fingerprints)
        if not markers.is_empty():
            self.session.append(control.marker_table(info, keys), markers.to_arrow())
        return len(written)


def array_removal(kind: str, info: TableInfo, column: str, ids: list) -> sa.TextClause:
    """UPDATE `info` so that `column` (an array) no longer holds any of `ids`, keeping the other
    elements in their order; only rows that hold one are written."""
    raw = info.columns[column].raw_type.strip()
    if not castable_array(raw):
        raise ConfigError(f"{info.name}.{column}: cannot cast to its type {raw!r}")
    quote = postgresql.dialect().identifier_preparer.quote
    table, col = f"{quote(info.schema)}.{quote(info.short)}", quote(column)
    ids_param = f"CAST(:ids AS {raw})"
    if kind == "duckdb":
        value = f"list_filter({col}, lambda x: NOT list_contains({ids_param}, x))"
        where = f"list_has_any({col}, {ids_param})"
    else:
        value = (
            f"ARRAY(SELECT u.x FROM unnest({col}) WITH ORDINALITY AS u(x, i) "
            f"WHERE NOT (u.x = ANY({ids_param})) ORDER BY u.i)"
        )
        where = f"{col} && {ids_param}"
    return sa.text(f"UPDATE {table} SET {col} = {value} WHERE {where}").bindparams(
        sa.bindparam("ids", ids)
    )


def _versioned_table(info: TableInfo) -> sa.TableClause:
    """`info`'s table with PostgreSQL's system column `xmin` (the id of the transaction that
    wrote the row version) among its columns."""
    return sa.table(
        info.short,
        *(sa.column(c.name, sa_type(c)) for c in info.columns.values()),
        sa.column("xmin"),
        schema=info.schema,
    )


def _row_version(t: sa.FromClause) -> sa.ColumnElement:
    """A row version's `xmin` as a number (xid has no comparison with a staged column)."""
    return sa.cast(sa.cast(t.c.xmin, sa.Text), sa.BigInteger)


@dataclass(frozen=True)
class _Prepared:
    """A batch of an anonymise rule, transformed and ready to write."""

    height: int
    fingerprints: pl.DataFrame | None
    values: pl.DataFrame
    """The keys and the anonymised columns (and `rj_xmin`, for a versioned batch)."""
    markers: pl.DataFrame
    source: tuple[pl.DataFrame, dict[str, pl.Series]] | None = None
    """A versioned batch: the rows read and their digests, to fingerprint only the rows that
    the write changed."""


_COUNT = {"delete": "deleted", "unlink": "unlinked", "anonymise": "anonymised"}


class _StoreType(sa.types.UserDefinedType):
    """A column type by the name the store's catalog gave it (UUID, INET, ...)."""

    cache_ok = True

    def __init__(self, name: str):
        self.name = name

    def get_col_spec(self, **kw) -> str:
        return self.name


def _as_column_type(value: sa.ColumnElement, col: ColumnInfo) -> sa.ColumnElement:
    """Staged values arrive as Arrow's types; a column of a type Arrow has no name for (UUID on
    PostgreSQL) needs an explicit cast. The name comes from the store's catalog, never a policy."""
    if col.type == "other" and re.fullmatch(
        r"[A-Za-z][A-Za-z0-9_ ]*(\(\d+(,\s*\d+)?\))?", col.raw_type
    ):
        return sa.cast(value, _StoreType(col.raw_type))
    return value


def run_policies(
    store: Store,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey | None,
    options: RunOptions = RunOptions(),
    progress: Progress | None = None,
) -> RunReport:
    """Plan and apply on one connection, then purge (after the connection closed: a DuckDB
    compaction needs the file to itself). A dry run only plans. A run holds the store's run
    lock from its start to the end of its purge (`Store.run_lock`; a second run gets
    `RunInProgress`); a parallel run's workers (`options.run_lock=False`) run under their
    coordinator's."""
    if options.dry_run or not options.run_lock:
        return _run_policies(store, policies, as_of, key, options, progress, locked=False)
    with store.run_lock():
        return _run_policies(store, policies, as_of, key, options, progress, locked=True)


def _run_policies(
    store: Store,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey | None,
    options: RunOptions,
    progress: Progress | None,
    locked: bool,
) -> RunReport:
    with store.connect(read_only=options.dry_run) as session:
        ranged: dict[str, Any] = (
            {}
            if options.key_ranges is None
            else {"predicates": KeyRangePredicates, "ranges": options.key_ranges}
        )
        applier = Applier(store, session, policies, as_of, key, options, progress, **ranged)
        if locked:
            # holding the run lock, no other run is alive: one still `running` was killed
            applier.interrupted_runs = control.interrupt_stale_runs(session)
        report = applier.run()
        failure = applier.failure
        if failure is not None and not report.partial:
            raise failure  # nothing committed: the error as it is (not a partial run)
        head = None if options.dry_run else control.audit_head(session)
    if report.dry_run:
        return report
    purge = None
    if options.purge:
        changed = report.tables_changed if report.changed else []
        purge = purge_tables(store, policies, report.run_id, changed, as_of)
        if purge is not None:
            with store.connect(read_only=True) as session:
                head = control.audit_head(session)
    report = report.model_copy(update={"audit_head": head, "purge": purge})
    if failure is not None:
        # purged first: the batches committed before the failure erased values too
        raise PartialRun(report, failure) from None
    return report
