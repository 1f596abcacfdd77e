"""One benchmark scenario in a process of its own; prints one JSON line (the last line).

    python benchmarks/scenario.py SCENARIO --store PATH_OR_URL [--batch-size N] [--subset N]

`op_seconds` is the timed operation alone (imports and interpreter start excluded); the
harness (`run.py`) also times the whole process and reads its peak RSS. Scenarios:

- anonymise      run_policies(anonymise policy) as of AS_OF, purge=False
- nothing-to-do  the same as of the next day (the harness runs it on the anonymised copy)
- delete         run_policies(delete policy with the orders cascade) as of AS_OF, purge=False
- erasure        one subject's erasure request (requests.add_request + process_request) with
                 both policies: the customer row goes with its orders
- purge          store.purge() (DuckDB: compaction into a fresh file) on the anonymised copy
- floor          CREATE TABLE AS SELECT * of bench.customers (the copy floor)
- anonymise and delete take --workers N: key ranges in N processes (`retention_jobs.parallel`,
                 SQL stores); the harness runs them as `anonymise-wN` / `delete-wN`
- per-row        fetch `--subset` expired rows, one Python call per value (Faker for the name),
                 executemany UPDATE; the harness extrapolates linearly
"""

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warehouse as W  # noqa: E402


def open_store(location: str, memory_limit: str | None = None):
    if "://" in location:
        from retention_jobs.store.sql_store import SqlStore

        return SqlStore(location)
    from retention_jobs.store.duckdb_store import DuckDBStore

    return DuckDBStore(location, settings={"memory_limit": memory_limit} if memory_limit else None)


def policies(*texts: str):
    from retention_jobs.load import PolicySet, load_text

    return PolicySet(tuple(load_text(t, f"bench-{i}.yaml") for i, t in enumerate(texts)))


def key():
    from retention_jobs.anonymise import PseudonymKey

    return PseudonymKey.from_text(W.KEY_TEXT)


def run(
    store,
    texts: tuple[str, ...],
    as_of: date,
    batch_size: int,
    workers: int = 1,
    location: str = "",
) -> dict:
    from retention_jobs.apply import RunOptions, run_policies
    from retention_jobs.parallel import run_parallel

    options = RunOptions(batch_size=batch_size, max_delete_fraction=None, purge=False)
    t0 = time.perf_counter()
    if workers > 1:  # key ranges, one process each (SQL stores)
        report = run_parallel(location, policies(*texts), as_of, key(), options, workers)
    else:
        report = run_policies(store, policies(*texts), as_of, key(), options)
    seconds = time.perf_counter() - t0
    r = report.rules[0]
    return {
        "op_seconds": seconds,
        "anonymised": r.anonymised,
        "deleted": r.deleted,
        "cascade_deleted": sum(c.deleted for c in r.cascades),
        "expired": r.plan.expired,
        "held": r.plan.held,
        "already_done": r.plan.already_done,
        "batches": r.batches,
        "workers": max(1, len(report.worker_runs)),
    }


def erasure(store, subject: str | None) -> dict:
    import sqlalchemy as sa

    from retention_jobs.requests import add_request, process_request

    with store.connect() as s:  # untimed: pick a customer who has orders
        if subject is None:
            n = s.scalar(sa.text("SELECT count(*) FROM bench.orders"))
            subject = str(
                s.scalar(
                    sa.text(f"SELECT customer_id FROM bench.orders WHERE order_id = {n // 2 + 1}")
                )
            )
    pol = policies(W.ANONYMISE_POLICY, W.DELETE_POLICY)
    t0 = time.perf_counter()
    with store.connect() as s:
        req = add_request(
            s, kind="erasure", subject_kind="customer", subject_id=subject, received_on=W.AS_OF
        )
        done = process_request(store, s, pol, req, W.AS_OF, key())
    seconds = time.perf_counter() - t0
    tables = {t["table"]: t["deleted"] + t["anonymised"] for t in done.receipt["tables"]}
    return {"op_seconds": seconds, "status": done.status, "rows_by_table": tables}


def purge(store) -> dict:
    t0 = time.perf_counter()
    out = store.purge(["bench.customers"])
    return {
        "op_seconds": time.perf_counter() - t0,
        "method": out.get("method"),
        "bytes_before": out.get("bytes_before"),
        "bytes_after": out.get("bytes_after"),
    }


def floor(location: str) -> dict:
    if "://" in location:
        import sqlalchemy as sa

        engine = sa.create_engine(location.replace("postgresql://", "postgresql+psycopg://", 1))
        t0 = time.perf_counter()
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE bench.customers_floor AS SELECT * FROM bench.customers")
        seconds = time.perf_counter() - t0
        engine.dispose()
        return {"op_seconds": seconds}
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect(location)
    con.execute("CREATE TABLE bench.customers_floor AS SELECT * FROM bench.customers")
    con.close()  # the checkpoint on close is part of the copy, as it is part of a run
    return {"op_seconds": time.perf_counter() - t0}


def per_row(location: str, subset: int) -> dict:
    """The straightforward way: rows into Python, one call per value, one UPDATE per row."""
    import hashlib

    from faker import Faker

    secret = key().secret
    faker = Faker("no_NO")
    faker.seed_instance(1)
    select = (
        "SELECT customer_id, email, full_name, phone, birth_date FROM bench.customers "
        f"WHERE last_purchase_at <= DATE '{W.CUTOFF}' AND customer_id::VARCHAR NOT IN "
        "(SELECT subject_id FROM retention_control.holds WHERE scope = 'subject' AND released_at IS NULL) "
        f"ORDER BY customer_id LIMIT {subset}"
    )
    update = (
        "UPDATE bench.customers SET email = {p}, full_name = {p}, phone = {p}, birth_date = {p}, "
        "street_address = NULL, national_id = NULL WHERE customer_id = {p}"
    )

    def transform(rows):
        out = []
        for cid, email, _name, phone, birth in rows:
            out.append(
                (
                    hashlib.blake2b(email.encode(), key=secret, digest_size=16).hexdigest(),
                    faker.name(),
                    "*" * (len(phone) - 2) + phone[-2:],
                    date(birth.year, 1, 1),
                    cid,
                )
            )
        return out

    if "://" in location:
        import psycopg

        t0 = time.perf_counter()
        with psycopg.connect(location.replace("postgresql+psycopg://", "postgresql://", 1)) as con:
            rows = con.execute(select).fetchall()
            with con.cursor() as cur:
                cur.executemany(update.format(p="%s"), transform(rows))
        seconds = time.perf_counter() - t0
    else:
        import duckdb

        t0 = time.perf_counter()
        con = duckdb.connect(location)
        rows = con.execute(select).fetchall()
        con.execute("BEGIN TRANSACTION")  # one transaction: three times faster than autocommit
        con.executemany(update.format(p="?"), transform(rows))
        con.execute("COMMIT")
        con.close()
        seconds = time.perf_counter() - t0
    return {"op_seconds": seconds, "rows": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--store", required=True)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--subset", type=int, default=5_000)
    ap.add_argument("--subject")
    ap.add_argument("--memory-limit")
    ap.add_argument(
        "--workers", type=int, default=1, help="anonymise/delete: key ranges in this many processes"
    )
    args = ap.parse_args()
    # `op_seconds` excludes imports; the engine imports Faker lazily (when a policy names a fake
    # provider), so import it here, untimed, as a long-lived Dagster process has it already
    import faker  # noqa: F401

    if args.scenario in ("floor", "per-row"):
        out = floor(args.store) if args.scenario == "floor" else per_row(args.store, args.subset)
    else:
        store = open_store(args.store, args.memory_limit)
        if args.scenario == "anonymise":
            out = run(
                store, (W.ANONYMISE_POLICY,), W.AS_OF, args.batch_size, args.workers, args.store
            )
        elif args.scenario == "nothing-to-do":
            out = run(store, (W.ANONYMISE_POLICY,), W.NEXT_DAY, args.batch_size)
        elif args.scenario == "delete":
            out = run(store, (W.DELETE_POLICY,), W.AS_OF, args.batch_size, args.workers, args.store)
        elif args.scenario == "erasure":
            out = erasure(store, args.subject)
        elif args.scenario == "purge":
            out = purge(store)
        else:
            raise SystemExit(f"unknown scenario {args.scenario!r}")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
