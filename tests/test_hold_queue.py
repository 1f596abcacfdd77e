"""A hold placed while a run is going (G1), on DuckDB and PostgreSQL.

DuckDB takes one writer process, so `holds add` during a run queues the hold beside the file
(`retention_jobs.hold_queue`) and the run places it before its next batch; on PostgreSQL the
hold is placed at once and the next batch's re-check sees it. Either way the held subject's
rows, parent and children, stay as they were: compared with the rows before the run, selected
by their ids, not by the engine's predicates.
"""

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from schema_cases import LEADS_POLICY as LEADS
from schema_cases import SHOP_POLICY as SHOP
from schema_cases import policies, rows, sql

from retention_jobs import control, hold_queue
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.errors import ConfigError
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("hold-queue-key-0123456789abcdef")


DDL = [
    "CREATE SCHEMA s",
    "CREATE TABLE s.customers (id BIGINT PRIMARY KEY, ended_at DATE)",
    "CREATE TABLE s.subscriptions (id BIGINT PRIMARY KEY, "
    "customer_id BIGINT REFERENCES s.customers (id), plan VARCHAR)",
    "CREATE TABLE s.leads (id BIGINT PRIMARY KEY, email VARCHAR, seen_at DATE)",
    # ten customers and ten leads, all past their period
    "INSERT INTO s.customers VALUES "
    + ", ".join(f"({i}, DATE '2020-03-01')" for i in range(1, 11)),
    "INSERT INTO s.subscriptions VALUES "
    + ", ".join(f"({10 * i + k}, {i}, 'p{k}')" for i in range(1, 11) for k in (1, 2)),
    "INSERT INTO s.leads VALUES "
    + ", ".join(f"({i}, 'lead{i}@example.org', DATE '2020-03-01')" for i in range(1, 11)),
]


def location(store: Store) -> str:
    if isinstance(store, DuckDBStore):
        return str(store.path)
    return store.engine.url.render_as_string(hide_password=False)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True, scope="module")
def _policy_dir(tmp_path_factory):
    """The policies the CLI checks a hold's target against (`holds add --policies`)."""
    global POLICY_DIR
    POLICY_DIR = tmp_path_factory.mktemp("policies")
    (POLICY_DIR / "shop.yaml").write_text(SHOP)
    (POLICY_DIR / "leads.yaml").write_text(LEADS)


POLICY_DIR: Path | None = None


def clis(store: Store, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run CLI commands on `store`, each in a process of its own, all at once (starting the CLI
    takes seconds on a busy machine)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "retention_jobs.cli", *args, "--store", location(store)]
            + ["--policies", str(POLICY_DIR)],
            env={**os.environ, "RETENTION_STORE": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def add(store: Store, *subjects: str) -> list[subprocess.CompletedProcess]:
    return clis(
        store,
        *(
            ["holds", "add", "--subject", x, "--case", "LIT-1", "--reason", "court"]
            for x in subjects
        ),
    )


def test_a_hold_placed_between_batches_keeps_the_subject_and_its_children(store):
    sql(store, *DDL)
    before = {
        t: rows(store, f"SELECT * FROM s.{t} ORDER BY id")
        for t in ("customers", "subscriptions", "leads")
    }
    placed: list[subprocess.CompletedProcess] = []

    def between_batches(rule_id: str, done: int, total: int) -> None:
        # after the first batch of each rule, from another process, as an operator would
        if done != 2:
            return
        if rule_id == "shop/ended":
            placed.extend(add(store, "customer:3", "customer:9"))
        else:
            # lead 4 is in the batch a DuckDB run has already read and prepared (overlap)
            placed.extend(add(store, "lead:4", "lead:9"))

    report = run_policies(
        store,
        policies(SHOP, LEADS),
        AS_OF,
        KEY,
        RunOptions(max_delete_fraction=None, batch_size=2, purge=False),
        progress=between_batches,
    )

    assert len(placed) == 4
    for p in placed:
        assert p.returncode == 0, p.stderr
        if store.kind == "duckdb":
            assert "queued" in p.stdout and "takes effect before the run's next batch" in p.stdout
        else:
            assert "placed" in p.stdout
    # the oracle: held ids chosen above; everything else of the ten went
    kept_customers, kept_leads = {3, 9}, {4, 9}
    assert rows(store, "SELECT * FROM s.customers ORDER BY id") == [
        r for r in before["customers"] if r[0] in kept_customers
    ]
    assert rows(store, "SELECT * FROM s.subscriptions ORDER BY id") == [
        r for r in before["subscriptions"] if r[1] in kept_customers
    ]
    after_leads = dict((r[0], r) for r in rows(store, "SELECT * FROM s.leads ORDER BY id"))
    for r in before["leads"]:
        if r[0] in kept_leads:
            assert after_leads[r[0]] == r
        else:
            assert after_leads[r[0]][1] != r[1]  # anonymised
    results = {r.plan.rule_id: r for r in report.rules}
    assert results["shop/ended"].deleted == 8
    assert results["leads/cold"].anonymised == 8
    if store.kind == "duckdb":
        assert report.holds_imported == 4
        assert not hold_queue.queue_path(store).read_bytes()  # type: ignore[union-attr]
        # the run's ledger says it placed them, with no id of whom
        audit = rows(
            store,
            "SELECT sum(held) FROM retention_control.audit WHERE action = 'holds-queued' "
            f"AND run_id = '{report.run_id}'",
        )
        assert audit == [(4,)]
    holds = rows(
        store,
        "SELECT subject_kind || ':' || subject_id FROM retention_control.holds "
        "WHERE released_at IS NULL ORDER BY 1",
    )
    assert holds == [("customer:3",), ("customer:9",), ("lead:4",), ("lead:9",)]


# --- the queue itself (DuckDB) -----------------------------------------------------------------


def _duckdb(tmp_path: Path) -> DuckDBStore:
    s = DuckDBStore(tmp_path / "w.duckdb")
    sql(s, *DDL)
    return s


def _spec(subject: str = "customer:5") -> control.HoldSpec:
    return control.hold_spec(subject=subject, case_ref="LIT-2", reason="court")


def test_a_queued_hold_imported_twice_is_one_hold_and_a_released_one_stays_released(tmp_path):
    s = _duckdb(tmp_path)
    queue = hold_queue.queue_path(s)
    assert queue is not None
    hold_id = hold_queue.enqueue(s, _spec())
    line = queue.read_bytes()
    with s.connect() as session:  # a writable open imports
        pass
    assert queue.read_bytes() == b""
    with s.connect() as session:
        assert control.release_hold(session, hold_id, "t")
    # a crash after the import's commit, before the truncation, leaves the line behind
    queue.write_bytes(line)
    with s.connect() as session:
        assert hold_queue.import_queued(s, session) == 0
        held = control.list_holds(session, include_released=True)
    assert [(h.hold_id, h.released_at is not None) for h in held] == [(hold_id, True)]
    assert queue.read_bytes() == b""


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        # a `holds add` killed mid-write: the last line has no newline
        (b'{"v": 1, "hold_id": "H-1", "subj', 2, "incomplete"),
        (b"not json\n", 2, "not a JSON object"),
        # a hold `holds add` would refuse is refused here by the same check
        (
            b'{"v": 1, "hold_id": "H-2", "placed_at": "2026-11-22T00:00:00", "subject": '
            b'"customer:7", "table": "s.customers", "case_ref": "C", "reason": "r"}\n',
            2,
            "exactly one of",
        ),
        (
            b'{"v": 1, "hold_id": "H-3", "placed_at": "2026-11-22T00:00:00", "subject": '
            b'"customer7", "case_ref": "C", "reason": "r"}\n',
            2,
            "KIND:ID",
        ),
    ],
)
def test_a_bad_queue_line_is_refused_with_its_location_and_nothing_changes(
    tmp_path, text, line, what
):
    s = _duckdb(tmp_path)
    queue = hold_queue.queue_path(s)
    assert queue is not None
    hold_queue.enqueue(s, _spec("customer:5"))  # a good line first: not imported either
    with open(queue, "ab") as f:
        f.write(text)
    before = rows(s, "SELECT * FROM s.customers ORDER BY id")
    with pytest.raises(ConfigError) as e, s.connect():
        pass
    assert f"{queue}:{line}:1: queued hold" in str(e.value) and what in str(e.value)
    assert "customer:7" not in str(e.value) and "customer7" not in str(e.value)

    with s.connect(read_only=True) as session:
        assert control.list_holds(session) == []
    assert rows(s, "SELECT * FROM s.customers ORDER BY id") == before
    assert queue.read_bytes().endswith(text)


def test_a_run_over_a_partial_queue_line_exits_2_with_its_location(tmp_path):
    s = _duckdb(tmp_path)
    queue = hold_queue.queue_path(s)
    assert queue is not None
    queue.write_bytes(b'{"v": 1, "hold_id": "H-1", "subject": "customer:7", "ca')
    before = rows(s, "SELECT * FROM s.customers ORDER BY id")
    policy = tmp_path / "shop.yaml"
    policy.write_text(SHOP)
    env = {**os.environ, "RETENTION_PSEUDONYM_KEY": "hold-queue-key-0123456789abcdef"}
    r = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "run", "--store", str(s.path)]
        + ["--policies", str(policy), "--as-of", AS_OF.isoformat(), "--max-delete-fraction", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert f"{queue}:1:1: queued hold: the line is incomplete" in r.stderr
    assert "Traceback" not in r.stderr and "customer:7" not in r.stderr
    assert rows(s, "SELECT * FROM s.customers ORDER BY id") == before
    assert queue.exists() and queue.stat().st_size > 0


def test_holds_add_queues_and_release_refuses_while_a_process_has_the_file(tmp_path):
    s = _duckdb(tmp_path)
    with s.connect() as session:
        hold_id = control.add_hold(
            session, scope="subject", subject="customer:1", case_ref="C", reason="r", placed_by="t"
        )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); time.sleep(120)",
            str(s.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        queued, released, refused = clis(
            s,
            ["holds", "add", "--subject", "customer:2", "--case", "C", "--reason", "r"],
            ["holds", "release", hold_id],
            ["holds", "add", "--subject", "customer", "--case", "C", "--reason", "r"],
        )
    finally:
        holder.kill()
        holder.wait()
    assert queued.returncode == 0, queued.stderr
    assert "queued" in queued.stdout and "the store was busy" in queued.stdout
    (entry,) = [json.loads(x) for x in hold_queue.queue_path(s).read_text().splitlines()]  # type: ignore[union-attr]
    assert entry["subject"] == "customer:2"
    assert released.returncode == 6 and "A release is not queued" in released.stderr
    # bad input is refused before anything is queued (exit 2)
    assert refused.returncode == 2 and "KIND:ID" in refused.stderr
    with s.connect() as session:  # the file is free again: the first writable open imports
        active = {h.subject_id for h in control.list_holds(session)}
    assert active == {"1", "2"}
