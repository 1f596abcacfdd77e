"""Provable erasure: remember what was erased (as keyed hashes only) and look for it later.

When a run deletes or anonymises a personal value, the value's keyed hash, the keyed hash of
its first bytes (the anchor) and its length go to `retention_control.erased_values`; never
the value. Both hashes are stored as 64-bit integers (`ledger_hash`). `verify` then scans
the DuckDB file's raw bytes (every printable run, anchor by anchor) and the live tables for
any of them. A value that is still legitimately present in a live personal column (another
purpose keeps the same e-mail) is not reported.
"""

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import polars as pl
import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey, hex_digests, keyed_hashes
from retention_jobs.store.base import Session, Store, TableInfo, is_nested, sa_table

ANCHOR = 6
"""Bytes hashed as the anchor; values shorter than this are not tracked (too common to prove)."""

PERSONAL = re.compile(
    r"(name|e_?mail|phone|mobile|msisdn|address|street|national|ssn|personnummer|fodselsnummer|cpr|"
    r"birth|imei|ip_?addr|iban|user_agent|note)",
    re.I,
)


def tracked_columns(info: TableInfo, also: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Text columns whose erasure is recorded: personal-looking names and the columns named."""
    return [
        c.name
        for c in info.columns.values()
        if c.type == "string" and (PERSONAL.search(c.name) or c.name in also)
    ]


def _h(data: bytes, key: PseudonymKey) -> int:
    """The ledger's form of a keyed hash: the first 8 bytes of the keyed BLAKE2b-128 digest
    (the same digest `keyed_hashes` gives in hex) as a signed big-endian 64-bit integer."""
    return int.from_bytes(
        hashlib.blake2b(data, key=key.secret, digest_size=16).digest()[:8], "big", signed=True
    )


def ledger_hash(hex_digests: pl.Series) -> pl.Series:
    """`_h` of values whose hex digests (`keyed_hashes`) are given: their first 16 hex digits as
    a signed 64-bit integer. Fixed-width integers, not 32-character text: a 10M-row
    anonymisation writes about 8M ledger rows, and text hashes made that write 3x slower
    (docs/performance.md). 64 bits still make a false match between an erased value and the
    bytes at one place of a scanned file about 1 in 10^19 (value and anchor must both match)."""
    return (
        hex_digests.str.slice(0, 16)
        .str.to_integer(base=16, dtype=pl.UInt64)
        .cast(pl.Int64, wrap_numerical=True)
    )


def fingerprints(
    values: pl.Series, key: PseudonymKey, digests: pl.Series | None = None
) -> pl.DataFrame:
    """anchor_hash, value_hash, value_length for the distinct values worth tracking.
    `digests`, if given, are the values' keyed hashes already computed (`keyed_hashes`)."""
    text = values.cast(pl.String)
    df = pl.DataFrame(
        {"v": text, "value_hash": digests if digests is not None else keyed_hashes(text, key)}
    )
    df = (
        df.filter(pl.col("v").str.len_bytes() >= ANCHOR)
        .unique("v")
        .with_columns(pl.col("v").str.len_bytes().cast(pl.Int64).alias("value_length"))
    )
    if df.is_empty():
        return pl.DataFrame(
            schema={"anchor_hash": pl.Int64, "value_hash": pl.Int64, "value_length": pl.Int64}
        )
    # the anchor is the first ANCHOR bytes of the UTF-8 text (a multi-byte character may be cut:
    # the raw scan compares bytes), sliced in Polars, not value by value in Python
    prefixes = df["v"].cast(pl.Binary).bin.slice(0, ANCHOR)
    uniq = prefixes.unique()
    hashed = ledger_hash(pl.Series(hex_digests(uniq.to_list(), key), dtype=pl.String))
    anchors = prefixes.replace_strict(uniq, hashed, return_dtype=pl.Int64)
    return df.select(
        anchors.alias("anchor_hash"),
        ledger_hash(df["value_hash"]).alias("value_hash"),
        "value_length",
    )


def fingerprint_rows(
    key: PseudonymKey,
    run_id: str,
    info: TableInfo,
    columns: list[str],
    data: pl.DataFrame,
    digests: dict[str, pl.Series] | None = None,
) -> pl.DataFrame | None:
    """The erased-value ledger rows for `columns` of `data` (rows about to be erased), or None.
    Pure computation: no store access (the applier prepares a batch while the last one commits)."""
    frames = []
    for c in columns:
        if c in data.columns:
            fp = fingerprints(data[c], key, (digests or {}).get(c))
            if fp.height:
                frames.append(
                    fp.with_columns(
                        pl.lit(info.name).alias("table_name"), pl.lit(c).alias("column_name")
                    )
                )
    if not frames:
        return None
    return pl.concat(frames).with_columns(
        pl.lit(run_id).alias("run_id"), pl.lit(control.now()).alias("erased_at")
    )


def insert_fingerprints(session: Session, rows: pl.DataFrame | None) -> int:
    """Write `fingerprint_rows` to the ledger. In-transaction."""
    if rows is None or rows.is_empty():
        return 0
    cols = [
        "run_id",
        "table_name",
        "column_name",
        "anchor_hash",
        "value_hash",
        "value_length",
        "erased_at",
    ]
    return session.append(control.erased_values, rows.select(cols).to_arrow())


def record(
    session: Session,
    key: PseudonymKey,
    run_id: str,
    info: TableInfo,
    columns: list[str],
    data: pl.DataFrame,
    digests: dict[str, pl.Series] | None = None,
) -> int:
    """Record the fingerprints of `columns` of `data` (rows about to be erased). In-transaction."""
    return insert_fingerprints(session, fingerprint_rows(key, run_id, info, columns, data, digests))


def record_where(
    session: Session,
    key: PseudonymKey,
    run_id: str,
    info: TableInfo,
    columns: list[str],
    where: Callable[[sa.FromClause], sa.ColumnElement],
    anonymised: Callable[[sa.FromClause, str], sa.ColumnElement] | None = None,
) -> int:
    """Fetch `columns` of the rows `where(table)` selects (about to be erased), and record them.
    `anonymised(table, column)` tells where a value is already an anonymised one (a hash or a
    fake): that is no personal value, and the original was recorded when it was replaced."""
    if not columns:
        return 0
    t = sa_table(info).alias("rj_r")
    exprs = [
        sa.case((anonymised(t, c), sa.null()), else_=t.c[c]).label(c) if anonymised else t.c[c]
        for c in columns
    ]
    data = cast(pl.DataFrame, pl.from_arrow(session.arrow(sa.select(*exprs).where(where(t)))))
    return record(session, key, run_id, info, columns, data)


@dataclass
class VerifyResult:
    tracked: int
    """Distinct erased values known to the ledger (as hashes)."""
    found: dict[str, int] = field(default_factory=dict)
    """table.column -> erased values found again in the store's raw bytes."""
    scanned_bytes: int = 0
    sources: list[str] = field(default_factory=list)
    """What was scanned: the DuckDB file and its WAL, or PostgreSQL table pages."""
    seconds: float = 0.0
    untracked: list[str] = field(default_factory=list)
    """table.column of personal-looking nested columns (arrays, structs, JSON) in the tables
    searched: the ledger tracks erased strings only, so what a rule erased inside them is not
    proved here (reported, never skipped silently)."""

    @property
    def clean(self) -> bool:
        return not self.found


def _live_hashes(session: Session, store: Store, key: PseudonymKey) -> set[int]:
    """Hashes of every value now in a personal-looking text column of the store."""
    out: set[int] = set()
    for info in store.catalog(session).tables.values():
        cols = tracked_columns(info)
        if not cols:
            continue
        t = sa_table(info)
        data = pl.from_arrow(session.arrow(sa.select(*(t.c[c] for c in cols))))
        for c in cols:
            out.update(v for v in fingerprints(data[c], key)["value_hash"].to_list())
    return out


def _scan_bytes(
    blob: bytes, anchors: dict[int, list[tuple[int, int, str]]], key: PseudonymKey
) -> dict[str, dict[int, bytes]]:
    """where -> {value_hash: the bytes found}. The bytes stay in memory for the live-data
    comparison only; they are never printed or stored."""
    hits: dict[str, dict[int, bytes]] = {}
    for m in re.finditer(rb"[\x20-\x7e\x80-\xff]{%d,}" % ANCHOR, blob):
        run = m.group()
        for i in range(len(run) - ANCHOR + 1):
            cands = anchors.get(_h(run[i : i + ANCHOR], key))
            if not cands:
                continue
            for length, value_hash, where in cands:
                if i + length <= len(run) and _h(run[i : i + length], key) == value_hash:
                    hits.setdefault(where, {})[value_hash] = run[i : i + length]
    return hits


def _explained(session: Session, store: Store, found: dict[str, dict[int, bytes]]) -> set[int]:
    """Hashes of found values that live data explains: the bytes appear inside a value that is
    still legitimately stored (another person's longer address, the same e-mail kept by another
    purpose). Raw storage has no value boundaries, so a substring is all a scan can see."""
    values = {h: b.decode("utf-8", "replace") for hits in found.values() for h, b in hits.items()}
    if not values:
        return set()
    staged = session.stage(
        "rj_found", pl.DataFrame({"h": list(values), "v": list(values.values())}).to_arrow()
    )
    explained: set[int] = set()
    for info in store.catalog(session).tables.values():
        t = sa_table(info)
        for c in info.columns.values():
            if c.type == "string":
                text: sa.ColumnElement = t.c[c.name]
            elif is_nested(c):
                # an array, a struct or a JSON document holds text too: searched in its text
                # form (LIKE on the array itself fails). Where that form escapes a value
                # (quotes, backslashes in a PostgreSQL array) it is not found there and stays
                # reported: a false alarm, never a value wrongly explained away.
                text = sa.cast(t.c[c.name], sa.Text)
            else:
                continue
            q = (
                sa.select(staged.c.h)
                .distinct()
                .where(~staged.c.h.in_(list(explained)) if explained else sa.true())
                .where(sa.exists().where(text.contains(staged.c.v, autoescape=False)))
            )
            explained.update(r[0] for r in session.fetchall(q))
            if len(explained) == len(values):
                return explained
    return explained


def verify(
    store: Store, key: PseudonymKey, run_id: str | Sequence[str] | None = None
) -> VerifyResult:
    """Search the store's raw bytes for the values erased by `run_id` (one run id, several, or
    None for every run)."""
    t0 = time.perf_counter()
    with store.connect(read_only=True) as session:
        ev = control.erased_values
        q = sa.select(
            ev.c.table_name, ev.c.column_name, ev.c.anchor_hash, ev.c.value_hash, ev.c.value_length
        )
        if run_id:
            q = q.where(ev.c.run_id.in_([run_id] if isinstance(run_id, str) else list(run_id)))
        erased = session.fetchall(q.distinct())
        live = _live_hashes(session, store, key)
        gone = [(f"{t}.{c}", a, v, n) for t, c, a, v, n in erased if v not in live]
        result = VerifyResult(tracked=len({v for *_, v, _ in gone}))
        anchors: dict[int, list[tuple[int, int, str]]] = {}
        for where, a, v, n in gone:
            anchors.setdefault(a, []).append((n, v, where))
        tables = sorted({t for t, *_ in erased})
        catalog = store.catalog(session).tables
        result.untracked = [
            f"{t}.{c.name}"
            for t in tables
            if t in catalog
            for c in catalog[t].columns.values()
            if is_nested(c) and PERSONAL.search(c.name)
        ]
        found: dict[str, dict[int, bytes]] = {}
        for source, blob in store.raw_blobs(session, tables):
            result.sources.append(source)
            result.scanned_bytes += len(blob)
            for where, values in _scan_bytes(blob, anchors, key).items():
                found.setdefault(where, {}).update(values)
        explained = _explained(session, store, found)
    result.found = {w: n for w, v in found.items() if (n := len(set(v) - explained))}
    result.seconds = round(time.perf_counter() - t0, 3)
    return result
