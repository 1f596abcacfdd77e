"""Provable erasure: deleted and overwritten values leave the DuckDB file, a crash during
compaction never loses the database, and the audit ledger shows any tampering."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date

import duckdb
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.erasure import verify
from retention_jobs.load import PolicySet, load_text
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("erasure-test-key-0123456789")
UNCOMPRESSED = {"force_compression": "uncompressed"}

POLICY = """
purpose: people
title: People
legal_basis: contract
owner: ops
rules:
  - name: gone
    table: p.people
    key: id
    clock: left_at
    keep_for: P1Y
    action: delete
  - name: quiet
    table: p.people
    key: id
    clock: seen_at
    keep_for: P2Y
    action: anonymise
    columns: {email: hash, full_name: {fake: name}, phone: redact}
"""


def build(path, rows: int = 2000) -> DuckDBStore:
    con = duckdb.connect(str(path))
    con.execute("PRAGMA force_compression='uncompressed'")
    con.execute(f"""
        CREATE SCHEMA p;
        CREATE TABLE p.people(id BIGINT PRIMARY KEY, email VARCHAR, full_name VARCHAR, phone VARCHAR,
                              left_at DATE, seen_at DATE);
        INSERT INTO p.people SELECT i, 'unique-mail-' || i || '@erase.example', 'Fullname ' || i || ' Person',
               '+47 55' || lpad(i::VARCHAR, 6, '0'),
               CASE WHEN i % 4 = 0 THEN DATE '2020-01-01' END,
               CASE WHEN i % 4 = 1 THEN DATE '2021-01-01' ELSE DATE '2026-06-01' END
        FROM range(1, {rows} + 1) t(i);
        CHECKPOINT;
    """)
    con.close()
    store = DuckDBStore(path, settings=UNCOMPRESSED)
    with store.connect() as s:
        control.ensure_control_schema(store, s)
    return store


def policies() -> PolicySet:
    return PolicySet((load_text(POLICY, "people.yaml"),))


def raw_hits(path, values: list[str]) -> int:
    blob = path.read_bytes()
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        blob += wal.read_bytes()
    return sum(1 for v in values if v.encode() in blob)


def test_deleted_and_anonymised_values_leave_the_file(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    store = build(path)
    deleted = [f"unique-mail-{i}@erase.example" for i in range(4, 2001, 4)]
    anonymised = [f"Fullname {i} Person" for i in range(1, 2001, 4)]
    report = run_policies(
        store, policies(), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    assert report.rules[0].deleted == 500 and report.rules[1].anonymised == 500
    # the independent oracle: search the file for the clear values the test knows
    before = raw_hits(path, deleted + anonymised)
    assert before > 0, "a DELETE/UPDATE leaves the bytes: the test must be able to fail"
    # the suite's own verifier, from hashes only, sees them too
    pre = verify(store, KEY)
    assert pre.found, "verify-erasure must find what a raw search finds"
    result = store.purge(["p.people"])
    assert result["bytes_after"] < result["bytes_before"]
    assert raw_hits(path, deleted + anonymised) == 0
    assert (
        raw_hits(path, [f"unique-mail-{i}@erase.example" for i in (2, 3, 6)]) == 3
    )  # live rows stay
    post = verify(store, KEY)
    assert post.clean and post.tracked >= 1000
    with store.connect(read_only=True) as s:
        assert s.scalar(sa.text("SELECT count(*) FROM p.people")) == 1500


def test_run_purges_only_when_something_changed(tmp_path):
    store = build(tmp_path / "warehouse.duckdb", rows=200)
    first = run_policies(store, policies(), AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert first.purge and first.purge["method"] == "compact"
    second = run_policies(store, policies(), AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert not second.changed and second.purge is None
    with store.connect(read_only=True) as s:
        actions = [r["action"] for r in control.audit_rows(s)]
    assert actions.count("purge-compact") == 1


COMPACT = textwrap.dedent("""
    import sys
    from retention_jobs.store.duckdb_store import DuckDBStore
    store = DuckDBStore(sys.argv[1])
    print("start", flush=True)
    while True:
        store.purge([])
""")


def snapshot(path) -> list:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(
            "SELECT count(*), sum(id), min(email), max(full_name) FROM p.people"
        ).fetchall()
    finally:
        con.close()


def test_kill_during_compaction_leaves_a_whole_database(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    build(path, rows=150_000)
    expected = snapshot(path)
    rng = random.Random(7)
    for _trial in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", COMPACT, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "start"
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert snapshot(path) == expected, "the database must open with all its rows after a kill"
    # the next purge cleans up what a killed one left behind
    DuckDBStore(path).purge([])
    assert not path.with_name(path.name + ".compact").exists()
    assert snapshot(path) == expected


KILLED_RUN = textwrap.dedent("""
    import os, sys
    from datetime import date
    sys.path.insert(0, sys.argv[2])
    import test_erasure as t
    from retention_jobs.apply import RunOptions, run_policies
    from retention_jobs.store.duckdb_store import DuckDBStore

    store = DuckDBStore(sys.argv[1], settings=t.UNCOMPRESSED)
    real = store.purge

    def killed(tables, full=False):  # the process dies before or right after the compaction
        if sys.argv[3] == "after":
            real(tables, full)
        os._exit(9)

    store.purge = killed
    run_policies(store, t.policies(), t.AS_OF, t.KEY, RunOptions(max_delete_fraction=None))
""")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_run_killed_during_its_purge_leaves_the_purge_pending_and_the_next_run_finishes_it(
    tmp_path, when
):
    """Killed as the compaction starts, or after it swapped the file in but before the purge
    was recorded: either way the pending row survives and the next run purges again. (A kill
    in the middle of a compaction is test_kill_during_compaction_leaves_a_whole_database.)"""
    path = tmp_path / "warehouse.duckdb"
    store = build(path)
    erased = [f"unique-mail-{i}@erase.example" for i in range(4, 2001, 4)]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(path), os.path.dirname(__file__), when],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 9, proc.stderr
    # the rows are gone; before the compaction, their bytes are not
    assert snapshot(path)[0][0] == 1500
    assert (raw_hits(path, erased) > 0) == (when == "before")
    with store.connect(read_only=True) as s:
        assert control.pending_purges(s) == ["p.people"]
    # the next run has no row to change, and still finishes the purge
    again = run_policies(store, policies(), AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert not again.changed
    assert again.purge is not None and again.purge["retried_pending"] == 1
    assert raw_hits(path, erased) == 0
    with store.connect(read_only=True) as s:
        assert control.pending_purges(s) == []
    assert run_policies(store, policies(), AS_OF, KEY, RunOptions()).purge is None


def ledger_store(tmp_path):
    store = build(tmp_path / "warehouse.duckdb", rows=300)
    run_policies(store, policies(), AS_OF, KEY, RunOptions(max_delete_fraction=None, batch_size=20))
    with store.connect(read_only=True) as s:
        n, broken = control.verify_audit_chain(s)
    assert broken is None and n > 10
    return store, n


def tamper_and_verify(store, *sql: str):
    with store.connect() as s:
        for q in sql:
            s.execute(q)
    with store.connect(read_only=True) as s:
        return control.verify_audit_chain(s)[1]


@pytest.mark.parametrize(
    ("sql", "seq", "word"),
    [
        (["UPDATE retention_control.audit SET deleted = deleted + 1 WHERE seq = 5"], 5, "changed"),
        (["UPDATE retention_control.audit SET rule = 'other' WHERE seq = 3"], 3, "changed"),
        (["DELETE FROM retention_control.audit WHERE seq = 4"], 4, "missing"),
        (
            [
                "UPDATE retention_control.audit SET seq = -1 WHERE seq = 6",
                "UPDATE retention_control.audit SET seq = 6 WHERE seq = 7",
                "UPDATE retention_control.audit SET seq = 7 WHERE seq = -1",
            ],
            6,
            "does not follow",
        ),
    ],
)
def test_ledger_names_the_first_tampered_row(tmp_path, sql, seq, word):
    store, _ = ledger_store(tmp_path)
    broken = tamper_and_verify(store, *sql)
    assert broken is not None and broken.seq == seq and word in broken.problem


def test_rehashed_row_is_caught_by_its_successor(tmp_path):
    store, _ = ledger_store(tmp_path)
    with store.connect() as s:
        row = {
            c: v
            for c, v in zip(
                [c.name for c in control.audit.c],
                s.fetchall(sa.select(*control.audit.c).where(control.audit.c.seq == 5))[0],
                strict=True,
            )
        }
        row["deleted"] = (row["deleted"] or 0) + 100
        new_hash = control.audit_row_hash(row)
        s.execute(
            sa.update(control.audit)
            .where(control.audit.c.seq == 5)
            .values(deleted=row["deleted"], row_hash=new_hash)
        )
    with store.connect(read_only=True) as s:
        broken = control.verify_audit_chain(s)[1]
    assert broken.seq == 6 and "row 5" in broken.problem


def test_audit_verify_cli_uses_an_outside_head(tmp_path):
    store, _ = ledger_store(tmp_path)
    with store.connect(read_only=True) as s:
        head = control.audit_head(s)
    env = {**os.environ, "RETENTION_STORE": str(store.path)}
    ok = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "audit", "verify", "--head", head],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with store.connect() as s:  # an attacker drops the newest row: the chain stays consistent
        s.execute(
            "DELETE FROM retention_control.audit WHERE seq = (SELECT max(seq) FROM retention_control.audit)"
        )
    bad = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "audit", "verify", "--head", head],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 1 and "does not contain head" in bad.stdout


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=25))
def test_fingerprints_match_a_value_by_value_reference(values):
    """Anchors are the keyed hash of the first 6 UTF-8 bytes, whatever the characters; values
    shorter than an anchor are not tracked; each distinct value once; hashes as 64-bit integers."""
    import hashlib

    import polars as pl

    from retention_jobs.erasure import ANCHOR, fingerprints

    key = PseudonymKey.from_text("fingerprint-key-0123456789")

    def h(b: bytes) -> int:  # the ledger keeps the first 8 digest bytes as a signed integer
        return int.from_bytes(
            hashlib.blake2b(b, key=key.secret, digest_size=16).digest()[:8], "big", signed=True
        )

    expected = sorted(
        {
            (h(v.encode()[:ANCHOR]), h(v.encode()), len(v.encode()))
            for v in values
            if v is not None and len(v.encode()) >= ANCHOR
        }
    )
    got = fingerprints(pl.Series("c", values, dtype=pl.String), key)
    assert sorted(got.select("anchor_hash", "value_hash", "value_length").iter_rows()) == expected
