"""`retention-jobs lint`: one planted problem of each kind, with its code and exact place.

Each case in tests/fixtures/policies/lint/<kind>/ has `policies/`, `expected.txt` (the
problem lines, exactly) and, for the store check, `store.sql` (a tiny DuckDB store).
"""

import os
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from retention_jobs.cli import main
from retention_jobs.lint import (
    CODES,
    NOTICES,
    disjoint,
    ends_before,
    is_placeholder,
    lint_policies,
    looks_like_national_id,
    never_after,
    personal_by_name,
    value_kind,
)
from retention_jobs.load import load_policies, load_text
from retention_jobs.store.base import TableInfo

ROOT = Path(__file__).resolve().parent.parent
LINT = ROOT / "tests" / "fixtures" / "policies" / "lint"
CASES = sorted(p.name for p in LINT.iterdir() if (p / "policies").is_dir())
EXPECTED_CODES = {
    "placeholder-owner": "RJ101",
    "keep-for-shorter-than-retain": "RJ102",
    "contradicting-rules": "RJ103",
    "anonymised-then-deleted": "RJ104",
    "consent-without-withdrawal": "RJ105",
    "uncovered-personal-data": "RJ106",
    "subject-not-declared": "RJ107",
}


def invoke(cwd: Path, *args: str, monkeypatch):
    monkeypatch.chdir(cwd)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_kind_has_a_case():
    assert set(CASES) == set(EXPECTED_CODES)
    assert set(EXPECTED_CODES.values()) == set(CODES)
    documented = (ROOT / "docs" / "review.md").read_text()
    for code in CODES:
        assert f"`{code}`" in documented


@pytest.mark.parametrize("case", CASES)
def test_lint_case(case, tmp_path, monkeypatch):
    d = LINT / case
    args = ["lint", "policies"]
    if (d / "store.sql").exists():
        store = tmp_path / "store.duckdb"
        con = duckdb.connect(str(store))
        con.execute((d / "store.sql").read_text())
        con.close()
        args += ["--store", str(store)]
    result = invoke(d, *args, monkeypatch=monkeypatch)
    expected = (d / "expected.txt").read_text().splitlines()
    code = EXPECTED_CODES[case]
    if code in NOTICES:  # shown for review, not a problem: exit 0
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[:-1] == expected
        assert f"no lint problems ({len(expected)} notice(s) to review)" in result.stdout
    else:
        assert result.exit_code == 1, result.stdout + result.stderr
        assert result.stdout.splitlines() == expected
        assert f"{len(expected)} lint problem(s)" in result.stderr
    assert all(f": {code} " in line for line in expected)


def test_no_values_printed_by_the_store_check(tmp_path, monkeypatch):
    d = LINT / "uncovered-personal-data"
    store = tmp_path / "store.duckdb"
    con = duckdb.connect(str(store))
    con.execute((d / "store.sql").read_text())
    values = {
        v
        for t in ("support.callbacks", "support.notes", "hr.people", "web.visits", "app.users")
        for row in con.execute(f"SELECT * FROM {t}").fetchall()
        for v in row
        if isinstance(v, str) and len(v) > 4
    }
    con.close()
    result = invoke(d, "lint", "policies", "--store", str(store), monkeypatch=monkeypatch)
    assert not [v for v in values if v in result.stdout + result.stderr]


def test_shipped_policies_are_clean(monkeypatch):
    result = invoke(ROOT, "lint", monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.stdout
    assert "no lint problems" in result.stdout


def test_invalid_policies_exit_2(tmp_path, monkeypatch):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "x.yaml").write_text(
        "purpose: x\ntitle: t\nlegal_basis: consent\nowner: o\nrules: []\n"
    )
    result = invoke(tmp_path, "lint", monkeypatch=monkeypatch)
    assert result.exit_code == 2
    assert "policies/x.yaml:5:1: rules:" in result.stderr


# --- units -----------------------------------------------------------------------------------


def rules(text: str):
    return load_text(text, "t.yaml").policy.rules


HEAD = "purpose: p\ntitle: t\nlegal_basis: contract\nowner: o\nrules:\n"


def rule(name: str, **fields) -> str:
    body = {
        "table": "s.t",
        "key": "id",
        "clock": "c",
        "keep_for": "P1Y",
        "action": "delete",
        **fields,
    }
    return f"  - name: {name}\n" + "".join(f"    {k}: {v}\n" for k, v in body.items())


def test_placeholders():
    for text in ("TODO", " todo ", "-", "?", "unknown", "N/A", "tbd", "TODO: ask legal", "", "  "):
        assert is_placeholder(text), text
    for text in ("team-billing", "finance", "people-and-culture", "Data Protection Office"):
        assert not is_placeholder(text), text


def test_disjoint_filters():
    a, b, c, d, e, f = rules(
        HEAD
        + rule("a", where="{country: [NO, DK]}")
        + rule("b", where="{country: SE}")
        + rule("c", where="{country: {ne: SE}}")
        + rule("d", where="{ended_at: {is_null: true}}")
        + rule("e", where="{ended_at: {is_null: false}}")
        + rule("f")
    )
    assert disjoint(a, b) and disjoint(b, c) and disjoint(d, e)
    assert not disjoint(a, c) and not disjoint(a, f) and not disjoint(a, d)


def test_period_comparisons_use_the_calendar_and_rounding():
    p5y, d1825, p5y_year_end = rules(
        HEAD
        + rule("a", keep_for="P5Y")
        + rule("b", keep_for="P1825D")
        + rule("c", keep_for="P5Y", round_clock_to="year_end")
    )
    assert ends_before(d1825, p5y)  # five years hold a leap day or two
    assert ends_before(p5y, p5y_year_end) and never_after(p5y, p5y_year_end)
    assert not ends_before(p5y_year_end, p5y)


def test_two_anonymise_rules_writing_one_column_differently(tmp_path, monkeypatch):
    text = (
        HEAD
        + rule("a", action="anonymise", columns="{email: hash}")
        + rule("b", action="anonymise", columns="{email: redact}")
    )
    problems = lint_policies(_set(text, tmp_path, monkeypatch))
    assert [p.message.split()[0] for p in problems] == ["RJ103"]
    assert str(problems[0]).startswith(
        "t.yaml:19:15: rules[1].columns.email: RJ103 email is anonymised differently"
    )


def test_consent_withdrawal_found_in_related_values(tmp_path, monkeypatch):
    text = HEAD.replace("contract", "consent") + rule(
        "a", related="[{table: s.lists, on: id, all: {status: unsubscribed}}]"
    )
    assert lint_policies(_set(text, tmp_path, monkeypatch)) == []


def test_personal_column_names():
    people = TableInfo("crm.people", {})
    things = TableInfo("app.organisations", {})
    for c in (
        "email",
        "contact_email",
        "e_mail",
        "phone",
        "mobile_phone",
        "msisdn",
        "national_id",
        "ssn",
        "personnummer",
        "fodselsnummer",
        "cpr",
        "iban",
        "ip_address",
        "client_ip",
        "imei",
        "full_name",
        "first_name",
        "surname",
    ):
        assert personal_by_name(things, c), c
    for c in ("msisdn_id", "status", "zip", "list_name", "product_name", "shipping", "created_at"):
        assert not personal_by_name(things, c), c
    assert personal_by_name(people, "name") and not personal_by_name(things, "name")


def test_value_kinds():
    assert value_kind("kari@example.org") == "e-mail addresses"
    assert value_kind("+47 912 34 567") == value_kind("0046701234567") == "phone numbers"
    for v in ("01018012345", "19800101-1234", "800101-1234", "010180-1234", "010180A123B"):
        assert looks_like_national_id(v), v
    for v in ("12345", "99999999999", "2026-01-01", "hello", "ABC-123"):
        assert not looks_like_national_id(v), v
    assert value_kind("Called about the invoice") is None


def _set(text: str, tmp_path: Path, monkeypatch):
    (tmp_path / "t.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return load_policies(["t.yaml"])
