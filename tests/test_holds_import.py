"""`holds import`: holds from a case-management export keep their placed and released times,
protect what they name, import all or nothing, and import twice as once; DuckDB and
PostgreSQL. The oracle is the rows before and after the run, and the export itself."""

import hashlib
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from schema_cases import policies, rows, sql

from retention_jobs import holds_import as imp
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import PolicyError
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("holds-import-key-0123456789")
ROOT = Path(__file__).resolve().parents[1]

DDL = [
    "CREATE SCHEMA crm",
    "CREATE TABLE crm.clients (client_id BIGINT PRIMARY KEY, name VARCHAR(80), ended_on DATE)",
    "INSERT INTO crm.clients VALUES (1, 'A', DATE '2015-01-01'), (2, 'B', DATE '2015-01-01'), "
    "(3, 'C', DATE '2015-01-01')",
]

POLICY = """
purpose: clients
title: Former clients
legal_basis: contract
owner: crm
rules:
  - name: ended
    table: crm.clients
    key: client_id
    subject: {kind: client, column: client_id}
    clock: ended_on
    keep_for: P5Y
    action: delete
"""

HEADER = "case_ref,scope,target,reason,placed_at,placed_by,released_at,released_by\n"
# client 1: held and still open; client 2: held once, released in 2024
EXPORT = (
    HEADER
    + "LIT-1,subject,client:1,dispute,2025-02-03T09:30:00+01:00,legal,,\n"
    + "LIT-2,subject,client:2,audit,2023-05-01T08:00:00Z,legal,2024-01-15T16:00:00+01:00,legal\n"
)


def write(tmp_path: Path, text: str, name: str = "holds.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def stored_holds(store) -> list[tuple]:
    return rows(
        store,
        "SELECT hold_id, scope, subject_kind, subject_id, case_ref, placed_at, released_at, "
        "released_by FROM retention_control.holds ORDER BY case_ref",
    )


def test_imported_holds_keep_their_times_and_protect_what_they_name(store, tmp_path):
    sql(store, *DDL)
    path = write(tmp_path, EXPORT)
    with store.connect() as s:
        result = imp.apply(s, str(path), imp.parse(path))
    assert (result.placed, result.released, result.unchanged) == (2, 0, 0)
    held = stored_holds(store)
    assert [(h[4], h[5], h[6]) for h in held] == [
        ("LIT-1", datetime(2025, 2, 3, 8, 30), None),
        ("LIT-2", datetime(2023, 5, 1, 8, 0), datetime(2024, 1, 15, 15, 0)),
    ]
    run_policies(
        store, policies(POLICY), AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False)
    )
    # 1 is held; 2's hold was released; 3 never had one
    assert rows(store, "SELECT client_id FROM crm.clients ORDER BY 1") == [(1,)]

    # the same export again: nothing changes
    with store.connect() as s:
        again = imp.apply(s, str(path), imp.parse(path))
    assert (again.placed, again.released, again.unchanged) == (0, 0, 2)
    assert stored_holds(store) == held

    # the next export releases LIT-1
    later = EXPORT.replace(
        "LIT-1,subject,client:1,dispute,2025-02-03T09:30:00+01:00,legal,,",
        "LIT-1,subject,client:1,dispute,2025-02-03T09:30:00+01:00,legal,"
        "2026-06-30T12:00:00+02:00,court",
    )
    path2 = write(tmp_path, later, "later.csv")
    with store.connect() as s:
        third = imp.apply(s, str(path2), imp.parse(path2))
    assert (third.placed, third.released, third.unchanged) == (0, 1, 1)
    assert stored_holds(store)[0][6:] == (datetime(2026, 6, 30, 10, 0), "court")


def test_an_export_that_moves_a_release_is_refused_and_changes_nothing(store, tmp_path):
    sql(store, *DDL)
    path = write(tmp_path, EXPORT)
    with store.connect() as s:
        imp.apply(s, str(path), imp.parse(path))
    before = stored_holds(store)
    moved = write(tmp_path, EXPORT.replace("2024-01-15T16:00:00", "2024-02-15T16:00:00"), "m.csv")
    with store.connect() as s, pytest.raises(PolicyError) as e:
        imp.apply(s, str(moved), imp.parse(moved))
    assert "m.csv:3:1: released_at: the hold is stored as released at another time" in str(e.value)
    assert stored_holds(store) == before


BAD_ROWS = {
    # line -> (row, expected located message)
    2: ("C-1,subject,client:1,r,2025-01-01T10:00:00,,,", "2:5: placed_at: has no time zone"),
    3: ("C-2,person,client:1,r,2025-01-01T10:00:00Z,,,", "3:2: scope: is not subject"),
    4: ("C-3,subject,client1,r,2025-01-01T10:00:00Z,,,", "4:3: target: is not a subject target"),
    5: ("C-4,table,crm clients,r,2025-01-01T10:00:00Z,,,", "5:3: target: is not a table target"),
    6: ("C-5,subject,client:2,r,2999-01-01T10:00:00Z,,,", "6:5: placed_at: is in the future"),
    7: (
        "C-6,subject,client:3,r,2025-01-02T10:00:00Z,,2025-01-01T10:00:00Z,x",
        "7:7: released_at: is before placed_at",
    ),
    8: ("C-7,subject,client:3,,2025-01-02T10:00:00Z,,,", "8:4: reason: is empty"),
    9: ("C-8,subject,client:3,r,31.12.2024,,,", "9:5: placed_at: is not a timestamp"),
}


def test_every_bad_cell_is_located_and_nothing_is_written(tmp_path):
    path = write(tmp_path, HEADER + "\n".join(r for r, _ in BAD_ROWS.values()) + "\n")
    with pytest.raises(PolicyError) as e:
        imp.parse(path)
    message = str(e.value)
    for _, expected in BAD_ROWS.values():
        assert f"holds.csv:{expected}" in message
    assert len(e.value.problems) == len(BAD_ROWS)
    assert "client:1" not in message  # cell values are not quoted back


def holds_import_cli(export: Path, db: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    return subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "holds", "import", str(export)]
        + ["--store", str(db)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_the_cli_refuses_a_bad_export_with_exit_2_and_an_unchanged_store(tmp_path):
    db = tmp_path / "w.duckdb"
    store = DuckDBStore(db)
    sql(store, *DDL)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    bad = write(tmp_path, EXPORT + BAD_ROWS[2][0] + "\n")
    proc = holds_import_cli(bad, db)
    assert proc.returncode == 2, proc.stderr
    assert "holds.csv:4:5: placed_at: has no time zone" in proc.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    good = write(tmp_path, EXPORT, "good.csv")
    proc = holds_import_cli(good, db)
    assert proc.returncode == 0, proc.stderr
    assert "2 placed, 0 released, 0 already recorded" in proc.stdout
    assert [h[4] for h in stored_holds(store)] == ["LIT-1", "LIT-2"]


def test_the_hold_id_is_stable_across_exports():
    placed = datetime(2025, 2, 3, 8, 30, tzinfo=UTC)
    assert imp.hold_id_for("LIT-1", "subject", "client:1", placed) == imp.hold_id_for(
        "LIT-1", "subject", "client:1", placed
    )
    assert imp.hold_id_for("LIT-1", "subject", "client:1", placed) != imp.hold_id_for(
        "LIT-1", "subject", "client:2", placed
    )
