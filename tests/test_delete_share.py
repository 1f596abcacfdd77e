"""The delete-share guard: distinct rows (a row that a rule and another rule's cascade both
reach is one row, issue 16), over a whole night (every run with the same as-of date, whatever
its purpose, issue 15). Counts are checked against the tables themselves."""

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from schema_cases import policies, rows, sql

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import ApprovalRequired
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore

KEY = PseudonymKey.from_text("delete-share-test-key-0123456789")
AS_OF = date(2026, 5, 1)
ROOT = Path(__file__).resolve().parent.parent

# --- a row reached by a rule and by another rule's cascade ----------------------------------

ACCOUNTS = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.accounts (id BIGINT PRIMARY KEY, closed_on DATE)",
    "CREATE TABLE s.events (id BIGINT PRIMARY KEY, "
    "account_id BIGINT REFERENCES s.accounts(id), happened_on DATE)",
    # accounts 1..4 closed long ago; the others open
    "INSERT INTO s.accounts VALUES "
    + ", ".join(
        f"({i}, {'DATE ' + repr('2015-01-01') if i <= 4 else 'NULL'})" for i in range(1, 11)
    ),
    # four events per account: old ones for the closed accounts, recent ones for the others
    "INSERT INTO s.events VALUES "
    + ", ".join(
        f"({10 * a + k}, {a}, DATE '{'2015-01-01' if a <= 4 else '2026-04-01'}')"
        for a in range(1, 11)
        for k in range(4)
    ),
]
EVENTS = """
purpose: events
title: Old events
legal_basis: legitimate_interests
owner: qa
rules:
  - name: old-events
    table: s.events
    key: id
    clock: happened_on
    keep_for: P1Y
    action: delete
"""
CLOSED = """
purpose: accounts
title: Closed accounts
legal_basis: contract
owner: qa
rules:
  - name: closed
    table: s.accounts
    key: id
    clock: closed_on
    keep_for: P1Y
    action: delete
    cascade:
      - table: s.events
        on: account_id
        action: delete
"""


def _count(store: Store, table: str) -> int:
    return rows(store, f"SELECT count(*) FROM {table}")[0][0]


def test_a_row_two_rules_reach_counts_once(store):
    """16 of 40 events go (40 %): old-events deletes them, and the closed accounts' cascade
    reaches the same 16. Counted twice they read 80 % and a 50 % limit refuses the run."""
    sql(store, *ACCOUNTS)
    ps = policies(EVENTS, CLOSED)
    with pytest.raises(ApprovalRequired) as refused:
        run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=0.3, purge=False))
    assert "s.events: 16 of 40 rows (40%)" in str(refused.value)
    assert _count(store, "s.events") == 40, "a refused run changed data"

    report = run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=0.5, purge=False))
    assert _count(store, "s.events") == 24
    assert _count(store, "s.accounts") == 6
    deleted = sum(r.deleted for r in report.rules if r.plan.table == "s.events") + sum(
        c.deleted for r in report.rules for c in r.cascades if c.table == "s.events"
    )
    assert deleted == 16


# --- one night, several purposes ------------------------------------------------------------

CONTACTS = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.contacts (id BIGINT PRIMARY KEY, source VARCHAR, ended_on DATE)",
    # 100 contacts: 15 from each of the sources a, b, c ended long ago; the rest still active
    "INSERT INTO s.contacts VALUES "
    + ", ".join(
        f"({i}, '{'abc'[i % 3] if i <= 45 else 'x'}', "
        f"{'DATE ' + repr('2015-01-01') if i <= 45 else 'NULL'})"
        for i in range(1, 101)
    ),
]


def _source_policy(source: str) -> str:
    return f"""
purpose: from-{source}
title: Contacts from {source}
legal_basis: consent
owner: qa
rules:
  - name: ended
    table: s.contacts
    key: id
    clock: ended_on
    keep_for: P1Y
    where:
      source: {source}
    action: delete
"""


THREE = [_source_policy(s) for s in "abc"]


def _run(store: Store, purpose: str, limit: float | None, as_of: date = AS_OF):
    return run_policies(
        store,
        policies(*THREE),
        as_of,
        KEY,
        RunOptions(max_delete_fraction=limit, purposes=(purpose,), purge=False),
    )


def test_a_night_of_runs_one_purpose_at_a_time_is_judged_as_a_whole(store):
    """Three purposes take 15 % each of one table, run one at a time as the Dagster assets run
    them. Under a 40 % limit the third run (45 % of the night) is refused and changes nothing;
    approving 45 % lets it through."""
    sql(store, *CONTACTS)
    _run(store, "from-a", 0.4)
    _run(store, "from-b", 0.4)
    assert _count(store, "s.contacts") == 70
    with pytest.raises(ApprovalRequired) as refused:
        _run(store, "from-c", 0.4)
    assert "s.contacts: 30 deleted earlier tonight + 15 by this run of 100 rows (45%)" in str(
        refused.value
    )
    assert _count(store, "s.contacts") == 70, "a refused run changed data"
    _run(store, "from-c", 0.45)
    assert _count(store, "s.contacts") == 55


def test_another_as_of_date_is_another_night(store):
    """The night is the as-of date: yesterday's deletes do not count against today's run."""
    sql(store, *CONTACTS)
    _run(store, "from-a", 0.2, AS_OF - timedelta(days=1))
    _run(store, "from-b", 0.2)  # 15 of 85: alone in its night
    assert _count(store, "s.contacts") == 70


def test_an_approved_run_still_counts_for_the_night(store):
    """An approved run (no limit) of the night still counts for the next one."""
    sql(store, *CONTACTS)
    _run(store, "from-a", None)
    with pytest.raises(ApprovalRequired):
        _run(store, "from-b", 0.25)  # 30 of 100
    assert _count(store, "s.contacts") == 85


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_PSEUDONYM_KEY"] = "delete-share-cli-key-0123456789"
    return subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_refuses_the_third_purpose_of_the_night(store, tmp_path, request):
    sql(store, *CONTACTS)
    pdir = tmp_path / "policies"
    pdir.mkdir()
    for source, text in zip("abc", THREE, strict=True):
        (pdir / f"from-{source}.yaml").write_text(text)
    where = str(store.path) if isinstance(store, DuckDBStore) else request.getfixturevalue("pg_url")
    base = ["run", "--store", where, "--policies", str(pdir), "--as-of", AS_OF.isoformat()]
    for purpose in ("from-a", "from-b"):
        ok = _cli(*base, "--purpose", purpose, "--max-delete-fraction", "0.4", cwd=tmp_path)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = _cli(*base, "--purpose", "from-c", "--max-delete-fraction", "0.4", cwd=tmp_path)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "30 deleted earlier tonight + 15 by this run of 100 rows (45%)" in (
        refused.stdout + refused.stderr
    ).replace("\n", " ")
    assert _count(store, "s.contacts") == 70
    approved = _cli(*base, "--purpose", "from-c", "--max-delete-fraction", "0.45", cwd=tmp_path)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert _count(store, "s.contacts") == 55
