"""Property test: the engine's plans and runs against the brute-force oracle in tests/oracle.py.

Every example builds a small world in a fresh DuckDB file (w.parent and w.child, random NULLs;
the parent's key is named parent_id like the child's reference, so that related clocks and
filters can join `on: parent_id`), renders one or two random rules on w.parent (and maybe a
retain policy on w.parent or w.child) to YAML, places and releases holds, then checks:
- `build_plan` counts (total/expired/held/retained/superseded/already_done/to_act, cascade rows)
  equal the oracle's;
- a run changes exactly what the oracle's simulation changes (deleted parents and their children,
  unlinked children, anonymised columns, markers), and nothing else: held and retained rows are
  byte-identical;
- a second plan and run agree with the oracle again, and change nothing when no rule's filter
  reads a column that the first run anonymised.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from oracle import (
    CHILD,
    CHILD_KEY,
    PARENT,
    PARENT_KEY,
    Hashed,
    HoldSpec,
    Oracle,
    RuleSpec,
    World,
    add_ymd,
    key_secret,
)

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.load import PolicySet, load_text
from retention_jobs.plan import build_plan
from retention_jobs.store.duckdb_store import DuckDBStore


class _NoAliases(yaml.SafeDumper):
    """Policy files refuse anchors and aliases: a value shared by two rules is written twice."""

    def ignore_aliases(self, data):
        return True


KEY_TEXT = "oracle-test-key-0123456789"
KEY = PseudonymKey.from_text(KEY_TEXT)
SECRET = key_secret(KEY_TEXT)

PARENT_COLUMNS = ("parent_id", "subject", "status", "n", "note", "d", "ts", "tstz")
CHILD_COLUMNS = ("cid", "parent_id", "c_date", "kind")
DDL = """
CREATE SCHEMA w;
CREATE TABLE w.parent(parent_id BIGINT PRIMARY KEY, subject VARCHAR, status VARCHAR, n INTEGER,
                      note VARCHAR, d DATE, ts TIMESTAMP, tstz TIMESTAMPTZ);
CREATE TABLE w.child(cid BIGINT PRIMARY KEY, parent_id BIGINT REFERENCES w.parent(parent_id),
                     c_date DATE, kind VARCHAR);
"""
STRATEGY_YAML: dict[str, Any] = {
    "redact": "redact",
    "hash": "hash",
    "mask1": {"mask": {"keep_last": 1}},
}


# --- rendering ------------------------------------------------------------------------------


def period_text(keep: tuple[int, int, int]) -> str:
    y, m, d = keep
    days = f"{d // 7}W" if d and d % 7 == 0 else f"{d}D" if d else ""
    text = (f"{y}Y" if y else "") + (f"{m}M" if m else "") + days
    return "P" + (text or "0D")


def where_yaml(conds: tuple) -> dict:
    by_column: dict[str, list] = {}
    for column, op, value in conds:
        by_column.setdefault(column, []).append((op, value))
    out: dict[str, Any] = {}
    for column, ops in by_column.items():
        if len(ops) == 1 and ops[0][0] == "eq":
            out[column] = ops[0][1]  # the short form, `status: closed` (or `status: null`)
        elif len(ops) == 1 and ops[0][0] == "in":
            out[column] = list(ops[0][1])
        else:
            out[column] = {op: list(v) if isinstance(v, tuple) else v for op, v in ops}
    return out


def rule_yaml(r: RuleSpec) -> dict:
    doc: dict[str, Any] = {"name": r.name, "table": r.table, "key": r.key}
    if r.subject:
        doc["subject"] = {"kind": r.subject[0], "column": r.subject[1]}
    elif r.action != "retain":
        # without it, validate refuses a rule that reaches no subject; it still honours the
        # subjects it reaches (the oracle's inferred subjects)
        doc["subject"] = {"none": "generated rule"}
    if r.clock.startswith("related:"):
        doc["clock"] = {
            "table": CHILD,
            "on": PARENT_KEY,
            "column": "c_date",
            "aggregate": r.clock.split(":")[1],
        }
    else:
        doc["clock"] = r.clock
    if r.round_to:
        doc["round_clock_to"] = r.round_to
    doc["keep_for"] = period_text(r.keep)
    if r.where:
        doc["where"] = where_yaml(r.where)
    if r.related:
        doc["related"] = [
            {"table": CHILD, "on": PARENT_KEY, q: where_yaml(conds)} for q, conds in r.related
        ]
    doc["action"] = r.action
    if r.columns:
        doc["columns"] = {c: STRATEGY_YAML[s] for c, s in r.columns}
    if r.cascade:
        link: dict[str, Any] = {"table": CHILD, "on": PARENT_KEY, "action": r.cascade}
        if r.cascade_columns:
            link["columns"] = {c: STRATEGY_YAML[s] for c, s in r.cascade_columns}
        doc["cascade"] = [link]
    return doc


def policy_set(rules: list[RuleSpec]) -> PolicySet:
    files = []
    for purpose, group in itertools.groupby(rules, key=lambda r: r.purpose):
        group = list(group)
        doc = {
            "purpose": purpose,
            "title": f"Purpose {purpose}",
            "legal_basis": "contract",
            "owner": "qa",
            "timezone": group[0].tz,
            "rules": [rule_yaml(r) for r in group],
        }
        files.append(
            load_text(
                yaml.dump(doc, Dumper=_NoAliases, sort_keys=False), f"policies/{purpose}.yaml"
            )
        )
    return PolicySet(tuple(files))


# --- the store --------------------------------------------------------------------------------

_counter = itertools.count()


def build_store(
    root: Path, parents: list[tuple], children: list[tuple], holds: list[HoldSpec]
) -> DuckDBStore:
    store = DuckDBStore(root / f"w{next(_counter)}.duckdb")
    with store.connect() as s:
        con = s.con  # the plain duckdb connection, attached to the new file
        con.execute(DDL)
        for table, rows in (("w.parent", parents), ("w.child", children)):
            if rows:  # one statement per table (executemany runs one per row)
                values = ", ".join("(" + ", ".join("?" * len(rows[0])) + ")" for _ in rows)
                con.execute(
                    f"INSERT INTO {table} VALUES {values}", [v for row in rows for v in row]
                )
        control.ensure_control_schema(store, s)
        for h in holds:
            kw: dict[str, Any] = (
                {"subject": h.target} if h.scope == "subject" else {h.scope: h.target}
            )
            hold_id = control.add_hold(
                s, scope=h.scope, case_ref="CASE-1", reason="oracle test", placed_by="test", **kw
            )
            if h.released:
                assert control.release_hold(s, hold_id, "test")
    return store


def fetch_world(store: DuckDBStore, holds: list[HoldSpec]) -> World:
    con = duckdb.connect(str(store.path), read_only=True)
    try:

        def rows(sql: str) -> list[dict]:
            cur = con.execute(sql)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        parents = {r[PARENT_KEY]: r for r in rows("SELECT * FROM w.parent ORDER BY parent_id")}
        children = {r[CHILD_KEY]: r for r in rows("SELECT * FROM w.child ORDER BY cid")}
        present = {
            r["table_name"]
            for r in rows(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'retention_control'"
            )
        }
        marked: set[tuple[str, int, str]] = set()
        for table, key in ((PARENT, PARENT_KEY), (CHILD, CHILD_KEY)):
            name = control.marker_name(table)
            if name not in present:
                continue
            for r in rows(f'SELECT * FROM retention_control."{name}"'):
                # one row per column (column_name) or per application (columns: ",a,b,")
                names = (
                    [r["column_name"]]
                    if "column_name" in r
                    else [c for c in r["columns"].split(",") if c]
                )
                marked |= {(table, r[key], c) for c in names}
    finally:
        con.close()
    return World(parents, children, list(holds), marked)


# --- comparing --------------------------------------------------------------------------------

COUNTS = ("total", "expired", "held", "retained", "superseded", "already_done", "to_act")


def plan_counts(rule_plans, rules: list[RuleSpec]) -> dict[str, dict[str, int]]:
    by_id = {r.rule_id: r for r in rules}
    out = {}
    for rp in rule_plans:
        counts = {k: getattr(rp, k) for k in COUNTS}
        if by_id[rp.rule_id].cascade:
            counts["cascade_rows"] = sum(c.rows for c in rp.cascades)
        out[rp.rule_id] = counts
    return out


def engine_plan(
    store: DuckDBStore, ps: PolicySet, as_of: date, rules: list[RuleSpec]
) -> dict[str, dict[str, int]]:
    return plan_counts(build_plan(store, ps, as_of).rules, rules)


def assert_same_world(got: World, want: World, context: str) -> None:
    hashes: dict[str, set[str]] = {}
    for k, row in want.parents.items():
        for column, v in row.items():
            if isinstance(v, Hashed) and k in got.parents:
                hashes.setdefault(v.original, set()).add(got.parents[k][column])
    assert all(len(h) == 1 for h in hashes.values()), (
        f"{context}: equal values hashed differently: {hashes}"
    )
    assert got.parents == want.parents, f"{context}: w.parent differs from the oracle"
    assert got.children == want.children, f"{context}: w.child differs from the oracle"
    assert got.marked == want.marked, f"{context}: anonymisation markers differ from the oracle"


def run_and_check(
    store: DuckDBStore, ps: PolicySet, oracle: Oracle, before: World, batch_size: int, context: str
) -> World:
    want, acted = oracle.simulate_run(before, SECRET)
    report = run_policies(
        store, ps, oracle.as_of, KEY, RunOptions(max_delete_fraction=None, batch_size=batch_size)
    )
    # the run plans first (the same Planner as build_plan): its counts must match as well
    assert plan_counts([rr.plan for rr in report.rules], oracle.rules) == oracle.plan(before), (
        f"{context}: plan"
    )
    after = fetch_world(store, before.holds)
    assert_same_world(after, want, context)
    by_id = {r.rule_id: r for r in oracle.rules}
    for rr in report.rules:
        rule = by_id[rr.plan.rule_id]
        changed = rr.deleted if rule.action == "delete" else rr.anonymised
        assert changed == acted[rule.rule_id]["rows"], (
            f"{context}: {rule.rule_id} reported {changed} rows"
        )
        if rule.cascade:
            kids = sum(c.deleted + c.unlinked + c.anonymised for c in rr.cascades)
            assert kids == acted[rule.rule_id]["cascade_rows"], (
                f"{context}: {rule.rule_id} cascade count"
            )
    # held and retained rows that no rule may act on are byte-identical
    for rule in oracle.rules:
        if rule.action == "retain":
            continue
        for k, row in before.rows(rule.table).items():
            if not oracle.expired(before, rule, row):
                continue
            if (oracle.held(before, rule, row) or oracle.retained(before, rule, row)) and not any(
                oracle.actionable(before, r, row) for r in oracle.rules if r.table == rule.table
            ):
                assert after.rows(rule.table).get(k) == row, f"{context}: protected row {k} changed"
    return after


def note_event(name: str) -> None:
    if currently_in_test_context():  # also called from the plain tests below
        event(name)


def check_scenario(
    root: Path,
    rules: list[RuleSpec],
    as_of: date,
    parents: list[tuple],
    children: list[tuple],
    holds: list[HoldSpec],
    batch_size: int,
) -> None:
    store = build_store(root, parents, children, holds)
    ps = policy_set(rules)
    oracle = Oracle(rules, as_of)
    before = fetch_world(store, holds)

    want = oracle.plan(before)
    for counts in want.values():
        for k, v in counts.items():
            if v and k != "total":
                note_event(f"first plan: {k}")
    assert engine_plan(store, ps, as_of, rules) == want, "first plan"
    after = run_and_check(store, ps, oracle, before, batch_size, "first run")

    want_plan = oracle.plan(after)  # run_and_check compares it with the second run's plan
    again = run_and_check(store, ps, oracle, after, batch_size, "second run")
    if any(p["to_act"] for p in want_plan.values()):
        note_event("second run acts")

    anonymised = {c for r in rules for c, _ in (*r.columns, *r.cascade_columns)}
    read = {
        c for r in rules for c, _, _ in (*r.where, *(x for _, conds in r.related for x in conds))
    }
    if not anonymised & read:
        # nothing the first run changed can make another row expire: a second run is a no-op
        assert all(p["to_act"] == 0 for p in want_plan.values()), (
            "the oracle itself is not idempotent"
        )
        assert again.parents == after.parents and again.children == after.children, (
            "second run changed data"
        )


# --- strategies -------------------------------------------------------------------------------

AS_OF = [
    date(2024, 2, 29),
    date(2024, 3, 1),
    date(2025, 2, 28),
    date(2025, 3, 1),
    date(2024, 12, 31),
    date(2025, 1, 1),
    date(2024, 1, 31),
    date(2025, 6, 30),
    date(2024, 10, 27),
]
TZS = ["UTC", "Europe/Oslo", "America/New_York", "Pacific/Kiritimati"]
TIMES = [
    time(0, 0),
    time(0, 30),
    time(1, 30),
    time(4, 0),
    time(10, 0),
    time(12, 0),
    time(22, 30),
    time(23, 0),
    time(23, 59, 59),
]
STATUSES = [None, "open", "closed", "gone"]
KINDS = [None, "a", "b"]


parent_condition = st.one_of(
    st.tuples(st.just("status"), st.sampled_from(["eq", "ne"]), st.sampled_from(STATUSES)),
    st.tuples(
        st.just("status"),
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(STATUSES), min_size=1, max_size=3, unique=True).map(tuple),
    ),
    st.tuples(st.just("status"), st.sampled_from(["lt", "ge"]), st.sampled_from(STATUSES[1:])),
    st.tuples(st.just("n"), st.sampled_from(["eq", "ne", "lt", "ge"]), st.integers(0, 4)),
    st.tuples(
        st.just("n"),
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from([None, 0, 1, 2, 3]), min_size=1, max_size=3, unique=True).map(
            tuple
        ),
    ),
    st.tuples(st.sampled_from(["status", "n"]), st.just("is_null"), st.booleans()),
)
child_condition = st.one_of(
    st.tuples(st.just("kind"), st.sampled_from(["eq", "ne"]), st.sampled_from(KINDS)),
    st.tuples(
        st.just("kind"),
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(KINDS), min_size=1, max_size=2, unique=True).map(tuple),
    ),
    st.tuples(st.just("kind"), st.just("is_null"), st.booleans()),
)


def dedupe(conds: list) -> tuple:
    """One condition per (column, op): YAML maps each column to its operators."""
    seen: dict[tuple[str, str], tuple] = {}
    for c in conds:
        seen.setdefault((c[0], c[1]), c)
    return tuple(seen.values())


keep_for = st.tuples(st.integers(0, 3), st.integers(0, 14), st.integers(0, 40))
rounding = st.sampled_from([None, "year_end", "month_end"])
related_filter = st.tuples(
    st.sampled_from(["all", "any", "none"]),
    st.lists(child_condition, min_size=1, max_size=2).map(dedupe),
)
ANON_COLUMNS = [
    (("status", "redact"),),
    (("note", "hash"),),
    (("status", "redact"), ("note", "mask1")),
]


@st.composite
def main_rule(draw, i: int, tz: str) -> RuleSpec:
    action = draw(st.sampled_from(["delete", "anonymise"]))
    if action == "delete":
        cascade, columns, cascade_columns = draw(st.sampled_from(["delete", "unlink"])), (), ()
    else:
        columns = draw(st.sampled_from(ANON_COLUMNS))
        cascade = draw(st.sampled_from([None, "anonymise"]))
        cascade_columns = (("kind", "redact"),) if cascade else ()
    return RuleSpec(
        purpose="pa",
        tz=tz,
        name=f"r{i}",
        table=PARENT,
        clock=draw(st.sampled_from(["d", "ts", "tstz", "related:max", "related:min"])),
        keep=draw(keep_for),
        action=action,
        round_to=draw(rounding),
        where=draw(
            st.one_of(st.just(()), st.lists(parent_condition, min_size=1, max_size=2).map(dedupe))
        ),
        related=draw(st.one_of(st.just(()), st.just(()), st.tuples(related_filter))),
        columns=columns,
        cascade=cascade,
        cascade_columns=cascade_columns,
        subject=draw(st.sampled_from([None, ("person", "subject"), ("person", "parent_id")])),
    )


@st.composite
def retain_rule(draw) -> RuleSpec:
    tz = draw(st.sampled_from(TZS))
    if draw(st.booleans()):
        return RuleSpec(
            purpose="pb",
            tz=tz,
            name="keep",
            table=CHILD,
            clock="c_date",
            keep=draw(keep_for),
            action="retain",
            round_to=draw(rounding),
            where=draw(st.lists(child_condition, max_size=1).map(dedupe)),
            # whose data a child row is: subject holds on it then reach the cascades
            subject=draw(st.sampled_from([None, ("person", "kind")])),
        )
    return RuleSpec(
        purpose="pb",
        tz=tz,
        name="keep",
        table=PARENT,
        clock=draw(st.sampled_from(["d", "ts", "tstz", "related:max"])),
        keep=draw(keep_for),
        action="retain",
        round_to=draw(rounding),
        where=draw(st.lists(parent_condition, max_size=1).map(dedupe)),
    )


holds_strategy = st.one_of(
    st.lists(
        st.one_of(
            st.builds(
                HoldSpec,
                st.just("subject"),
                st.sampled_from(
                    ["person:s1", "person:s2", "person:1", "person:2", "other:s1", "person:a"]
                ),
                st.booleans(),
            ),
            st.builds(HoldSpec, st.just("table"), st.sampled_from([PARENT, CHILD]), st.booleans()),
            st.builds(HoldSpec, st.just("purpose"), st.sampled_from(["pa", "pb"]), st.booleans()),
        ),
        min_size=1,
        max_size=3,
    ),
    st.just([]),
)


def mostly(s: st.SearchStrategy) -> st.SearchStrategy:
    """s, or None about one time in four (one_of(s, none()) gives None about half the time)."""
    return st.tuples(st.booleans(), st.booleans(), s).map(lambda t: None if t[0] and t[1] else t[2])


@st.composite
def scenarios(draw):
    as_of = draw(st.sampled_from(AS_OF))
    tz = draw(st.sampled_from(TZS))
    rules = [draw(main_rule(i, tz)) for i in range(draw(st.integers(1, 2)))]
    if draw(st.sampled_from([False, False, True])):
        rules.append(draw(retain_rule()))
    # clocks cluster around the rules' boundaries, so that both sides of each get hit
    anchors: set[date] = set()
    for r in rules:
        a = add_ymd(as_of, -r.keep[0], -r.keep[1], -r.keep[2])
        anchors |= {a, date(a.year, 1, 1) if r.round_to == "year_end" else date(a.year, a.month, 1)}
    anchors = sorted(anchors)
    offsets = st.one_of(st.integers(-2, 2), st.integers(-40, 40), st.integers(-400, 400))
    a_date = st.builds(lambda a, o: a + timedelta(days=o), st.sampled_from(anchors), offsets)
    maybe_date = mostly(a_date)
    a_time = st.builds(datetime.combine, a_date, st.sampled_from(TIMES))
    naive_ts = mostly(a_time)
    aware_ts = mostly(a_time.map(lambda t: t.replace(tzinfo=UTC)))

    n_parents = draw(st.integers(1, 12))
    parents = [
        (
            i,
            draw(st.sampled_from([None, "s1", "s2", "s3", "1"])),
            draw(st.sampled_from(STATUSES)),
            draw(st.one_of(st.none(), st.integers(0, 4))),
            draw(st.sampled_from([None, "", "x", "hello"])),
            draw(maybe_date),
            draw(naive_ts),
            draw(aware_ts),
        )
        for i in range(1, n_parents + 1)
    ]
    # zero to two children per parent, and maybe an orphan (parent_id NULL)
    owners = [p for p in range(1, n_parents + 1) for _ in range(draw(st.integers(0, 2)))]
    owners += [None] * draw(st.integers(0, 1))
    children = [
        (i, owner, draw(maybe_date), draw(st.sampled_from(KINDS)))
        for i, owner in enumerate(owners, start=1)
    ]
    holds = draw(holds_strategy)
    batch_size = draw(st.integers(3, 50))
    return rules, as_of, parents, children, holds, batch_size


# no explain phase: each example costs a DuckDB file and four engine calls (~0.5 s)
@settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_engine_matches_oracle(tmp_path_factory, scenario):
    rules, as_of, parents, children, holds, batch_size = scenario
    check_scenario(
        tmp_path_factory.mktemp("oracle"), rules, as_of, parents, children, holds, batch_size
    )


# --- hand-picked calendar and time-zone edges -----------------------------------------------

EDGES = [
    # (clock column, clock value, zone, keep_for (y, m, d), round_clock_to, as_of, expired?)
    (
        "d",
        date(2024, 1, 31),
        "UTC",
        (0, 1, 0),
        None,
        date(2024, 2, 28),
        False,
    ),  # Jan 31 + P1M = Feb 29
    ("d", date(2024, 1, 31), "UTC", (0, 1, 0), None, date(2024, 2, 29), True),
    (
        "d",
        date(2023, 1, 31),
        "UTC",
        (0, 1, 0),
        None,
        date(2023, 2, 28),
        True,
    ),  # = Feb 28 (no leap day)
    (
        "d",
        date(2024, 1, 31),
        "UTC",
        (0, 1, 1),
        None,
        date(2024, 2, 29),
        False,
    ),  # months first, then days
    ("d", date(2024, 1, 31), "UTC", (0, 1, 1), None, date(2024, 3, 1), True),
    (
        "d",
        date(2023, 3, 31),
        "UTC",
        (0, 11, 0),
        None,
        date(2024, 2, 28),
        False,
    ),  # Mar 31 + P11M = Feb 29
    ("d", date(2023, 3, 31), "UTC", (0, 11, 0), None, date(2024, 2, 29), True),
    (
        "d",
        date(2024, 2, 29),
        "UTC",
        (1, 0, 0),
        None,
        date(2025, 2, 27),
        False,
    ),  # Feb 29 + P1Y = Feb 28
    ("d", date(2024, 2, 29), "UTC", (1, 0, 0), None, date(2025, 2, 28), True),
    ("d", date(2024, 2, 28), "UTC", (1, 0, 0), None, date(2025, 2, 28), True),
    ("d", date(2024, 3, 1), "UTC", (1, 0, 0), None, date(2025, 2, 28), False),
    (
        "d",
        date(2024, 2, 29),
        "UTC",
        (4, 0, 0),
        None,
        date(2028, 2, 28),
        False,
    ),  # ... and P4Y = Feb 29
    ("d", date(2024, 2, 29), "UTC", (4, 0, 0), None, date(2028, 2, 29), True),
    # year_end / month_end: the period starts on the day after the clock's year / month ends
    (
        "d",
        date(2019, 3, 15),
        "UTC",
        (5, 0, 0),
        "year_end",
        date(2024, 12, 31),
        False,
    ),  # docs/policies.md
    ("d", date(2019, 3, 15), "UTC", (5, 0, 0), "year_end", date(2025, 1, 1), True),
    ("d", date(2023, 12, 31), "UTC", (0, 0, 0), "year_end", date(2023, 12, 31), False),
    ("d", date(2023, 12, 31), "UTC", (0, 0, 0), "year_end", date(2024, 1, 1), True),
    ("d", date(2023, 12, 31), "UTC", (0, 0, 1), "year_end", date(2024, 1, 1), False),
    ("d", date(2023, 12, 31), "UTC", (0, 0, 1), "year_end", date(2024, 1, 2), True),
    (
        "d",
        date(2024, 1, 1),
        "UTC",
        (0, 0, 0),
        "year_end",
        date(2024, 12, 31),
        False,
    ),  # starts 2025-01-01
    ("d", date(2024, 1, 1), "UTC", (0, 0, 0), "year_end", date(2025, 1, 1), True),
    ("d", date(2023, 1, 1), "UTC", (1, 0, 0), "year_end", date(2024, 12, 31), False),
    ("d", date(2023, 1, 1), "UTC", (1, 0, 0), "year_end", date(2025, 1, 1), True),
    ("d", date(2024, 1, 31), "UTC", (0, 0, 0), "month_end", date(2024, 1, 31), False),
    ("d", date(2024, 1, 31), "UTC", (0, 0, 0), "month_end", date(2024, 2, 1), True),
    (
        "d",
        date(2024, 1, 15),
        "UTC",
        (0, 1, 0),
        "month_end",
        date(2024, 2, 29),
        False,
    ),  # Feb 1 + P1M = Mar 1
    ("d", date(2024, 1, 15), "UTC", (0, 1, 0), "month_end", date(2024, 3, 1), True),
    (
        "d",
        date(2024, 2, 29),
        "UTC",
        (0, 0, 30),
        "month_end",
        date(2024, 3, 30),
        False,
    ),  # Mar 1 + P30D = Mar 31
    ("d", date(2024, 2, 29), "UTC", (0, 0, 30), "month_end", date(2024, 3, 31), True),
    (
        "d",
        date(2023, 12, 5),
        "UTC",
        (0, 2, 0),
        "month_end",
        date(2024, 2, 29),
        False,
    ),  # Jan 1 + P2M = Mar 1
    ("d", date(2023, 12, 5), "UTC", (0, 2, 0), "month_end", date(2024, 3, 1), True),
    # naive timestamps are UTC; their date is read in the policy's zone
    ("ts", datetime(2024, 6, 30, 22, 30), "UTC", (0, 0, 0), None, date(2024, 6, 30), True),
    (
        "ts",
        datetime(2024, 6, 30, 22, 30),
        "Europe/Oslo",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        False,
    ),  # 00:30 Jul 1
    (
        "ts",
        datetime(2024, 6, 30, 21, 59, 59),
        "Europe/Oslo",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        True,
    ),
    (
        "ts",
        datetime(2024, 6, 30, 22, 0),
        "Europe/Oslo",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        False,
    ),  # midnight
    (
        "ts",
        datetime(2024, 1, 15, 23, 0),
        "Europe/Oslo",
        (0, 0, 0),
        None,
        date(2024, 1, 15),
        False,
    ),  # winter: +1
    ("ts", datetime(2024, 1, 15, 22, 59), "Europe/Oslo", (0, 0, 0), None, date(2024, 1, 15), True),
    (
        "ts",
        datetime(2024, 12, 31, 23, 30),
        "Europe/Oslo",
        (0, 0, 0),
        "year_end",
        date(2025, 1, 1),
        False,
    ),  # 2025
    (
        "ts",
        datetime(2024, 12, 31, 22, 59),
        "Europe/Oslo",
        (0, 0, 0),
        "year_end",
        date(2025, 1, 1),
        True,
    ),
    (
        "ts",
        datetime(2024, 1, 31, 23, 30),
        "Europe/Oslo",
        (0, 1, 0),
        None,
        date(2024, 2, 29),
        False,
    ),  # Feb 1 + P1M
    ("ts", datetime(2024, 1, 31, 23, 30), "UTC", (0, 1, 0), None, date(2024, 2, 29), True),
    (
        "ts",
        datetime(2024, 7, 1, 3, 0),
        "America/New_York",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        True,
    ),  # 23:00
    (
        "ts",
        datetime(2024, 7, 1, 4, 0),
        "America/New_York",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        False,
    ),
    (
        "tstz",
        datetime(2024, 6, 30, 22, 0, tzinfo=UTC),
        "Europe/Oslo",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        False,
    ),
    (
        "tstz",
        datetime(2024, 6, 30, 21, 59, 59, tzinfo=UTC),
        "Europe/Oslo",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        True,
    ),
    (
        "tstz",
        datetime(2024, 1, 31, 23, 30, tzinfo=UTC),
        "Europe/Oslo",
        (0, 1, 0),
        None,
        date(2024, 2, 29),
        False,
    ),
    (
        "tstz",
        datetime(2024, 6, 30, 10, 0, tzinfo=UTC),
        "Pacific/Kiritimati",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        False,
    ),
    (
        "tstz",
        datetime(2024, 6, 30, 9, 59, tzinfo=UTC),
        "Pacific/Kiritimati",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        True,
    ),
    (
        "tstz",
        datetime(2024, 7, 1, 3, 59, tzinfo=UTC),
        "America/New_York",
        (0, 0, 0),
        None,
        date(2024, 6, 30),
        True,
    ),
    (
        "tstz",
        datetime(2023, 12, 31, 10, 0, tzinfo=UTC),
        "UTC",
        (0, 0, 0),
        "year_end",
        date(2024, 1, 1),
        True,
    ),
    (
        "tstz",
        datetime(2023, 12, 31, 10, 0, tzinfo=UTC),
        "Pacific/Kiritimati",
        (0, 0, 0),
        "year_end",
        date(2024, 1, 1),
        False,
    ),  # 1 January 2024 there: the period starts on 1 January 2025
]


def test_calendar_and_zone_edges(tmp_path_factory):
    """Each edge gets its own row (n = its index) and its own policy (zone), whose rule selects
    that row only; one plan and one run per as-of date. A NULL clock (row 0) never starts."""
    rules, parents = [], [(0, None, "closed", 0, "x", None, None, None)]
    for i, (column, value, tz, keep, round_to, _as_of, _expired) in enumerate(EDGES, start=1):
        clocks = {"d": None, "ts": None, "tstz": None, column: value}
        parents.append((i, None, "closed", i, "x", clocks["d"], clocks["ts"], clocks["tstz"]))
        rules.append(
            RuleSpec(
                purpose=f"e{i}",
                tz=tz,
                name="r",
                table=PARENT,
                clock=column,
                keep=keep,
                action="delete",
                round_to=round_to,
                where=(("n", "in", (0, i)),),
                cascade="delete",
            )
        )
    children = [(i, i, None, "a") for i in range(len(EDGES) + 1)]
    store = build_store(tmp_path_factory.mktemp("edges"), parents, children, [])
    before = fetch_world(store, [])
    wrong = []
    by_date: dict[date, list[int]] = {}
    for i, edge in enumerate(EDGES, start=1):
        by_date.setdefault(edge[5], []).append(i)
    for as_of, cases in sorted(by_date.items()):
        group = [rules[i - 1] for i in cases]
        want = Oracle(group, as_of).plan(before)
        got = engine_plan(store, policy_set(group), as_of, group)
        for i, rule in zip(cases, group, strict=True):
            expired = EDGES[i - 1][6]
            if want[rule.rule_id]["expired"] != int(expired):
                wrong.append(f"oracle: edge {EDGES[i - 1]} expired={want[rule.rule_id]['expired']}")
            if got[rule.rule_id]["expired"] != int(expired):
                wrong.append(f"engine: edge {EDGES[i - 1]} expired={got[rule.rule_id]['expired']}")
        run_policies(
            store, policy_set(group), as_of, KEY, RunOptions(max_delete_fraction=None, batch_size=3)
        )
    left = fetch_world(store, [])
    for i, edge in enumerate(EDGES, start=1):
        if (i in left.parents) == edge[6] or (i in left.children) == edge[6]:
            wrong.append(f"run: edge {edge} {'kept' if i in left.parents else 'deleted'} the row")
    assert left.parents.get(0) == before.parents[0], "the row with a NULL clock changed"
    assert not wrong, "\n".join(wrong)


# --- regressions found by the property test ---------------------------------------------------


def test_null_subject_is_not_held_by_a_hold_on_another_subject(tmp_path_factory):
    """A row whose subject is NULL has no subject to be held for. `CAST(NULL) IN (held ids)` is
    unknown, not false, whenever some subject hold of the kind is active; the row must still be
    counted and deleted like any other expired, unheld row."""
    rule = RuleSpec(
        purpose="pa",
        tz="UTC",
        name="r0",
        table=PARENT,
        clock="d",
        keep=(0, 0, 0),
        action="delete",
        cascade="delete",
        subject=("person", "subject"),
    )
    parents = [
        (1, None, None, None, None, date(2024, 2, 1), None, None),
        (2, "s2", None, None, None, date(2024, 2, 1), None, None),
        (3, "s1", None, None, None, date(2024, 2, 1), None, None),
    ]
    holds = [HoldSpec("subject", "person:s1")]
    store = build_store(tmp_path_factory.mktemp("null-subject"), parents, [], holds)
    plan = engine_plan(store, policy_set([rule]), date(2024, 2, 29), [rule])["pa/r0"]
    assert (plan["expired"], plan["held"], plan["to_act"]) == (3, 1, 2)
    check_scenario(
        tmp_path_factory.mktemp("null-subject"), [rule], date(2024, 2, 29), parents, [], holds, 3
    )


def test_a_run_changes_only_the_rows_its_plan_counted(tmp_path_factory):
    """r0 redacts status of the closed row; r1 anonymises rows whose status is NULL. The plan,
    made before anything changes, counts one row for each rule, and the run must change exactly
    those: the row that r0 just redacted becomes r1's in the next run, not silently in this one
    (its plan said 1, and max_delete_fraction is judged on plan counts). Equally a rule whose
    plan counted 0 rows must not depend on that: the rows become due in the next run either way."""
    r0 = RuleSpec(
        purpose="pa",
        tz="UTC",
        name="r0",
        table=PARENT,
        clock="d",
        keep=(0, 0, 0),
        action="anonymise",
        where=(("status", "eq", "closed"),),
        columns=(("status", "redact"),),
    )
    r1 = RuleSpec(
        purpose="pa",
        tz="UTC",
        name="r1",
        table=PARENT,
        clock="d",
        keep=(0, 0, 0),
        action="anonymise",
        where=(("status", "is_null", True),),
        columns=(("note", "hash"),),
    )
    parents = [
        (1, None, "closed", None, "x", date(2024, 2, 1), None, None),
        (2, None, None, None, "y", date(2024, 2, 1), None, None),
    ]
    store = build_store(tmp_path_factory.mktemp("plan-bound"), parents, [], [])
    report = run_policies(
        store, policy_set([r0, r1]), date(2024, 2, 29), KEY, RunOptions(max_delete_fraction=None)
    )
    assert [(rr.plan.to_act, rr.anonymised) for rr in report.rules] == [(1, 1), (1, 1)]
    assert fetch_world(store, []).parents[1]["note"] == "x", (
        "r1 changed a row its plan did not count"
    )
    check_scenario(
        tmp_path_factory.mktemp("plan-bound"), [r0, r1], date(2024, 2, 29), parents, [], [], 3
    )
