"""A corpus of schema features real applications have and the demo does not, each with a
scenario (schema, rows, policy, holds, as-of) run on every store that has the feature, and an
oracle: a query written apart from the engine, evaluated on the rows *before* the run, that
lists what the run must leave (or change). Features whose scenario lives elsewhere:
self-references, ENUM/domain/citext and arrays (test_foreign_schemas), composite keys and
adversarial names (test_oracle), JSON (test_json_strategy), different link-column names
(test_related_links), parents left without purpose (test_unreferenced).
"""

from dataclasses import dataclass, field
from datetime import date

import pytest
from schema_cases import hold, policies, rows, sql
from stores import reset_pg_database

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.check import run_checks
from retention_jobs.plan import build_plan
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("schema-corpus-key-0123456789")
BOTH = ("duckdb", "postgresql")
PG = ("postgresql",)

HEADER = """
purpose: {purpose}
title: Corpus scenario
legal_basis: contract
owner: corpus
rules:
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    stores: tuple[str, ...]
    ddl: list[str]
    rules: str
    left: str
    """Oracle, evaluated before the run: the rows the run must leave as they are, as
    (key,) tuples, ordered."""
    after: str
    """The same rows read after the run (their keys, ordered)."""
    holds: list[str] = field(default_factory=list)
    changed: str | None = None
    """Oracle for anonymise scenarios: keys of the rows the run must change."""
    changed_after: str | None = None
    """Keys of rows whose values differ after the run (a query over a copy kept before)."""


SCENARIOS = [
    Scenario(
        "range-partitioned table",
        PG,
        [
            "CREATE SCHEMA logs",
            "CREATE TABLE logs.events (event_id BIGINT, user_ref BIGINT, at DATE NOT NULL, "
            "PRIMARY KEY (event_id, at)) PARTITION BY RANGE (at)",
            "CREATE TABLE logs.events_2019 PARTITION OF logs.events "
            "FOR VALUES FROM ('2019-01-01') TO ('2020-01-01')",
            "CREATE TABLE logs.events_2026 PARTITION OF logs.events "
            "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
            "INSERT INTO logs.events SELECT i, i % 7, DATE '2019-03-01' + i FROM "
            "generate_series(1, 40) i",
            "INSERT INTO logs.events SELECT 100 + i, i % 7, DATE '2026-01-01' + i * 8 FROM "
            "generate_series(1, 40) i",
        ],
        """
  - name: old-events
    table: logs.events
    key: [event_id, at]
    subject: {none: events of the corpus are keyed by no person}
    clock: at
    keep_for: P180D
    action: delete
""",
        "SELECT event_id FROM logs.events WHERE at + 180 > DATE '2026-11-22' ORDER BY 1",
        "SELECT event_id FROM logs.events ORDER BY 1",
    ),
    Scenario(
        "inheritance children",
        PG,
        [
            "CREATE SCHEMA hr",
            "CREATE TABLE hr.people (person_id BIGINT PRIMARY KEY, name TEXT, left_on DATE)",
            "CREATE TABLE hr.contractors (agency TEXT) INHERITS (hr.people)",
            "INSERT INTO hr.people VALUES (1, 'a', DATE '2015-01-01'), (2, 'b', NULL)",
            "INSERT INTO hr.contractors VALUES (3, 'c', DATE '2015-01-01', 'x'), "
            "(4, 'd', NULL, 'y')",
        ],
        """
  - name: leavers
    table: hr.people
    key: person_id
    subject: {kind: person, column: person_id}
    clock: left_on
    keep_for: P5Y
    action: delete
""",
        # the parent table reads its children too (no ONLY): contractors are people
        "SELECT person_id FROM hr.people WHERE left_on IS NULL ORDER BY 1",
        "SELECT person_id FROM hr.people ORDER BY 1",
    ),
    Scenario(
        "an update trigger that moves the clock",
        PG,
        [
            "CREATE SCHEMA crm",
            "CREATE TABLE crm.leads (lead_id BIGINT PRIMARY KEY, email TEXT, "
            "touched_at TIMESTAMP NOT NULL)",
            "CREATE FUNCTION crm.touch() RETURNS trigger AS $$ BEGIN "
            "NEW.touched_at := now() AT TIME ZONE 'UTC'; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER leads_touch BEFORE UPDATE ON crm.leads "
            "FOR EACH ROW EXECUTE FUNCTION crm.touch()",
            "INSERT INTO crm.leads SELECT i, 'lead' || i || '@example.org', "
            "TIMESTAMP '2020-01-01' + i * INTERVAL '30 days' FROM generate_series(1, 30) i",
        ],
        """
  - name: cold-leads
    table: crm.leads
    key: lead_id
    subject: {kind: lead, column: lead_id}
    clock: touched_at
    keep_for: P2Y
    action: anonymise
    columns: {email: hash}
""",
        "SELECT lead_id FROM crm.leads ORDER BY 1",
        "SELECT lead_id FROM crm.leads ORDER BY 1",
        changed="SELECT lead_id FROM crm.leads WHERE touched_at < TIMESTAMP '2024-11-23' "
        "ORDER BY 1",
        changed_after="SELECT lead_id FROM crm.leads WHERE email NOT LIKE '%@example.org' "
        "ORDER BY 1",
    ),
    Scenario(
        "quoted mixed-case identifiers",
        BOTH,
        [
            'CREATE SCHEMA "Sales"',
            'CREATE TABLE "Sales"."Customers" ("CustomerId" BIGINT PRIMARY KEY, '
            '"FullName" VARCHAR(80), "ClosedOn" DATE)',
            'CREATE TABLE "Sales"."Orders" ("OrderId" BIGINT PRIMARY KEY, '
            '"CustomerId" BIGINT REFERENCES "Sales"."Customers" ("CustomerId"), "Total" INT)',
            "INSERT INTO \"Sales\".\"Customers\" VALUES (1, 'A', DATE '2016-01-01'), "
            "(2, 'B', NULL), (3, 'C', DATE '2016-01-01')",
            'INSERT INTO "Sales"."Orders" VALUES (10, 1, 5), (11, 2, 6), (12, 3, 7)',
        ],
        """
  - name: closed
    table: Sales.Customers
    key: CustomerId
    subject: {kind: customer, column: CustomerId}
    clock: ClosedOn
    keep_for: P5Y
    action: delete
    cascade:
      - {table: Sales.Orders, on: CustomerId, action: delete}
""",
        'SELECT "CustomerId" FROM "Sales"."Customers" '
        'WHERE "ClosedOn" IS NULL OR "CustomerId" = 3 ORDER BY 1',
        'SELECT "CustomerId" FROM "Sales"."Customers" ORDER BY 1',
        holds=["customer:3"],
    ),
    Scenario(
        "a table without a primary key",
        BOTH,
        [
            "CREATE SCHEMA web",
            "CREATE TABLE web.visits (visit_ref VARCHAR(20) NOT NULL, ip VARCHAR(40), "
            "seen_on DATE NOT NULL)",
            "INSERT INTO web.visits VALUES ('v1', '10.0.0.1', DATE '2020-01-01'), "
            "('v2', '10.0.0.2', DATE '2026-11-01'), ('v3', '10.0.0.3', DATE '2021-05-05')",
        ],
        """
  - name: old-visits
    table: web.visits
    key: visit_ref
    subject: {none: a visit names no person}
    clock: seen_on
    keep_for: P90D
    action: delete
""",
        "SELECT visit_ref FROM web.visits WHERE seen_on + 90 > DATE '2026-11-22' ORDER BY 1",
        "SELECT visit_ref FROM web.visits ORDER BY 1",
    ),
    Scenario(
        "the same table name in two schemas, and a foreign key without an index",
        BOTH,
        [
            "CREATE SCHEMA eu",
            "CREATE SCHEMA us",
            "CREATE TABLE eu.users (user_id BIGINT PRIMARY KEY, deleted_on DATE)",
            "CREATE TABLE us.users (user_id BIGINT PRIMARY KEY, deleted_on DATE)",
            "CREATE TABLE eu.notes (note_id BIGINT PRIMARY KEY, "
            "user_id BIGINT REFERENCES eu.users (user_id), body VARCHAR(200))",
            "INSERT INTO eu.users VALUES (1, DATE '2020-01-01'), (2, NULL)",
            "INSERT INTO us.users VALUES (1, NULL), (2, DATE '2020-01-01')",
            "INSERT INTO eu.notes VALUES (10, 1, 'x'), (11, 2, 'y')",
        ],
        """
  - name: eu-deleted
    table: eu.users
    key: user_id
    subject: {kind: eu_user, column: user_id}
    clock: deleted_on
    keep_for: P30D
    action: delete
    cascade:
      - {table: eu.notes, on: user_id, action: delete}
""",
        "SELECT 'eu', user_id FROM eu.users WHERE deleted_on IS NULL "
        "UNION ALL SELECT 'us', user_id FROM us.users ORDER BY 1, 2",
        "SELECT 'eu', user_id FROM eu.users UNION ALL SELECT 'us', user_id FROM us.users "
        "ORDER BY 1, 2",
    ),
    Scenario(
        "a CHECK constraint and VARCHAR(n) the anonymised value must satisfy",
        BOTH,
        [
            "CREATE SCHEMA shop",
            "CREATE TABLE shop.members (member_id BIGINT PRIMARY KEY, "
            "phone VARCHAR(16) CHECK (length(phone) >= 8), nick VARCHAR(12) NOT NULL, "
            "ended_on DATE)",
            "INSERT INTO shop.members VALUES (1, '+4740000001', 'kari', DATE '2019-01-01'), "
            "(2, '+4740000002', 'ola', NULL), (3, '+4740000003', 'per', DATE '2019-02-01')",
        ],
        """
  - name: ended
    table: shop.members
    key: member_id
    subject: {kind: member, column: member_id}
    clock: ended_on
    keep_for: P3Y
    action: anonymise
    columns:
      phone: {mask: {keep_last: 2}}
      nick: {constant: removed}
""",
        "SELECT member_id FROM shop.members ORDER BY 1",
        "SELECT member_id FROM shop.members ORDER BY 1",
        changed="SELECT member_id FROM shop.members WHERE ended_on IS NOT NULL ORDER BY 1",
        changed_after="SELECT member_id FROM shop.members WHERE nick = 'removed' "
        "AND phone LIKE '*********%' ORDER BY 1",
    ),
    Scenario(
        # 600 fakes from a pool of 4,096 collide unless the engine knows the column is unique
        "a unique expression index on lower(email)",
        PG,
        [
            "CREATE SCHEMA app",
            "CREATE TABLE app.accounts (account_id BIGINT PRIMARY KEY, email TEXT NOT NULL, "
            "closed_on DATE)",
            "CREATE UNIQUE INDEX accounts_email_ci ON app.accounts (lower(email))",
            "INSERT INTO app.accounts SELECT i, 'User' || i || '@Example.org', "
            "CASE WHEN i % 2 = 0 THEN DATE '2019-01-01' END FROM generate_series(1, 1200) i",
        ],
        """
  - name: closed
    table: app.accounts
    key: account_id
    subject: {kind: account, column: account_id}
    clock: closed_on
    keep_for: P1Y
    action: anonymise
    columns:
      email: {fake: email}
""",
        "SELECT account_id FROM app.accounts ORDER BY 1",
        "SELECT account_id FROM app.accounts ORDER BY 1",
        changed="SELECT account_id FROM app.accounts WHERE closed_on IS NOT NULL ORDER BY 1",
        changed_after="SELECT account_id FROM app.accounts WHERE email NOT LIKE '%@Example.org' "
        "ORDER BY 1",
    ),
]


def _params():
    for s in SCENARIOS:
        for kind in s.stores:
            marks = [pytest.mark.postgres] if kind == "postgresql" else []
            yield pytest.param(s, kind, id=f"{s.name}-{kind}", marks=marks)


def _store(request, kind: str, tmp_path) -> Store:
    if kind == "duckdb":
        return DuckDBStore(tmp_path / "corpus.duckdb")
    url = request.getfixturevalue("pg_url")
    reset_pg_database(url)
    return SqlStore(url)


@pytest.mark.parametrize(("scenario", "kind"), list(_params()))
def test_scenario_ends_as_the_oracle_says(request, tmp_path, scenario: Scenario, kind: str):
    store = _store(request, kind, tmp_path)
    sql(store, *scenario.ddl)
    for subject in scenario.holds:
        hold(store, subject, "C-1", "corpus hold")
    left = rows(store, scenario.left)
    changed = rows(store, scenario.changed) if scenario.changed else None
    ps = policies(HEADER.format(purpose="corpus") + scenario.rules)
    plan = build_plan(store, ps, AS_OF)
    run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert rows(store, scenario.after) == left
    if changed is not None:
        assert scenario.changed_after
        assert rows(store, scenario.changed_after) == changed
        assert sum(r.to_act for r in plan.rules) == len(changed)
    checks = {c.name: c for c in run_checks(store, ps, AS_OF, KEY)}
    assert checks["nothing_expired_left"].passed, checks["nothing_expired_left"].summary
    # a second night changes nothing
    again = run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert all(r.deleted == 0 and r.anonymised == 0 for r in again.rules)
