"""A nightly run on a live PostgreSQL database: the application keeps writing while the run
deletes, and a run killed with SIGKILL between batches leaves whole batches behind and is
finished by the next run, ending where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.stores import pg_database

AS_OF = "2026-11-22"
KEY = "live-db-test-key-0123456789"

POLICY = """
purpose: accounts
title: Closed accounts
legal_basis: contract
owner: ops
rules:
  - name: closed
    table: app.accounts
    key: id
    clock: closed_at
    keep_for: P1Y
    action: delete
    cascade:
      - {table: app.events, on: account_id, action: delete}
"""


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def build(url: str, rows: int) -> None:
    """Every third account closed in 2020 (expired), the others open; two events each."""
    with psycopg.connect(libpq(url), autocommit=True) as con:
        con.execute("CREATE SCHEMA app")
        con.execute(
            "CREATE TABLE app.accounts (id BIGINT PRIMARY KEY, email TEXT, closed_at DATE, note TEXT)"
        )
        con.execute(
            "CREATE TABLE app.events (id BIGSERIAL PRIMARY KEY, "
            "account_id BIGINT REFERENCES app.accounts(id), kind TEXT)"
        )
        con.execute("CREATE INDEX ON app.events (account_id)")
        con.execute(f"""INSERT INTO app.accounts SELECT i, 'user' || i || '@live.example',
                        CASE WHEN i % 3 = 0 THEN DATE '2020-01-01' END, 'n' FROM generate_series(1, {rows}) i""")
        con.execute(
            "INSERT INTO app.events (account_id, kind) SELECT id, k FROM app.accounts, "
            "(VALUES ('login'), ('logout')) v(k)"
        )


def cli(url: str, policies: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RETENTION_STORE": url, "RETENTION_PSEUDONYM_KEY": KEY}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retention_jobs.cli",
            "run",
            "--policies",
            str(policies),
            "--as-of",
            AS_OF,
            "--max-delete-fraction",
            "1",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(libpq(url)) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def pg(tmp_path):
    with pg_database() as url:
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies/accounts.yaml").write_text(POLICY)
        yield url, tmp_path / "policies"


def test_sigkill_mid_run_leaves_whole_batches_and_the_rerun_finishes(pg):
    url, policies = pg
    build(url, 30_000)
    expired = {r[0] for r in rows(url, "SELECT id FROM app.accounts WHERE closed_at IS NOT NULL")}
    proc = cli(url, policies, "--batch-size", "200")
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline:  # kill once a few batches have committed
        try:
            n = rows(url, "SELECT count(*) FROM retention_control.audit WHERE action = 'delete'")[
                0
            ][0]
        except psycopg.errors.UndefinedTable:
            n = 0
        if n >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # whole batches: what the ledger says was deleted is exactly what is gone, parents and children
    gone = 30_000 - rows(url, "SELECT count(*) FROM app.accounts")[0][0]
    logged = rows(
        url,
        "SELECT coalesce(sum(deleted), 0) FROM retention_control.audit "
        "WHERE action = 'delete' AND table_name = 'app.accounts'",
    )[0][0]
    assert 0 < gone == logged < len(expired)
    events_gone = 60_000 - rows(url, "SELECT count(*) FROM app.events")[0][0]
    events_logged = rows(
        url,
        "SELECT coalesce(sum(deleted), 0) FROM retention_control.audit "
        "WHERE action = 'cascade-delete' AND table_name = 'app.events'",
    )[0][0]
    assert events_gone == events_logged >= 2 * gone
    assert not rows(
        url,
        "SELECT 1 FROM app.events e LEFT JOIN app.accounts a ON a.id = e.account_id "
        "WHERE a.id IS NULL",
    )
    # the rerun finishes; the end state is an uninterrupted run's: exactly the expired ones gone
    rerun = cli(url, policies)
    out, errs = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, errs
    left = {r[0] for r in rows(url, "SELECT id FROM app.accounts")}
    assert left == set(range(1, 30_001)) - expired
    assert rows(url, "SELECT count(*) FROM app.events")[0][0] == 2 * len(left)


def test_application_writes_while_the_run_deletes(pg):
    url, policies = pg
    build(url, 20_000)
    # accounts the application reopens while the run goes: the highest ids, which the run
    # (batches in key order) reaches last, so each reopen commits before its batch starts
    reopened = [i for i in range(19_800, 20_001) if i % 3 == 0]
    errors: list[BaseException] = []
    inserted: list[int] = []
    updated: list[int] = []
    started = threading.Event()

    def application() -> None:
        try:
            with psycopg.connect(libpq(url), autocommit=True) as con:
                for i in reopened:
                    con.execute("UPDATE app.accounts SET closed_at = NULL WHERE id = %s", [i])
                started.set()
                for k in range(300):
                    new_id = 100_000 + k
                    with con.transaction():
                        con.execute(
                            "INSERT INTO app.accounts VALUES (%s, %s, NULL, 'new')",
                            [new_id, f"new{k}@x"],
                        )
                        con.execute(
                            "INSERT INTO app.events (account_id, kind) VALUES (%s, 'login')",
                            [new_id],
                        )
                    inserted.append(new_id)
                    open_id = 1 + (k * 3)  # ids 1, 4, 7, ...: open accounts, never expired
                    con.execute(
                        "UPDATE app.accounts SET note = %s WHERE id = %s", [f"touched {k}", open_id]
                    )
                    updated.append(open_id)
                    time.sleep(0.005)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)
            started.set()

    app = threading.Thread(target=application)
    app.start()
    assert started.wait(60)
    run = cli(url, policies, "--batch-size", "500")
    out, errs = run.communicate(timeout=600)
    app.join(timeout=120)
    assert not errors, errors
    assert run.returncode == 0, errs  # no deadlock, no serialisation failure
    present = {r[0] for r in rows(url, "SELECT id FROM app.accounts")}
    assert set(inserted) <= present, "an application insert was lost"
    assert set(reopened) <= present, "a row was deleted that was not expired when its batch began"
    notes = dict(
        rows(url, f"SELECT id, note FROM app.accounts WHERE id IN ({','.join(map(str, updated))})")
    )
    assert len(notes) == len(set(updated)) and all(v.startswith("touched") for v in notes.values())
    still_expired = rows(url, "SELECT count(*) FROM app.accounts WHERE closed_at IS NOT NULL")[0][0]
    assert still_expired == 0
    with sa.create_engine(url).connect() as con:
        assert (
            con.execute(
                sa.text(
                    "SELECT count(*) FROM app.events e LEFT JOIN app.accounts a "
                    "ON a.id = e.account_id WHERE a.id IS NULL"
                )
            ).scalar()
            == 0
        )
