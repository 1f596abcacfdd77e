"""Rules without `subject:` honour the holds of the subjects their rows reach (G1), on DuckDB
and PostgreSQL; a rule that reaches no subject is refused at `validate --store` unless it says
`subject: {none: REASON}`; lint lists both kinds (RJ107).

The oracle is plain SQL: every row before the run against every row after it.
"""

from datetime import date
from pathlib import Path

import pytest
import schema_cases
from schema_cases import policies, rows, sql

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.lint import lint_policies, lint_store_subjects
from retention_jobs.load import PolicySet
from retention_jobs.plan import build_plan
from retention_jobs.resolve import resolve
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("inferred-subjects-key-0123456789")


def hold(store: Store, subject: str) -> None:
    schema_cases.hold(store, subject, "C-7", "investigation")


def run(store: Store, ps: PolicySet):
    opts = RunOptions(max_delete_fraction=None, batch_size=1000, purge=False)
    return run_policies(store, ps, AS_OF, KEY, opts)


def resolve_in(store: Store, ps: PolicySet):
    with store.connect(read_only=True) as s:
        return resolve(ps, store.catalog(s), store.kind)


# policy A says whose rows the users are; its retain rule never changes anything
USERS = """
purpose: accounts
title: User accounts
legal_basis: contract
owner: ops
rules:
  - name: keep-accounts
    table: s.users
    key: id
    subject: {kind: user, column: id}
    clock: created_on
    keep_for: P1D
    action: retain
"""

# policy B: a rule on calls that names no subject
CALLS = """
purpose: calls
title: Call history
legal_basis: legitimate_interests
owner: telephony
rules:
  - name: old-calls
    table: s.calls
    key: id
    clock: started_at
    keep_for: P6M
    action: {action}
{columns}
"""

ANONYMISE = "    columns: {number: redact, user_id: redact}"

DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.users (id BIGINT PRIMARY KEY, created_on DATE)",
    "CREATE TABLE s.calls (id BIGINT PRIMARY KEY, user_id BIGINT REFERENCES s.users (id), "
    "started_at DATE, number VARCHAR)",
    "INSERT INTO s.users VALUES " + ", ".join(f"({u}, DATE '2019-01-01')" for u in range(1, 5)),
    # user u: calls 10u+1..10u+3 in 2020 (expired), 10u+4..10u+5 last week (not expired)
    "INSERT INTO s.calls VALUES "
    + ", ".join(
        f"({10 * u + c}, {u}, DATE '{'2020-02-01' if c <= 3 else '2026-11-15'}', '+4512345{u}{c}')"
        for u in range(1, 5)
        for c in range(1, 6)
    ),
]


def calls(store: Store) -> list[tuple]:
    return rows(store, "SELECT id, user_id, started_at, number FROM s.calls ORDER BY id")


@pytest.mark.parametrize("action", ["anonymise", "delete"])
def test_a_hold_on_a_user_keeps_its_calls_under_a_rule_without_subject(store, action):
    sql(store, *DDL)
    hold(store, "user:2")
    ps = policies(
        USERS, CALLS.format(action=action, columns=ANONYMISE if action == "anonymise" else "")
    )
    before = calls(store)

    plan = {r.rule_id: r for r in build_plan(store, ps, AS_OF).rules}["calls/old-calls"]
    assert (plan.expired, plan.held, plan.to_act) == (12, 3, 9)

    result = {r.plan.rule_id: r for r in run(store, ps).rules}["calls/old-calls"]
    done = result.anonymised if action == "anonymise" else result.deleted
    assert done == plan.to_act == 9

    after = {r[0]: r for r in calls(store)}
    for r in before:
        call_id, user_id, started_at, _ = r
        expired = started_at.year == 2020
        if user_id == 2 or not expired:
            assert after[call_id] == r  # user 2's calls and the fresh ones: untouched (G1, G2)
        elif action == "anonymise":
            assert after[call_id] == (call_id, None, started_at, None)
        else:
            assert call_id not in after


# --- several hops, composite foreign key ------------------------------------------------------

DEVICE_DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.users (id BIGINT PRIMARY KEY, created_on DATE)",
    "CREATE TABLE s.devices (serial BIGINT, maker INTEGER, owner BIGINT REFERENCES s.users (id), "
    "PRIMARY KEY (serial, maker))",
    "CREATE TABLE s.calls (id BIGINT PRIMARY KEY, serial BIGINT, maker INTEGER, "
    "started_at DATE, number VARCHAR, "
    "FOREIGN KEY (serial, maker) REFERENCES s.devices (serial, maker))",
    "INSERT INTO s.users VALUES " + ", ".join(f"({u}, DATE '2019-01-01')" for u in range(1, 4)),
    # device (100+u, 7) belongs to user u; serial 100+u with maker 8 to nobody
    "INSERT INTO s.devices VALUES "
    + ", ".join(f"({100 + u}, 7, {u}), ({100 + u}, 8, NULL)" for u in range(1, 4)),
    # per user: two expired calls on the user's device, one on the unowned device with the same
    # serial (a composite key joined on one column would wrongly take it for the user's)
    "INSERT INTO s.calls VALUES "
    + ", ".join(
        f"({10 * u + c}, {100 + u}, {7 if c <= 2 else 8}, DATE '2020-02-01', '+46{u}{c}')"
        for u in range(1, 4)
        for c in range(1, 4)
    ),
]

DEVICE_CALLS = """
purpose: calls
title: Call history
legal_basis: legitimate_interests
owner: telephony
rules:
  - name: old-calls
    table: s.calls
    key: id
    clock: started_at
    keep_for: P6M
    action: anonymise
    columns: {number: redact}
"""


def test_the_subject_is_found_over_several_hops_and_a_composite_key(store):
    sql(store, *DEVICE_DDL)
    hold(store, "user:2")
    ps = policies(USERS, DEVICE_CALLS)
    (b,) = [b for b in resolve_in(store, ps) if b.id == "calls/old-calls"]
    assert [p.describe("s.calls") for p in b.inferred] == [
        "user via s.calls(serial, maker) -> s.devices(serial, maker) -> s.devices.owner"
    ]
    before = rows(store, "SELECT id, number FROM s.calls ORDER BY id")
    plan = {r.rule_id: r for r in build_plan(store, ps, AS_OF).rules}["calls/old-calls"]
    assert (plan.expired, plan.held, plan.to_act) == (9, 2, 7)
    run(store, ps)
    after = dict(rows(store, "SELECT id, number FROM s.calls ORDER BY id"))
    for call_id, number in before:
        # only user 2's own device's calls (21, 22) are held; 23 is on the unowned device
        assert after[call_id] == (number if call_id in (21, 22) else None)


# --- refused where the engine cannot tell -----------------------------------------------------

AUDIT = """
purpose: audit
title: Audit counters
legal_basis: legal_obligation
owner: ops
rules:
  - name: old-counters
    table: s.counters
    key: id
    clock: counted_on
    keep_for: P1Y
    action: delete
{subject}
"""


def audit_store(tmp_path: Path) -> Store:
    store = DuckDBStore(tmp_path / "audit.duckdb")
    sql(
        store,
        "CREATE SCHEMA s",
        "CREATE TABLE s.users (id BIGINT PRIMARY KEY, created_on DATE)",
        "CREATE TABLE s.counters (id BIGINT PRIMARY KEY, counted_on DATE, n INTEGER)",
    )
    return store


def test_a_rule_that_reaches_no_subject_is_refused_with_its_location(tmp_path):
    store = audit_store(tmp_path)
    with pytest.raises(PolicyError) as e:
        resolve_in(store, policies(USERS, AUDIT.format(subject="")))
    (p,) = e.value.problems
    assert (p.file, p.line, p.col) == ("p1.yaml", 7, 5)
    assert "names no subject" in p.message and "s.counters" in p.message
    assert "subject: {none: REASON}" in p.hint


def test_subject_none_with_a_reason_is_accepted_and_linted(tmp_path):
    store = audit_store(tmp_path)
    ps = policies(USERS, AUDIT.format(subject='    subject: {none: "counts per day, no person"}'))
    (b,) = [b for b in resolve_in(store, ps) if b.id == "audit/old-counters"]
    assert b.inferred == ()
    found = [p for p in lint_policies(ps) if "RJ107" in p.message]
    assert [(p.file, p.line) for p in found] == [("p1.yaml", 13)]
    assert "counts per day, no person" in found[0].message


def test_without_subject_kinds_in_the_policies_nothing_is_refused(tmp_path):
    store = audit_store(tmp_path)
    resolve_in(store, policies(AUDIT.format(subject="")))


def test_lint_lists_inferred_subjects(store):
    sql(store, *DDL)
    ps = policies(USERS, CALLS.format(action="anonymise", columns=ANONYMISE))
    found = [p for p in lint_store_subjects(store, ps) if "RJ107" in p.message]
    assert len(found) == 1
    assert found[0].file == "p1.yaml"
    assert "user via s.calls.user_id" in found[0].message


# --- a cascade into a table no rule declares a subject for ------------------------------------

ORGS = """
purpose: orgs
title: Client organisations
legal_basis: contract
owner: ops
rules:
  - name: ended-orgs
    table: s.orgs
    key: id
    subject: {none: "a client company, not a person"}
    clock: ended_on
    keep_for: P1Y
    action: delete
    cascade:
      - {table: s.calls, on: org_id, action: delete}
"""

ORG_DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.users (id BIGINT PRIMARY KEY, created_on DATE)",
    "CREATE TABLE s.orgs (id BIGINT PRIMARY KEY, ended_on DATE)",
    "CREATE TABLE s.calls (id BIGINT PRIMARY KEY, org_id BIGINT REFERENCES s.orgs (id), "
    "user_id BIGINT REFERENCES s.users (id), started_at DATE)",
    "INSERT INTO s.users VALUES " + ", ".join(f"({u}, DATE '2019-01-01')" for u in range(1, 5)),
    "INSERT INTO s.orgs VALUES (1, DATE '2020-01-01'), (2, DATE '2020-01-01')",
    # user u calls for org 1 (odd users) or org 2 (even users)
    "INSERT INTO s.calls VALUES "
    + ", ".join(
        f"({10 * u + c}, {2 - u % 2}, {u}, DATE '2020-02-01')" for u in range(1, 5) for c in (1, 2)
    ),
]


def test_a_cascade_honours_the_subjects_its_children_reach(store):
    sql(store, *ORG_DDL)
    hold(store, "user:3")  # calls for org 1
    ps = policies(USERS, ORGS)
    before = rows(store, "SELECT * FROM s.calls ORDER BY id")
    plan = {r.rule_id: r for r in build_plan(store, ps, AS_OF).rules}["orgs/ended-orgs"]
    assert (plan.expired, plan.held, plan.to_act) == (2, 1, 1)
    run(store, ps)
    assert rows(store, "SELECT id FROM s.orgs") == [(1,)]
    assert rows(store, "SELECT * FROM s.calls ORDER BY id") == [r for r in before if r[1] == 1]


# --- a declared link: a related filter over a column the subject's table keys by ----------------

NOTES = """
purpose: notes
title: Support notes
legal_basis: legitimate_interests
owner: support
rules:
  - name: old-notes
    table: s.notes
    key: note_id
    clock: written_on
    keep_for: P1Y
    related:
      - {table: s.accounts, on: user_id, any: {closed: true}}
    action: delete
"""

ACCOUNTS = """
purpose: accounts
title: User accounts
legal_basis: contract
owner: ops
rules:
  - name: keep-accounts
    table: s.accounts
    key: user_id
    subject: {kind: user, column: user_id}
    clock: created_on
    keep_for: P1D
    action: retain
"""


def test_a_related_link_to_the_subjects_table_is_a_path_without_a_foreign_key(tmp_path):
    store = DuckDBStore(tmp_path / "notes.duckdb")
    sql(
        store,
        "CREATE SCHEMA s",
        "CREATE TABLE s.accounts (user_id BIGINT PRIMARY KEY, created_on DATE, closed BOOLEAN)",
        # no foreign key: only the rule's `related` says that notes.user_id is an account's key
        "CREATE TABLE s.notes (note_id BIGINT PRIMARY KEY, user_id BIGINT, written_on DATE)",
        "INSERT INTO s.accounts VALUES (1, DATE '2019-01-01', true), (2, DATE '2019-01-01', true)",
        "INSERT INTO s.notes VALUES (1, 1, DATE '2020-01-01'), (2, 2, DATE '2020-01-01'), "
        "(3, 2, DATE '2020-01-01')",
    )
    hold(store, "user:2")
    ps = policies(ACCOUNTS, NOTES)
    (b,) = [b for b in resolve_in(store, ps) if b.id == "notes/old-notes"]
    assert [p.describe("s.notes") for p in b.inferred] == ["user via s.notes.user_id (related)"]
    plan = {r.rule_id: r for r in build_plan(store, ps, AS_OF).rules}["notes/old-notes"]
    assert (plan.expired, plan.held, plan.to_act) == (3, 2, 1)
    run(store, ps)
    assert rows(store, "SELECT note_id FROM s.notes ORDER BY 1") == [(2,), (3,)]
