"""CLI start-up: `--help` and `validate` without a store import none of the heavy libraries
(SQLAlchemy, Polars, PyArrow, DuckDB, Dagster), which took 4-5 s of every call (issue 16).
Checked in a fresh interpreter by what `sys.modules` holds, not by a timing."""

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ["sqlalchemy", "polars", "pyarrow", "duckdb", "dagster"]
ROOT = Path(__file__).resolve().parent.parent


def _loaded_after(
    args: list[str], cwd: Path, modules: list[str] = HEAVY
) -> tuple[int, dict[str, bool]]:
    code = (
        "import json, sys\n"
        "from retention_jobs.cli import main\n"
        "try:\n"
        f"    main({args!r}, standalone_mode=False)\n"
        "    rc = 0\n"
        "except SystemExit as e:\n"
        "    rc = e.code or 0\n"
        f"print(json.dumps([rc, {{m: m in sys.modules for m in {modules!r}}}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    rc, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return rc, loaded


def test_help_imports_no_engine_library(tmp_path):
    rc, loaded = _loaded_after(["--help"], tmp_path)
    assert rc == 0
    assert loaded == dict.fromkeys(HEAVY, False)


def test_validate_without_a_store_imports_no_engine_library(tmp_path):
    rc, loaded = _loaded_after(["validate", str(ROOT / "policies")], tmp_path)
    assert rc == 0
    assert loaded == dict.fromkeys(HEAVY, False)


def test_validate_checks_fakes_without_loading_faker(tmp_path):
    """`fake:` providers and locales are checked against the shipped catalogue."""
    rc, loaded = _loaded_after(["validate", str(ROOT / "policies")], tmp_path, ["faker"])
    assert rc == 0
    assert loaded == {"faker": False}
