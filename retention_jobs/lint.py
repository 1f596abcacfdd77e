"""Lint policies: problems that validation does not catch because each file is valid on its own.

Every problem has a stable code (docs/review.md lists them) and is located like a validation
error, `file:line:col: field: CODE message; hint`:

- RJ101 placeholder owner or title (todo, tbd, unknown, "-", ...).
- RJ102 a delete or anonymise rule whose period ends before a retain rule's on the same
  table and clock (the engine still protects the retained rows, but the policy says otherwise).
- RJ103 two rules on one table that contradict each other.
- RJ104 an anonymise rule whose rows a delete rule of another policy removes first.
- RJ105 a consent purpose without a rule for withdrawn consent.
- RJ106 a table in the store with personal-looking columns that no policy covers
  (`--store`; judged by column names and by a sample of at most 200 values, never printed).
- RJ107 a rule whose subject the policy does not name: `subject: {none: REASON}`, or (with
  `--store`) a subject inferred from foreign keys, whose holds the rule honours. A notice,
  not a problem (lint still exits 0): a reviewer should see whose rows the engine thinks
  they are.

Nothing here changes a store: the store check reads the catalog and a LIMIT 200 sample on a
read-only connection.
"""

import re
from collections.abc import Iterator
from datetime import date, timedelta
from functools import lru_cache
from itertools import combinations
from typing import Any

import sqlalchemy as sa

from retention_jobs.errors import Problem
from retention_jobs.load import PolicyFile, PolicySet
from retention_jobs.periods import Period, Rounding, expires_on
from retention_jobs.policy import Condition, RelatedClock, RelatedFilter, Rule
from retention_jobs.store.base import Catalog, Session, Store, TableInfo, sa_table

CODES: dict[str, str] = {
    "RJ101": "placeholder owner or title",
    "RJ102": "keep_for ends before a retain rule's period on the same table",
    "RJ103": "contradicting rules on one table",
    "RJ104": "anonymised columns that another policy deletes first",
    "RJ105": "consent purpose without a rule for withdrawn consent",
    "RJ106": "personal-looking table that no policy covers",
    "RJ107": "rule without a declared subject (declared none, or inferred from foreign keys)",
}

NOTICES = frozenset({"RJ107"})
"""Codes shown for review that are not problems: they do not fail `lint` (exit 0)."""


def is_notice(p: Problem) -> bool:
    return p.message.split(" ", 1)[0] in NOTICES


SAMPLE_ROWS = 200
"""Values sampled per table by the store check (never printed)."""


# --- helpers ---------------------------------------------------------------------------------


def _problem(f: PolicyFile, code: str, loc: tuple, message: str, hint: str = "") -> Problem:
    return f.problem(loc, f"{code} {message}", hint)


def _rules(policies: PolicySet) -> Iterator[tuple[PolicyFile, int, Rule]]:
    for f in policies.files:
        for i, r in enumerate(f.policy.rules):
            yield f, i, r


def _rid(f: PolicyFile, r: Rule) -> str:
    return f"{f.policy.purpose}/{r.name}"


def _as_long(r: Rule) -> str:
    return f"keep_for: {r.keep_for}" + (
        f" with round_clock_to: {r.round_clock_to}" if r.round_clock_to else ""
    )


def period_text(r: Rule) -> str:
    """keep_for with the rounding that shifts its start: `P5Y from the end of the year`."""
    if r.round_clock_to == "year_end":
        return f"{r.keep_for} from the end of the year"
    if r.round_clock_to == "month_end":
        return f"{r.keep_for} from the end of the month"
    return r.keep_for


# Reference clock dates for comparing periods: two whole years, one of them a leap year, so
# that month ends, leap days and year-end rounding all occur.
_REFERENCE_DAYS = [date(2023, 1, 1) + timedelta(days=n) for n in range(731)]


def _expiries(r: Rule) -> tuple[date, ...]:
    return _expiry_table(r.keep_for, r.round_clock_to)


@lru_cache(maxsize=256)
def _expiry_table(keep_for: str, rounding: Rounding | None) -> tuple[date, ...]:
    period = Period.parse(keep_for)
    return tuple(expires_on(d, period, rounding) for d in _REFERENCE_DAYS)


def ends_before(a: Rule, b: Rule) -> bool:
    """For some clock date, `a`'s period runs out before `b`'s (same clock assumed)."""
    return any(x < y for x, y in zip(_expiries(a), _expiries(b), strict=True))


def never_after(a: Rule, b: Rule) -> bool:
    """For every clock date, `a`'s period runs out on or before `b`'s."""
    return all(x <= y for x, y in zip(_expiries(a), _expiries(b), strict=True))


def same_expiry(a: Rule, b: Rule) -> bool:
    return _expiries(a) == _expiries(b)


def same_clock(a: Rule, b: Rule) -> bool:
    """The same clock column (or the same related clock); rounding may differ."""
    return a.clock == b.clock


def _canon(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(sorted((_canon(v) for v in value), key=repr))
    return value


def _cond_key(c: Condition) -> tuple:
    return (c.column, c.op, _canon(c.value))


def _link_key(rel: RelatedFilter) -> tuple:
    """A related filter without its quantifier: the link, its conditions and further hops."""
    return (
        rel.table,
        rel.on,
        rel.parent_column,
        frozenset(_cond_key(c) for c in rel.conditions),
        frozenset((n.quantifier, _link_key(n)) for n in rel.related),
    )


def _filters(r: Rule) -> tuple[frozenset, frozenset]:
    where = frozenset(_cond_key(c) for c in r.where)
    related = frozenset((rel.quantifier, _link_key(rel)) for rel in r.related)
    return where, related


def same_filters(a: Rule, b: Rule) -> bool:
    return _filters(a) == _filters(b)


_ALL = object()


def _allowed(conds: list[Condition], column: str) -> tuple[Any, frozenset]:
    """(values the column may take: a frozenset or _ALL; values it must not take) for the
    equality-like conditions on one column. None stands for NULL."""
    allowed: Any = _ALL
    excluded: set = set()
    for c in conds:
        if c.column != column:
            continue
        vals: Any = _ALL
        if c.op == "eq":
            vals = frozenset([_canon(c.value)])
        elif c.op == "in" and isinstance(c.value, list):
            vals = frozenset(_canon(v) for v in c.value)
        elif c.op == "is_null":
            if c.value:
                vals = frozenset([None])
            else:
                excluded.add(None)
        elif c.op == "ne":
            excluded.add(_canon(c.value))
        elif c.op == "not_in" and isinstance(c.value, list):
            excluded.update(_canon(v) for v in c.value)
        elif c.op in ("lt", "le", "gt", "ge"):
            excluded.add(None)  # a comparison never matches NULL
        if vals is not _ALL:
            allowed = vals if allowed is _ALL else allowed & vals
    return allowed, frozenset(excluded)


def _where_disjoint(a: list[Condition], b: list[Condition]) -> bool:
    for column in {c.column for c in a} & {c.column for c in b}:
        alw_a, exc_a = _allowed(a, column)
        alw_b, exc_b = _allowed(b, column)
        if alw_a is not _ALL and not (alw_a - exc_a):
            return True  # a matches nothing at all
        if alw_b is not _ALL and not (alw_b - exc_b):
            return True
        if alw_a is not _ALL and alw_b is not _ALL and not ((alw_a - exc_a) & (alw_b - exc_b)):
            return True
        if alw_a is not _ALL and alw_b is _ALL and alw_a <= exc_b:
            return True
        if alw_b is not _ALL and alw_a is _ALL and alw_b <= exc_a:
            return True
    return False


def _related_disjoint(a: list[RelatedFilter], b: list[RelatedFilter]) -> bool:
    for x in a:
        for y in b:
            if _link_key(x) == _link_key(y) and {x.quantifier, y.quantifier} == {"any", "none"}:
                return True
    return False


def disjoint(a: Rule, b: Rule) -> bool:
    """The two rules' filters provably match no common row (checked on equality-like
    conditions of shared columns and opposite related filters; otherwise they may overlap)."""
    return _where_disjoint(a.where, b.where) or _related_disjoint(a.related, b.related)


# --- RJ101 placeholder owner / title ---------------------------------------------------------

_PLACEHOLDER = re.compile(
    r"^(?:todo|tbd|tbc|tba|fixme|xxx+|unknown|unassigned|undecided|none|null|nil|n/?a|nobody|no[- ]?one|"
    r"someone|somebody|owner|team|the team|changeme|change[- ]me|placeholder|dummy|[-?._*~#]+)$"
)
_PLACEHOLDER_WORD = re.compile(r"\b(?:todo|tbd|fixme|xxx|placeholder)\b")


def is_placeholder(text: str) -> bool:
    t = " ".join(text.lower().split())
    return not t or bool(_PLACEHOLDER.match(t)) or bool(_PLACEHOLDER_WORD.search(t))


def check_placeholders(policies: PolicySet) -> list[Problem]:
    out = []
    for f in policies.files:
        p = f.policy
        if is_placeholder(p.owner):
            out.append(
                _problem(
                    f,
                    "RJ101",
                    ("owner",),
                    f"owner {p.owner.strip()!r} is a placeholder: nobody answers for this purpose",
                    "name the team that answers for it, e.g. team-billing",
                )
            )
        if is_placeholder(p.title):
            out.append(
                _problem(
                    f,
                    "RJ101",
                    ("title",),
                    f"title {p.title.strip()!r} is a placeholder",
                    "say in one line what this processing is",
                )
            )
    return out


# --- RJ102 / RJ103 / RJ104: rules on one table -----------------------------------------------


def check_rule_pairs(policies: PolicySet) -> list[Problem]:
    out: list[Problem] = []
    rules = list(_rules(policies))
    by_table: dict[str, list[tuple[PolicyFile, int, Rule]]] = {}
    for item in rules:
        by_table.setdefault(item[2].table, []).append(item)
    for group in by_table.values():
        for x, y in combinations(group, 2):
            out.extend(_pair(x, y))
            out.extend(_pair(y, x))
    return out


def _pair(x: tuple[PolicyFile, int, Rule], y: tuple[PolicyFile, int, Rule]) -> list[Problem]:
    """Problems of rule x with respect to rule y (each ordered pair once)."""
    fx, ix, rx = x
    fy, iy, ry = y
    if not same_clock(rx, ry) or disjoint(rx, ry):
        return []
    out: list[Problem] = []
    yid = _rid(fy, ry)
    base = ("rules", ix)
    # x acts, y retains
    if rx.action in ("delete", "anonymise") and ry.action == "retain" and ends_before(rx, ry):
        if same_filters(rx, ry):
            out.append(
                _problem(
                    fx,
                    "RJ103",
                    (*base, "action"),
                    f"{rx.action} contradicts the retain rule {yid}: same table, clock and filters, and "
                    f"keep_for {period_text(rx)} ends before its {period_text(ry)}, so this rule never acts when "
                    "its keep_for says",
                    f"make it last at least as long ({_as_long(ry)}), or remove one of the two rules",
                )
            )
        else:
            out.append(
                _problem(
                    fx,
                    "RJ102",
                    (*base, "keep_for"),
                    f"keep_for {period_text(rx)} ends before the retain rule {yid} ({period_text(ry)}, same clock) "
                    f"on {rx.table}; rows matching both are kept until the retain period ends",
                    f"make it last at least as long ({_as_long(ry)}), or narrow `where` so the rules do not overlap",
                )
            )
    # x anonymises, y deletes
    if rx.action == "anonymise" and ry.action == "delete" and never_after(ry, rx):
        cols = ", ".join(rx.columns)
        if fx.policy.purpose == fy.policy.purpose and same_expiry(rx, ry):
            out.append(
                _problem(
                    fx,
                    "RJ103",
                    (*base, "action"),
                    f"anonymise contradicts {yid}: both act on the same clock after {period_text(rx)}, and deletion "
                    "wins, so these rows are never anonymised",
                    "drop the anonymise rule, or give it a shorter keep_for than the delete rule",
                )
            )
        else:
            out.append(
                _problem(
                    fx,
                    "RJ104",
                    (*base, "columns"),
                    f"anonymises {cols}, but {yid} deletes the rows "
                    f"{'at the same time' if same_expiry(rx, ry) else 'earlier'} ({period_text(ry)} vs "
                    f"{period_text(rx)}, same clock), so they are never anonymised",
                    "drop the anonymise rule, or make it shorter than the delete rule",
                )
            )
    # two anonymise rules writing one column differently at the same time
    if (
        rx.action == "anonymise"
        and ry.action == "anonymise"
        and same_expiry(rx, ry)
        and (fx.path, ix) > (fy.path, iy)
    ):
        for col, s in rx.columns.items():
            other = ry.columns.get(col)
            if other is not None and other != s:
                out.append(
                    _problem(
                        fx,
                        "RJ103",
                        (*base, "columns", col),
                        f"{col} is anonymised differently by {yid} on the same clock and period; which "
                        "strategy a row gets depends on the order of the run",
                        "use one strategy for the column, or one rule",
                    )
                )
    return out


# --- RJ105 consent without withdrawal --------------------------------------------------------

WITHDRAWAL = re.compile(r"withdr|unsubscri|opt_?out|opted|optout|opt_?in|revok|revoc|consent", re.I)


def _mentions_withdrawal(r: Rule) -> bool:
    names: list[str] = []
    if isinstance(r.clock, RelatedClock):
        names += [r.clock.table, r.clock.column]
    else:
        names.append(r.clock)

    def conds(cs: list[Condition]) -> None:
        for c in cs:
            names.append(c.column)
            values = c.value if isinstance(c.value, list) else [c.value]
            names.extend(v for v in values if isinstance(v, str))

    def related(filters: list[RelatedFilter]) -> None:
        for rel in filters:
            names.append(rel.table)
            conds(rel.conditions)
            related(rel.related)

    conds(r.where)
    related(r.related)
    return any(WITHDRAWAL.search(n) for n in names)


def check_consent(policies: PolicySet) -> list[Problem]:
    out = []
    for f in policies.files:
        p = f.policy
        if p.legal_basis != "consent":
            continue
        if not any(
            r.action in ("delete", "anonymise") and _mentions_withdrawal(r) for r in p.rules
        ):
            out.append(
                _problem(
                    f,
                    "RJ105",
                    ("legal_basis",),
                    "the purpose rests on consent, but no delete or anonymise rule reacts to consent being "
                    "withdrawn (no clock, where or related filter names a withdrawal, unsubscribe or opt-out column)",
                    "add a rule whose clock is the withdrawal time (e.g. consent_withdrawn_at) with keep_for P0D",
                )
            )
    return out


# --- RJ106 uncovered personal data (store) ---------------------------------------------------

_PERSONAL_TOKEN = re.compile(
    r"(?:^|_)(?:e_?mail|email_?address|phone|phone_?(?:no|number|nr)|telephone|mobile|msisdn|ssn|"
    r"national_?id|personal_?id|personnummer|person_?nr|fodselsnummer|foedselsnummer|fnr|cpr|cpr_?nr|"
    r"hetu|iban|ip|ip_?addr(?:ess)?|imei|imsi|passport(?:_?no)?)(?:_|$)"
)
_NAME = re.compile(
    r"^(?:(?:full|first|last|given|family|middle|maiden|display|sur|customer|contact|person|"
    r"employee|candidate|user|member|patient|requester|caller|subscriber|client)_?name|surname)$"
)
_PEOPLE_TABLE = re.compile(
    r"person|people|user|customer|contact|employee|member|patient|candidate|subscriber|"
    r"client|student|applicant|guest|visitor|lead"
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_PHONE = re.compile(r"^(?:(?:\+|00)\d{8,15}|0\d{6,10}|[2-9]\d{7})$")


def _ddmmyy_ok(dd: int, mm: int) -> bool:
    return (1 <= dd <= 31 or 41 <= dd <= 71) and (1 <= mm <= 12 or 41 <= mm <= 52)


def looks_like_national_id(v: str) -> bool:
    """Norwegian fødselsnummer, Swedish personnummer, Danish CPR or Finnish henkilötunnus."""
    s = v.strip().replace(" ", "")
    if re.fullmatch(r"\d{11}", s):  # NO: DDMMYY + 5
        return _ddmmyy_ok(int(s[:2]), int(s[2:4]))
    if m := re.fullmatch(r"(?:19|20)?(\d{2})(\d{2})(\d{2})[-+]?\d{4}", s):  # SE: (YY)YYMMDD-NNNN
        _, mm, dd = (int(g) for g in m.groups())
        if 1 <= mm <= 12 and (1 <= dd <= 31 or 61 <= dd <= 91):
            return True
    if m := re.fullmatch(r"(\d{2})(\d{2})\d{2}-?\d{4}", s):  # DK: DDMMYY-NNNN
        return 1 <= int(m.group(1)) <= 31 and 1 <= int(m.group(2)) <= 12
    if m := re.fullmatch(r"(\d{2})(\d{2})\d{2}[-+A-FU-Y]\d{3}[0-9A-Y]", s):  # FI
        return 1 <= int(m.group(1)) <= 31 and 1 <= int(m.group(2)) <= 12
    return False


def value_kind(v: str) -> str | None:
    s = v.strip()
    if _EMAIL.match(s):
        return "e-mail addresses"
    if looks_like_national_id(s):
        return "national identity numbers"
    if _PHONE.match(re.sub(r"[\s\-().]", "", s)):
        return "phone numbers"
    return None


def personal_by_name(table: TableInfo, column: str) -> bool:
    c = column.lower()
    if c.endswith("_id") and not re.search(r"(?:national|personal)_?id$", c):
        return False  # a surrogate key (msisdn_id), not the value itself
    if _PERSONAL_TOKEN.search(c) or _NAME.match(c):
        return True
    return c == "name" and bool(_PEOPLE_TABLE.search(table.short.lower()))


def covered_tables(policies: PolicySet) -> set[str]:
    out: set[str] = set()

    def walk(cascades) -> None:
        for c in cascades:
            out.add(c.table)
            walk(c.cascade)

    for _, _, r in _rules(policies):
        out.add(r.table)
        walk(r.cascade)
    return out


def sample_kinds(
    session: Session, info: TableInfo, columns: list[str]
) -> dict[str, tuple[str, int, int]]:
    """column -> (kind, matching, sampled non-null) for text columns whose sampled values mostly
    look like e-mail addresses, phone numbers or national ids. The values stay in this function."""
    if not columns:
        return {}
    t = sa_table(info)
    data = session.arrow(sa.select(*(t.c[c] for c in columns)).limit(SAMPLE_ROWS))
    out = {}
    for c in columns:
        values = [v for v in data.column(c).to_pylist() if isinstance(v, str) and v.strip()]
        if not values:
            continue
        kinds: dict[str, int] = {}
        for v in values:
            k = value_kind(v)
            if k:
                kinds[k] = kinds.get(k, 0) + 1
        if kinds:
            kind, n = max(kinds.items(), key=lambda kv: kv[1])
            if n * 2 >= len(values):
                out[c] = (kind, n, len(values))
    return out


def check_store(store: Store, policies: PolicySet, location: str) -> list[Problem]:
    """RJ106: tables with personal-looking columns that no rule or cascade names."""
    covered = covered_tables(policies)
    out: list[Problem] = []
    with store.connect(read_only=True) as session:
        catalog: Catalog = store.catalog(session)
        for name in sorted(catalog.tables):
            if name in covered:
                continue
            info = catalog.tables[name]
            by_name = [c for c in info.columns if personal_by_name(info, c)]
            texts = [
                c.name
                for c in info.columns.values()
                if c.type == "string" and c.name not in by_name
            ]
            by_value = sample_kinds(session, info, texts)
            if not by_name and not by_value:
                continue
            found = [f"{c} (name)" for c in by_name]
            found += [
                f"{c} ({n} of {m} sampled values look like {kind})"
                for c, (kind, n, m) in by_value.items()
            ]
            out.append(
                Problem(
                    location,
                    1,
                    1,
                    name,
                    f"RJ106 no policy covers {name}, which has personal-looking columns: "
                    + ", ".join(found),
                    "add a rule (or a cascade) for it to the policy of the purpose it serves",
                )
            )
    return out


# --- RJ107 rules without a declared subject ----------------------------------------------------


def check_no_subject(policies: PolicySet) -> list[Problem]:
    """RJ107: rules that say `subject: {none: REASON}` (the reason is shown)."""
    return [
        _problem(
            f,
            "RJ107",
            ("rules", i, "subject"),
            f"{_rid(f, r)} declares no subject: {r.no_subject_reason}",
            "holds on subjects still reach its rows over foreign keys; check that the rows are "
            "about no person",
        )
        for f, i, r in _rules(policies)
        if r.no_subject_reason is not None
    ]


def lint_store_subjects(store: Store, policies: PolicySet) -> list[Problem]:
    """RJ107 with a store: rules without `subject:` whose subjects are inferred from the
    store's foreign keys (and declared related links), with the paths found."""
    from retention_jobs.resolve import declared_links, infer_subjects, subject_identities

    with store.connect(read_only=True) as session:
        catalog: Catalog = store.catalog(session)
    identities = subject_identities(policies, catalog)
    out: list[Problem] = []
    for f, i, r in _rules(policies):
        info = catalog.tables.get(r.table)
        if r.subject is not None or r.action == "retain" or info is None:
            continue
        paths = infer_subjects(catalog, identities, info, declared_links(r))
        if paths:
            out.append(
                _problem(
                    f,
                    "RJ107",
                    ("rules", i, "name"),
                    f"{_rid(f, r)} names no subject; its rows honour the holds of: "
                    + "; ".join(p.describe(info.name) for p in paths),
                    "name the subject (subject: {kind: KIND, column: COLUMN}) if one of these is "
                    "whose rows they are",
                )
            )
    return out


# --- all -------------------------------------------------------------------------------------


def lint_policies(policies: PolicySet) -> list[Problem]:
    problems = [
        *check_placeholders(policies),
        *check_rule_pairs(policies),
        *check_consent(policies),
        *check_no_subject(policies),
    ]
    return sorted(problems, key=lambda p: (p.file, p.line, p.col, p.message))


def lint(
    policies: PolicySet, store: Store | None = None, location: str = "policies"
) -> list[Problem]:
    """Every lint problem; with a store, RJ107 for inferred subjects and RJ106 too (reported
    at `location`, the policy directory)."""
    problems = lint_policies(policies)
    if store is not None:
        problems = sorted(
            problems + lint_store_subjects(store, policies),
            key=lambda p: (p.file, p.line, p.col, p.message),
        )
        problems += check_store(store, policies, location)
    return problems
