"""Requests that never overclaim (G8, G11), on DuckDB and PostgreSQL.

- Processor boundary: an erasure of a contact in a client's tenant changes nothing there and
  reports the rows, table by table, as to be forwarded to the controller; a contact of our own
  is erased. That holds even when a controller rule of ours forgets the tenant filter: a rule of
  a `role: processor` policy marks the rows, whatever other rules say.
- `done` means every place the subject lives was handled: a table that references the subject
  and that no rule names (`no_rule`), or whose rule's filter leaves the subject's rows out
  (`not_covered`), makes the request `partially_done`, with the table and the count; once a
  rule covers them, processing again ends `done`.

The oracle is plain SQL over the subject's id, written apart from the engine's subject map.
"""

from datetime import date

import pytest
from schema_cases import policies, rows, sql

from retention_jobs import requests as rq
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.load import PolicySet
from retention_jobs.store.base import Store

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("request-outcome-key-0123456789")


def erase(store: Store, ps: PolicySet, subject: str) -> rq.Processed:
    kind, sid = rq.parse_subject(subject)
    rq.check_request(ps, "erasure", kind, None)
    with store.connect() as s:
        req = rq.add_request(
            s, kind="erasure", subject_kind=kind, subject_id=sid, received_on=AS_OF
        )
    return again(store, ps, req.request_id)


def again(store: Store, ps: PolicySet, request_id: str) -> rq.Processed:
    (p,) = rq.process_requests(store, ps, AS_OF, KEY, [request_id])
    assert p.failed is None and p.skipped is None, p
    return p


def count(store: Store, query: str) -> int:
    return rows(store, query)[0][0]


# --- the processor boundary --------------------------------------------------------------------

CRM_DDL = [
    "CREATE SCHEMA crm",
    "CREATE TABLE crm.tenants (tenant_id BIGINT PRIMARY KEY, own_use BOOLEAN NOT NULL, "
    "contract_ended_at DATE)",
    "CREATE TABLE crm.contacts (contact_id BIGINT PRIMARY KEY, tenant_id BIGINT NOT NULL "
    "REFERENCES crm.tenants (tenant_id), email VARCHAR, opted_out_at DATE)",
    "CREATE TABLE crm.activities (activity_id BIGINT PRIMARY KEY, contact_id BIGINT NOT NULL "
    "REFERENCES crm.contacts (contact_id), occurred_at DATE)",
    # tenant 1 is our own CRM; tenant 2 a client whose contract runs; 3 a client that left
    "INSERT INTO crm.tenants VALUES (1, TRUE, NULL), (2, FALSE, NULL), (3, FALSE, DATE '2020-01-01')",
    "INSERT INTO crm.contacts VALUES (10, 1, 'own@x.no', NULL), (11, 2, 'client@x.no', NULL), "
    "(12, 2, 'other@x.no', NULL), (13, 3, 'gone@x.no', NULL)",
    "INSERT INTO crm.activities VALUES (100, 10, DATE '2026-01-01'), (101, 10, DATE '2026-02-01'), "
    "(110, 11, DATE '2026-03-01'), (111, 11, DATE '2026-04-01'), (112, 11, DATE '2026-05-01'), "
    "(120, 12, DATE '2026-01-01'), (130, 13, DATE '2019-01-01')",
]

PROCESSOR = """
purpose: crm-processor
title: Client data in the CRM service
legal_basis: contract
role: processor
owner: ops
rules:
  - name: ended-tenants
    table: crm.tenants
    key: tenant_id
    subject: {none: a client company}
    clock: contract_ended_at
    keep_for: P30D
    where: {own_use: false}
    action: delete
    cascade:
      - table: crm.contacts
        on: tenant_id
        action: delete
        cascade:
          - {table: crm.activities, on: contact_id, action: delete}
"""

OWN_CONTACTS = """
purpose: crm-contacts
title: Our own sales contacts
legal_basis: legitimate_interests
owner: sales
rules:
  - name: opted-out
    table: crm.contacts
    key: contact_id
    subject: {kind: contact, column: contact_id}
    clock: opted_out_at
    keep_for: P0D
RELATED    action: delete
    cascade:
      - {table: crm.activities, on: contact_id, action: delete}
"""
TENANT_FILTER = """    related:
      - table: crm.tenants
        on: tenant_id
        any: {own_use: true}
"""


def crm(*, filtered: bool) -> PolicySet:
    own = OWN_CONTACTS.replace("RELATED", TENANT_FILTER if filtered else "")
    return policies(PROCESSOR, own)


def crm_state(store: Store) -> list[tuple]:
    return rows(
        store,
        "SELECT 'c', contact_id, tenant_id FROM crm.contacts UNION ALL "
        "SELECT 'a', activity_id, contact_id FROM crm.activities ORDER BY 1, 2",
    )


@pytest.mark.parametrize("filtered", [True, False], ids=["tenant-filter", "no-filter"])
def test_a_request_never_erases_data_we_process_for_a_client(store, filtered):
    sql(store, *CRM_DDL)
    ps = crm(filtered=filtered)
    before = crm_state(store)

    p = erase(store, ps, "contact:11")

    assert crm_state(store) == before, "a client's contact must not be changed by a request"
    assert p.status == "partially_done"
    oracle = {
        "crm.contacts": count(store, "SELECT count(*) FROM crm.contacts WHERE contact_id = 11"),
        "crm.activities": count(store, "SELECT count(*) FROM crm.activities WHERE contact_id = 11"),
    }
    forward = {f["table"]: f["rows"] for f in p.receipt["forward_to_controller"]}
    assert forward == oracle == {"crm.contacts": 1, "crm.activities": 3}
    assert all(
        f["rules"] == ["crm-processor/ended-tenants"] for f in p.receipt["forward_to_controller"]
    )
    assert p.receipt["tables"] == []
    assert "11" not in rq.summary_line(p).replace(p.request_id, "")

    # a contact of our own tenant is erased, with its activities, and only that
    own = erase(store, ps, "contact:10")
    assert own.status == "done", own.receipt["left"]
    assert crm_state(store) == [
        r for r in before if not (r[0] == "c" and r[1] == 10) and not (r[0] == "a" and r[2] == 10)
    ]
    assert own.receipt["forward_to_controller"] == [] and own.receipt["left"] == []


# --- done means every place -------------------------------------------------------------------

SHOP_DDL = [
    "CREATE SCHEMA shop",
    "CREATE TABLE shop.customers (customer_id BIGINT PRIMARY KEY, email VARCHAR, left_at DATE)",
    "CREATE TABLE shop.phones (phone_id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL "
    "REFERENCES shop.customers (customer_id), kind VARCHAR NOT NULL, phone VARCHAR, "
    "created_on DATE)",
    "CREATE TABLE shop.national_ids (customer_id BIGINT PRIMARY KEY "
    "REFERENCES shop.customers (customer_id), national_id VARCHAR, created_on DATE)",
    "INSERT INTO shop.customers VALUES (1, 'a@x.no', NULL), (2, 'b@x.no', NULL)",
    "INSERT INTO shop.phones VALUES (1, 1, 'mobile', '+4790000001', NULL), "
    "(2, 1, 'landline', '+4722000001', NULL), (3, 1, 'landline', '+4722000002', NULL), "
    "(4, 2, 'mobile', '+4790000002', NULL)",
    "INSERT INTO shop.national_ids VALUES (1, '01017012345', NULL), (2, '02027012345', NULL)",
]

CUSTOMERS = """
purpose: customers
title: Customers
legal_basis: contract
owner: ops
rules:
  - name: left
    table: shop.customers
    key: customer_id
    subject: {kind: customer, column: customer_id}
    clock: left_at
    keep_for: P1Y
    action: anonymise
    columns: {email: hash}
"""

MOBILES = """
purpose: mobile
title: Mobile numbers
legal_basis: contract
owner: ops
rules:
  - name: mobiles
    table: shop.phones
    key: phone_id
    subject: {kind: customer, column: customer_id}
    clock: created_on
    keep_for: P1Y
    where: {kind: mobile}
    action: delete
"""

ALL_PHONES_AND_IDS = """
purpose: phones-and-ids
title: Every phone number and national id
legal_basis: contract
owner: ops
rules:
  - name: phones
    table: shop.phones
    key: phone_id
    subject: {kind: customer, column: customer_id}
    clock: created_on
    keep_for: P1Y
    action: delete
  - name: ids
    table: shop.national_ids
    key: customer_id
    subject: {kind: customer, column: customer_id}
    clock: created_on
    keep_for: P1Y
    action: delete
"""


def left_of(p: rq.Processed) -> dict[str, tuple[int, str]]:
    return {x["table"]: (x["rows"], x["reason"]) for x in p.receipt["left"]}


def test_done_only_when_every_table_that_holds_the_subject_was_handled(store):
    sql(store, *SHOP_DDL)
    narrow = policies(CUSTOMERS, MOBILES)
    oracle = {
        "shop.phones": count(
            store, "SELECT count(*) FROM shop.phones WHERE customer_id = 1 AND kind <> 'mobile'"
        ),
        "shop.national_ids": count(
            store, "SELECT count(*) FROM shop.national_ids WHERE customer_id = 1"
        ),
    }

    p = erase(store, narrow, "customer:1")

    # the row of the customer table is anonymised and the mobile deleted, but the landlines
    # and the national id are still there: not done, and the receipt says where and why
    assert p.status == "partially_done"
    assert left_of(p) == {
        "shop.phones": (oracle["shop.phones"], "not_covered"),
        "shop.national_ids": (oracle["shop.national_ids"], "no_rule"),
    }
    assert oracle == {"shop.phones": 2, "shop.national_ids": 1}
    assert count(store, "SELECT count(*) FROM shop.phones WHERE kind = 'mobile'") == 1
    assert sorted(p.receipt["places"]) == ["shop.customers", "shop.national_ids", "shop.phones"]
    with store.connect(read_only=True) as s:
        assert rq.get_request(s, p.request_id).subject_id == "1", "an open request keeps its id"

    # with rules for the rest, processing again finishes it, and customer 2 is untouched
    wide = policies(CUSTOMERS, MOBILES, ALL_PHONES_AND_IDS)
    done = again(store, wide, p.request_id)
    assert done.status == "done" and done.receipt["left"] == []
    assert count(store, "SELECT count(*) FROM shop.phones WHERE customer_id = 1") == 0
    assert count(store, "SELECT count(*) FROM shop.national_ids WHERE customer_id = 1") == 0
    assert rows(store, "SELECT customer_id, email FROM shop.customers ORDER BY 1")[1] == (
        2,
        "b@x.no",
    )
    assert count(store, "SELECT count(*) FROM shop.phones WHERE customer_id = 2") == 1


def test_the_subject_map_is_every_table_that_references_the_subject(store):
    from retention_jobs.subjects import subject_map

    sql(store, *SHOP_DDL)
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    places = subject_map(policies(CUSTOMERS), catalog, "customer")
    # oracle: the identity table and the tables with a foreign key into it, from the catalog
    referencing = {
        name
        for name, info in catalog.tables.items()
        if any(fk.ref_table == "shop.customers" for fk in info.foreign_keys)
    }
    assert {p.table.name for p in places} == {"shop.customers"} | referencing
    assert referencing == {"shop.phones", "shop.national_ids"}
    assert subject_map(policies(CUSTOMERS), catalog, "nobody") == []


RETAIN_IDS = """
purpose: id-register
title: National ids kept by law
legal_basis: legal_obligation
owner: ops
rules:
  - name: keep-ids
    table: shop.national_ids
    key: customer_id
    subject: {kind: customer, column: customer_id}
    clock: created_on
    keep_for: P10Y
    action: retain
"""


def test_rows_kept_only_by_a_retain_rule_are_named_and_keep_the_request_open(store):
    sql(store, *SHOP_DDL)
    phones_only = ALL_PHONES_AND_IDS.split("  - name: ids")[0]
    p = erase(store, policies(CUSTOMERS, phones_only, RETAIN_IDS), "customer:1")
    # the retain rule's clock is not set: the minimum cannot be shown to have passed
    assert p.status == "partially_done"
    assert p.receipt["left"] == [
        {
            "table": "shop.national_ids",
            "rows": count(store, "SELECT count(*) FROM shop.national_ids WHERE customer_id = 1"),
            "reason": "retention_period",
            "rules": ["id-register/keep-ids"],
            "case_refs": [],
            "note": p.receipt["left"][0]["note"],
        }
    ]
    assert count(store, "SELECT count(*) FROM shop.phones WHERE customer_id = 1") == 0
    with store.connect(read_only=True) as s:
        assert rq.get_request(s, p.request_id).recheck_on is None  # looked at every run
