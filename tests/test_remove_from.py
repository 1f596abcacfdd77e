"""`remove_from`: a deleted row's id leaves the array columns that hold it
(`projects.member_ids`), in the same transaction, on DuckDB and PostgreSQL; a held row's
array is never written, so a contact whose id a held project holds stays.

The oracle is Python over the arrays read before the run: each array minus the ids the run
must delete, order kept.
"""

from datetime import date

import pytest
from schema_cases import hold, policies, rows, sql

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.load import load_text
from retention_jobs.plan import build_plan
from retention_jobs.resolve import resolve

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("remove-from-key-0123456789")

DDL = [
    "CREATE SCHEMA crm",
    "CREATE SCHEMA app",
    "CREATE TABLE crm.contacts (id BIGINT PRIMARY KEY, ended_on DATE)",
    "CREATE TABLE app.projects (project_id BIGINT PRIMARY KEY, member_ids BIGINT[], "
    "title VARCHAR(40))",
    # 1, 2 and 4 ended long ago (4 is under a hold); 3 is active; 5 ended and is in no project
    "INSERT INTO crm.contacts VALUES (1, DATE '2018-01-01'), (2, DATE '2018-01-01'), "
    "(3, NULL), (4, DATE '2018-01-01'), (5, DATE '2018-01-01')",
    "INSERT INTO app.projects VALUES (10, [1, 2, 3, 2], 'a'), (11, [2], 'b'), "
    "(12, [3, 4], 'c'), (13, NULL, 'd'), (14, [], 'e')",
]

POLICY = """
purpose: contacts
title: Contacts
legal_basis: legitimate_interests
owner: crm
rules:
  - name: ended
    table: crm.contacts
    key: id
    subject: {kind: contact, column: id}
    clock: ended_on
    keep_for: P2Y
    action: delete
    remove_from:
      - {table: app.projects, column: member_ids}
"""


def _ddl(store) -> list[str]:
    if store.kind == "duckdb":
        return DDL
    # PostgreSQL writes array literals with ARRAY and types the empty one
    return [
        *DDL[:-1],
        "INSERT INTO app.projects VALUES (10, ARRAY[1, 2, 3, 2], 'a'), (11, ARRAY[2], 'b'), "
        "(12, ARRAY[3, 4], 'c'), (13, NULL, 'd'), (14, ARRAY[]::BIGINT[], 'e')",
    ]


def _arrays(store) -> dict[int, list | None]:
    return {
        r[0]: (list(r[1]) if r[1] is not None else None)
        for r in rows(store, "SELECT project_id, member_ids FROM app.projects")
    }


def test_deleted_ids_leave_the_arrays_and_held_ones_stay(store):
    sql(store, *_ddl(store))
    hold(store, "contact:4", "C-1", "dispute")
    before = _arrays(store)
    gone = {1, 2, 5}  # expired and not held
    expected = {
        p: None if a is None else [x for x in a if x not in gone] for p, a in before.items()
    }
    ps = policies(POLICY)
    (rp,) = build_plan(store, ps, AS_OF).rules
    assert rp.to_act == len(gone)
    assert [(c.table, c.action, c.rows) for c in rp.cascades] == [("app.projects", "unlink", 2)]
    run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False))
    assert rows(store, "SELECT id FROM crm.contacts ORDER BY 1") == [(3,), (4,)]
    assert _arrays(store) == expected
    with store.connect(read_only=True) as s:
        logged = s.scalar(
            control.audit.select()
            .with_only_columns(control.audit.c.unlinked)
            .where(control.audit.c.action == "remove-from-array")
        )
    assert logged == 2


def test_a_hold_on_the_array_table_keeps_every_contact_it_names(store):
    sql(store, *_ddl(store))
    with store.connect() as s:
        control.add_hold(
            s, scope="table", table="app.projects", case_ref="A-1", reason="audit", placed_by="t"
        )
    before = _arrays(store)
    run_policies(
        store, policies(POLICY), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    assert _arrays(store) == before
    # 1, 2 and 4 are named by a held project; 5 is named by none and goes
    assert rows(store, "SELECT id FROM crm.contacts ORDER BY 1") == [(1,), (2,), (3,), (4,)]


def test_a_column_that_is_not_an_array_is_refused_with_its_location(store):
    sql(store, *_ddl(store))
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    text = POLICY.replace("column: member_ids", "column: title")
    with pytest.raises(PolicyError) as e:
        resolve(policies(text), catalog, store.kind)
    assert "p0.yaml:15:" in str(e.value) and "not an array" in str(e.value)


def test_remove_from_needs_a_delete():
    text = POLICY.replace("action: delete", "action: anonymise\n    columns: {ended_on: redact}")
    with pytest.raises(PolicyError) as e:
        load_text(text, "contacts.yaml")
    assert "remove_from" in str(e.value) and "needs action delete" in str(e.value)
