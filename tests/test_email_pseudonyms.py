"""`hash: {email_domain: ...}` writes pseudonyms that still look like e-mail addresses, so a
unique index and a format CHECK constraint accept them, on DuckDB and PostgreSQL.

The oracle computes each expected pseudonym with hashlib from the original value, apart from
the engine's Polars code.
"""

import hashlib
from datetime import date

import pytest
from schema_cases import policies, rows, sql
from stores import reset_pg_database

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.load import load_text
from retention_jobs.resolve import resolve
from retention_jobs.store.sql_store import SqlStore

AS_OF = date(2026, 11, 22)
KEY_TEXT = "email-pseudonym-key-0123456789"
KEY = PseudonymKey.from_text(KEY_TEXT)

DDL = [
    "CREATE SCHEMA app",
    # the application checks the format, and two accounts never share an address
    "CREATE TABLE app.accounts (account_id BIGINT PRIMARY KEY, "
    "email VARCHAR({width}) NOT NULL UNIQUE CHECK (email LIKE '%_@_%._%'), closed_on DATE)",
    "INSERT INTO app.accounts VALUES "
    "(1, 'Kari.Nordmann@example.no', DATE '2020-01-10'), "
    "(2, 'ola@example.no', DATE '2021-03-01'), "
    "(3, 'per@example.se', NULL), "
    "(4, 'lise@example.dk', DATE '2026-11-01')",
]

POLICY = """
purpose: accounts
title: Closed accounts
legal_basis: contract
owner: app-team
rules:
  - name: closed
    table: app.accounts
    key: account_id
    subject: {{kind: account, column: account_id}}
    clock: closed_on
    keep_for: P1Y
    action: anonymise
    columns:
      email: {{hash: {{length: {length}, email_domain: anonymised.invalid}}}}
"""


def expected_pseudonym(original: str, length: int) -> str:
    secret = hashlib.sha256(KEY_TEXT.encode()).digest()
    digest = hashlib.blake2b(original.encode(), key=secret, digest_size=16).hexdigest()
    return f"{digest[:length]}@anonymised.invalid"


def test_pseudonyms_keep_the_email_shape_and_pass_the_constraints(store):
    sql(store, *(d.format(width=60) for d in DDL))
    before = dict(rows(store, "SELECT account_id, email FROM app.accounts"))
    report = run_policies(
        store,
        policies(POLICY.format(length=24)),
        AS_OF,
        KEY,
        RunOptions(max_delete_fraction=None, purge=False),
    )
    assert sum(r.anonymised for r in report.rules) == 2
    after = dict(rows(store, "SELECT account_id, email FROM app.accounts"))
    # closed more than a year before the as-of date: 1 and 2; open (3) and recent (4) stay
    assert after == {
        1: expected_pseudonym(before[1], 24),
        2: expected_pseudonym(before[2], 24),
        3: before[3],
        4: before[4],
    }


@pytest.mark.postgres
def test_a_column_too_short_for_hash_and_domain_is_refused_before_any_change(pg_url):
    # 16 hex characters + "@anonymised.invalid" (19) need 35; the column holds 30. (DuckDB
    # does not enforce VARCHAR(n), so only PostgreSQL has a length to respect.)
    reset_pg_database(pg_url)
    store = SqlStore(pg_url)
    sql(store, *(d.format(width=30) for d in DDL))
    before = rows(store, "SELECT * FROM app.accounts ORDER BY account_id")
    ps = policies(POLICY.format(length=16))
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    with pytest.raises(PolicyError) as e:
        resolve(ps, catalog, store.kind)
    assert "needs at least 35 characters" in str(e.value)
    assert "columns.email" in str(e.value)
    assert rows(store, "SELECT * FROM app.accounts ORDER BY account_id") == before


@pytest.mark.parametrize("domain", ["anonymised", "Example.ORG", "a..b", "x@y.invalid", "-a.b"])
def test_a_domain_that_is_not_a_host_name_is_refused_with_its_location(domain):
    text = POLICY.format(length=24).replace("anonymised.invalid", domain)
    with pytest.raises(PolicyError) as e:
        load_text(text, "accounts.yaml")
    message = str(e.value)
    assert "accounts.yaml:15:" in message
    assert "is not a host name" in message
