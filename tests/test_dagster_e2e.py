"""End to end: a real webserver and daemon, a backfill launched through GraphQL, the store checked.

Starts `dagster-webserver` and `dagster-daemon run` against a temporary DAGSTER_HOME holding the
repo's dagster.yaml, and a temporary store and policy directory. Runs in CI too (about a minute).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import requests
import test_assets
from test_assets import KEY, build_store, query

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARTITIONS = ["2026-03-01", "2026-03-02", "2026-03-03"]
TIMEOUT = 240

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

RUNS = """
query Runs($backfill: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $backfill}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
  partitionBackfillOrError(backfillId: $backfill) {
    __typename
    ... on PartitionBackfill { status }
  }
}
"""

BACKFILLS = """
query { partitionBackfillsOrError { ... on PartitionBackfills { results { id } } } }
"""

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def init_instance(home: Path) -> None:
    """Create the instance's storage (runs, event log index, schedules) once, before the
    webserver and the daemon start: both create missing tables at start-up, and two processes
    doing it at the same moment on a fresh DAGSTER_HOME race ("table jobs already exists").
    Production does the same with `dagster instance migrate` (docs/operations.md)."""
    import dagster as dg

    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)  # dagster.yaml places the storage under it
    try:
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            instance.get_runs(limit=1)
            instance.all_instigator_state()
        finally:
            instance.dispose()
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = saved
    created = {p.relative_to(home).as_posix() for p in home.rglob("*.db")}
    assert {"history/runs.db", "schedules/schedules.db"} <= created, created


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The processes this test starts, each in its own session so it can be stopped with its
    children (the webserver's code server) and nothing else."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, *args: str) -> None:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((name, proc, log))

    def check_alive(self) -> None:
        for name, proc, _ in self.started:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}")

    def tails(self, lines: int = 60) -> str:
        out = []
        for name, _, log in self.started:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"----- {name} (last {lines} lines) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def stop(self) -> None:
        for _, proc, _ in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, proc, _ in self.started:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def graphql(url: str, document: str, variables: dict) -> dict:
    r = requests.post(
        f"{url}/graphql", json={"query": document, "variables": variables}, timeout=30
    )
    if not r.ok:
        raise requests.HTTPError(f"{r.status_code}: {r.text[:2000]}")
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def wait_for_server(url: str, procs: Processes) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError("the webserver did not answer /server_info within 120 s")


def launch_backfill(url: str, procs: Processes) -> str:
    params = {
        "partitionNames": PARTITIONS,
        "assetSelection": [{"path": ["retention", "newsletter"]}],
        "fromFailure": False,
        "title": "e2e",
    }
    deadline = time.monotonic() + 90
    while True:  # the code location may still be loading: the server can answer 500 meanwhile
        procs.check_alive()
        try:
            result = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
        except requests.RequestException as exc:
            print(f"launching the backfill failed, retrying: {exc}")
            result = {"__typename": type(exc).__name__, "message": str(exc)}
            # the failed request may have created the backfill all the same: never launch twice
            existing = graphql(url, BACKFILLS, {})["partitionBackfillsOrError"].get("results") or []
            if existing:
                return existing[0]["id"]
        if result["__typename"] == "LaunchBackfillSuccess":
            return result["backfillId"]
        if time.monotonic() > deadline:
            raise AssertionError(f"backfill not launched: {result}")
        time.sleep(2)


def wait_for_runs(url: str, backfill: str, procs: Processes) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        procs.check_alive()
        data = graphql(url, RUNS, {"backfill": backfill})
        runs = data["runsOrError"]["results"]
        status = data["partitionBackfillOrError"].get("status")
        if (
            len(runs) == len(PARTITIONS)
            and all(r["status"] in TERMINAL for r in runs)
            and status != "REQUESTED"
        ):
            return runs
        time.sleep(2)
    raise AssertionError(
        f"the backfill's runs did not finish within {TIMEOUT} s: {runs}, backfill {status}"
    )


@pytest.mark.e2e
def test_a_backfill_through_graphql_applies_three_days(tmp_path):
    db, policies = build_store(tmp_path / "data")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RETENTION_STORE": str(db),
        "RETENTION_POLICIES": str(policies),
        "RETENTION_PSEUDONYM_KEY": KEY,
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    init_instance(home)
    procs = Processes(logs, env)
    try:
        procs.start(
            "webserver",
            "dagster-webserver",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        )
        procs.start("daemon", "dagster-daemon", "run", "-w", "workspace.yaml")
        wait_for_server(url, procs)
        backfill = launch_backfill(url, procs)
        runs = wait_for_runs(url, backfill, procs)

        assert {r["status"] for r in runs} == {"SUCCESS"}, runs
        partitions = sorted(
            t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"
        )
        assert partitions == PARTITIONS
        # three unsubscribe each day: the three days' nine are gone, the fourth day's are not
        assert query(
            db,
            "SELECT count(*), min(unsubscribed_at) FROM mkt.subscribers "
            "WHERE unsubscribed_at IS NOT NULL",
        ) == [(6, date(2026, 3, 4))]
        ledger = query(
            db,
            "SELECT as_of, count(DISTINCT run_id), sum(deleted) FROM retention_control.audit "
            "WHERE purpose = 'newsletter' GROUP BY as_of ORDER BY as_of",
        )
        assert [(str(d), n, deleted) for d, n, deleted in ledger] == [(p, 1, 3) for p in PARTITIONS]
        # nothing Dagster stored (run and event databases, compute logs) holds the key or a value
        stored = b"".join(f.read_bytes() for f in home.rglob("*") if f.is_file())
        assert KEY.encode() not in stored
        personal = [
            v for i in range(1001, 1101) for v in (test_assets.email(i), test_assets.name(i))
        ]
        assert not [v for v in personal if v.encode() in stored]
    except BaseException:
        print(procs.tails())
        raise
    finally:
        procs.stop()
