"""The benchmark suite: one command, every scenario, each in a process of its own.

    uv run python benchmarks/run.py                      # 1M and 10M rows, 3 runs each
    uv run python benchmarks/run.py --sizes 100k --runs 1   # a quick check
    uv run python benchmarks/run.py --sizes 1m,10m,30m --pg-sizes 1m --pganonymize /path/to/pganonymize

Builds the deterministic warehouse (`warehouse.py`) once per size, then for each run copies
it and times, in separate processes: anonymise, nothing-to-do (the next day, on the
anonymised copy), purge (compaction of that copy), delete (with the orders cascade), erasure
(one subject across both tables), and the reference points: the copy floor (CREATE TABLE AS
SELECT *), a per-row Python implementation on a subset (extrapolated linearly), and, on
PostgreSQL, pganonymize next to the suite's SqlStore. Reports the median of the runs, the
process's own wall time and peak RSS (`os.wait4`), and the machine load, as a table on stdout
and as JSON and Markdown in `benchmarks/results/` (gitignored). A reference point whose
optional tool is missing is skipped with a note; the harness itself needs only the
project's dependencies.
"""

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import warehouse as W  # noqa: E402

SCENARIO = str(HERE / "scenario.py")
DUCKDB_SCENARIOS = ("anonymise", "nothing-to-do", "purge", "delete", "erasure", "floor", "per-row")
PG_SCENARIOS = (
    "anonymise",
    "nothing-to-do",
    "delete",
    "erasure",
    "floor",
    "per-row",
    "pganonymize",
)
# plus, with the scenario `workers`: anonymise-wN and delete-wN for each N of --workers
GENERATOR = hashlib.sha256((HERE / "warehouse.py").read_bytes()).hexdigest()[:10]


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in "km" else t) * mult)


def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def machine_load() -> dict:
    up = (
        subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        if shutil.which("uptime")
        else ""
    )
    return {
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "uptime": up,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- processes ---------------------------------------------------------------------------------


def run_process(cmd: list[str], timeout: float | None = None) -> dict:
    """Run `cmd`; return its wall time, its own peak RSS (wait4), its last JSON line, rc."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        deadline = None if timeout is None else t0 + timeout
        hwm = 0
        while True:
            hwm = max(hwm, _vm_hwm_kb(p.pid))
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    result: dict = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    # VmHWM is the exec'd program's own high-water mark; ru_maxrss also counts the pages the
    # child shared with this process between fork and exec, so it is only the fallback
    peak = hwm or usage.ru_maxrss
    return {
        "rc": p.returncode,
        "process_seconds": wall,
        "peak_rss_mb": round(peak / 1024, 1),
        "result": result,
        "stderr": stderr[-3000:],
        "stdout": stdout[-2000:],
    }


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def build(kind: str, where: str, n: int) -> None:
    """Build in a child process, so this process stays small (its size would count in the
    children's ru_maxrss)."""
    r = subprocess.run(
        [sys.executable, str(HERE / "warehouse.py"), kind, where, str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(f"building the {kind} warehouse failed:\n{r.stderr[-3000:]}")


class Failed(Exception):
    pass


def scenario(name: str, store: str, args: argparse.Namespace, *extra: str) -> dict:
    cmd = [
        sys.executable,
        SCENARIO,
        name,
        "--store",
        store,
        "--batch-size",
        str(args.batch_size),
        "--subset",
        str(args.per_row_subset),
        *extra,
    ]
    if args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    r = run_process(cmd, args.timeout)
    if r["rc"] != 0:
        raise Failed(f"{name} on {store} exited {r['rc']}: {r['stderr'].strip()[-1500:]}")
    return r


# --- warehouses ----------------------------------------------------------------------------------


def duckdb_base(n: int, args: argparse.Namespace) -> tuple[Path, float | None]:
    path = Path(args.work_dir) / f"warehouse-{label(n)}-{GENERATOR}.duckdb"
    if path.exists() and not args.rebuild:
        return path, None
    path.unlink(missing_ok=True)
    tmp = path.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    build("duckdb", str(tmp), n)
    tmp.rename(path)
    Path(str(tmp) + ".lock").unlink(missing_ok=True)
    return path, time.perf_counter() - t0


def duckdb_copy(base: Path, name: str) -> Path:
    dst = base.with_name(name)
    for p in (dst, Path(str(dst) + ".wal"), Path(str(dst) + ".lock")):
        p.unlink(missing_ok=True)
    shutil.copyfile(base, dst)
    return dst


def duckdb_remove(path: Path) -> None:
    for p in (
        path,
        Path(str(path) + ".wal"),
        Path(str(path) + ".lock"),
        path.with_name(path.name + ".compact"),
    ):
        p.unlink(missing_ok=True)


class Postgres:
    """Throwaway databases on the server: a template per size, a fresh copy per run."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.url = sa.engine.make_url(url)
        self.created: list[str] = []

    def db_url(self, db: str, driver: str = "postgresql+psycopg") -> str:
        return self.url.set(drivername=driver, database=db).render_as_string(hide_password=False)

    def admin(self, sql: str) -> list:
        import psycopg

        with psycopg.connect(
            self.db_url(self.url.database or "postgres", "postgresql"), autocommit=True
        ) as c:
            cur = c.execute(sql)
            return cur.fetchall() if cur.description else []

    def available(self) -> str | None:
        try:
            self.admin("SELECT 1")
            return None
        except Exception as e:  # noqa: BLE001 - any failure means "not measured"
            return f"PostgreSQL not reachable at {self.db_url(self.url.database or '', 'postgresql')}: {type(e).__name__}"

    def exists(self, db: str) -> bool:
        return bool(self.admin(f"SELECT 1 FROM pg_database WHERE datname = '{db}'"))

    def base(self, n: int, args: argparse.Namespace) -> tuple[str, float | None]:
        db = f"rj_bench_base_{label(n).lower()}_{GENERATOR}"
        if self.exists(db) and not args.rebuild:
            if db not in self.created:
                self.created.append(db)
            return db, None
        self.admin(f'DROP DATABASE IF EXISTS "{db}"')
        self.admin(f'CREATE DATABASE "{db}"')
        self.created.append(db)
        t0 = time.perf_counter()
        build("postgres", self.db_url(db), n)
        return db, time.perf_counter() - t0

    def copy(self, base: str, name: str) -> str:
        self.admin(f'DROP DATABASE IF EXISTS "{name}"')
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{base}"')
        return name

    def drop(self, db: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def find_pganonymize(args: argparse.Namespace) -> str | None:
    if args.pganonymize:
        return args.pganonymize if Path(args.pganonymize).exists() else None
    return os.environ.get("RJ_PGANONYMIZE") or shutil.which("pganonymize")


# --- one size ------------------------------------------------------------------------------------


class Collector:
    def __init__(self):
        self.rows: list[dict] = []

    def add(
        self,
        size: int,
        store: str,
        scenario: str,
        run: dict | None,
        note: str | None = None,
        extrapolate_to: int | None = None,
    ) -> None:
        key = (size, store, scenario)
        row = next((r for r in self.rows if (r["size"], r["store"], r["scenario"]) == key), None)
        if row is None:
            row = {"size": size, "store": store, "scenario": scenario, "runs": [], "note": note}
            self.rows.append(row)
        if note and not row.get("note"):
            row["note"] = note
        if run is None:
            return
        entry = {
            "op_seconds": round(run["result"].get("op_seconds", run["process_seconds"]), 4),
            "process_seconds": round(run["process_seconds"], 3),
            "peak_rss_mb": run["peak_rss_mb"],
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "detail": run["result"],
        }
        if extrapolate_to is not None:
            done = run["result"].get("rows") or 1
            entry["measured_rows"] = done
            entry["measured_op_seconds"] = entry["op_seconds"]
            entry["op_seconds"] = round(entry["op_seconds"] * extrapolate_to / done, 3)
            entry["process_seconds"] = None
        row["runs"].append(entry)
        ops = [r["op_seconds"] for r in row["runs"]]
        procs = [r["process_seconds"] for r in row["runs"] if r["process_seconds"] is not None]
        row["median_op_seconds"] = round(statistics.median(ops), 4)
        row["median_process_seconds"] = round(statistics.median(procs), 3) if procs else None
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in row["runs"])
        row["detail"] = run["result"]

    def fail(self, size: int, store: str, scenario: str, message: str) -> None:
        self.add(size, store, scenario, None, note=f"failed: {message}")


def bench_duckdb(n: int, args: argparse.Namespace, col: Collector, log) -> dict:
    base, built = duckdb_base(n, args)
    log(
        f"[{label(n)} duckdb] warehouse {base.name}"
        + (f" built in {built:.1f} s" if built else " (cached)")
    )
    counts = W.expected_counts(n)
    wanted = set(args.scenarios)
    for k in range(args.runs):
        log(f"[{label(n)} duckdb] run {k + 1}/{args.runs}  load {os.getloadavg()[0]:.2f}")
        if wanted & {"anonymise", "nothing-to-do", "purge"}:
            a = duckdb_copy(base, f"run-{label(n)}-a.duckdb")
            try:
                for name in ("anonymise", "nothing-to-do", "purge"):
                    if name in wanted or (name == "anonymise"):
                        r = scenario(name, str(a), args)
                        if name in wanted:
                            col.add(n, "duckdb", name, r)
                        log(
                            f"  {name:14s} {r['result'].get('op_seconds', 0):8.2f} s  rss {r['peak_rss_mb']:.0f} MB"
                        )
            except Failed as e:
                col.fail(n, "duckdb", name, str(e))
                log(f"  {name} FAILED: {e}")
            finally:
                duckdb_remove(a)
        if "delete" in wanted:
            b = duckdb_copy(base, f"run-{label(n)}-b.duckdb")
            try:
                r = scenario("delete", str(b), args)
                col.add(n, "duckdb", "delete", r)
                log(
                    f"  delete         {r['result']['op_seconds']:8.2f} s  rss {r['peak_rss_mb']:.0f} MB"
                )
            except Failed as e:
                col.fail(n, "duckdb", "delete", str(e))
                log(f"  delete FAILED: {e}")
            finally:
                duckdb_remove(b)
        if wanted & {"erasure", "floor", "per-row"}:
            c = duckdb_copy(base, f"run-{label(n)}-c.duckdb")
            try:
                for name in ("erasure", "floor", "per-row"):
                    if name not in wanted:
                        continue
                    try:
                        r = scenario(name, str(c), args)
                    except Failed as e:
                        col.fail(n, "duckdb", name, str(e))
                        log(f"  {name} FAILED: {e}")
                        continue
                    if name == "per-row":
                        col.add(
                            n,
                            "duckdb",
                            name,
                            r,
                            extrapolate_to=counts["to_act"],
                            note=f"extrapolated linearly from {r['result'].get('rows')} rows",
                        )
                    else:
                        col.add(n, "duckdb", name, r)
                    log(
                        f"  {name:14s} {r['result'].get('op_seconds', 0):8.2f} s  rss {r['peak_rss_mb']:.0f} MB"
                    )
            finally:
                duckdb_remove(c)
    if not args.keep:
        duckdb_remove(base)
    return {"built_seconds": built}


def bench_postgres(n: int, args: argparse.Namespace, col: Collector, log, pg: Postgres) -> dict:
    wanted = set(args.scenarios) | {"pganonymize"}
    counts = W.expected_counts(n)
    problem = pg.available()
    if problem is None:
        try:
            from retention_jobs.store.sql_store import SqlStore  # noqa: F401
        except ImportError:
            problem = "not measured: SqlStore not available"
    if problem:
        for name in PG_SCENARIOS:
            col.add(n, "postgresql", name, None, note=problem)
        log(f"[{label(n)} postgresql] skipped: {problem}")
        return {}
    base, built = pg.base(n, args)
    log(
        f"[{label(n)} postgresql] template {base}"
        + (f" built in {built:.1f} s" if built else " (cached)")
    )
    tool = find_pganonymize(args)
    schema_file = Path(args.work_dir) / "pganonymize.yaml"
    schema_file.write_text(W.PGANONYMIZE_SCHEMA)
    for k in range(args.runs):
        log(f"[{label(n)} postgresql] run {k + 1}/{args.runs}  load {os.getloadavg()[0]:.2f}")
        plans = [
            ("a", ("anonymise", "nothing-to-do")),
            ("b", ("delete",)),
            ("c", ("erasure", "floor", "per-row")),
            ("d", ("pganonymize",)),
        ]
        if "workers" in wanted:  # the same anonymise and delete over key ranges in W processes
            plans += [
                (f"w{w}{op[0]}", (f"{op}-w{w}",))
                for w in args.workers
                for op in ("anonymise", "delete")
            ]
        for suffix, names in plans:
            names = tuple(x for x in names if x in wanted or "-w" in x)
            if not names:
                continue
            db = pg.copy(base, f"rj_bench_run_{suffix}")
            url = pg.db_url(db)
            try:
                for name in names:
                    if name == "pganonymize":
                        if tool is None:
                            col.add(
                                n,
                                "postgresql",
                                name,
                                None,
                                note="not measured: pganonymize not installed (pip install pganonymize in "
                                "another venv, then --pganonymize PATH or RJ_PGANONYMIZE)",
                            )
                            continue
                        cmd = [
                            tool,
                            "--schema",
                            str(schema_file),
                            "--dbname",
                            db,
                            "--user",
                            pg.url.username or "postgres",
                            "--host",
                            pg.url.host or "127.0.0.1",
                            "--port",
                            str(pg.url.port or 5432),
                            "--init-sql",
                            "SET search_path TO bench, public",
                        ]
                        if pg.url.password:
                            cmd += ["--password", str(pg.url.password)]
                        r = run_process(cmd, args.timeout)
                        if r["rc"] != 0:
                            raise Failed(f"pganonymize exited {r['rc']}: {r['stderr'][-1500:]}")
                        changed = pg_scalar(
                            url, "SELECT count(*) FROM bench.customers WHERE street_address IS NULL"
                        )
                        r["result"] = {"op_seconds": r["process_seconds"], "anonymised": changed}
                        col.add(
                            n,
                            "postgresql",
                            name,
                            r,
                            note="op = whole process; birth date set to a constant (no generalise provider)",
                        )
                    elif name == "per-row":
                        r = scenario(name, url, args)
                        col.add(
                            n,
                            "postgresql",
                            name,
                            r,
                            extrapolate_to=counts["to_act"],
                            note=f"extrapolated linearly from {r['result'].get('rows')} rows",
                        )
                    elif "-w" in name:
                        op, w = name.rsplit("-w", 1)
                        r = scenario(op, url, args, "--workers", w)
                        col.add(
                            n,
                            "postgresql",
                            name,
                            r,
                            note=f"{w} worker process(es) over key ranges; RSS: coordinator only"
                            if w != "1"
                            else "1 process: the same engine as anonymise/delete",
                        )
                    else:
                        r = scenario(name, url, args)
                        col.add(n, "postgresql", name, r)
                    log(
                        f"  {name:14s} {r['result'].get('op_seconds', 0):8.2f} s  rss {r['peak_rss_mb']:.0f} MB"
                    )
            except Failed as e:
                col.fail(n, "postgresql", name, str(e))
                log(f"  {name} FAILED: {e}")
            finally:
                pg.drop(db)
    return {"built_seconds": built}


def pg_scalar(url: str, sql: str):
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as c:
        return c.execute(sql).fetchone()[0]


# --- targets and the table -----------------------------------------------------------------------


def find(rows: list[dict], size: int, store: str, scenario: str) -> dict | None:
    r = next(
        (r for r in rows if (r["size"], r["store"], r["scenario"]) == (size, store, scenario)), None
    )
    return r if r and r.get("runs") else None


def targets(rows: list[dict]) -> list[dict]:
    out = []
    sizes = sorted({r["size"] for r in rows})

    def add(name, size, value, goal, met, detail):
        out.append(
            {
                "target": name,
                "size": size,
                "value": value,
                "goal": goal,
                "met": met,
                "detail": detail,
            }
        )

    for n in sizes:
        a, f = find(rows, n, "duckdb", "anonymise"), find(rows, n, "duckdb", "floor")
        if a and f:
            ratio = a["median_op_seconds"] / f["median_op_seconds"]
            add(
                "anonymise within 2x the copy floor",
                n,
                round(ratio, 2),
                "<= 2.0",
                ratio <= 2.0,
                f"{a['median_op_seconds']:.2f} s vs CTAS {f['median_op_seconds']:.2f} s",
            )
        for store in ("duckdb", "postgresql"):
            a, p = find(rows, n, store, "anonymise"), find(rows, n, store, "per-row")
            if a and p:
                ratio = p["median_op_seconds"] / a["median_op_seconds"]
                add(
                    f"faster than per-row Faker ({store})",
                    n,
                    round(ratio, 1),
                    ">= 100",
                    ratio >= 100,
                    f"per-row {p['median_op_seconds']:.1f} s (extrapolated) vs {a['median_op_seconds']:.2f} s",
                )
        a, g = find(rows, n, "postgresql", "anonymise"), find(rows, n, "postgresql", "pganonymize")
        if a and g:
            ratio = g["median_process_seconds"] / a["median_process_seconds"]
            add(
                "faster than pganonymize (PostgreSQL, whole processes)",
                n,
                round(ratio, 2),
                ">= 10",
                ratio >= 10,
                f"pganonymize {g['median_process_seconds']:.1f} s vs SqlStore {a['median_process_seconds']:.1f} s",
            )
        for store in ("duckdb", "postgresql"):
            a, z = find(rows, n, store, "anonymise"), find(rows, n, store, "nothing-to-do")
            if a and z:
                ratio = z["median_op_seconds"] / a["median_op_seconds"]
                add(
                    f"nothing-to-do under 5 % of anonymise ({store})",
                    n,
                    f"{ratio:.1%}",
                    "< 5 %",
                    ratio < 0.05,
                    f"{z['median_op_seconds']:.2f} s vs {a['median_op_seconds']:.2f} s",
                )
        for store in ("duckdb", "postgresql"):
            e = find(rows, n, store, "erasure")
            if e:
                add(
                    f"erasure of one subject under 1 s ({store})",
                    n,
                    round(e["median_op_seconds"], 3),
                    "< 1 s",
                    e["median_op_seconds"] < 1.0,
                    f"whole process {e['median_process_seconds']:.2f} s (interpreter start and imports included)",
                )
    for n in sizes:
        for op in ("anonymise", "delete"):
            one = find(rows, n, "postgresql", f"{op}-w1")
            for r in rows:
                if (
                    one
                    and r["size"] == n
                    and r["store"] == "postgresql"
                    and r["scenario"].startswith(f"{op}-w")
                    and r["scenario"] != f"{op}-w1"
                    and r.get("runs")
                ):
                    w = int(r["scenario"].rsplit("-w", 1)[1])
                    speedup = one["median_op_seconds"] / r["median_op_seconds"]
                    add(
                        f"{op} over key ranges, {w} workers vs 1 (PostgreSQL)",
                        n,
                        round(speedup, 2),
                        "falls as workers are added (> 1)",
                        speedup > 1.0,
                        f"{r['median_op_seconds']:.2f} s vs {one['median_op_seconds']:.2f} s on {os.cpu_count()} cores",
                    )
    big = [n for n in sizes if find(rows, n, "duckdb", "anonymise")]
    if len(big) >= 2:
        lo, hi = big[-2], big[-1]
        a, b = find(rows, lo, "duckdb", "anonymise"), find(rows, hi, "duckdb", "anonymise")
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        add(
            f"peak RSS bounded by batch size ({label(lo)} vs {label(hi)})",
            hi,
            round(ratio, 2),
            "~1.0 (<= 1.25)",
            ratio <= 1.25,
            f"{a['peak_rss_mb']:.0f} MB at {label(lo)}, {b['peak_rss_mb']:.0f} MB at {label(hi)}",
        )
    return out


def rows_acted(r: dict) -> int | None:
    d = r.get("detail") or {}
    if r["scenario"] in ("anonymise", "pganonymize") or r["scenario"].startswith("anonymise-w"):
        return d.get("anonymised")
    if r["scenario"] == "delete" or r["scenario"].startswith("delete-w"):
        return (d.get("deleted") or 0) + (d.get("cascade_deleted") or 0)
    if r["scenario"] == "per-row":
        return W.expected_counts(r["size"])["to_act"]
    if r["scenario"] == "floor":
        return r["size"]
    if r["scenario"] == "erasure":
        return sum((d.get("rows_by_table") or {}).values())
    if r["scenario"] == "nothing-to-do":
        return d.get("anonymised") or 0
    return None


def table(rows: list[dict]) -> str:
    head = [
        "rows",
        "store",
        "scenario",
        "acted on",
        "median op s",
        "median process s",
        "rows/s",
        "peak RSS MB",
        "note",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acted = rows_acted(r) if r.get("runs") else None
        op = r.get("median_op_seconds")
        rate = (
            f"{acted / op:,.0f}"
            if acted and op and r["scenario"] not in ("erasure", "nothing-to-do", "purge")
            else ""
        )
        note = " ".join((r.get("note") or "").split())
        if len(note) > 240:
            note = note[:120] + " ... " + note[-110:]
        if r["scenario"] == "purge" and r.get("detail"):
            note = (
                note + f" {r['detail'].get('bytes_before', 0) / 2**20:,.0f} MB -> "
                f"{r['detail'].get('bytes_after', 0) / 2**20:,.0f} MB"
            ).strip()
        cells = [
            label(r["size"]),
            r["store"],
            r["scenario"],
            "" if acted is None else f"{acted:,}",
            "" if op is None else f"{op:.3f}" if op < 10 else f"{op:.1f}",
            "" if r.get("median_process_seconds") is None else f"{r['median_process_seconds']:.2f}",
            rate,
            "" if not r.get("runs") else f"{r['peak_rss_mb']:.0f}",
            note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_table(ts: list[dict]) -> str:
    lines = ["| target | rows | measured | goal | met | detail |", "|---|---|---|---|---|---|"]
    for t in ts:
        lines.append(
            f"| {t['target']} | {label(t['size'])} | {t['value']} | {t['goal']} | "
            f"{'yes' if t['met'] else 'NO'} | {t['detail']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="1m,10m", help="DuckDB warehouse sizes, e.g. 100k,1m,10m,30m"
    )
    ap.add_argument("--pg-sizes", default="1m", help="PostgreSQL sizes ('' for none)")
    ap.add_argument(
        "--runs", type=int, default=3, help="runs per scenario (the median is reported)"
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(DUCKDB_SCENARIOS + ("pganonymize", "workers")),
        help="'workers': on PostgreSQL, anonymise and delete over key ranges with each of --workers",
    )
    ap.add_argument(
        "--workers", default="1,2,4", help="worker processes for the key-range scenarios"
    )
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--per-row-subset", type=int, default=5_000)
    ap.add_argument(
        "--memory-limit", help="DuckDB memory_limit for the engine's sessions, e.g. 2GB"
    )
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("RJ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument(
        "--pganonymize",
        help="path of the pganonymize executable (default: on PATH or $RJ_PGANONYMIZE)",
    )
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "rj-bench"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument(
        "--keep", action="store_true", help="keep the built warehouses for the next invocation"
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild warehouses even if cached")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per process")
    ap.add_argument(
        "--reduced-above",
        default="10m",
        help="sizes above this run only --reduced-scenarios, --reduced-runs times",
    )
    ap.add_argument("--reduced-scenarios", default="anonymise,floor")
    ap.add_argument("--reduced-runs", type=int, default=1)
    args = ap.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    pg_sizes = [parse_size(s) for s in args.pg_sizes.split(",") if s.strip()]
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    free = shutil.disk_usage(args.work_dir).free
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    meta = {
        "started": machine_load(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "work_dir": args.work_dir,
        "work_dir_free_gb": round(free / 2**30, 1),
        "engine_commit": git.stdout.strip() or None,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "generator": GENERATOR,
        "as_of": str(W.AS_OF),
        "strategies": W.SIX_STRATEGIES,
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("duckdb", "polars", "sqlalchemy", "psycopg"):
        with contextlib.suppress(PackageNotFoundError):
            meta[package] = version(package)
    log(f"load at start: {meta['started']['uptime']}")
    col = Collector()
    per_size: dict = {}
    pg = Postgres(args.pg_url) if pg_sizes else None
    try:
        for n in sizes:
            sub = args
            if n > parse_size(args.reduced_above):
                sub = argparse.Namespace(
                    **{
                        **vars(args),
                        "runs": args.reduced_runs,
                        "scenarios": args.reduced_scenarios.split(","),
                    }
                )
            per_size[f"duckdb-{label(n)}"] = {
                "start": machine_load(),
                **bench_duckdb(n, sub, col, log),
                "end": machine_load(),
                "runs": sub.runs,
            }
        for n in pg_sizes:
            per_size[f"postgresql-{label(n)}"] = {
                "start": machine_load(),
                **bench_postgres(n, args, col, log, pg),
                "end": machine_load(),
            }
    finally:
        if pg is not None and not args.keep:
            for db in pg.created:
                with contextlib.suppress(Exception):
                    pg.drop(db)
    meta["finished"] = machine_load()
    meta["per_size"] = per_size
    ts = targets(col.rows)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {"meta": meta, "results": col.rows, "targets": ts}
    md = (
        f"# retention-jobs benchmarks {stamp}\n\nload at start: `{meta['started']['uptime']}`; at end: "
        f"`{meta['finished']['uptime']}`; commit {meta['engine_commit']}; {meta['cpus']} cores, {meta['memory_gb']} GiB; batch size "
        f"{args.batch_size}; median of {args.runs} runs\n\n{table(col.rows)}\n\n## Targets\n\n{target_table(ts)}\n"
    )
    for name in (f"results-{stamp}", "latest"):
        (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str))
        (out_dir / f"{name}.md").write_text(md)
    print(md)
    print(f"written: {out_dir / ('results-' + stamp + '.json')} and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
