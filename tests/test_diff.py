"""`retention-jobs diff`: two revisions of the policies planned on one store state.

Each case in tests/fixtures/policies/<case>/ holds the policy files before (`base/`) and after
(`head/`) a change, optionally `approvals/` (committed with the head) and `case.yaml`
(`exit_code`, default 0), and `expected.md`: the pull-request comment, compared exactly.
The cases run in a temporary git repository (base and head are two commits) against a
small deterministic demo store on which the base policies already ran 30 days earlier, as
they would in production, so tonight's plan shows what the change adds or removes.

Regenerate the expected comments after an intended change of the output with
`RJ_UPDATE_FIXTURES=1 pytest tests/test_diff.py`, and review the diff.
"""

import json
import os
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from retention_jobs import control
from retention_jobs.anonymise import DEMO_KEY_TEXT, PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.cli import main
from retention_jobs.demo import load_duckdb
from retention_jobs.diff import (
    load_approval_texts,
    load_texts,
    revision_files,
    rule_changes,
    strategy_text,
)
from retention_jobs.errors import PolicyError
from retention_jobs.load import load_policies, load_text
from retention_jobs.store import open_store

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "base").is_dir())
AS_OF = "2026-11-22"
PRERUN = date(2026, 10, 23)
ROWS = 1000


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    proc = subprocess.run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def replace_dir(target: Path, source: Path | None) -> None:
    if target.exists():
        shutil.rmtree(target)
    if source is not None and source.exists():
        # fresh modification times: with the fixtures' own (copy2), a head file as long as its
        # base (P6M -> P3M) would look unchanged to git's index
        shutil.copytree(source, target, copy_function=shutil.copy)


def make_repo(
    path: Path, base: Path, head: Path, approvals: Path | None = None, commit_head: bool = True
) -> Path:
    """A git repository with `policies/` as in `base` (tag `base`), then as in `head` with the
    approvals (tag `head`, or left uncommitted in the working tree)."""
    path.mkdir()
    git(path, "init", "-q")
    replace_dir(path / "policies", base)
    (path / "README.md").write_text("test repository\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "base")
    git(path, "tag", "base")
    replace_dir(path / "policies", head)
    replace_dir(path / "approvals", approvals)
    if commit_head:
        git(path, "add", "-A")
        git(path, "commit", "-qm", "head", "--allow-empty")
        git(path, "tag", "head")
    return path


@pytest.fixture(scope="session")
def pristine_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diff-store") / "warehouse.duckdb"
    load_duckdb(path, ROWS, date.fromisoformat(AS_OF))
    store = open_store(str(path))
    with store.connect() as session:
        control.ensure_control_schema(store, session)
    return path


@pytest.fixture(scope="session")
def steady(pristine_store, tmp_path_factory):
    """`steady(policy_dir)`: a copy of the demo store on which the policies in `policy_dir` ran
    30 days before AS_OF, one per distinct set of policies (diff only reads it)."""
    made: dict[tuple, Path] = {}

    def make(policy_dir: Path) -> Path:
        key = tuple(sorted((p.name, p.read_bytes()) for p in policy_dir.iterdir()))
        if key not in made:
            target = tmp_path_factory.mktemp("steady") / "warehouse.duckdb"
            shutil.copy(pristine_store, target)
            run_policies(
                open_store(str(target)),
                load_policies([policy_dir]),
                PRERUN,
                PseudonymKey.from_text(DEMO_KEY_TEXT),
                RunOptions(max_delete_fraction=None),
            )
            made[key] = target
        return made[key]

    return make


def run_cli(repo: Path, *args: str, monkeypatch) -> Result:
    monkeypatch.chdir(repo)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --- the fixture cases -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_fixture_case(case, steady, tmp_path, monkeypatch):
    d = FIXTURES / case
    meta = yaml.safe_load((d / "case.yaml").read_text()) if (d / "case.yaml").exists() else {}
    store = steady(d / "base")
    repo = make_repo(tmp_path / "repo", d / "base", d / "head", d / "approvals")
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        "--format",
        "markdown",
        *meta.get("args", []),
        monkeypatch=monkeypatch,
    )
    expected = d / "expected.md"
    if os.environ.get("RJ_UPDATE_FIXTURES"):
        expected.write_text(result.stdout)
    assert result.exit_code == meta.get("exit_code", 0), result.stdout + result.stderr
    assert result.stdout == expected.read_text()


def test_guard_message_and_json(steady, tmp_path, monkeypatch):
    d = FIXTURES / "delete-half-table"
    store = steady(d / "base")
    repo = make_repo(tmp_path / "repo", d / "base", d / "head")
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        "--format",
        "json",
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 3
    assert "telecom.traffic_records" in result.stderr and "approvals/" in result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["over"] == ["telecom.traffic_records"]
    table = next(t for t in data["tables"] if t["table"] == "telecom.traffic_records")
    assert 0.25 < table["share"] < 1 and table["newly_deleted"] > 0
    assert table["head_delete_rows"] == round(table["share"] * table["rows"])
    # a higher limit passes without an approval
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        "--format",
        "json",
        "--max-delete-fraction",
        "0.9",
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["passed"] is True


def test_approval_must_cover_the_measured_share(steady, tmp_path, monkeypatch):
    d = FIXTURES / "delete-half-table-approved"
    approvals = tmp_path / "approvals"
    approvals.mkdir()
    text = (
        (d / "approvals" / "telecom-traffic-p3m.yaml")
        .read_text()
        .replace("max_fraction: 0.55", "max_fraction: 0.3")
    )
    (approvals / "too-small.yaml").write_text(text)
    store = steady(d / "base")
    repo = make_repo(tmp_path / "repo", d / "base", d / "head", approvals)
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        "--format",
        "markdown",
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 3
    assert "**approval needed**" in result.stdout


def test_working_tree_head_and_same_store_state(steady, tmp_path, monkeypatch):
    """Without --head the working tree is the head, approvals included; the store is not changed."""
    d = FIXTURES / "delete-half-table-approved"
    store = steady(d / "base")
    repo = make_repo(tmp_path / "repo", d / "base", d / "head", d / "approvals", commit_head=False)
    before = store.read_bytes()
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        "--format",
        "markdown",
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("**Retention diff** `base` → `working tree` as of 2026-11-22:")
    assert "approved by dpo@example.org (approvals/telecom-traffic-p3m.yaml)" in result.stdout
    assert store.read_bytes() == before
    # the table format shows the same numbers for a terminal
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0 and "telecom.traffic_records" in result.stdout


def test_no_change(steady, tmp_path, monkeypatch):
    d = FIXTURES / "newsletter-keep-for"
    store = steady(d / "base")
    repo = make_repo(tmp_path / "repo", d / "base", d / "base")
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "base",
        "--as-of",
        AS_OF,
        "--store",
        str(store),
        "--format",
        "markdown",
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0
    assert "No change in what a run would do." in result.stdout
    assert "0 rules changed, 0 added, 0 removed" in result.stdout


def test_counts_never_values(steady, tmp_path, monkeypatch):
    """No e-mail address or name from the store appears in any format."""
    import duckdb

    d = FIXTURES / "newsletter-keep-for"
    store = steady(d / "base")
    con = duckdb.connect(str(store), read_only=True)
    values = {
        v
        for row in con.execute(
            "SELECT email, full_name FROM marketing.newsletter_subscribers"
        ).fetchall()
        for v in row
        if v
    }
    con.close()
    repo = make_repo(tmp_path / "repo", d / "base", d / "head")
    for fmt in ("markdown", "json", "table"):
        result = run_cli(
            repo,
            "diff",
            "--base",
            "base",
            "--head",
            "head",
            "--as-of",
            AS_OF,
            "--store",
            str(store),
            "--format",
            fmt,
            monkeypatch=monkeypatch,
        )
        assert result.exit_code == 0
        assert not [v for v in values if v in result.stdout]


@pytest.mark.postgres
def test_postgres_store_gives_the_same_comment(tmp_path, monkeypatch):
    """The same case on PostgreSQL (one REPEATABLE READ snapshot, read-only session): the same
    demo rows and the same prerun give exactly the same comment."""
    from stores import pg_database

    from retention_jobs.demo import load_store

    d = FIXTURES / "newsletter-keep-for"
    with pg_database() as url:
        store = open_store(url)
        load_store(store, ROWS, date.fromisoformat(AS_OF))
        with store.connect() as session:
            control.ensure_control_schema(store, session)
        run_policies(
            store,
            load_policies([d / "base"]),
            PRERUN,
            PseudonymKey.from_text(DEMO_KEY_TEXT),
            RunOptions(max_delete_fraction=None),
        )
        repo = make_repo(tmp_path / "repo", d / "base", d / "head")
        result = run_cli(
            repo,
            "diff",
            "--base",
            "base",
            "--head",
            "head",
            "--as-of",
            AS_OF,
            "--store",
            url,
            "--format",
            "markdown",
            monkeypatch=monkeypatch,
        )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout == (d / "expected.md").read_text()


# --- failures --------------------------------------------------------------------------------


def test_a_base_that_does_not_load_is_reported_with_its_place(
    pristine_store, tmp_path, monkeypatch
):
    d = FIXTURES / "newsletter-keep-for"
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (
        (d / "base" / "newsletter.yaml").read_text().replace("keep_for: P0D", "keep_for: P0 days")
    )
    (broken / "newsletter.yaml").write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "keep_for:" in ln)
    repo = make_repo(tmp_path / "repo", broken, d / "head")
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(pristine_store),
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 2
    assert (
        f"base:policies/newsletter.yaml:{line}:5: rules[0].keep_for: 'P0 days' is not an ISO-8601 period"
        in result.stderr
    )


def test_a_base_that_does_not_resolve_is_reported(pristine_store, tmp_path, monkeypatch):
    d = FIXTURES / "newsletter-keep-for"
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (
        (d / "base" / "newsletter.yaml")
        .read_text()
        .replace(
            "table: marketing.newsletter_subscribers", "table: marketing.newsletter_subscriber"
        )
    )
    (broken / "newsletter.yaml").write_text(text)
    line = next(
        i
        for i, ln in enumerate(text.splitlines(), 1)
        if ln.strip() == "table: marketing.newsletter_subscriber"
    )
    repo = make_repo(tmp_path / "repo", broken, d / "head")
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(pristine_store),
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 2
    assert (
        f"base:policies/newsletter.yaml:{line}:5: rules[0].table: table 'marketing.newsletter_subscriber' "
        "is not in the store" in result.stderr
    )


def test_unknown_revision_is_bad_input(pristine_store, tmp_path, monkeypatch):
    d = FIXTURES / "newsletter-keep-for"
    repo = make_repo(tmp_path / "repo", d / "base", d / "head")
    result = run_cli(
        repo,
        "diff",
        "--base",
        "no-such-branch",
        "--as-of",
        AS_OF,
        "--store",
        str(pristine_store),
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 2
    assert "unknown revision 'no-such-branch'" in result.stderr


def test_bad_approval_file_is_bad_input(pristine_store, tmp_path, monkeypatch):
    d = FIXTURES / "delete-half-table"
    approvals = tmp_path / "approvals"
    approvals.mkdir()
    (approvals / "x.yaml").write_text(
        "purpose: telecom-traffic\nrule: delete-traffic-records\nmax_fraction: 2\n"
    )
    repo = make_repo(tmp_path / "repo", d / "base", d / "head", approvals)
    result = run_cli(
        repo,
        "diff",
        "--base",
        "base",
        "--head",
        "head",
        "--as-of",
        AS_OF,
        "--store",
        str(pristine_store),
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 2
    assert (
        "head:approvals/x.yaml:3:1: max_fraction: Input should be less than or equal to 1"
        in result.stderr
    )
    assert "head:approvals/x.yaml:1:1: approved_by: Field required" in result.stderr


# --- units -----------------------------------------------------------------------------------


def test_revision_files_reads_the_directory_at_a_revision(tmp_path):
    d = FIXTURES / "rule-removed"
    repo = make_repo(tmp_path / "repo", d / "base", d / "head")
    (repo / "policies" / "nested").mkdir()
    files = revision_files("base", "policies", cwd=repo)
    assert [name for name, _ in files] == ["base:policies/web-logs.yaml"]
    assert files[0][1] == (d / "base" / "web-logs.yaml").read_text()
    assert revision_files("base", "approvals", cwd=repo) == []
    policies = load_texts(files)
    assert policies.files[0].path == "base:policies/web-logs.yaml"
    assert [r.name for r in policies.policies[0].rules] == ["mask-ip-addresses", "delete-old-logs"]


def test_duplicate_purposes_at_a_revision():
    text = (FIXTURES / "rule-removed" / "base" / "web-logs.yaml").read_text()
    with pytest.raises(PolicyError) as e:
        load_texts([("r:a.yaml", text), ("r:b.yaml", text)])
    assert "r:b.yaml:5:1: purpose: purpose 'web-logs' is also defined in r:a.yaml" in str(e.value)


def test_rule_changes_and_strategy_text():
    base = load_text(
        (FIXTURES / "customers-anonymised-column" / "base" / "customers.yaml").read_text(), "b"
    )
    head = load_text(
        (FIXTURES / "customers-anonymised-column" / "head" / "customers.yaml").read_text(), "h"
    )
    rb, rh = base.policy.rules[1], head.policy.rules[1]
    changes, new, changed = rule_changes(rb, rh)
    assert (
        changes == ["anonymises also national_id (redact)"]
        and new == ["national_id"]
        and changed == []
    )
    assert rule_changes(None, rh)[0][0] == "added"
    assert rule_changes(rb, None) == (["removed"], [], [])
    assert [strategy_text(s) for s in rh.columns.values()] == [
        "fake name",
        "hash",
        "mask (keep_first 3)",
        "redact",
        "mask (keep_first 2)",
        "generalise year",
        "redact",
    ]


def test_approvals_are_validated_with_places():
    ok = load_approval_texts(
        [("a.yaml", "purpose: p\nrule: r\nmax_fraction: 0.5\napproved_by: x\nreason: y\n")]
    )
    assert ok[0].approval.rule_id == "p/r" and ok[0].approval.max_fraction == 0.5
    with pytest.raises(PolicyError) as e:
        load_approval_texts(
            [
                (
                    "a.yaml",
                    "purpose: p\nrule: r\nmax_fraction: 0\napproved_by: x\nreason: y\nextra: 1\n",
                )
            ]
        )
    text = str(e.value)
    assert "a.yaml:3:1: max_fraction: Input should be greater than 0" in text
    assert "a.yaml:6:1: extra: Extra inputs are not permitted" in text


# --- the CI workflow and the pre-commit hooks ------------------------------------------------


def test_workflow_parses_and_calls_the_cli():
    wf = yaml.load(
        (ROOT / ".github" / "workflows" / "policies.yml").read_text(), Loader=yaml.BaseLoader
    )
    assert "pull_request" in wf["on"] and wf["on"]["pull_request"]["paths"]
    steps = wf["jobs"]["policies"]["steps"]
    assert (
        steps[0]["uses"].startswith("actions/checkout@") and steps[0]["with"]["fetch-depth"] == "0"
    )
    scripts = "\n".join(s.get("run", "") for s in steps)
    for command in (
        "uv run retention-jobs validate",
        "uv run retention-jobs lint",
        "uv run retention-jobs diff",
        "--format markdown",
        "gh pr comment",
        "--body-file",
    ):
        assert command in scripts
    # yaml.safe_load too (it reads `on:` as True, which GitHub does not, but it must parse)
    assert yaml.safe_load((ROOT / ".github" / "workflows" / "policies.yml").read_text())


def test_pre_commit_hooks():
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"retention-jobs-validate", "retention-jobs-lint"}
    for h in hooks.values():
        assert h["entry"].startswith("retention-jobs ") and h["files"] == "^policies/"
        assert h["language"] in ("system", "python")
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    ids = {h["id"] for repo in config["repos"] for h in repo["hooks"]}
    assert {"retention-jobs-validate", "retention-jobs-lint"} <= ids
