"""Checks after a run: nothing expired is left, nothing held changed, no original value survives
in an anonymised column, and the audit ledger recorded the run. Counts only: never a value."""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import cast

import polars as pl
import sqlalchemy as sa

from retention_jobs import control, markers
from retention_jobs.anonymise import (
    MARKER_HASHES_V2,
    ORIGINAL_HASH_CHARS,
    PseudonymKey,
    json_left,
    keyed_hashes,
    original_token,
)
from retention_jobs.apply import held_fingerprint
from retention_jobs.load import PolicySet
from retention_jobs.plan import Planner
from retention_jobs.policy import Constant, Generalise, Json
from retention_jobs.predicates import alias
from retention_jobs.purge import removes_old_bytes
from retention_jobs.store.base import Session, Store


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    summary: str
    counts: dict[str, int] = field(default_factory=dict)
    verified: bool = True
    """False when the check could not prove anything (no access, a purge still pending):
    never passed, and not a failure either; shown as its own state."""

    @classmethod
    def not_verified(cls, name: str, summary: str, counts: dict[str, int]) -> "CheckResult":
        return cls(name, False, summary, counts, verified=False)


def unprocessed(planner: Planner, purposes: list[str] | None) -> CheckResult:
    """No row past its period is left unprocessed, other than held or retained ones."""
    plan = planner.plan(purposes)
    left = {r.rule_id: r.to_act for r in plan.rules if r.action != "retain" and r.to_act}
    return CheckResult(
        "nothing_expired_left",
        not left,
        "every expired row is deleted, anonymised, held or retained"
        if not left
        else f"{sum(left.values())} expired rows are still unprocessed in {len(left)} rules",
        left,
    )


def held_unchanged(
    planner: Planner, session: Session, before: dict[str, str], purposes: list[str] | None
) -> CheckResult:
    """Every held row is byte-for-byte what it was before the run."""
    changed = {}
    for b in planner.rules(purposes):
        if b.id in before and held_fingerprint(session, planner, b) != before[b.id]:
            changed[b.id] = 1
    return CheckResult(
        "held_rows_unchanged",
        not changed,
        (
            f"held rows of {len(before)} rules are unchanged"
            if before
            else "no held rows to compare: the run had no row to change, or no rule has held rows"
        )
        if not changed
        else f"held rows changed in {len(changed)} rules: {', '.join(changed)}",
        changed,
    )


def no_original_values(
    planner: Planner, session: Session, key: PseudonymKey, purposes: list[str] | None
) -> CheckResult:
    """No anonymised column still holds the value it had before (generalise and constant are
    exempt: a date already on the first of January is its own generalisation)."""
    a = control.audit
    used = {
        r[0]
        for r in session.fetchall(
            sa.select(a.c.key_id)
            .where(a.c.action == "anonymise", a.c.key_id.is_not(None))
            .distinct()
        )
    }
    if used - {key.key_id}:
        # with another key no hash would match, and the check could not fail
        return CheckResult(
            "no_original_values",
            False,
            f"values were anonymised with key id(s) {', '.join(sorted(used))} but the check "
            f"runs with key id {key.key_id}: set RETENTION_PSEUDONYM_KEY to the key used",
        )
    found: dict[str, int] = {}
    checked = 0
    for b in planner.rules(purposes):
        targets = []
        if b.rule.action == "anonymise":
            targets.append((b.table, b.rule.keys, b.rule.columns))
        targets += [
            (link.table, list(link.key), link.spec.columns)
            for link in b.links()
            if link.spec.action == "anonymise"
        ]
        for info, keys, columns in targets:
            if control.marker_name(info.name) not in planner.pred.marker_tables:
                continue
            m = control.marker_table(info, keys)
            for col, strategy in columns.items():
                if isinstance(strategy, (Generalise, Constant)):
                    continue
                t = alias(info)
                rows = cast(
                    pl.DataFrame,
                    pl.from_arrow(
                        session.arrow(
                            sa.select(t.c[col].label("value"), m.c.columns, m.c.original_hashes)
                            .select_from(t.join(m, sa.and_(*(m.c[k] == t.c[k] for k in keys))))
                            .where(markers.names(m.c.columns, col))
                        )
                    ),
                )
                if rows.is_empty():
                    continue
                if isinstance(strategy, Json):
                    # a document may legitimately equal its original (it had none of the
                    # keys): the proof is that no marked document holds what was removed
                    checked += rows.height
                    left = json_left(rows["value"], strategy)
                    if left:
                        found[f"{info.name}.{col}"] = left
                    continue
                now_hex = keyed_hashes(rows["value"], key).str.slice(0, ORIGINAL_HASH_CHARS)
                compared = rows.with_columns(now_hex.alias("now")).select(*_original_and_now(col))
                checked += int(compared["original"].is_not_null().sum())
                same = int((compared["now"] == compared["original"]).fill_null(False).sum())
                if same:
                    found[f"{info.name}.{col}"] = same
    return CheckResult(
        "no_original_values",
        not found,
        f"{checked} anonymised values checked, none is the original"
        if not found
        else f"{sum(found.values())} anonymised values still equal their original",
        found,
    )


def _original_and_now(col: str) -> tuple[pl.Expr, pl.Expr]:
    """The original value's hash from a marker (either format, see `MARKER_HASHES_V2`) and the
    current value's (`now`: 16 hex digits) in the same form."""
    raw = pl.col("original_hashes")
    v2 = raw.str.starts_with(MARKER_HASHES_V2)
    position = markers.position(pl.col("columns"), col)
    token = (
        raw.str.strip_prefix(MARKER_HASHES_V2).str.split(";").list.get(position, null_on_oob=True)
    )
    token = pl.when(token != "").then(token)
    first = raw.str.extract(rf"(?:^|;){re.escape(col)}=([0-9a-f]+);", 1)
    now = pl.col("now")
    return (
        pl.when(v2).then(token).otherwise(first).alias("original"),
        pl.when(v2).then(original_token(now)).otherwise(now).alias("now"),
    )


def _runs(run_id: str | Sequence[str]) -> tuple[str, ...]:
    return (run_id,) if isinstance(run_id, str) else tuple(run_id)


def _named(runs: tuple[str, ...]) -> str:
    return f"run {runs[0]}" if len(runs) == 1 else f"runs {', '.join(runs)}"


def audit_recorded(
    session: Session, run_id: str | Sequence[str], rule_ids: list[str]
) -> CheckResult:
    """The ledger holds the run's rows: a plan row for every rule (a parallel run: its workers'
    runs together)."""
    runs = _runs(run_id)
    rows = [r for one in runs for r in control.audit_rows(session, one)]
    seen = {f"{r['purpose']}/{r['rule']}" for r in rows if r["action"] == "plan"}
    missing = [r for r in rule_ids if r not in seen]
    return CheckResult(
        "audit_recorded",
        bool(rows) and not missing,
        f"{len(rows)} ledger rows for {_named(runs)}"
        if not missing
        else f"no ledger rows for {', '.join(missing)} in {_named(runs)}",
        {"rows": len(rows), "missing": len(missing)},
    )


def erasure_verified(
    store: Store,
    key: PseudonymKey,
    run_id: str | Sequence[str] | None,
    purposes: list[str] | None = None,
    full_purge: bool = True,
) -> CheckResult:
    """None of the values this run (or these runs) erased, nor those of any earlier run no check
    has proved yet (of `purposes`), can be found in the store's raw bytes, and each was either
    visible to the scan or proved gone by construction. Green only for what was proved; a clean
    result is remembered, so the next check does not scan those runs again. `full_purge`:
    whether the purge removes old bytes (False: a plain PostgreSQL VACUUM)."""
    from retention_jobs import erasure
    from retention_jobs.errors import ConfigError, WrongKey

    name = "erasure_verified"
    with store.connect(read_only=True) as session:
        runs = sorted(
            set(_runs(run_id) if run_id else ()) | set(erasure.unverified_runs(session, purposes))
        )
        pending = set(control.pending_purges(session))
    if not runs:
        return CheckResult(
            name,
            True,
            "no erased value waits for a proof: every run's erasure was verified",
            {"runs": 0},
        )
    vacuum_note = (
        ""
        if full_purge
        else "; the purge is a plain VACUUM, which leaves erased values in table pages and "
        "indexes until they are overwritten: set `purge: full` in a policy (docs/erasure.md)"
    )
    try:
        result = erasure.verify(store, key, runs)
    except WrongKey as e:
        # a key that cannot have made the hashes would find nothing: that is no pass
        return CheckResult(name, False, str(e), {"runs": len(runs), "wrong_key": 1})
    except ConfigError as e:
        return CheckResult.not_verified(
            name, f"could not verify here: {e}{vacuum_note}", {"verifiable": 0, "runs": len(runs)}
        )
    counts = {
        "runs": len(runs),
        "tracked": result.tracked,
        "plain": result.plain,
        "not_verifiable": result.blind,
        "by_construction": result.constructed,
        "scanned_bytes": result.scanned_bytes,
        **result.found,
    }
    found = sum(result.found.values())
    waiting = {w: n for w, n in result.found.items() if w.rsplit(".", 1)[0] in pending}
    if result.found and len(waiting) == len(result.found):
        # the values are in tables whose purge an older transaction held back: not a failed
        # erasure yet, and not a verified one either
        return CheckResult.not_verified(
            name,
            f"not verified yet: {found} erased values are still in "
            f"{len(pending & {w.rsplit('.', 1)[0] for w in waiting})} tables whose purge is "
            "pending (an older transaction still sees the deleted rows); the next run purges "
            "them again",
            {**counts, "pending_tables": len(pending)},
        )
    if result.found and not full_purge:
        # the configured purge does not remove old bytes: a known trade-off, said every time
        return CheckResult.not_verified(
            name,
            f"{found} erased values are still readable in the store's files: "
            + ", ".join(f"{w}: {n}" for w, n in sorted(result.found.items()))
            + vacuum_note,
            counts,
        )
    if result.found:
        return CheckResult(
            name,
            False,
            f"{found} erased values are still in the store's bytes: "
            + ", ".join(f"{w}: {n}" for w, n in sorted(result.found.items())),
            counts,
        )
    if not result.verified:
        return CheckResult.not_verified(
            name,
            f"none found in {result.scanned_bytes:,} bytes, but not all could be seen: "
            f"{result.describe()} (stored compressed, or with no live value to measure the "
            f"scan by){vacuum_note}",
            counts,
        )
    erasure.record_proofs(store, runs, result.describe())
    untracked = (
        f"; not tracked (nested columns, values not proved): {', '.join(result.untracked)}"
        if result.untracked
        else ""
    )
    return CheckResult(
        name,
        True,
        f"none of {result.tracked} erased values of {len(runs)} run(s) found in "
        f"{result.scanned_bytes:,} bytes; {result.describe()}{untracked}",
        {**counts, "untracked_nested_columns": len(result.untracked)},
    )


def run_checks(
    store: Store,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey,
    run_id: str | Sequence[str] | None = None,
    held_before: dict[str, str] | None = None,
    purposes: list[str] | None = None,
    instant: datetime | None = None,
) -> list[CheckResult]:
    """`instant`: the run's moment, when it was given as one (see `Predicates.instant`)."""
    from retention_jobs.erasure import unverified_runs

    with store.connect(read_only=True) as session:
        planner = Planner(store, session, policies, as_of)
        planner.pred.instant = instant
        results = [
            unprocessed(planner, purposes),
            no_original_values(planner, session, key, purposes),
        ]
        if held_before is not None:
            results.append(held_unchanged(planner, session, held_before, purposes))
        if run_id:
            results.append(audit_recorded(session, run_id, [b.id for b in planner.rules(purposes)]))
        unproved = unverified_runs(session, purposes)
    if run_id or unproved:
        # a check without a run still owes a proof for every erasure no check has proved
        results.append(
            erasure_verified(
                store, key, run_id, purposes, full_purge=removes_old_bytes(store, policies)
            )
        )
    return results
