"""Erasure proofs that fail closed (issue 15): a key that cannot have made the recorded hashes
is refused, a value the byte scan could not have seen is never counted as verified, a plain
PostgreSQL VACUUM that leaves erased values says so, and a check covers every erasure not yet
proved, not only its own run's. Small tables: these run on DuckDB and on PostgreSQL."""

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from schema_cases import policies, rows, sql
from stores import reset_pg_database

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.check import erasure_verified, run_checks
from retention_jobs.erasure import verify
from retention_jobs.errors import ConfigError
from retention_jobs.purge import purge_tables
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore
from retention_jobs.store.sql_store import SqlStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("proof-test-key-0123456789")
OTHER = PseudonymKey.from_text("another-key-0123456789abc")
ROWS = 120

POLICY = """
purpose: people
title: People
legal_basis: contract
owner: ops
{purge}
rules:
  - name: gone
    table: p.people
    key: id
    clock: left_at
    keep_for: P1Y
    action: delete
"""


def mail(i: int) -> str:
    return f"proof-person-{i}@erase.example"


def erased_mails() -> list[str]:
    return [mail(i) for i in range(1, ROWS + 1) if i % 3 == 0]


def people(full: bool = False):
    return policies(POLICY.format(purge="purge: full" if full else ""))


def build(store: Store) -> Store:
    sql(
        store,
        "CREATE SCHEMA p",
        "CREATE TABLE p.people(id BIGINT PRIMARY KEY, email VARCHAR, left_at DATE)",
        "INSERT INTO p.people SELECT i, 'proof-person-' || i || '@erase.example', "
        "CASE WHEN i % 3 = 0 THEN DATE '2020-01-01' END "
        f"FROM generate_series(1, {ROWS}) AS t(i)",
    )
    return store


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path: Path) -> Store:
    """DuckDB with uncompressed storage (every string is plain bytes: the scan can see it), or
    the module's PostgreSQL database."""
    if request.param == "duckdb":
        return build(
            DuckDBStore(tmp_path / "w.duckdb", settings={"force_compression": "uncompressed"})
        )
    url = request.getfixturevalue("pg_url")
    reset_pg_database(url)
    LOCATIONS[url] = url
    return build(SqlStore(url))


LOCATIONS: dict[str, str] = {}
"""The PostgreSQL URL the store fixture used (a SqlStore keeps only a masked one)."""


def on_disk(store: Store, values: list[str]) -> int:
    """The oracle: how many of `values` are in the store's files as plain bytes, by a plain
    substring search (no hashing, no scan of the suite's)."""
    if isinstance(store, DuckDBStore):
        blob = store.path.read_bytes()
        wal = Path(str(store.path) + ".wal")
        blob += wal.read_bytes() if wal.exists() else b""
    else:
        with store.connect() as s:
            s.execute("CHECKPOINT")
            files = s.fetchall(
                sa.text(
                    "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'p' "
                    "AND pg_relation_filepath(c.oid) IS NOT NULL"
                )
            )
            blob = b"".join(
                bytes(s.scalar(sa.select(sa.func.pg_read_binary_file(f))) or b"") for (f,) in files
            )
    return len(_substrings(blob, {v.encode() for v in values}))


def _substrings(blob: bytes, wanted: set[bytes]) -> set[bytes]:
    """Which of `wanted` occur in `blob`: every place where one of their 6-byte prefixes
    starts, tried at each of their lengths (a `v in blob` per value is quadratic)."""
    lengths = sorted({len(v) for v in wanted})
    found: set[bytes] = set()
    for prefix in {v[:6] for v in wanted}:
        at = blob.find(prefix)
        while at != -1:
            found.update(blob[at : at + n] for n in lengths if blob[at : at + n] in wanted)
            at = blob.find(prefix, at + 1)
    return found


def cli(store: Store, *args: str, key: str) -> subprocess.CompletedProcess:
    location = str(store.path) if isinstance(store, DuckDBStore) else next(iter(LOCATIONS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(RETENTION_STORE=location, RETENTION_PSEUDONYM_KEY=key)
    return subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def residue_run(store: Store) -> str:
    """A run whose deletes are not purged: the erased values stay in the files."""
    report = run_policies(
        store, people(), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    assert report.rules[0].deleted == ROWS // 3
    assert on_disk(store, erased_mails()) > 0, "the test needs residue to be able to fail"
    return report.run_id


# --- 1. the key -----------------------------------------------------------------------------


def test_a_key_that_cannot_have_made_the_hashes_is_refused_not_a_pass(store):
    run_id = residue_run(store)
    assert verify(store, KEY).found  # the right key finds the residue
    with pytest.raises(ConfigError, match=f"key id {KEY.key_id}.*key id {OTHER.key_id}"):
        verify(store, OTHER)
    # the check fails (a wrong key is no pass, and no "could not verify" either)
    result = erasure_verified(store, OTHER, run_id)
    assert not result.passed and result.verified and OTHER.key_id in result.summary
    # the CLI: exit 2 with what to do, nothing found "again" claimed
    proc = cli(store, "verify-erasure", key="another-key-0123456789abc")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "RETENTION_PSEUDONYM_KEY" in proc.stderr and "found again" not in proc.stdout
    right = cli(store, "verify-erasure", key="proof-test-key-0123456789")
    assert right.returncode == 1 and "p.people.email" in right.stdout


def test_legacy_rows_get_their_runs_key_id_or_count_as_key_unknown(store):
    run_id = residue_run(store)
    with store.connect() as s:  # the control table as an earlier version wrote it
        s.execute("ALTER TABLE retention_control.erased_values DROP COLUMN key_id")
    # not migrated (read only): the key is unknown, so nothing is claimed from a clean scan
    unknown = verify(store, OTHER)
    assert unknown.legacy == unknown.tracked > 0 and not unknown.verified
    assert unknown.blind == unknown.tracked
    with store.connect() as s:
        control.ensure_control_schema(store, s)
    # the run's ledger rows name its key id: the migration gives it to the run's erased values
    assert rows(store, "SELECT DISTINCT key_id FROM retention_control.erased_values") == [
        (KEY.key_id,)
    ]
    with pytest.raises(ConfigError):
        verify(store, OTHER)
    # a run whose ledger names no key id keeps NULL: key unknown, never a pass
    with store.connect() as s:
        s.execute(
            f"UPDATE retention_control.erased_values SET key_id = NULL WHERE run_id = '{run_id}'"
        )
    assert verify(store, OTHER).legacy > 0 and not verify(store, OTHER).verified


# --- 2. what a byte scan cannot see ---------------------------------------------------------


def test_values_a_scan_cannot_see_are_not_verified_until_a_compaction_proves_them(tmp_path):
    """DuckDB's default storage compresses strings: the scan sees only some erased values, and
    a clean scan proves nothing about the others. A recorded compaction proves all of them."""
    store = build(DuckDBStore(tmp_path / "w.duckdb"))
    with store.connect() as s:  # enough rows for DuckDB to compress the column
        s.execute(
            "INSERT INTO p.people SELECT i, 'proof-person-' || i || '@erase.example', "
            "CASE WHEN i % 3 = 0 THEN DATE '2020-01-01' END FROM range(1000, 21000) t(i)"
        )
        s.execute("CHECKPOINT")
    erased = [mail(i) for i in range(1000, 21000) if i % 3 == 0] + erased_mails()
    visible_live = on_disk(store, [mail(i) for i in range(1000, 21000, 37) if i % 3])
    report = run_policies(
        store, people(), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    plain = on_disk(store, erased)
    assert plain < len(erased) // 2, "most values must be compressed for this test"
    assert visible_live < len(range(1000, 21000, 37)) * 2 // 3
    result = verify(store, KEY)
    # not found is not verified: most values could not have been seen
    assert result.blind > 0 and not result.verified
    assert result.plain + result.blind + len(result.found) <= result.tracked
    assert "not verifiable by scan" in result.describe()
    assert result.visibility["p.people.email"] < 1.0
    check = erasure_verified(store, KEY, report.run_id)
    assert not check.passed and (not check.verified or sum(result.found.values()))
    # a recorded compaction copies the live data into a fresh file: proved by construction
    purge_tables(store, people(), "manual-purge", ["p.people"], AS_OF)
    assert on_disk(store, erased) == 0
    after = verify(store, KEY)
    assert after.verified and after.constructed == after.tracked == len(erased)
    assert "proved by construction: compacted copy at" in after.describe()
    assert erasure_verified(store, KEY, report.run_id).passed


@pytest.mark.postgres
def test_a_compressed_column_is_not_counted_as_seen(pg_url):
    """PostgreSQL compresses long values inline (pglz): such a column's erased values count as
    not verifiable, while the plain e-mails count as verified by the scan. (DuckDB's compressed
    strings: the test above.)"""
    reset_pg_database(pg_url)
    store = build(SqlStore(pg_url))
    with store.connect() as s:
        s.execute("ALTER TABLE p.people ADD COLUMN note VARCHAR")
        s.execute("UPDATE p.people SET note = repeat('note ' || id || ' ', 600)")
    report = run_policies(
        store, people(), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    notes = [(f"note {i} " * 600) for i in range(3, ROWS + 1, 3)]
    assert on_disk(store, notes) == 0  # the oracle: compressed, invisible to any byte search
    result = verify(store, KEY, report.run_id)
    assert result.visibility["p.people.note"] == 0.0
    assert result.visibility["p.people.email"] == 1.0
    assert result.blind == len(notes) and not result.verified


# --- 3. PostgreSQL's plain VACUUM -----------------------------------------------------------


@pytest.mark.postgres
def test_a_plain_vacuum_leaves_erased_values_and_every_run_says_so(pg_url):
    reset_pg_database(pg_url)
    store = build(SqlStore(pg_url))
    report = run_policies(store, people(), AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert report.purge is not None and report.purge["method"] == "vacuum"
    # the oracle: a plain VACUUM left erased e-mails in the heap or index pages
    left = on_disk(store, erased_mails())
    assert left > 0
    assert report.purge["removes_old_bytes"] is False
    actions = [a for (a,) in rows(store, "SELECT action FROM retention_control.audit")]
    assert "purge-leaves-bytes" in actions
    (check,) = [
        r
        for r in run_checks(store, people(), AS_OF, KEY, report.run_id)
        if r.name == "erasure_verified"
    ]
    assert not check.passed and not check.verified  # WARN, not a pass
    assert "purge: full" in check.summary and f"{left} erased values" in check.summary
    # the configured fix: `purge: full` rewrites the tables, and the check then proves it
    purge_tables(store, people(full=True), "manual-purge", ["p.people"], AS_OF)
    assert on_disk(store, erased_mails()) == 0
    (proved,) = [
        r
        for r in run_checks(store, people(full=True), AS_OF, KEY, report.run_id)
        if r.name == "erasure_verified"
    ]
    assert proved.passed, proved.summary


def test_a_purge_that_removes_old_bytes_records_no_residue(store):
    report = run_policies(
        store, people(full=True), AS_OF, KEY, RunOptions(max_delete_fraction=None)
    )
    assert report.purge is not None and report.purge.get("removes_old_bytes", True)
    assert on_disk(store, erased_mails()) == 0
    actions = [a for (a,) in rows(store, "SELECT action FROM retention_control.audit")]
    assert "purge-leaves-bytes" not in actions
    result = erasure_verified(store, KEY, report.run_id)
    assert result.passed, result.summary


# --- 4. a check covers every erasure not yet proved -----------------------------------------


def test_a_later_run_that_erased_nothing_does_not_hide_an_earlier_residue(store):
    first = residue_run(store)
    assert not erasure_verified(store, KEY, first).passed
    # the same night again (a retry): nothing left to change, nothing purged
    again = run_policies(
        store, people(), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    assert not again.changed and on_disk(store, erased_mails()) > 0
    (result,) = [
        r
        for r in run_checks(store, people(), AS_OF, KEY, again.run_id, purposes=["people"])
        if r.name == "erasure_verified"
    ]
    assert not result.passed and result.counts["runs"] == 2
    # a check without a run owes the same proof
    (plain,) = [r for r in run_checks(store, people(), AS_OF, KEY) if r.name == "erasure_verified"]
    assert not plain.passed
