"""The answer to an access request (GDPR Art. 15): every row of the subject, in every table the
policies know, with the purpose, legal basis and retention period of each rule covering it.

A subject's rows are the rows of every rule whose subject kind matches (subject column = id),
and the rows their cascades reach (an invoice of the customer's subscription). The export is a
zip with `export.json` (everything) and one CSV per table, written to the operator's path with
owner-only permissions. The store records that it was produced (when, how many tables and rows,
its sha256), never the file's path or contents.
"""

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import polars as pl
import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.errors import ConfigError
from retention_jobs.load import PolicySet
from retention_jobs.periods import Period
from retention_jobs.plan import Planner, link_paths, parent_values
from retention_jobs.policy import RelatedClock, Rule
from retention_jobs.predicates import SubjectPredicates, alias
from retention_jobs.store.base import Session, Store, TableInfo

_ACTION = {"delete": "deleted", "anonymise": "anonymised", "retain": "kept at least"}


def _period_words(p: Period) -> str:
    parts = [
        f"{n} {unit}{'s' if n != 1 else ''}"
        for n, unit in ((p.years, "year"), (p.months, "month"), (p.days, "day"))
        if n
    ]
    return " ".join(parts)


def retention_text(rule: Rule) -> str:
    """The rule's period in words, e.g. "deleted 5 years after the end of the year of invoice_date"."""
    clock = rule.clock
    what = (
        f"the {'latest' if clock.aggregate == 'max' else 'earliest'} {clock.column} in {clock.table}"
        if isinstance(clock, RelatedClock)
        else clock
    )
    if rule.round_clock_to == "year_end":
        what = f"the end of the year of {what}"
    elif rule.round_clock_to == "month_end":
        what = f"the end of the month of {what}"
    words = _period_words(rule.period)
    verb = _ACTION[rule.action]
    return f"{verb} {words} after {what}" if words else f"{verb} as soon as {what} is set"


@dataclass
class _Table:
    info: TableInfo
    t: sa.FromClause
    conds: list[sa.ColumnElement]
    flags: list[tuple[str, sa.ColumnElement]]


def subject_rows(
    store: Store,
    session: Session,
    policies: PolicySet,
    as_of: date,
    subject_kind: str,
    subject_id: str,
) -> tuple[dict[str, pl.DataFrame], dict[str, dict[str, Any]]]:
    """Per table, the subject's rows (column `_rules`: the rules that cover each row), and the
    rules named there, described. Tables where the subject has no rows are left out."""
    planner = Planner(
        store,
        session,
        policies,
        as_of,
        SubjectPredicates,
        subject_kind=subject_kind,
        subject_id=subject_id,
        purposes=None,
    )
    pred = planner.pred
    assert isinstance(pred, SubjectPredicates)
    tables: dict[str, _Table] = {}

    def entry(info: TableInfo) -> _Table:
        if info.name not in tables:
            t = alias(info)
            # every rule on the table covers the rows its filters match
            flags: list[tuple[str, sa.ColumnElement]] = [
                (b.id, sa.func.coalesce(pred.matches(b, t), sa.false()))
                for b in planner.bound
                if b.table.name == info.name
            ]
            tables[info.name] = _Table(info, t, [], flags)
        return tables[info.name]

    for b in planner.bound:
        if not pred.covers(b):
            continue
        e = entry(b.table)
        e.conds.append(pred.belongs(b, e.t))
        for link, path in link_paths(b):
            root = alias(b.table)
            root_col = path[0].references if path else link.references
            values = parent_values(
                link, path, sa.select(root.c[root_col]).where(pred.belongs(b, root))
            )
            c = entry(link.table)
            reached = c.t.c[link.on].in_(values)
            c.conds.append(reached)
            c.flags.append(
                (f"{b.id} (cascade: {link.spec.action})", sa.func.coalesce(reached, sa.false()))
            )
    out: dict[str, pl.DataFrame] = {}
    used: set[str] = set()
    for name, e in sorted(tables.items()):
        if not e.conds:
            continue
        labels = [label for label, _ in e.flags]
        q = sa.select(*e.t.c, *(f.label(f"_rj_flag{i}") for i, (_, f) in enumerate(e.flags))).where(
            sa.or_(*e.conds)
        )
        key = e.info.primary_key or tuple(e.info.columns)
        df = cast(pl.DataFrame, pl.from_arrow(session.arrow(q.order_by(*(e.t.c[k] for k in key)))))
        if df.is_empty():
            continue
        flag_cols = [f"_rj_flag{i}" for i in range(len(labels))]
        df = df.with_columns(
            pl.concat_list(
                [
                    pl.when(pl.col(f)).then(pl.lit(label)).otherwise(pl.lit(None, pl.String))
                    for f, label in zip(flag_cols, labels, strict=True)
                ]
            )
            .list.drop_nulls()
            .list.unique(maintain_order=True)
            .alias("_rules")
        ).drop(flag_cols)
        out[name] = df
        used |= {label.split(" ")[0] for label in set().union(*df["_rules"].to_list())}
    rules = {}
    for b in planner.bound:
        if b.id in used:
            r, p = b.rule, b.policy
            rules[b.id] = {
                "purpose": p.purpose,
                "purpose_title": p.title,
                "legal_basis": p.legal_basis,
                "controller_team": p.owner,
                "table": r.table,
                "action": r.action,
                "retention": retention_text(r),
                "keep_for": r.keep_for,
                "clock": r.clock if isinstance(r.clock, str) else r.clock.model_dump(),
                "round_clock_to": r.round_clock_to,
                "description": (r.description or p.description or "").strip() or None,
            }
    return out, rules


def _json_value(v: Any) -> Any:
    if isinstance(v, (datetime, date, time)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _csv_ready(df: pl.DataFrame) -> pl.DataFrame:
    out = df.with_columns(pl.col("_rules").list.join("; "))
    binary = [c for c, t in out.schema.items() if t == pl.Binary]
    return out.with_columns(pl.col(c).bin.encode("hex") for c in binary) if binary else out


README = """Personal data held about you (GDPR Art. 15)

export.json    every table with every row about you, and for each row the rules that say
               why it is kept (purpose, legal basis) and for how long.
tables/*.csv   the same rows, one file per table; the column _rules names the rules.

Request {request_id}, produced {produced_at} UTC. Policy files: sha256 {digest}.
"""


def write_export(
    store: Store, session: Session, policies: PolicySet, req, as_of: date, out: Path
) -> dict[str, Any]:
    """Write the zip for an access request to `out` (never overwriting a file) and return the
    record to keep: when, how many tables and rows, its size and sha256."""
    if req.subject_id is None:
        raise ConfigError(f"request {req.request_id} no longer names its subject")
    out = Path(out)
    if out.exists():
        raise ConfigError(
            f"{out} exists: choose a new file for the export (it is never overwritten)"
        )
    data, rules = subject_rows(store, session, policies, as_of, req.subject_kind, req.subject_id)
    produced = control.now()
    doc = {
        "request_id": req.request_id,
        "produced_at": produced.isoformat(),
        "as_of": as_of.isoformat(),
        "policies_sha256": policies.digest,
        "rules": rules,
        "tables": [
            {"table": name, "rows": df.height, "csv": f"tables/{name}.csv", "data": df.to_dicts()}
            for name, df in data.items()
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(
                "README.txt",
                README.format(
                    request_id=req.request_id,
                    produced_at=produced.isoformat(timespec="seconds"),
                    digest=policies.digest,
                ),
            )
            z.writestr(
                "export.json", json.dumps(doc, default=_json_value, indent=2, ensure_ascii=False)
            )
            for name, df in data.items():
                z.writestr(f"tables/{name}.csv", _csv_ready(df).write_csv())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    blob = out.read_bytes()
    return {
        "produced_at": produced,
        "table_count": len(data),
        "row_count": sum(df.height for df in data.values()),
        "byte_count": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
