"""Checks after a run: nothing expired is left, nothing held changed, no original value survives
in an anonymised column, and the audit ledger recorded the run. Counts only: never a value."""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import cast

import polars as pl
import sqlalchemy as sa

from retention_jobs import control, markers
from retention_jobs.anonymise import (
    MARKER_HASHES_V2,
    ORIGINAL_HASH_CHARS,
    PseudonymKey,
    keyed_hashes,
    original_token,
)
from retention_jobs.apply import held_fingerprint
from retention_jobs.load import PolicySet
from retention_jobs.plan import Planner
from retention_jobs.policy import Constant, Generalise
from retention_jobs.predicates import alias
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


def erasure_verified(store: Store, key: PseudonymKey, run_id: str | Sequence[str]) -> CheckResult:
    """None of the values this run (or these runs) erased can be found in the store's raw bytes."""
    from retention_jobs.erasure import verify
    from retention_jobs.errors import ConfigError

    try:
        result = verify(store, key, run_id)
    except ConfigError as e:
        return CheckResult.not_verified(
            "erasure_verified", f"could not verify here: {e}", {"verifiable": 0}
        )
    counts = {"tracked": result.tracked, "scanned_bytes": result.scanned_bytes, **result.found}
    with store.connect(read_only=True) as session:
        pending = set(control.pending_purges(session))
    waiting = {w: n for w, n in result.found.items() if w.rsplit(".", 1)[0] in pending}
    if waiting and len(waiting) == len(result.found):
        # the values are in tables whose purge an older transaction held back: not a failed
        # erasure yet, and not a verified one either
        return CheckResult.not_verified(
            "erasure_verified",
            f"not verified yet: {sum(waiting.values())} erased values are still in "
            f"{len(pending & {w.rsplit('.', 1)[0] for w in waiting})} tables whose purge is "
            "pending (an older transaction still sees the deleted rows); the next run purges "
            "them again",
            {**counts, "pending_tables": len(pending)},
        )
    if result.clean:
        return CheckResult(
            "erasure_verified",
            True,
            f"none of {result.tracked} erased values found in {result.scanned_bytes:,} bytes"
            + (
                f"; not tracked (nested columns, values not proved): {', '.join(result.untracked)}"
                if result.untracked
                else ""
            ),
            {**counts, "untracked_nested_columns": len(result.untracked)},
        )
    return CheckResult(
        "erasure_verified",
        False,
        f"{sum(result.found.values())} erased values are still in the store's bytes: "
        + ", ".join(f"{w}: {n}" for w, n in sorted(result.found.items())),
        counts,
    )


def run_checks(
    store: Store,
    policies: PolicySet,
    as_of: date,
    key: PseudonymKey,
    run_id: str | Sequence[str] | None = None,
    held_before: dict[str, str] | None = None,
    purposes: list[str] | None = None,
) -> list[CheckResult]:
    with store.connect(read_only=True) as session:
        planner = Planner(store, session, policies, as_of)
        results = [
            unprocessed(planner, purposes),
            no_original_values(planner, session, key, purposes),
        ]
        if held_before is not None:
            results.append(held_unchanged(planner, session, held_before, purposes))
        if run_id:
            results.append(audit_recorded(session, run_id, [b.id for b in planner.rules(purposes)]))
    if run_id:
        results.append(erasure_verified(store, key, run_id))
    return results
