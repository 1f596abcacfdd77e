"""`plan` shows exactly what `run` then does (G4): with overlapping rules, a row that two rules
reach, or a rule and another rule's cascade, is counted once, for the first that acts on it in
run order. Checked on the demo warehouse (both stores) against row counts read independently
of the engine, and on generated worlds against the brute-force oracle's simulated run."""

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from oracle import CHILD, PARENT, Oracle, RuleSpec
from oracle_store import (
    KEY,
    PLAIN,
    SECRET,
    Names,
    Stores,
    build_store,
    fetch_world,
    policy_set,
)
from test_oracle import assert_same_world, holds_strategy, main_rule, scenarios

from retention_jobs import control, demo
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.load import load_policies
from retention_jobs.plan import build_plan
from retention_jobs.store.base import Store, sa_table

POLICIES = Path(__file__).resolve().parents[1] / "policies"
AS_OF = date(2026, 5, 1)
_COUNT = {"delete": "deleted", "anonymise": "anonymised", "unlink": "unlinked"}


def _row_counts(store: Store, tables: list[str]) -> dict[str, int]:
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
        return {
            t: s.scalar(sa.select(sa.func.count()).select_from(sa_table(catalog.tables[t])))
            for t in tables
        }


def _planned_cascades(rp) -> dict[tuple[str, str], int]:
    """A rule's cascade counts per (table, action): the run reports per table, and two links
    of one rule to a table (two foreign keys, two paths) share its count."""
    out: dict[tuple[str, str], int] = {}
    for c in rp.cascades:
        out[(c.table, c.action)] = out.get((c.table, c.action), 0) + c.rows
    return out


def _run_cascades(rr) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for c in rr.cascades:
        for action, field in _COUNT.items():
            if getattr(c, field):
                out[(c.table, action)] = getattr(c, field)
    return out


@pytest.mark.parametrize("rows", [600])
def test_demo_plan_is_what_the_run_does(store, rows):
    """The demo's shipped policies overlap (bookkeeping deletes invoices that the customers
    policy's cascade also reaches; two CRM rules share contacts; two SaaS rules share users).
    Per rule and per cascade, the plan's counts are the run's; per table, the plan's deletes
    summed over rules and cascades are the rows that left the table, counted independently."""
    demo.build(store, rows, AS_OF)
    with store.connect() as s:
        control.ensure_control_schema(store, s)
        for h in demo.demo_holds_for(store, s):
            control.add_hold(s, **{**h, "placed_by": "test"})
    policies = load_policies([POLICIES])
    plan = build_plan(store, policies, AS_OF)
    tables = list(demo.TABLES)
    before = _row_counts(store, tables)
    report = run_policies(
        store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    after = _row_counts(store, tables)

    by_id = {rp.rule_id: rp for rp in plan.rules}
    overlapping = 0
    for rr in report.rules:
        rp = by_id[rr.plan.rule_id]
        assert rr.plan.to_act == rp.to_act, rp.rule_id
        assert rr.deleted + rr.anonymised == rp.to_act, (rp.rule_id, rr.deleted, rr.anonymised)
        assert _run_cascades(rr) == {k: v for k, v in _planned_cascades(rp).items() if v}, (
            rp.rule_id
        )
    for rp in plan.rules:
        overlapping += rp.superseded + sum(c.superseded for c in rp.cascades)
    assert overlapping, "the demo's rules no longer overlap: this test proves nothing"

    planned_deletes: dict[str, int] = {}
    for rp in plan.rules:
        if rp.action == "delete":
            planned_deletes[rp.table] = planned_deletes.get(rp.table, 0) + rp.to_act
        for c in rp.cascades:
            if c.action == "delete":
                planned_deletes[c.table] = planned_deletes.get(c.table, 0) + c.rows
    gone = {t: before[t] - after[t] for t in tables if before[t] != after[t]}
    assert {t: n for t, n in planned_deletes.items() if n} == gone


# --- the oracle ------------------------------------------------------------------------------


def _check_against_simulated_run(
    root, rules, as_of, parents, children, holds, batch_size, names: Names = PLAIN
):
    store = build_store(Stores("duckdb", root), parents, children, holds, names)
    ps = policy_set(rules, names)
    oracle = Oracle(rules, as_of)
    before = fetch_world(store, holds, names)
    want, acted = oracle.simulate_run(before, SECRET)
    plan = {rp.rule_id: rp for rp in build_plan(store, ps, as_of).rules}
    for rule in rules:
        rp = plan[rule.rule_id]
        assert rp.to_act == acted[rule.rule_id]["rows"], f"{rule.rule_id}: plan to_act"
        assert sum(c.rows for c in rp.cascades) == acted[rule.rule_id]["cascade_rows"], (
            f"{rule.rule_id}: plan cascade rows"
        )
        # every expired row is accounted once: held, retained, superseded, done or acted on
        if rule.action != "retain":
            assert rp.expired == (
                rp.held + rp.retained + rp.superseded + rp.already_done + rp.to_act
            ), rule.rule_id
    report = run_policies(
        store, ps, as_of, KEY, RunOptions(max_delete_fraction=None, batch_size=batch_size)
    )
    for rr in report.rules:
        rule_id = rr.plan.rule_id
        assert rr.deleted + rr.anonymised == plan[rule_id].to_act, f"{rule_id}: run rows"
        assert sum(c.deleted + c.unlinked + c.anonymised for c in rr.cascades) == sum(
            c.rows for c in plan[rule_id].cascades
        ), f"{rule_id}: run cascade rows"
    assert_same_world(fetch_world(store, holds, names), want, "run")


@st.composite
def overlapping(draw):
    """The oracle's scenarios with two or three rules on the same table: they overlap."""
    rules, as_of, parents, children, holds, batch_size, names = draw(scenarios())
    tz = rules[0].tz
    main = [r for r in rules if r.action != "retain"]
    extra = [draw(main_rule(i, tz)) for i in range(len(main), draw(st.integers(2, 3)))]
    return (
        [*main, *extra, *(r for r in rules if r.action == "retain")],
        as_of,
        parents,
        children,
        (holds),
        batch_size,
        names,
    )


@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=overlapping())
def test_plan_counts_what_the_simulated_run_changes(tmp_path_factory, scenario):
    rules, as_of, parents, children, holds, batch_size, names = scenario
    _check_against_simulated_run(
        tmp_path_factory.mktemp("agree"), rules, as_of, parents, children, holds, batch_size, names
    )


def _rule(name: str, action: str, **kw) -> RuleSpec:
    base = dict(purpose="pa", tz="UTC", table=PARENT, clock="d", keep=(0, 0, 0), action=action)
    return RuleSpec(name=name, **{**base, **kw})


PARENTS = [
    (i, None, "closed" if i % 2 else "open", i % 3, "x", date(2024, 1, i), None, None)
    for i in range(1, 9)
]
CHILDREN = [(i, 1 + (i % 8), date(2024, 1, 1), "a") for i in range(1, 17)]


def test_two_delete_rules_on_one_table_count_a_row_once(tmp_path_factory):
    """r0 deletes every expired parent, r1 the closed ones: r1's rows are r0's already."""
    rules = [
        _rule("r0", "delete", cascade="delete"),
        _rule("r1", "delete", cascade="delete", where=(("status", "eq", "closed"),)),
    ]
    _check_against_simulated_run(
        tmp_path_factory.mktemp("two-deletes"), rules, date(2024, 3, 1), PARENTS, CHILDREN, [], 3
    )


def test_an_anonymise_rule_does_not_count_columns_an_earlier_one_anonymised(tmp_path_factory):
    """r0 redacts status and masks note of every expired parent; r1 redacts status of the
    closed ones: done by r0 in the same run, so r1 acts on none."""
    rules = [
        _rule("r0", "anonymise", columns=(("status", "redact"), ("note", "mask1"))),
        _rule("r1", "anonymise", columns=(("note", "hash"),), where=(("n", "ge", 1),)),
    ]
    _check_against_simulated_run(
        tmp_path_factory.mktemp("two-anon"), rules, date(2024, 3, 1), PARENTS, CHILDREN, [], 3
    )


def test_a_related_clock_over_children_deleted_first(tmp_path_factory):
    """r1's clock is the latest child date; r0 deletes the parents 1..4 with their children
    first, so r1's rows lose nothing there, but a parent's clock never reads deleted rows."""
    rules = [
        _rule("r0", "delete", cascade="delete", where=(("n", "eq", 1),)),
        _rule("r1", "delete", cascade="unlink", clock="related:max"),
    ]
    _check_against_simulated_run(
        tmp_path_factory.mktemp("related"), rules, date(2024, 3, 1), PARENTS, CHILDREN, [], 3
    )


@given(holds=holds_strategy)
@settings(max_examples=5, deadline=None)
def test_holds_do_not_change_the_agreement(tmp_path_factory, holds):
    rules = [
        _rule("r0", "delete", cascade="delete", subject=("person", "parent_id")),
        _rule(
            "r1",
            "anonymise",
            columns=(("status", "redact"),),
            cascade="anonymise",
            cascade_columns=(("kind", "redact"),),
        ),
    ]
    _check_against_simulated_run(
        tmp_path_factory.mktemp("holds"), rules, date(2024, 3, 1), PARENTS, CHILDREN, holds, 3
    )


@pytest.mark.xfail(
    strict=True,
    reason="known limit: r1's `where` reads status, which r0 redacts earlier in the same run; "
    "the run re-checks r1's rows on the new values (G2) and acts on none, while the plan "
    "cannot evaluate a filter on values that are not computed yet and counts 4",
)
def test_a_where_over_a_column_an_earlier_rule_anonymises(tmp_path_factory):
    rules = [
        _rule("r0", "anonymise", columns=(("status", "redact"),)),
        _rule("r1", "anonymise", columns=(("note", "hash"),), where=(("status", "eq", "closed"),)),
    ]
    _check_against_simulated_run(
        tmp_path_factory.mktemp("probe"), rules, date(2024, 3, 1), PARENTS, CHILDREN, [], 3
    )


def test_a_child_linked_to_no_parent_is_counted_by_its_own_rule(tmp_path_factory):
    """A parent rule's delete cascade takes the children linked to the parents it deletes; a
    child whose link is NULL is taken by no cascade, so the child table's own rule acts on it
    (it used to fall out of every count: NULL IN (...) is neither true nor false)."""
    rules = [
        _rule("r0", "delete", cascade="delete"),
        RuleSpec(
            purpose="pc",
            tz="UTC",
            name="c0",
            table=CHILD,
            clock="c_date",
            keep=(0, 0, 0),
            action="delete",
        ),
    ]
    children = [(1, None, date(2024, 1, 1), "a"), (2, 1, date(2024, 1, 1), "b")]
    _check_against_simulated_run(
        tmp_path_factory.mktemp("unlinked-child"), rules, date(2024, 3, 1), PARENTS, children, [], 3
    )
