"""The CLI end to end, as a user runs it: real processes, a temporary DuckDB file."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from retention_jobs import demo as demo_mod

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-22"
KEY = "cli-test-key-0123456789abcdef"
# A customer's own rows: a hold on the customer protects every one of them.
HELD_CUSTOMER_TABLES = (
    "billing.customers",
    "billing.subscriptions",
    "billing.invoices",
    "billing.credit_checks",
)


def cli(
    *args: str, cwd: Path, key: str | None = KEY, check: bool = False
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    if key:
        env["RETENTION_PSEUDONYM_KEY"] = key
    proc = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A working directory with the shipped policies and a small demo warehouse."""
    d = tmp_path_factory.mktemp("cli")
    shutil.copytree(ROOT / "policies", d / "policies")
    proc = cli(
        "demo", "--rows", "2000", "--as-of", AS_OF, "--format", "json", cwd=d, key=None, check=True
    )
    report = json.loads(proc.stdout)
    return d, report


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_acts_on_every_policy_and_leaves_held_rows(demo_dir):
    _, report = demo_dir
    purposes = {r["rule"].split("/")[0] for r in report["rules"]}
    shipped = {p.stem for p in (ROOT / "policies").glob("*.yaml")}
    assert purposes == shipped
    acted = {
        r["rule"].split("/")[0]
        for r in report["rules"]
        if r["deleted"]
        or r["anonymised"]
        or any(c["deleted"] or c["anonymised"] or c["unlinked"] for c in r["cascade_results"])
    }
    assert acted == shipped, f"policies that did nothing: {shipped - acted}"
    assert sum(r["held"] for r in report["rules"]) > 0


def test_held_customers_are_untouched(demo_dir):
    """Held customers and every row of theirs in the billing tables are exactly as the demo
    generated them: compared with the generator's own rows, not with the engine's view."""
    d, _ = demo_dir
    proc = cli(
        "holds",
        "list",
        "--format",
        "json",
        "--store",
        ".retention/warehouse.duckdb",
        cwd=d,
        check=True,
    )
    held = sorted(
        int(h["subject_id"]) for h in json.loads(proc.stdout) if h["subject_kind"] == "customer"
    )
    assert held
    generated = demo_mod.build_tables(2000, date.fromisoformat(AS_OF), seed=7)
    con = duckdb.connect(str(d / ".retention/warehouse.duckdb"), read_only=True)
    try:
        for table in HELD_CUSTOMER_TABLES:
            expected = generated[table].filter(pl.col("customer_id").is_in(held))
            order = expected.columns[0]
            ids = ",".join(map(str, held))
            stored = con.sql(
                f"SELECT {', '.join(expected.columns)} FROM {table} "
                f"WHERE customer_id IN ({ids}) ORDER BY {order}"
            ).pl()
            if table == "billing.customers":
                assert expected.height == len(held)
            assert_frame_equal(stored, expected.sort(order), check_dtypes=False)
    finally:
        con.close()


def test_second_run_and_plan_change_nothing(demo_dir):
    d, _ = demo_dir
    db = d / ".retention/warehouse.duckdb"
    before = sha(db)
    plan = json.loads(cli("plan", "--as-of", AS_OF, "--format", "json", cwd=d, check=True).stdout)
    assert sha(db) == before, "plan must not change a byte"
    assert all(r["to_act"] == 0 for r in plan["rules"])
    again = json.loads(
        cli(
            "run",
            "--as-of",
            AS_OF,
            "--format",
            "json",
            cwd=d,
            key="retention-jobs-demo-key-not-secret",
            check=True,
        ).stdout
    )
    assert not again["changed"]
    assert all(r["deleted"] == 0 and r["anonymised"] == 0 for r in again["rules"])


def test_check_passes_on_the_demo(demo_dir):
    d, _ = demo_dir
    proc = cli("check", "--as-of", AS_OF, "--demo-key", cwd=d, check=True)
    # the demo's erasures were never checked: `check` owes their proof too (the demo's run
    # compacted the file after them), and remembers it
    assert proc.stdout.count("PASS") == 3
    text = " ".join(proc.stdout.split())  # the console wraps long lines
    assert "PASS erasure_verified" in text and "proved by construction" in text
    again = cli("check", "--as-of", AS_OF, "--demo-key", cwd=d, check=True)
    assert again.stdout.count("PASS") == 2 and "erasure_verified" not in again.stdout


def test_run_without_key_is_refused(demo_dir):
    d, _ = demo_dir
    proc = cli("run", "--as-of", "2027-06-01", cwd=d, key=None)
    assert proc.returncode == 2
    assert "RETENTION_PSEUDONYM_KEY is not set" in proc.stderr


def test_parallel_workers_on_the_duckdb_file_exit_2_and_change_nothing(demo_dir):
    d, _ = demo_dir
    db = d / ".retention/warehouse.duckdb"
    before = sha(db)
    proc = cli(
        "run",
        "--as-of",
        "2027-06-01",
        "--workers",
        "2",
        cwd=d,
        key="retention-jobs-demo-key-not-secret",
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs a SQL store" in proc.stderr and "--workers 1" in proc.stderr
    assert sha(db) == before


def test_bad_date_exit_2(demo_dir):
    d, _ = demo_dir
    proc = cli("plan", "--as-of", "22.11.2026", cwd=d)
    assert proc.returncode == 2 and "YYYY-MM-DD" in proc.stderr


def test_large_deletion_needs_approval(demo_dir, tmp_path):
    d, _ = demo_dir
    work = tmp_path / "w"
    shutil.copytree(d, work)
    db = work / ".retention/warehouse.duckdb"
    before = sha(db)
    # two years on, most web logs and traffic records have expired
    proc = cli("run", "--as-of", "2028-12-01", cwd=work, key="retention-jobs-demo-key-not-secret")
    assert proc.returncode == 3, proc.stderr
    assert "max-delete-fraction" in proc.stderr and "nothing was changed" in proc.stderr
    assert sha(db) == before


def test_invalid_policy_exit_2_with_location_and_nothing_changed(demo_dir, tmp_path):
    d, _ = demo_dir
    work = tmp_path / "w"
    shutil.copytree(d, work)
    db = work / ".retention/warehouse.duckdb"
    before = sha(db)
    bad = work / "policies/newsletter.yaml"
    bad.write_text(bad.read_text().replace("keep_for: P0D", "keep_for: P0X", 1))
    for cmd in (["validate"], ["plan"], ["run"]):
        proc = cli(*cmd, cwd=work)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert "policies/newsletter.yaml:" in proc.stderr and "keep_for" in proc.stderr
    assert sha(db) == before


def test_validate_against_the_store_names_unknown_columns(demo_dir, tmp_path):
    d, _ = demo_dir
    work = tmp_path / "w"
    shutil.copytree(d, work)
    p = work / "policies/web-logs.yaml"
    p.write_text(p.read_text().replace("clock: logged_at", "clock: loged_at"))
    proc = cli("validate", "policies", cwd=work)
    assert proc.returncode == 2
    assert "did you mean 'logged_at'" in proc.stderr


def test_holds_lifecycle_and_release_frees_rows(demo_dir, tmp_path):
    d, _ = demo_dir
    work = tmp_path / "w"
    shutil.copytree(d, work)
    proc = cli(
        "holds",
        "add",
        "--table",
        "web.access_logs",
        "--case",
        "AUTH-2026-3",
        "--reason",
        "authority_order",
        "--placed-by",
        "dpo",
        cwd=work,
        check=True,
    )
    hold_id = proc.stdout.split()[1]
    plan = json.loads(
        cli("plan", "--as-of", "2027-02-01", "--format", "json", cwd=work, check=True).stdout
    )
    logs = [r for r in plan["rules"] if r["table"] == "web.access_logs"]
    assert logs and all(r["to_act"] == 0 and r["held"] == r["expired"] for r in logs)
    cli("holds", "release", hold_id, "--by", "dpo", cwd=work, check=True)
    plan = json.loads(
        cli("plan", "--as-of", "2027-02-01", "--format", "json", cwd=work, check=True).stdout
    )
    assert any(r["to_act"] > 0 for r in plan["rules"] if r["table"] == "web.access_logs")
    assert cli("holds", "release", hold_id, cwd=work).returncode == 2
    assert (
        cli(
            "holds", "add", "--subject", "nocolon", "--case", "X", "--reason", "y", cwd=work
        ).returncode
        == 2
    )


def test_schema_is_json_schema():
    proc = cli("schema", cwd=ROOT, check=True)
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Policy" and "rules" in schema["properties"]
    assert "description" in schema["properties"]["legal_basis"]


def test_output_holds_no_personal_values(demo_dir):
    d, report = demo_dir
    con = duckdb.connect(str(d / ".retention/warehouse.duckdb"), read_only=True)
    try:
        emails = [
            r[0] for r in con.execute("SELECT email FROM billing.customers LIMIT 50").fetchall()
        ]
        ledger = con.execute("SELECT * FROM retention_control.audit").fetchall()
    finally:
        con.close()
    text = json.dumps(report) + repr(ledger)
    assert emails and not any(e in text for e in emails if e)
