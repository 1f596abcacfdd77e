"""Related clocks and filters across columns with different names (`people.id` <->
`memberships.person_id`), and over two hops (person -> membership -> group), on DuckDB and
PostgreSQL. Modelled on a membership organisation's schema: nobody here designed it around the
engine.

The oracle is a second query per case, written with joins and GROUP BY instead of the engine's
correlated EXISTS, over the rows before the run.
"""

from datetime import date

import pytest
from schema_cases import policies, rows, sql

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.plan import build_plan
from retention_jobs.resolve import resolve

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("related-links-key-0123456789")

DDL = [
    "CREATE SCHEMA org",
    "CREATE TABLE org.people (id BIGINT PRIMARY KEY, full_name VARCHAR(80), "
    "registered_on DATE NOT NULL)",
    'CREATE TABLE org."groups" (group_no BIGINT PRIMARY KEY, kind VARCHAR(20) NOT NULL)',
    "CREATE TABLE org.memberships (membership_id BIGINT PRIMARY KEY, "
    "person_id BIGINT NOT NULL REFERENCES org.people (id), "
    'group_ref BIGINT NOT NULL REFERENCES org."groups" (group_no), '
    "joined_on DATE NOT NULL, left_on DATE)",
    "INSERT INTO org.\"groups\" VALUES (10, 'double_opt_in'), (20, 'single_opt_in'), "
    "(30, 'double_opt_in')",
    # registered long ago, except 7
    "INSERT INTO org.people VALUES (1, 'A', DATE '2015-01-01'), (2, 'B', DATE '2015-01-01'), "
    "(3, 'C', DATE '2015-01-01'), (4, 'D', DATE '2015-01-01'), (5, 'E', DATE '2015-01-01'), "
    "(6, 'F', DATE '2015-01-01'), (7, 'G', DATE '2026-10-01')",
    "INSERT INTO org.memberships VALUES "
    # 1: left a double-opt-in group long ago, nothing since
    "(100, 1, 10, DATE '2016-01-01', DATE '2019-05-01'), "
    # 2: left one group long ago, still in another (double opt-in)
    "(101, 2, 10, DATE '2016-01-01', DATE '2019-05-01'), "
    "(102, 2, 30, DATE '2016-01-01', NULL), "
    # 3: only single-opt-in groups, left long ago
    "(103, 3, 20, DATE '2016-01-01', DATE '2018-01-01'), "
    # 4: joined recently
    "(104, 4, 30, DATE '2026-09-01', NULL), "
    # 5: one double- and one single-opt-in, both left long ago
    "(105, 5, 10, DATE '2016-01-01', DATE '2019-01-01'), "
    "(106, 5, 20, DATE '2016-01-01', DATE '2019-01-01')",
    # 6 has no membership at all; 7 registered recently with none
]

# The last time a person joined a group is the clock; people with no membership fall back to
# nothing (a NULL clock never expires), so 6 and 7 stay.
LAST_JOINED = """
purpose: members
title: Former members
legal_basis: consent
owner: membership-office
rules:
  - name: lapsed
    table: org.people
    key: id
    subject: {kind: person, column: id}
    clock: {table: org.memberships, on: person_id, references: id, column: joined_on}
    keep_for: P3Y
    related:
      - table: org.memberships
        on: person_id
        references: id
        all: {left_on: {is_null: false}}
      - table: org.memberships
        on: person_id
        references: id
        any: {}
        related:
          - table: org.groups
            on: group_no
            references: group_ref
            all: {kind: double_opt_in}
    action: anonymise
    columns: {full_name: redact}
"""

# Oracle, independent of the engine's EXISTS form: per person, aggregate the memberships joined
# to their groups.
ORACLE = """
SELECT p.id
FROM org.people p
JOIN org.memberships m ON m.person_id = p.id
JOIN org."groups" g ON g.group_no = m.group_ref
GROUP BY p.id
HAVING max(m.joined_on) < DATE '2023-11-22'
   AND count(*) = count(m.left_on)
   AND sum(CASE WHEN g.kind = 'double_opt_in' THEN 1 ELSE 0 END) > 0
ORDER BY p.id
"""


def test_related_clock_and_two_hop_filter_across_differently_named_columns(store):
    sql(store, *DDL)
    expected = [r[0] for r in rows(store, ORACLE)]
    assert expected == [1, 5]  # the scenario is what its comments say
    ps = policies(LAST_JOINED)
    (rp,) = build_plan(store, ps, AS_OF).rules
    assert rp.to_act == len(expected)
    before = dict(rows(store, "SELECT id, full_name FROM org.people"))
    run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False))
    after = dict(rows(store, "SELECT id, full_name FROM org.people"))
    assert [i for i in sorted(after) if after[i] != before[i]] == expected
    assert all(after[i] is None for i in expected)


def test_a_link_to_a_column_the_rule_table_lacks_says_to_name_it(store):
    sql(store, *DDL)
    broken = LAST_JOINED.replace(
        "clock: {table: org.memberships, on: person_id, references: id, column: joined_on}",
        "clock: {table: org.memberships, on: person_id, column: joined_on}",
    )
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    with pytest.raises(PolicyError) as e:
        resolve(policies(broken), catalog, store.kind)
    message = str(e.value)
    assert "p0.yaml:11:" in message
    assert "org.people has no column 'person_id'" in message
    assert "references: COLUMN" in message


def test_a_misspelt_references_column_is_located(store):
    sql(store, *DDL)
    broken = LAST_JOINED.replace("references: group_ref", "references: group_rf")
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    with pytest.raises(PolicyError) as e:
        resolve(policies(broken), catalog, store.kind)
    message = str(e.value)
    assert "related[1].related[0].references" in message or "p0.yaml:27:" in message
    assert "did you mean 'group_ref'" in message
