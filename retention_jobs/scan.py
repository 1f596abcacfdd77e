"""`scan`: which columns of a store hold personal data, and which of them no rule covers.

Every column is classified by its name and by a bounded sample of its values (the first
`sample` non-null values: a scan reads at most that many rows per column). The recognisers
are in `identifiers.py`. A column that is, or references over a foreign key, the key of a
subject's table is personal too. The result holds classes, shares and counts only: no sampled
value ever leaves this module.

A personal column is covered when a rule (or a cascade) deletes its table's rows or
anonymises the column, or when the allow-list `coverage.yaml` beside the policies names it
with a reason and a reviewer (kept on purpose: an invoice's customer name under bookkeeping).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

from retention_jobs import identifiers
from retention_jobs.errors import PolicyError, Problem
from retention_jobs.load import PolicySet
from retention_jobs.policy import Cascade
from retention_jobs.store.base import (
    CONTROL_SCHEMA,
    Catalog,
    ColumnInfo,
    Session,
    Store,
    TableInfo,
    sa_table,
)

DEFAULT_SAMPLE = 500
CONTENT_SHARE = 0.8
"""A column is of a class when at least this share of its sampled values are."""
FREE_TEXT_SHARE = 0.02
"""Free text holds identifiers when at least this share of its sampled values contain one."""
ALLOW_LIST = "coverage.yaml"

_NAMES: dict[str, re.Pattern] = {
    "email": re.compile(r"e_?mail|epost|e_post", re.I),
    "phone": re.compile(r"phone|(^|_)tel(efon)?($|_)|mobil|msisdn|(^|_)fax($|_)", re.I),
    "ip_address": re.compile(r"(^|_)ip($|_)|ip_?addr|remote_addr|client_ip", re.I),
    "national_id": re.compile(
        r"ssn|national_?id|personal_?id|person_?nummer|personnr|f[oø]dselsnummer|(^|_)fnr($|_)|"
        r"(^|_)cpr($|_)|hetu|henkilotunnus|birth_?number|id_?number",
        re.I,
    ),
    "iban": re.compile(r"iban|account_?no|bank_?account|kontonummer", re.I),
    "payment_card": re.compile(r"card_?(no|number)|(^|_)pan($|_)|credit_?card", re.I),
    "person_name": re.compile(
        r"(first|last|full|middle|given|family|sur|maiden|display|contact|customer|"
        r"requester|candidate|employee|user)_?name$",
        re.I,
    ),
    "address": re.compile(r"address|street|adresse|gate_?adr|postal_?addr", re.I),
    "birth_date": re.compile(r"birth|(^|_)dob($|_)|(^|_)born|f[oø]dsel|f[oö]delse|syntym", re.I),
}
NATIONAL_IDS = ("national_id_no", "national_id_se", "national_id_dk", "national_id_fi")
_BARE_NAME = re.compile(r"^(navn|namn|nimi|name)$", re.I)
_PEOPLE_TABLE = re.compile(
    r"people|person|user|customer|contact|member|employee|candidate|subscriber|patient|"
    r"student|client|guest|passenger|applicant|kund|kunde|asiakas",
    re.I,
)


@dataclass(frozen=True)
class Finding:
    table: str
    column: str
    classes: tuple[str, ...]
    by: tuple[str, ...]
    """How it was found: name, content, free_text, reference."""
    sampled: int
    share: float
    """Share of sampled values of the content class (0 when found by name only)."""
    covered_by: tuple[str, ...] = ()
    """Rule ids (or `allow-list: REASON`) that cover the column; empty: not covered."""

    @property
    def covered(self) -> bool:
        return bool(self.covered_by)


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    columns_scanned: int = 0
    tables_scanned: int = 0

    @property
    def uncovered(self) -> list[Finding]:
        return [f for f in self.findings if not f.covered]

    def to_dict(self) -> dict:
        return {
            "tables_scanned": self.tables_scanned,
            "columns_scanned": self.columns_scanned,
            "personal_columns": len(self.findings),
            "uncovered": len(self.uncovered),
            "columns": [
                {
                    "table": f.table,
                    "column": f.column,
                    "classes": list(f.classes),
                    "found_by": list(f.by),
                    "sampled": f.sampled,
                    "share": round(f.share, 3),
                    "covered_by": list(f.covered_by),
                }
                for f in self.findings
            ],
        }

    def markdown(self) -> str:
        lines = [
            f"{len(self.findings)} personal columns in {self.tables_scanned} tables "
            f"({self.columns_scanned} columns scanned); {len(self.uncovered)} not covered by "
            "any rule",
            "",
            "| table | column | classes | found by | covered by |",
            "|---|---|---|---|---|",
        ]
        for f in self.findings:
            lines.append(
                f"| {f.table} | {f.column} | {', '.join(f.classes)} | {', '.join(f.by)} | "
                f"{', '.join(f.covered_by) or '**not covered**'} |"
            )
        return "\n".join(lines) + "\n"


# --- classification ---------------------------------------------------------------------


def classify_name(column: str, col: ColumnInfo, table: str = "") -> set[str]:
    found = {cls for cls, rx in _NAMES.items() if rx.search(column)}
    if _BARE_NAME.match(column) and _PEOPLE_TABLE.search(table.split(".")[-1]):
        found.add("person_name")  # `name` of a people table; an organisation's is not
    if found & {"ip_address", "email"}:
        found.discard("address")  # ip_address, email_address: not a postal address
    if "birth_date" in found and col.type not in ("date", "timestamp", "timestamptz", "string"):
        found.discard("birth_date")
    return found


def classify_values(values: list[str], column: str) -> tuple[set[str], set[str], float]:
    """(classes of the whole values, classes embedded in free text, share of the main class)."""
    if not values:
        return set(), set(), 0.0
    n = len(values)
    # national ids of several countries share a column (a Nordic customer table): judged
    # together, before phones (a hyphenated id has a phone's shape)
    ids = [{c for c in NATIONAL_IDS if identifiers.RECOGNISERS[c](v)} for v in values]
    id_share = sum(1 for found in ids if found) / n
    if id_share >= CONTENT_SHARE:
        return {"national_id", *set().union(*ids)}, set(), id_share
    best, share = None, 0.0
    for cls, recognise in identifiers.RECOGNISERS.items():
        if cls in NATIONAL_IDS:
            continue
        hits = sum(1 for v in values if recognise(v))
        if hits / n > share:
            best, share = cls, hits / n
    if best and share >= CONTENT_SHARE:
        return {best}, set(), share
    if _NAMES["phone"].search(column):
        # a column named like a phone: national numbers are often bare digits (40748337)
        loose = sum(1 for v in values if 8 <= len(re.sub(r"\D", "", v)) <= 15) / n
        if loose >= CONTENT_SHARE:
            return {"phone"}, set(), loose
    texts = [v for v in values if len(v) > 20 or " " in v]
    if texts:
        embedded = [identifiers.embedded(v) for v in texts]
        hit = sum(1 for e in embedded if e)
        if hit / n >= FREE_TEXT_SHARE:
            return set(), set().union(*embedded), hit / n
    return set(), set(), share if best else 0.0


def _sample(session: Session, info: TableInfo, column: str, limit: int) -> list[str]:
    t = sa_table(info)
    c = t.c[column]
    rows = session.fetchall(sa.select(sa.cast(c, sa.String)).where(c.is_not(None)).limit(limit))
    return [str(r[0]) for r in rows if r[0] is not None]


def _scannable(col: ColumnInfo) -> bool:
    return col.type in ("string", "other", "integer", "decimal")


def scan_store(
    store: Store,
    policies: PolicySet,
    allow: dict[tuple[str, str], str] | None = None,
    sample: int = DEFAULT_SAMPLE,
    schemas: set[str] | None = None,
) -> ScanResult:
    """Classify every column of every table (outside the control schema)."""
    from retention_jobs.resolve import subject_identities

    allow = allow or {}
    result = ScanResult()
    with store.connect(read_only=True) as session:
        catalog = store.catalog(session)
        identities = subject_identities(policies, catalog)
        covered = coverage(policies, catalog)
        for info in catalog.tables.values():
            if info.schema == CONTROL_SCHEMA or (schemas and info.schema not in schemas):
                continue
            result.tables_scanned += 1
            for name, col in info.columns.items():
                result.columns_scanned += 1
                by: list[str] = []
                classes = classify_name(name, col, info.name)
                if classes:
                    by.append("name")
                sampled, share = 0, 0.0
                if _scannable(col) and not (col.type == "integer" and not classes):
                    values = _sample(session, info, name, sample)
                    sampled = len(values)
                    whole, inside, share = classify_values(values, name)
                    if whole:
                        classes |= whole
                        by.append("content")
                    if inside:
                        classes |= {f"free_text:{c}" for c in sorted(inside)}
                        by.append("free_text")
                kinds = _reference_kinds(catalog, identities, info, name)
                if kinds:
                    classes |= {f"subject:{k}" for k in kinds}
                    by.append("reference")
                if not classes:
                    continue
                cover = covered.get((info.name, name), [])
                if (info.name, name) in allow:
                    cover = [*cover, f"allow-list: {allow[(info.name, name)]}"]
                result.findings.append(
                    Finding(
                        info.name,
                        name,
                        tuple(sorted(classes)),
                        tuple(by),
                        sampled,
                        share,
                        tuple(cover),
                    )
                )
    return result


def _reference_kinds(
    catalog: Catalog, identities: dict[tuple[str, str], set[str]], info: TableInfo, column: str
) -> set[str]:
    kinds = set(identities.get((info.name, column), ()))
    for fk in info.foreign_keys:
        if column in fk.columns:
            ref = fk.ref_columns[fk.columns.index(column)]
            kinds |= identities.get((fk.ref_table, ref), set())
    return kinds


# --- coverage ---------------------------------------------------------------------------


def coverage(policies: PolicySet, catalog: Catalog) -> dict[tuple[str, str], list[str]]:
    """(table, column) -> ids of the rules that erase it: a delete (rule or cascade) covers
    every column of its table, an anonymise the columns it lists and the rule's key."""
    out: dict[tuple[str, str], list[str]] = {}

    def cover(table: str, columns: list[str], rule_id: str) -> None:
        for c in columns:
            out.setdefault((table, c), [])
            if rule_id not in out[(table, c)]:
                out[(table, c)].append(rule_id)

    def cascades(cs: list[Cascade], rule_id: str) -> None:
        for c in cs:
            info = catalog.tables.get(c.table)
            if info is None:
                continue
            if c.action == "delete":
                cover(c.table, list(info.columns), rule_id)
                cascades(c.cascade, rule_id)
            elif c.action == "anonymise":
                cover(c.table, list(c.columns), rule_id)
            elif c.action == "unlink":
                cover(c.table, [c.on], rule_id)

    for f in policies.files:
        for r in f.policy.rules:
            rule_id = f"{f.policy.purpose}/{r.name}"
            info = catalog.tables.get(r.table)
            if info is None:
                continue
            if r.action == "delete":
                cover(r.table, list(info.columns), rule_id)
            elif r.action == "anonymise":
                # the key stays by design: with the listed columns anonymised it names no one
                cover(r.table, [*r.columns, *r.keys], rule_id)
            cascades(r.cascade, rule_id)
    return out


def load_allow_list(path: Path) -> dict[tuple[str, str], str]:
    """`coverage.yaml`: a list of {column: schema.table.column, reason, reviewer}. Every entry
    needs all three; problems are reported together with their line."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if len(text) < 1_000_000 else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise PolicyError(
            [Problem(str(path), line, 1, "", "not valid YAML", "check indentation")]
        ) from None
    if data is None:
        return {}
    entries = data.get("keep") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise PolicyError(
            [
                Problem(
                    str(path),
                    1,
                    1,
                    "keep",
                    "the file holds `keep:` with a list of entries",
                    "keep: [{column: schema.table.column, reason: ..., reviewer: ...}]",
                )
            ]
        )
    out: dict[tuple[str, str], str] = {}
    problems = []
    for i, entry in enumerate(entries):
        ok = (
            isinstance(entry, dict)
            and set(entry) == {"column", "reason", "reviewer"}
            and all(isinstance(v, str) and v.strip() for v in entry.values())
            and re.fullmatch(r"\w+\.\w+\.\w+", entry["column"])
        )
        if not ok:
            problems.append(
                Problem(
                    str(path),
                    1,
                    1,
                    f"keep[{i}]",
                    "an entry is {column: schema.table.column, reason: TEXT, reviewer: NAME}",
                    "say why the column is kept and who agreed",
                )
            )
            continue
        schema, table, column = entry["column"].split(".")
        out[(f"{schema}.{table}", column)] = entry["reason"]
    if problems:
        raise PolicyError(problems)
    return out
