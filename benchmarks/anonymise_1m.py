"""Anonymisation throughput at N rows on the DuckDB store (issue 2's number).

    uv run python benchmarks/anonymise_1m.py --rows 1000000

Builds a customers table with six personal columns, 20 % of rows past a 3-year period, and
times `run_policies` (six strategies: hash, fake name, mask phone, generalise birth date,
redact address, redact national id) as one process step. Prints a JSON line.
"""

import argparse
import json
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.control import ensure_control_schema
from retention_jobs.load import PolicySet, load_text
from retention_jobs.store.duckdb_store import DuckDBStore

POLICY = """
purpose: bench
title: Benchmark customers
legal_basis: contract
owner: bench
rules:
  - name: inactive
    table: bench.customers
    key: customer_id
    clock: last_purchase_at
    keep_for: P3Y
    action: anonymise
    columns:
      email: hash
      full_name: {fake: name}
      phone: {mask: {keep_last: 2}}
      birth_date: {generalise: year}
      street_address: redact
      national_id: redact
"""


def build(path: Path, rows: int) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA bench")
    con.execute(f"""
        CREATE TABLE bench.customers AS
        SELECT i AS customer_id,
               'Person ' || i AS full_name,
               'person' || i || '@example.no' AS email,
               '+47 9' || lpad((i % 10000000)::VARCHAR, 7, '0') AS phone,
               'Gate ' || (i % 500) || ', ' || (i % 9000 + 1000) || ' Oslo' AS street_address,
               lpad((i % 100000000000)::VARCHAR, 11, '0') AS national_id,
               DATE '1950-01-01' + (i % 20000)::INTEGER AS birth_date,
               CASE WHEN i % 5 = 0 THEN DATE '2020-01-01' + (i % 300)::INTEGER
                    ELSE DATE '2024-01-01' + (i % 600)::INTEGER END AS last_purchase_at,
               'NO' AS country, i % 3 = 0 AS marketing_consent, (i % 100)::INTEGER AS segment,
               now()::TIMESTAMP AS created_at
        FROM range(1, {rows} + 1) t(i)
    """)
    con.execute("ALTER TABLE bench.customers ADD PRIMARY KEY (customer_id)")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warehouse.duckdb"
        build(path, args.rows)
        store = DuckDBStore(path)
        with store.connect() as s:
            ensure_control_schema(store, s)
        policies = PolicySet((load_text(POLICY, "bench.yaml"),))
        key = PseudonymKey.from_text("benchmark-key-0123456789")
        t0 = time.perf_counter()
        report = run_policies(store, policies, date(2026, 11, 22), key,
                              RunOptions(batch_size=args.batch_size, max_delete_fraction=None))
        seconds = time.perf_counter() - t0
        n = report.rules[0].anonymised
        print(json.dumps({"scenario": "anonymise", "rows": args.rows, "anonymised": n,
                          "seconds": round(seconds, 2), "rows_per_s": round(n / seconds),
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
