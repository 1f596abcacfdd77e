"""A run whose rule fails after another rule committed (issue 15), on DuckDB and PostgreSQL.

The leads table has a CHECK constraint that the `hash` strategy's output breaks, so the
anonymise rule fails by construction after the delete rule committed. The run must say which
rules committed, which did not and why (the error class and a message without the database's
text), exit 7, record itself as `partial`, and leave everything the failure stopped as it was;
once the cause is fixed, the next run does the rest.
"""

import os
import pickle
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from schema_cases import policies, rows, sql

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PartialRun
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 11, 22)
KEY_TEXT = "partial-run-key-0123456789abcdef"
KEY = PseudonymKey.from_text(KEY_TEXT)

CUSTOMERS = """
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
"""


def leads(strategy: str) -> str:
    return f"""
purpose: leads
title: Leads
legal_basis: consent
owner: marketing
rules:
  - name: cold
    table: s.leads
    key: id
    subject: {{kind: lead, column: id}}
    clock: seen_at
    keep_for: P1Y
    action: anonymise
    columns: {{email: {strategy}}}
  - name: notes
    table: s.notes
    key: id
    subject: {{kind: lead, column: lead_id}}
    clock: written_at
    keep_for: P1Y
    action: anonymise
    columns: {{body: redact}}
"""


DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.customers (id BIGINT PRIMARY KEY, ended_at DATE)",
    # an e-mail must hold an @: a keyed hash does not, a fake e-mail does
    "CREATE TABLE s.leads (id BIGINT PRIMARY KEY, email VARCHAR CHECK (email LIKE '%@%'), "
    "seen_at DATE)",
    "CREATE TABLE s.notes (id BIGINT PRIMARY KEY, lead_id BIGINT, body VARCHAR, written_at DATE)",
    "INSERT INTO s.customers VALUES "
    + ", ".join(f"({i}, DATE '{'2020-01-01' if i <= 6 else '2026-10-01'}')" for i in range(1, 9)),
    # marker values: none may reach any output
    "INSERT INTO s.leads VALUES "
    + ", ".join(f"({i}, 'zq-marker-{i}@example.org', DATE '2020-01-01')" for i in range(1, 6)),
    "INSERT INTO s.notes VALUES "
    + ", ".join(f"({i}, {i}, 'zq-note-{i}', DATE '2020-01-01')" for i in range(1, 6)),
]


def location(store: Store) -> str:
    if isinstance(store, DuckDBStore):
        return str(store.path)
    return store.engine.url.render_as_string(hide_password=False)  # type: ignore[attr-defined]


def test_a_rule_failing_after_another_committed_is_reported_and_the_rest_is_picked_up(
    store, tmp_path: Path
):
    sql(store, *DDL)
    before = {t: rows(store, f"SELECT * FROM s.{t} ORDER BY id") for t in ("leads", "notes")}
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "customers.yaml").write_text(CUSTOMERS)
    (tmp_path / "p" / "leads.yaml").write_text(leads("hash"))
    r = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "run", "--store", location(store)]
        + ["--policies", str(tmp_path / "p"), "--as-of", AS_OF.isoformat()]
        + ["--max-delete-fraction", "1", "--batch-size", "2"],
        env={**os.environ, "RETENTION_PSEUDONYM_KEY": KEY_TEXT, "RETENTION_STORE": ""},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 7, r.stderr
    err = r.stderr
    assert "rule leads/cold failed: StoreRejected" in err and "CHECK" in err
    assert "committed: shop/ended" in err
    assert "not committed: leads/cold (failed)" in err and "not started: leads/notes" in err
    assert "recorded as 'partial'" in err and "Traceback" not in err
    assert "zq-" not in r.stdout + err  # no value of a row reaches the output

    # the oracle, from the data: the delete rule's expired customers are gone, the rest stands
    assert rows(store, "SELECT id FROM s.customers ORDER BY id") == [(7,), (8,)]
    assert rows(store, "SELECT * FROM s.leads ORDER BY id") == before["leads"]
    assert rows(store, "SELECT * FROM s.notes ORDER BY id") == before["notes"]
    ((status, summary),) = rows(
        store, "SELECT status, summary FROM retention_control.runs WHERE mode = 'run'"
    )
    assert status == "partial"
    assert '"failed": {"rule": "leads/cold", "error": "StoreRejected"' in summary
    assert '"not_run": ["leads/notes"]' in summary and "zq-" not in summary
    ledger = rows(
        store,
        "SELECT action, rule, sum(deleted) FROM retention_control.audit "
        "WHERE action IN ('delete', 'anonymise') GROUP BY action, rule",
    )
    assert ledger == [("delete", "ended", 6)]
    assert rows(store, "SELECT count(*) FROM retention_control.purge_pending") == [(0,)]

    # the cause fixed (a strategy whose output keeps the @), the next run does the rest
    report = run_policies(
        store,
        policies(CUSTOMERS, leads("{fake: email}")),
        AS_OF,
        KEY,
        RunOptions(max_delete_fraction=None, batch_size=2),
    )
    done = {x.plan.rule_id: x for x in report.rules}
    assert done["shop/ended"].deleted == 0
    assert done["leads/cold"].anonymised == 5 and done["leads/notes"].anonymised == 5
    after = rows(store, "SELECT id, email FROM s.leads ORDER BY id")
    assert [i for i, _ in after] == [1, 2, 3, 4, 5]
    assert all("@" in e and not e.startswith("zq-") for _, e in after)
    assert all(
        b != orig[2]
        for (_, _, b, _), orig in zip(
            rows(store, "SELECT * FROM s.notes ORDER BY id"), before["notes"], strict=True
        )
    )


def test_a_partial_run_in_process_raises_with_the_report_and_purges_what_committed(store):
    sql(store, *DDL)
    with pytest.raises(PartialRun) as e:
        run_policies(
            store,
            policies(CUSTOMERS, leads("hash")),
            AS_OF,
            KEY,
            RunOptions(max_delete_fraction=None, batch_size=2),
        )
    report = e.value.report
    assert [x.plan.rule_id for x in report.rules] == ["shop/ended"]
    assert report.failed.rule_id == "leads/cold" and report.failed.error == "StoreRejected"
    assert report.failed.committed_rows == 0 and report.failed.terminal
    assert report.not_run == ("leads/notes",)
    assert "zq-" not in str(e.value)
    # a parallel run's worker raises it in another process: it travels by pickle
    again = pickle.loads(pickle.dumps(e.value))
    assert again.report == report and str(again) == str(e.value) and again.terminal
    # the committed deletes were purged like any run's (their values leave the files)
    assert report.purge is not None and "s.customers" in report.tables_changed
    assert rows(store, "SELECT count(*) FROM retention_control.purge_pending") == [(0,)]
