"""Explain a plan or a run for people (a table) and machines (JSON). Counts and dates only."""

import json
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table

from retention_jobs.apply import RunReport
from retention_jobs.plan import RulePlan


def rule_row(
    rp: RulePlan, deleted: int | None = None, anonymised: int | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "rule": rp.rule_id,
        "table": rp.table,
        "action": rp.action,
        "cutoff": rp.cutoff.isoformat(),
        "total": rp.total,
        "expired": rp.expired,
        "held": rp.held,
        "retained": rp.retained,
        "superseded": rp.superseded,
        "already_done": rp.already_done,
        "to_act": rp.to_act,
        "kept": rp.kept if rp.action != "retain" else rp.retained,
    }
    if deleted is not None:
        row["deleted"] = deleted
        row["anonymised"] = anonymised
    row["cascades"] = [c.model_dump() for c in rp.cascades]
    row["retained_by"] = [
        {
            "rule": n.rule_id,
            "table": n.table,
            "rows": n.rows,
            "free_from": n.free_from.isoformat() if n.free_from else None,
            "unset_clock": n.unset_clock,
        }
        for n in rp.retained_by
    ]
    return row


def report_dict(report: RunReport) -> dict[str, Any]:
    rules = []
    for r in report.rules:
        row = rule_row(
            r.plan, None if report.dry_run else r.deleted, None if report.dry_run else r.anonymised
        )
        if not report.dry_run:
            row["cascade_results"] = [c.model_dump() for c in r.cascades]
            row["batches"] = r.batches
            row["seconds"] = r.seconds
        rules.append(row)
    return {
        "run_id": report.run_id,
        "as_of": report.as_of.isoformat(),
        "store": report.store,
        "dry_run": report.dry_run,
        "policies_sha256": report.policies_sha256,
        "key_id": report.key_id,
        "seconds": report.seconds,
        "changed": report.changed,
        "audit_head": report.audit_head,
        "purge": report.purge,
        "rules": rules,
        "status": "succeeded" if report.failed is None else "partial",
        "failed": report.failed.model_dump() if report.failed else None,
        "not_run": list(report.not_run),
    }


def to_json(report: RunReport) -> str:
    return json.dumps(report_dict(report), indent=2)


def render(report: RunReport, console: Console) -> None:
    title = ("Plan" if report.dry_run else "Run") + f" as of {report.as_of} on {report.store}"
    table = Table(title=title, title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("rule", "left"),
        ("table", "left"),
        ("action", "left"),
        ("expired", "right"),
        ("held", "right"),
        ("retained", "right"),
        ("to act" if report.dry_run else "done", "right"),
        ("kept", "right"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify)
    notes: list[str] = []
    for r in report.rules:
        rp = r.plan
        if rp.action == "retain":
            done = "-"
        elif report.dry_run:
            done = f"{rp.to_act}"
        else:
            done = f"{r.deleted or r.anonymised}"
        extra = []
        if rp.superseded:
            extra.append(f"{rp.superseded} deleted first by another rule or cascade")
        if rp.already_done:
            extra.append(f"{rp.already_done} anonymised before (an earlier run or rule)")
        for c in rp.cascades:
            if c.superseded:
                extra.append(f"{c.superseded} linked {c.table} rows deleted first by another step")
        table.add_row(
            rp.rule_id,
            rp.table,
            rp.action,
            str(rp.expired),
            str(rp.held),
            str(rp.retained),
            done,
            str(rp.kept if rp.action != "retain" else rp.retained),
        )
        cascade_done = {c.table: c for c in r.cascades}
        for c in rp.cascades:
            got = cascade_done.get(c.table)
            n = (
                c.rows
                if report.dry_run or got is None
                else (got.deleted or got.anonymised or got.unlinked)
            )
            table.add_row("  ↳ cascade", c.table, c.action, "", "", "", str(n), "")
        for kept in rp.retained_by:
            until = kept.free_from.isoformat() if kept.free_from else "a clock is set"
            notes.append(
                f"{rp.rule_id}: {kept.rows} rows kept by {kept.rule_id} ({kept.table}) until {until}"
            )
        if extra:
            notes.append(f"{rp.rule_id}: " + "; ".join(extra))
    console.print(table)
    for note in notes:
        console.print(f"  retained/info: {note}")
    if not report.dry_run:
        verdict = "changed rows" if report.changed else "nothing to do: no row changed"
        console.print(
            f"run {report.run_id}: {verdict} in {report.seconds:.2f} s (policies {report.policies_sha256[:12]})"
        )
        if report.purge:
            p = report.purge
            if p.get("method") == "compact":
                console.print(
                    f"purge: compacted into a fresh file, {p['bytes_before']:,} -> {p['bytes_after']:,} bytes "
                    f"in {p['seconds']:.2f} s (deleted values are gone from the file)"
                )
            else:
                console.print(f"purge: {p}", markup=False)
            if not p.get("complete", True):
                held = ", ".join(f"{h['kind']} {h['id']}" for h in p.get("held_back_by") or [])
                console.print(
                    f"purge pending: {held} still see the deleted rows, so their bytes stay in "
                    f"{len(p.get('pending_tables') or [])} tables; the next run purges them again",
                    markup=False,
                )
        if report.audit_head:
            console.print(f"audit ledger head: {report.audit_head} (keep a copy outside the store)")
