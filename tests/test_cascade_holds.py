"""Holds on the rows a cascade reaches, and the journal of a crashed run re-checked on rerun
(G1, G2, G4, G7), on DuckDB and PostgreSQL.

- A subject hold on a child row (a contact of a tenant) holds the parent: neither the tenant
  nor any row below it is deleted, and plan and run count it alike.
- A run killed right after its journal commit leaves its batch journalled; a hold placed on
  one journalled parent and a clock moved on another before the rerun keep both, with all
  their children, while the rest of the batch is deleted.
"""

from datetime import date

import pytest
import schema_cases
from schema_cases import policies, rows, sql

from retention_jobs import apply
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.load import PolicySet
from retention_jobs.plan import build_plan
from retention_jobs.store.base import Store

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("cascade-holds-key-0123456789")


def hold(store: Store, subject: str) -> None:
    schema_cases.hold(store, subject, "C-1", "litigation")


def run(store: Store, ps: PolicySet, **kw):
    opts: dict = dict(max_delete_fraction=None, batch_size=1000, purge=False)
    opts.update(kw)
    return run_policies(store, ps, AS_OF, KEY, RunOptions(**opts))


# --- (a) a subject hold on a row a cascade reaches ----------------------------------------------

TENANTS = """
purpose: crm
title: Tenants
legal_basis: contract
owner: ops
rules:
  - name: ended
    table: s.tenants
    key: id
    subject: {kind: tenant, column: id}
    clock: ended_at
    keep_for: P1Y
    action: delete
    cascade:
      - table: s.contacts
        on: tenant_id
        action: delete
        cascade:
          - {table: s.activities, on: contact_id, action: delete}
"""

# another policy says whose data a contact row is; its own rule never expires here
CONTACTS = """
purpose: marketing
title: Contacts
legal_basis: consent
owner: marketing
rules:
  - name: stale
    table: s.contacts
    key: id
    subject: {kind: contact, column: id}
    clock: seen_at
    keep_for: P100Y
    action: anonymise
    columns: {email: redact}
"""

CRM_DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.tenants (id BIGINT PRIMARY KEY, ended_at DATE)",
    "CREATE TABLE s.contacts (id BIGINT PRIMARY KEY, tenant_id BIGINT REFERENCES s.tenants (id), "
    "email VARCHAR, seen_at DATE)",
    "CREATE TABLE s.activities (id BIGINT PRIMARY KEY, "
    "contact_id BIGINT REFERENCES s.contacts (id), done_on DATE)",
    # four tenants ended in 2020; two contacts each (10t+1, 10t+2); two activities per contact
    "INSERT INTO s.tenants VALUES (1, DATE '2020-01-01'), (2, DATE '2020-01-01'), "
    "(3, DATE '2020-01-01'), (4, DATE '2020-01-01')",
    "INSERT INTO s.contacts VALUES "
    + ", ".join(
        f"({10 * t + c}, {t}, 'c{10 * t + c}@example.org', DATE '2020-01-01')"
        for t in range(1, 5)
        for c in (1, 2)
    ),
    "INSERT INTO s.activities VALUES "
    + ", ".join(
        f"({100 * (10 * t + c) + a}, {10 * t + c}, DATE '2020-01-01')"
        for t in range(1, 5)
        for c in (1, 2)
        for a in (1, 2)
    ),
]


def test_subject_hold_on_a_cascaded_child_holds_its_parent(store):
    sql(store, *CRM_DDL)
    hold(store, "contact:11")  # a contact of tenant 1
    before = {
        table: rows(store, f"SELECT * FROM s.{table} ORDER BY id")
        for table in ("tenants", "contacts", "activities")
    }
    ps = policies(TENANTS, CONTACTS)
    plan = {r.rule_id: r for r in build_plan(store, ps, AS_OF).rules}["crm/ended"]
    assert (plan.expired, plan.held, plan.to_act) == (4, 1, 3)
    assert {c.table: c.rows for c in plan.cascades} == {"s.contacts": 6, "s.activities": 12}

    result = {r.plan.rule_id: r for r in run(store, ps).rules}["crm/ended"]
    # plan and run agree: same rows, same counts (G4)
    assert result.deleted == plan.to_act == 3
    assert {c.table: c.deleted for c in result.cascades} == {"s.contacts": 6, "s.activities": 12}
    # tenant 1, both its contacts and all their activities are untouched (G1)
    assert rows(store, "SELECT * FROM s.tenants ORDER BY id") == [
        r for r in before["tenants"] if r[0] == 1
    ]
    assert rows(store, "SELECT * FROM s.contacts ORDER BY id") == [
        r for r in before["contacts"] if r[1] == 1
    ]
    assert rows(store, "SELECT * FROM s.activities ORDER BY id") == [
        r for r in before["activities"] if r[1] in (11, 12)
    ]


# --- (b) a crash right after the journal commit, then a rerun -------------------------------------

SHOP = """
purpose: shop
title: Customers
legal_basis: contract
owner: ops
rules:
  - name: ended
    table: s.customers
    key: id
    subject: {kind: customer, column: id}
    clock: ended_at
    keep_for: P1Y
    action: delete
    cascade:
      - {table: s.subscriptions, on: customer_id, action: delete}
      - {table: s.credit_checks, on: customer_id, action: delete}
"""

SHOP_DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.customers (id BIGINT PRIMARY KEY, ended_at DATE)",
    "CREATE TABLE s.subscriptions (id BIGINT PRIMARY KEY, "
    "customer_id BIGINT REFERENCES s.customers (id), plan VARCHAR)",
    "CREATE TABLE s.credit_checks (id BIGINT PRIMARY KEY, "
    "customer_id BIGINT REFERENCES s.customers (id), score INTEGER)",
    # customers 1..10 ended in 2020 (all expired), 11..12 still active
    "INSERT INTO s.customers VALUES "
    + ", ".join(f"({i}, DATE '2020-03-01')" for i in range(1, 11))
    + ", (11, NULL), (12, NULL)",
    "INSERT INTO s.subscriptions VALUES "
    + ", ".join(f"({10 * i + k}, {i}, 'p{k}')" for i in range(1, 13) for k in (1, 2)),
    "INSERT INTO s.credit_checks VALUES "
    + ", ".join(f"({i}, {i}, {600 + i})" for i in range(1, 13)),
]


class Killed(BaseException):
    """The process dies: nothing after this point of the run happens."""


def test_a_resumed_journal_batch_rechecks_holds_and_expiry(store, monkeypatch):
    sql(store, *SHOP_DDL)
    ps = policies(SHOP)

    # the run dies right after its delete batch's journal committed, before any cascade step
    def die(*_a, **_k):
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(apply.Applier, "_cascade_step", die)
        with pytest.raises(Killed):
            run(store, ps)
    journal = {r[0] for r in rows(store, "SELECT id FROM retention_control.pending__s__customers")}
    assert journal == set(range(1, 11))
    assert rows(store, "SELECT count(*) FROM s.customers")[0][0] == 12  # nothing deleted yet

    # before the rerun: a hold on a journalled customer, and another re-activated by the
    # application (its clock is cleared: no longer expired)
    hold(store, "customer:8")
    sql(store, "UPDATE s.customers SET ended_at = NULL WHERE id = 5")
    before = {
        table: rows(store, f"SELECT * FROM s.{table} ORDER BY id")
        for table in ("customers", "subscriptions", "credit_checks")
    }

    report = run(store, ps)

    # the independent expectation, from the data alone: expired (ended_at set, 2020 + 1 year
    # <= as-of) and not held; everything else keeps itself and all its children
    gone = {r[0] for r in before["customers"] if r[1] is not None and r[0] != 8}
    assert gone == set(range(1, 11)) - {5, 8}
    assert rows(store, "SELECT * FROM s.customers ORDER BY id") == [
        r for r in before["customers"] if r[0] not in gone
    ]
    assert rows(store, "SELECT * FROM s.subscriptions ORDER BY id") == [
        r for r in before["subscriptions"] if r[1] not in gone
    ]
    assert rows(store, "SELECT * FROM s.credit_checks ORDER BY id") == [
        r for r in before["credit_checks"] if r[1] not in gone
    ]
    # the journal is empty: the held and the re-activated customers left it untouched
    assert rows(store, "SELECT count(*) FROM retention_control.pending__s__customers")[0][0] == 0
    (result,) = report.rules
    assert result.deleted == result.plan.to_act == len(gone)
    assert result.plan.held == 1
    assert {c.table: c.deleted for c in result.cascades} == {
        "s.subscriptions": 2 * len(gone),
        "s.credit_checks": len(gone),
    }
    # and a third run has nothing left to do
    again = run(store, ps)
    assert again.rules[0].deleted == 0
    assert rows(store, "SELECT count(*) FROM s.customers")[0][0] == 12 - len(gone)
