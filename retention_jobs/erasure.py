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
from datetime import datetime
from typing import cast

import polars as pl
import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey, hex_digests, keyed_hashes
from retention_jobs.errors import WrongKey
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
        pl.lit(run_id).alias("run_id"),
        pl.lit(control.now()).alias("erased_at"),
        pl.lit(key.key_id).alias("key_id"),
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
        "key_id",
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


SAMPLE = 256
"""Live values per column searched for in the same pass as the erased ones: the control sample
that shows whether the scan can see that column's values at all (DuckDB compresses most
strings, PostgreSQL compresses long ones: a compressed value is invisible to a byte scan)."""


@dataclass
class VerifyResult:
    tracked: int
    """Erased values in scope (distinct per table.column, as hashes) that live data does not
    explain."""
    found: dict[str, int] = field(default_factory=dict)
    """table.column -> erased values found again in the store's raw bytes."""
    scanned_bytes: int = 0
    sources: list[str] = field(default_factory=list)
    """What was scanned: the DuckDB file and its WAL, or PostgreSQL table pages."""
    seconds: float = 0.0
    key_id: str = ""
    """The id of the key the scan hashed with (the erased values' own, or theirs is unknown)."""
    runs: int = 0
    """How many runs' erased values were in scope."""
    plain: int = 0
    """Not found, where the scan could have seen them: their column's control sample of live
    values was found whole in the scanned bytes."""
    blind: int = 0
    """Not found, where the scan could not have seen them (a column stored compressed, no live
    value to measure it by, or a legacy row of unknown key), and no compaction proves them
    gone. Never counted as verified."""
    constructed: int = 0
    """Proved gone by construction: erased before a completed compaction copied the live data
    into a fresh file (DuckDB)."""
    compacted_at: str | None = None
    """When the last completed compaction was recorded (UTC), if any."""
    legacy: int = 0
    """Erased values recorded before key ids were kept whose run names no key id: key unknown."""
    visibility: dict[str, float] = field(default_factory=dict)
    """table.column -> share of its live control sample found in the scanned bytes."""
    untracked: list[str] = field(default_factory=list)
    """table.column of personal-looking nested columns (arrays, structs, JSON) in the tables
    searched: the ledger tracks erased strings only, so what a rule erased inside them is not
    proved here (reported, never skipped silently)."""

    @property
    def clean(self) -> bool:
        return not self.found

    @property
    def verified(self) -> bool:
        """Nothing found, and every value in scope was either visible to the scan or proved gone
        by construction."""
        return self.clean and not self.blind

    def describe(self) -> str:
        """What was proved and what was not, in counts (never a value)."""
        parts = [f"verified: {self.plain} values in plain storage"]
        if self.constructed:
            parts.append(
                f"{self.constructed} proved by construction: compacted copy at {self.compacted_at}"
            )
        parts.append(f"{self.blind} not verifiable by scan")
        if self.legacy:
            parts.append(f"{self.legacy} recorded without a key id (key unknown)")
        return "; ".join(parts)


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
    blob: bytes, anchors: dict[int, list[tuple[int, int, "_Where"]]], key: PseudonymKey
) -> dict["_Where", dict[int, bytes]]:
    """where -> {value_hash: the bytes found}. The bytes stay in memory for the live-data
    comparison only; they are never printed or stored."""
    hits: dict[_Where, dict[int, bytes]] = {}
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


def _explained(session: Session, store: Store, found: dict["_Where", dict[int, bytes]]) -> set[int]:
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


_Where = tuple[bool, str]
"""Where a hit belongs: (True, table.column) for an erased value, (False, table.column) for a
value of that column's live control sample."""


def _erased_in_scope(session: Session, runs: list[str] | None) -> list[tuple]:
    """(table, column, anchor, value hash, length, key id, last erased at) of the erased values
    of `runs` (None: every run). A store of an earlier version not yet migrated has no key id
    column: its rows read as key unknown."""
    ev = control.erased_values
    group: list[sa.ColumnElement] = [
        ev.c.table_name,
        ev.c.column_name,
        ev.c.anchor_hash,
        ev.c.value_hash,
        ev.c.value_length,
    ]
    if control.has_column(session, "erased_values", "key_id"):
        group.append(ev.c.key_id)
    key_id = [] if len(group) == 6 else [sa.null().label("key_id")]
    q = sa.select(*group, *key_id, sa.func.max(ev.c.erased_at)).group_by(*group)
    if runs is not None:
        q = q.where(ev.c.run_id.in_(runs))
    return session.fetchall(q)


def _count_runs(session: Session, runs: list[str] | None) -> int:
    if runs is not None:
        return len(runs)
    ev = control.erased_values
    return int(session.scalar(sa.select(sa.func.count(sa.distinct(ev.c.run_id)))) or 0)


def _check_key(rows: list[tuple], key: PseudonymKey) -> None:
    """Refuse a key that cannot have made the recorded hashes: with it nothing would match and
    the scan would pass whatever the file holds."""
    other = sorted({r[5] for r in rows if r[5] is not None and r[5] != key.key_id})
    if other:
        raise WrongKey(
            f"the erased values to verify were hashed with key id {', '.join(other)}, but "
            f"RETENTION_PSEUDONYM_KEY has key id {key.key_id}: with it nothing could match. "
            "Set RETENTION_PSEUDONYM_KEY to the key those runs used (the audit ledger names "
            "each run's key id), or verify the runs of each key with --run-id"
        )


def compacted_at(session: Session, store: Store) -> datetime | None:
    """When the last completed DuckDB compaction was recorded. A compaction copies the live data
    into a fresh file, so a value erased before it is not in the file by construction. A
    compaction killed before it was recorded proves nothing (the next run repeats it)."""
    if store.kind != "duckdb":
        return None
    a = control.audit
    last = session.scalar(
        sa.select(sa.func.max(a.c.recorded_at)).where(a.c.action == "purge-compact")
    )
    return cast(datetime | None, last)


def _control_sample(
    session: Session, store: Store, key: PseudonymKey, columns: set[tuple[str, str]]
) -> dict[str, pl.DataFrame]:
    """table.column -> fingerprints of up to SAMPLE of its live values (a fixed seed: the same
    store gives the same sample)."""
    catalog = store.catalog(session).tables
    out: dict[str, pl.DataFrame] = {}
    for table, column in sorted(columns):
        info = catalog.get(table)
        if info is None or column not in info.columns:
            continue
        t = sa_table(info)
        data = cast(pl.DataFrame, pl.from_arrow(session.arrow(sa.select(t.c[column]).distinct())))
        values = data.to_series().cast(pl.String).drop_nulls()
        values = values.filter(values.str.len_bytes() >= ANCHOR)
        if values.len() > SAMPLE:
            values = values.sample(SAMPLE, seed=0)
        if values.len():
            out[f"{table}.{column}"] = fingerprints(values, key)
    return out


def verify(
    store: Store, key: PseudonymKey, run_id: str | Sequence[str] | None = None
) -> VerifyResult:
    """Search the store's raw bytes for the values erased by `run_id` (one run id, several, or
    None for every run), and say for each value whether the search could have seen it.

    Raises `WrongKey` when the values were recorded with another key's id."""
    t0 = time.perf_counter()
    runs = None if not run_id else [run_id] if isinstance(run_id, str) else list(run_id)
    with store.connect(read_only=True) as session:
        erased = _erased_in_scope(session, runs)
        _check_key(erased, key)
        live = _live_hashes(session, store, key)
        gone = [r for r in erased if r[3] not in live]
        result = VerifyResult(
            tracked=len({(t, c, v) for t, c, _, v, *_ in gone}),
            key_id=key.key_id,
            runs=_count_runs(session, runs),
        )
        anchors: dict[int, list[tuple[int, int, _Where]]] = {}
        for t, c, a, v, n, *_ in gone:
            anchors.setdefault(a, []).append((n, v, (True, f"{t}.{c}")))
        samples = _control_sample(session, store, key, {(t, c) for t, c, *_ in gone})
        for where, fp in samples.items():
            for a, v, n in fp.select("anchor_hash", "value_hash", "value_length").iter_rows():
                anchors.setdefault(a, []).append((n, v, (False, where)))
        tables = sorted({t for t, *_ in erased})
        catalog = store.catalog(session).tables
        result.untracked = [
            f"{t}.{c.name}"
            for t in tables
            if t in catalog
            for c in catalog[t].columns.values()
            if is_nested(c) and PERSONAL.search(c.name)
        ]
        found: dict[_Where, dict[int, bytes]] = {}
        for source, blob in store.raw_blobs(session, tables):
            result.sources.append(source)
            result.scanned_bytes += len(blob)
            for place, values in _scan_bytes(blob, anchors, key).items():
                found.setdefault(place, {}).update(values)
        erased_found = {w: v for w, v in found.items() if w[0]}
        explained = _explained(session, store, erased_found)
        compacted = compacted_at(session, store)
    result.found = {w[1]: n for w, v in erased_found.items() if (n := len(set(v) - explained))}
    result.visibility = {
        w: round(len(found.get((False, w), {})) / fp.height, 4) for w, fp in samples.items()
    }
    result.compacted_at = compacted.isoformat(sep=" ", timespec="seconds") if compacted else None
    hit = {(w[1], h) for w, v in erased_found.items() for h in set(v) - explained}
    seen: set[tuple[str, int]] = set()
    for t, c, _, v, _, key_id, erased_at in sorted(gone, key=lambda r: r[6], reverse=True):
        where = f"{t}.{c}"
        if (where, v) in seen:  # the same value erased again: its latest erasure decides
            continue
        seen.add((where, v))
        if key_id is None:
            result.legacy += 1
        if (where, v) in hit:
            continue
        if compacted is not None and erased_at <= compacted:
            result.constructed += 1
        elif key_id is not None and result.visibility.get(where) == 1.0:
            result.plain += 1
        else:
            result.blind += 1
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def unverified_runs(session: Session, purposes: list[str] | None = None) -> list[str]:
    """Runs with erased values that no check has proved gone yet (of `purposes`' policies, when
    given). A check covers these as well as the run it follows: a retry that erased nothing
    must not pass over the residue an earlier attempt left."""
    ev = control.erased_values
    q = sa.select(ev.c.run_id).distinct()
    if control.has_column(session, "erasure_proofs", "run_id"):
        q = q.where(~ev.c.run_id.in_(sa.select(control.erasure_proofs.c.run_id)))
    if purposes:
        a = control.audit
        q = q.where(ev.c.run_id.in_(sa.select(a.c.run_id).where(a.c.purpose.in_(purposes))))
    return sorted(r[0] for r in session.fetchall(q))


def record_proofs(store: Store, runs: list[str], how: str) -> None:
    """Remember that the erased values of `runs` were proved gone (`how`: counts, no value)."""
    if not runs:
        return
    p = control.erasure_proofs
    with store.connect() as session:
        control.ensure_control_schema(store, session)
        with session.transaction():
            have = {
                r[0] for r in session.fetchall(sa.select(p.c.run_id).where(p.c.run_id.in_(runs)))
            }
            new = [r for r in runs if r not in have]
            if new:
                rows = pl.DataFrame({"run_id": new, "how": [how] * len(new)})
                rows = rows.with_columns(pl.lit(control.now()).alias("verified_at"))
                session.append(p, rows.select("run_id", "verified_at", "how").to_arrow())
