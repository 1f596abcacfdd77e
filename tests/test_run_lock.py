"""One run per store at a time: a second run is refused with `RunInProgress` (CLI exit 6)
and changes nothing; a run that holds the store marks runs a killed run left `running` as
`interrupted`."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date

import psycopg
import pytest
from stores import pg_database

from retention_jobs import apply as apply_module
from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import RunInProgress
from retention_jobs.load import load_policies
from retention_jobs.store.sql_store import SqlStore

AS_OF = date(2026, 6, 1)
KEY_TEXT = "run-lock-test-key-0123456789"
KEY = PseudonymKey.from_text(KEY_TEXT)
ROWS = 200

POLICY = """
purpose: customers
title: Customers
legal_basis: contract
owner: ops
rules:
  - name: inactive
    table: app.customers
    key: id
    clock: last_purchase_at
    keep_for: P1Y
    action: delete
"""


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def db(tmp_path):
    with pg_database() as url:
        with psycopg.connect(libpq(url), autocommit=True) as con:
            con.execute("CREATE SCHEMA app")
            con.execute(
                "CREATE TABLE app.customers (id BIGINT PRIMARY KEY, email TEXT, last_purchase_at DATE)"
            )
            con.execute(
                f"INSERT INTO app.customers SELECT i, 'lockmarker' || i || '@shop.example', "
                f"CASE WHEN i % 2 = 0 THEN DATE '2020-01-01' ELSE DATE '2026-05-01' END "
                f"FROM generate_series(1, {ROWS}) i"
            )
        (tmp_path / "customers.yaml").write_text(textwrap.dedent(POLICY))
        yield url, tmp_path / "customers.yaml"


def cli_run(store: str, policy) -> subprocess.CompletedProcess:
    env = {**os.environ, "RETENTION_STORE": store, "RETENTION_PSEUDONYM_KEY": KEY_TEXT}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "retention_jobs.cli",
            "run",
            "--policies",
            str(policy),
            "--as-of",
            AS_OF.isoformat(),
            "--max-delete-fraction",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def count(url: str, sql: str) -> int:
    with psycopg.connect(libpq(url)) as con:
        return con.execute(sql).fetchone()[0]


@pytest.mark.postgres
def test_a_second_run_on_postgresql_is_refused_and_changes_nothing(db, monkeypatch):
    url, policy = db
    paused, release = threading.Event(), threading.Event()
    real = apply_module.Applier.apply_rule

    def pause_then_apply(self, *args, **kwargs):
        paused.set()
        assert release.wait(120)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(apply_module.Applier, "apply_rule", pause_then_apply)
    results: list = []

    def first_run() -> None:
        try:
            results.append(
                run_policies(
                    SqlStore(url),
                    load_policies([str(policy)]),
                    AS_OF,
                    KEY,
                    RunOptions(max_delete_fraction=None, purge=False),
                )
            )
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            results.append(e)
            paused.set()

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert paused.wait(120)
        assert not results, results
        before_runs = count(url, "SELECT count(*) FROM retention_control.runs")
        before_audit = count(url, "SELECT count(*) FROM retention_control.audit")
        # in process: the typed error, at once (no wait on row locks)
        t0 = time.monotonic()
        with pytest.raises(RunInProgress, match="another run holds") as exc:
            run_policies(
                SqlStore(url),
                load_policies([str(policy)]),
                AS_OF,
                KEY,
                RunOptions(max_delete_fraction=None, purge=False),
            )
        assert time.monotonic() - t0 < 30
        assert "pid" in str(exc.value)
        # the CLI: exit 6, a message without personal data
        second = cli_run(url, policy)
        assert second.returncode == 6, second.stderr
        assert "another run holds" in second.stderr
        assert "lockmarker" not in second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        # the refused runs changed nothing
        assert count(url, "SELECT count(*) FROM app.customers") == ROWS
        assert count(url, "SELECT count(*) FROM retention_control.runs") == before_runs
        assert count(url, "SELECT count(*) FROM retention_control.audit") == before_audit
    finally:
        release.set()
        thread.join(120)
    (report,) = results
    assert not isinstance(report, BaseException), report
    assert report.rules[0].deleted == ROWS // 2
    assert count(url, "SELECT count(*) FROM retention_control.runs WHERE status = 'running'") == 0
    # the lock went with the first run: the next one is not refused
    assert cli_run(url, policy).returncode == 0


@pytest.mark.postgres
def test_a_run_marks_runs_left_running_by_a_killed_run_as_interrupted(db):
    url, policy = db
    store = SqlStore(url)
    with store.connect() as s:
        control.ensure_control_schema(store, s)
        control.start_run(s, "killed-run", AS_OF, "run", "x" * 64)
        control.start_run(s, "request-in-flight", AS_OF, "request", "x" * 64)
    report = run_policies(
        store,
        load_policies([str(policy)]),
        AS_OF,
        KEY,
        RunOptions(max_delete_fraction=None, purge=False),
    )
    assert report.interrupted_runs == 1
    with psycopg.connect(libpq(url)) as con:
        states = dict(
            con.execute(
                "SELECT run_id, status || ':' || (finished_at IS NOT NULL) FROM retention_control.runs"
            ).fetchall()
        )
        summary = con.execute(
            "SELECT summary FROM retention_control.runs WHERE run_id = %s", [report.run_id]
        ).fetchone()[0]
    assert states["killed-run"] == "interrupted:true"
    # a request takes no run lock and may be alive: left alone
    assert states["request-in-flight"] == "running:false"
    assert states[report.run_id] == "succeeded:true"
    assert '"interrupted_runs": 1' in summary


def test_a_second_run_on_a_duckdb_file_in_use_exits_6(tmp_path):
    path = tmp_path / "store.duckdb"
    (tmp_path / "customers.yaml").write_text(textwrap.dedent(POLICY))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); time.sleep(120)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        second = cli_run(str(path), tmp_path / "customers.yaml")
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 6, second.stderr
    assert "holds the DuckDB file" in second.stderr
    assert "Traceback" not in second.stderr
