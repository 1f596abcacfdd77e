"""`unreferenced: true`: parents left without a purpose (an address after its customers were
erased) go, and only those, on DuckDB and PostgreSQL. Two tables reference the addresses, so
an address still used by an order but no customer stays.

The oracle lists the orphaned addresses with LEFT JOINs, apart from the engine's NOT EXISTS.
"""

from datetime import date

import pytest
from schema_cases import policies, rows, sql

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.plan import build_plan
from retention_jobs.resolve import resolve

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("unreferenced-key-0123456789")

DDL = [
    "CREATE SCHEMA shop",
    "CREATE TABLE shop.addresses (address_id BIGINT PRIMARY KEY, street VARCHAR(80), "
    "created_on DATE NOT NULL)",
    "CREATE TABLE shop.customers (customer_id BIGINT PRIMARY KEY, "
    "home_address BIGINT REFERENCES shop.addresses (address_id), ended_on DATE)",
    "CREATE TABLE shop.orders (order_id BIGINT PRIMARY KEY, "
    "ship_to BIGINT REFERENCES shop.addresses (address_id), placed_on DATE NOT NULL)",
    "INSERT INTO shop.addresses VALUES (1, 'a', DATE '2018-01-01'), (2, 'b', DATE '2018-01-01'), "
    "(3, 'c', DATE '2018-01-01'), (4, 'd', DATE '2018-01-01'), (5, 'e', DATE '2026-11-20')",
    # 1: its only customer ended long ago; 2: shared by an ended and an active customer;
    # 3: no customer, but an order ships there; 4: never referenced; 5: new, never referenced
    "INSERT INTO shop.customers VALUES (10, 1, DATE '2019-01-01'), (11, 2, DATE '2019-01-01'), "
    "(12, 2, NULL)",
    "INSERT INTO shop.orders VALUES (100, 3, DATE '2025-06-01')",
]

POLICY = """
purpose: customers
title: Customers
legal_basis: contract
owner: shop
rules:
  - name: ended
    table: shop.customers
    key: customer_id
    subject: {kind: customer, column: customer_id}
    clock: ended_on
    keep_for: P3Y
    action: delete
  - name: orphaned-addresses
    table: shop.addresses
    key: address_id
    subject: {none: an address alone names nobody}
    clock: created_on
    keep_for: P30D
    unreferenced: true
    action: delete
"""

ORACLE = """
SELECT a.address_id FROM shop.addresses a
LEFT JOIN shop.customers c ON c.home_address = a.address_id
LEFT JOIN shop.orders o ON o.ship_to = a.address_id
WHERE c.customer_id IS NULL AND o.order_id IS NULL AND a.created_on < DATE '2026-10-23'
ORDER BY 1
"""


def test_addresses_left_without_a_customer_or_order_go(store):
    sql(store, *DDL)
    ps = policies(POLICY)
    opts = RunOptions(max_delete_fraction=None, purge=False)
    run_policies(store, ps, AS_OF, KEY, opts)
    # customers 10 and 11 are gone; 2 still has customer 12. The night's plan was made before
    # the customers went, so address 1 (orphaned by that run) waits for the next night: only
    # 4 goes now.
    assert rows(store, "SELECT customer_id FROM shop.customers ORDER BY 1") == [(12,)]
    assert rows(store, "SELECT address_id FROM shop.addresses ORDER BY 1") == [
        (1,),
        (2,),
        (3,),
        (5,),
    ]
    assert [r[0] for r in rows(store, ORACLE)] == [1]
    run_policies(store, ps, AS_OF, KEY, opts)
    assert rows(store, "SELECT address_id FROM shop.addresses ORDER BY 1") == [(2,), (3,), (5,)]
    assert rows(store, ORACLE) == []
    (_, rp) = build_plan(store, ps, AS_OF).rules
    assert rp.to_act == 0


def test_the_plan_counts_what_the_oracle_lists(store):
    sql(store, *DDL, "DELETE FROM shop.customers WHERE customer_id = 10")
    expected = [r[0] for r in rows(store, ORACLE)]
    assert expected == [1, 4]
    (_, rp) = build_plan(store, policies(POLICY), AS_OF).rules
    assert rp.to_act == len(expected)


def test_a_table_nothing_references_is_refused(store):
    sql(store, *DDL)
    text = (
        POLICY.replace("table: shop.addresses", "table: shop.orders")
        .replace("key: address_id", "key: order_id")
        .replace("clock: created_on", "clock: placed_on")
    )
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    with pytest.raises(PolicyError) as e:
        resolve(policies(text), catalog, store.kind)
    assert "p0.yaml:20:" in str(e.value)
    assert "no foreign key references shop.orders" in str(e.value)


def test_a_held_orphan_stays(store):
    sql(store, *DDL)
    with store.connect() as s:
        control.add_hold(
            s,
            scope="table",
            table="shop.addresses",
            case_ref="C-1",
            reason="audit",
            placed_by="t",
        )
    before = rows(store, "SELECT * FROM shop.addresses ORDER BY 1")
    run_policies(
        store, policies(POLICY), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    assert rows(store, "SELECT * FROM shop.addresses ORDER BY 1") == before
