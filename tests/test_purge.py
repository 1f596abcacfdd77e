"""Purge on PostgreSQL when another transaction still sees the deleted rows.

VACUUM (FULL or not) keeps every row version that an open snapshot in the same database could
still read. A report or an idle-in-transaction session that started before the run therefore
keeps erased values in the table files. The purge waits for such holders, and when they
outlast the wait it says so: the run exits 5, the erasure check is "not verified" (neither
green nor a failed erasure), the tables stay pending, and the next purge finishes the job.
The bytes are searched independently of the engine (a plain regex over the table files).
"""

import re
import textwrap
import threading

import psycopg
import pytest
import sqlalchemy as sa
from stores import build_smoke, pg_database
from test_store import AS_OF, BOOKKEEPING, KEY, SHOP

from retention_jobs import control
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.check import erasure_verified
from retention_jobs.load import load_policies
from retention_jobs.purge import purge_tables
from retention_jobs.store.sql_store import SqlStore, horizon_holders

pytestmark = pytest.mark.postgres


@pytest.fixture
def seeded(tmp_path):
    shop = textwrap.dedent(SHOP).replace("owner: ops\n", "owner: ops\npurge: full\n")
    (tmp_path / "shop.yaml").write_text(shop)
    (tmp_path / "bk.yaml").write_text(textwrap.dedent(BOOKKEEPING))
    policies = load_policies([str(tmp_path / "shop.yaml"), str(tmp_path / "bk.yaml")])
    with pg_database() as url:
        store = SqlStore(url)
        with store.connect() as s:
            build_smoke(s)
            control.ensure_control_schema(store, s)
        yield url, store, policies


def _snapshot_holder(url: str) -> psycopg.Connection:
    """Another session with an open REPEATABLE READ snapshot that touches none of the tables
    (so it takes no lock a VACUUM FULL would wait for)."""
    u = sa.engine.make_url(url)
    con = psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database)
    con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    con.execute("SELECT 1").fetchall()
    return con


def _deleted_names_in_files(store: SqlStore, names: set[str]) -> int:
    """How many of `names` appear in the raw heap files of s.customers (oracle: a plain regex,
    not the engine's keyed search)."""
    with store.connect(read_only=True) as s:
        blob = b"".join(b for _, b in store.raw_blobs(s, ["s.customers"]))
    return len({n for n in names if n.encode() in blob})


def _customer_emails(store: SqlStore) -> set[str]:
    with store.connect(read_only=True) as s:
        return {r[0] for r in s.fetchall(sa.text("SELECT email FROM s.customers"))}


def test_a_snapshot_older_than_the_run_leaves_the_purge_pending_and_the_next_purge_finishes(
    seeded, monkeypatch
):
    url, store, policies = seeded
    before = _customer_emails(store)
    monkeypatch.setenv("RETENTION_PURGE_WAIT_SECONDS", "0.5")
    holder = _snapshot_holder(url)
    try:
        report = run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
        erased = before - _customer_emails(store)
        assert erased, "the scenario must erase some e-mails"
        purge = report.purge
        assert purge is not None and purge["complete"] is False
        assert purge["pending_tables"] == ["s.customers", "s.orders"]
        # the holder is named (an autovacuum worker of this database may be named beside it)
        held = {h["id"]: h for h in purge["held_back_by"]}
        assert held[str(holder.info.backend_pid)]["kind"] == "session"
        for h in held.values():
            assert set(h) == {"kind", "id", "detail", "state", "age_seconds"}  # no query, no user
        # the oracle agrees that the bytes are still there...
        assert _deleted_names_in_files(store, erased) == len(erased)
        # ...and the check says "not verified yet", not passed and not a failed erasure
        result = erasure_verified(store, KEY, report.run_id)
        assert not result.passed and not result.verified, result.summary
        assert "not verified yet" in result.summary and result.counts["pending_tables"] == 2
        with store.connect(read_only=True) as s:
            assert control.pending_purges(s) == ["s.customers", "s.orders"]
            actions = [r["action"] for r in control.audit_rows(s, report.run_id)]
        assert "purge-pending" in actions
    finally:
        holder.close()

    # nothing else changed; the next run has nothing to delete but finishes the purge
    again = run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    assert not again.changed
    assert again.purge is not None and again.purge["complete"] is True
    assert again.purge["retried_pending"] == 2
    assert _deleted_names_in_files(store, erased) == 0
    with store.connect(read_only=True) as s:
        assert control.pending_purges(s) == []
    result = erasure_verified(store, KEY, report.run_id)
    assert result.passed and result.verified, result.summary
    # and a third run, with nothing pending, does not purge at all
    assert (
        run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None)).purge
        is None
    )


def test_the_purge_waits_for_a_snapshot_that_ends_within_the_wait(seeded, monkeypatch):
    from retention_jobs.store import sql_store

    url, store, policies = seeded
    before = _customer_emails(store)
    monkeypatch.setenv("RETENTION_PURGE_WAIT_SECONDS", "300")
    holder = _snapshot_holder(url)
    polls: list[int] = []
    seen = threading.Event()
    real = sql_store.horizon_holders

    def counting(session, horizon):
        found = real(session, horizon)
        if found:
            polls.append(len(found))
            if len(polls) >= 2:  # the purge is waiting for the holder: now let it go
                seen.set()
        return found

    monkeypatch.setattr(sql_store, "horizon_holders", counting)
    closer = threading.Thread(target=lambda: (seen.wait(300), holder.close()))
    closer.start()
    try:
        report = run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None))
    finally:
        seen.set()
        closer.join()
    assert len(polls) >= 2  # it did wait
    assert report.purge is not None and report.purge["complete"] is True
    assert report.purge["waited_seconds"] > 0
    erased = before - _customer_emails(store)
    assert erased and _deleted_names_in_files(store, erased) == 0
    assert erasure_verified(store, KEY, report.run_id).passed


def test_holders_are_only_sessions_older_than_the_horizon(seeded):
    """A session is a holder exactly when its snapshot's xmin is below the horizon. A snapshot
    taken after the write is usually younger, but not always: its xmin is the oldest running
    transaction of the whole cluster, so a long transaction in another database (another test,
    autovacuum) can make it a holder too. The oracle is therefore PostgreSQL's own view of
    each session, compared in Python, for the two sessions this test controls."""
    url, store, _ = seeded
    old = _snapshot_holder(url)
    old_pid = str(old.info.backend_pid)
    try:
        with store.connect() as s:
            # a write after the old snapshot: what it deletes the old snapshot could still see
            s.execute("CREATE TABLE s.bump (x int)")
            horizon = str(s.scalar(sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")))
            young = _snapshot_holder(url)
            try:
                mine = {str(old.info.backend_pid), str(young.info.backend_pid)}
                found = {h["id"] for h in horizon_holders(s, horizon)} & mine
                xmins = {
                    str(pid): int(x)
                    for pid, x in s.fetchall(
                        sa.text(
                            "SELECT pid, backend_xmin::text FROM pg_stat_activity "
                            "WHERE pid IN (:a, :b)"
                        ).bindparams(a=old.info.backend_pid, b=young.info.backend_pid)
                    )
                }
            finally:
                young.close()
        # 32-bit xids compared without wraparound: a test server is far from it
        oracle = {pid for pid, x in xmins.items() if x < int(horizon) % 2**32}
        assert old_pid in found  # it saw the table before the write
        assert found == oracle
    finally:
        old.close()
    with store.connect() as s:
        assert old_pid not in {h["id"] for h in horizon_holders(s, horizon)}


def test_purge_command_retries_what_is_pending_and_says_when_it_cannot(seeded, monkeypatch):
    url, store, policies = seeded
    monkeypatch.setenv("RETENTION_PURGE_WAIT_SECONDS", "0.2")
    holder = _snapshot_holder(url)  # older than the delete
    with store.connect() as s:
        s.execute("DELETE FROM s.orders WHERE order_id % 2 = 0")
    try:
        first = purge_tables(store, policies, "manual-purge", ["s.orders"])
    finally:
        holder.close()
    assert first is not None and not first["complete"]
    second = purge_tables(store, policies, "manual-purge", [])
    assert second is not None and second["complete"] and second["retried_pending"] == 1
    assert purge_tables(store, policies, "manual-purge", []) is None


def test_a_bad_wait_setting_is_refused(monkeypatch):
    from retention_jobs.errors import ConfigError
    from retention_jobs.store.sql_store import purge_wait_seconds

    for bad in ("soon", "-1", "1e9"):
        monkeypatch.setenv("RETENTION_PURGE_WAIT_SECONDS", bad)
        with pytest.raises(ConfigError, match=re.escape("RETENTION_PURGE_WAIT_SECONDS")):
            purge_wait_seconds()
    monkeypatch.delenv("RETENTION_PURGE_WAIT_SECONDS")
    assert purge_wait_seconds() == 120.0
