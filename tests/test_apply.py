"""Engine behaviour on a small real DuckDB file: holds, retain periods, cascades, idempotence,
the delete guard, crash recovery through the journal, and a ledger free of personal data."""

import hashlib
from datetime import date
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from retention_jobs import control
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import Applier, RunOptions, run_policies
from retention_jobs.errors import ApprovalRequired, PartialRun
from retention_jobs.load import PolicySet, load_text
from retention_jobs.plan import build_plan
from retention_jobs.store.duckdb_store import DuckDBStore

AS_OF = date(2026, 11, 22)
KEY = PseudonymKey.from_text("test-key-0123456789abcdef")

SHOP = """
purpose: shop
title: Shop customers
legal_basis: contract
owner: ops
timezone: Europe/Oslo
rules:
  - name: ended
    table: s.customers
    key: id
    subject: {kind: customer, column: id}
    clock: ended_at
    round_clock_to: year_end
    keep_for: P5Y
    action: delete
    cascade:
      - {table: s.orders, on: customer_id, action: delete}
  - name: inactive
    table: s.customers
    key: id
    subject: {kind: customer, column: id}
    clock: last_seen
    keep_for: P3Y
    action: anonymise
    columns: {email: hash, name: {fake: name}, phone: {mask: {keep_last: 2}}, born: {generalise: year}}
"""

BOOKS = """
purpose: bookkeeping
title: Bookkeeping
legal_basis: legal_obligation
owner: finance
rules:
  - name: orders-5y
    table: s.orders
    key: order_id
    clock: placed_at
    round_clock_to: year_end
    keep_for: P5Y
    action: retain
"""

NEWSLETTER = """
purpose: newsletter
title: Newsletter
legal_basis: consent
owner: marketing
rules:
  - name: unsubscribed
    table: s.subscribers
    key: subscriber_id
    subject: {kind: subscriber, column: subscriber_id}
    clock: {table: s.list_subs, on: subscriber_id, column: changed_at, aggregate: max}
    related:
      - {table: s.list_subs, on: subscriber_id, all: {status: unsubscribed}}
    keep_for: P0D
    action: delete
    cascade:
      - {table: s.list_subs, on: subscriber_id, action: delete}
"""


def build_world(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("""
        CREATE SCHEMA s;
        CREATE TABLE s.customers(id BIGINT PRIMARY KEY, email VARCHAR, name VARCHAR, phone VARCHAR,
                                 born DATE, ended_at DATE, last_seen TIMESTAMP);
        CREATE TABLE s.orders(order_id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES s.customers(id),
                              placed_at DATE);
        INSERT INTO s.customers
          SELECT i, 'person' || i || '@example.no', 'Person ' || i, '+47 4000' || lpad(i::VARCHAR, 4, '0'),
                 DATE '1970-01-01' + (i * 37)::INTEGER,
                 CASE WHEN i % 3 = 0 THEN DATE '2015-01-01' + i::INTEGER
                      WHEN i % 3 = 1 THEN DATE '2024-06-01' END,
                 TIMESTAMP '2019-01-01' + to_days(i::INTEGER * 3)
          FROM range(1, 301) t(i);
        INSERT INTO s.orders SELECT i, 1 + (i % 300), DATE '2014-01-01' + ((i * 11) % 4000)::INTEGER FROM range(1, 901) t(i);
        CREATE TABLE s.subscribers(subscriber_id BIGINT PRIMARY KEY, email VARCHAR);
        CREATE TABLE s.list_subs(id BIGINT PRIMARY KEY, subscriber_id BIGINT REFERENCES s.subscribers(subscriber_id),
                                 status VARCHAR, changed_at TIMESTAMP);
        INSERT INTO s.subscribers SELECT i, 'sub' || i || '@example.se' FROM range(1, 101) t(i);
        INSERT INTO s.list_subs SELECT i, 1 + (i % 100),
               CASE WHEN (1 + (i % 100)) % 4 = 0 THEN 'subscribed' ELSE 'unsubscribed' END,
               TIMESTAMP '2026-01-01' + to_days(i::INTEGER) FROM range(1, 301) t(i);
    """)
    con.close()


@pytest.fixture
def world(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    build_world(path)
    store = DuckDBStore(path)
    with store.connect() as s:
        control.ensure_control_schema(store, s)
    return store


def policies(*texts: str) -> PolicySet:
    return PolicySet(tuple(load_text(t, f"p{i}.yaml") for i, t in enumerate(texts)))


def rows(store, sql: str) -> list[tuple]:
    with store.connect(read_only=True) as s:
        return s.fetchall(sa.text(sql))


def run(store, ps, **kw):
    opts = dict(max_delete_fraction=None, batch_size=37)
    opts.update(kw)
    return run_policies(store, ps, AS_OF, KEY, RunOptions(**opts))


def by_rule(report):
    return {r.plan.rule_id: r for r in report.rules}


def test_plan_changes_no_byte(world):
    before = hashlib.sha256(world.path.read_bytes()).hexdigest()
    plan = build_plan(world, policies(SHOP, BOOKS), AS_OF)
    assert {r.rule_id for r in plan.rules} == {
        "shop/ended",
        "shop/inactive",
        "bookkeeping/orders-5y",
    }
    assert hashlib.sha256(world.path.read_bytes()).hexdigest() == before


def test_delete_respects_retain_of_children_and_cascades(world):
    ps = policies(SHOP, BOOKS)
    # oracle, written as plain SQL: ended customers (year end + 5y <= as-of) whose orders are
    # all past their own 5-year bookkeeping minimum
    expect = {
        r[0]
        for r in rows(
            world,
            """
        SELECT id FROM s.customers c WHERE ended_at IS NOT NULL
          AND make_date(year(ended_at) + 1, 1, 1) + INTERVAL 5 YEAR <= DATE '2026-11-22'
          AND NOT EXISTS (SELECT 1 FROM s.orders o WHERE o.customer_id = c.id
                          AND make_date(year(o.placed_at) + 1, 1, 1) + INTERVAL 5 YEAR > DATE '2026-11-22')""",
        )
    }
    assert expect, "the fixture must have deletable customers"
    report = by_rule(run(world, ps))
    assert report["shop/ended"].deleted == len(expect)
    left = {r[0] for r in rows(world, "SELECT id FROM s.customers")}
    assert not (expect & left)
    assert not rows(
        world,
        "SELECT 1 FROM s.orders o WHERE NOT EXISTS (SELECT 1 FROM s.customers c WHERE c.id = o.customer_id)",
    )
    notes = report["shop/ended"].plan.retained_by
    assert notes and notes[0].rule_id == "bookkeeping/orders-5y" and notes[0].free_from is not None


def test_subject_hold_protects_every_path(world):
    ps = policies(SHOP, BOOKS)
    victim = rows(
        world,
        "SELECT min(id) FROM s.customers WHERE id % 3 = 0 AND NOT EXISTS "
        "(SELECT 1 FROM s.orders o WHERE o.customer_id = s.customers.id AND placed_at > DATE '2021-01-01')",
    )[0][0]
    before = rows(world, f"SELECT * FROM s.customers WHERE id = {victim}")
    orders_before = rows(world, f"SELECT * FROM s.orders WHERE customer_id = {victim} ORDER BY 1")
    with world.connect() as s:
        control.add_hold(
            s,
            scope="subject",
            subject=f"customer:{victim}",
            case_ref="LIT-1",
            reason="litigation",
            placed_by="test",
        )
    report = by_rule(run(world, ps))
    assert report["shop/ended"].plan.held >= 1
    assert rows(world, f"SELECT * FROM s.customers WHERE id = {victim}") == before
    assert (
        rows(world, f"SELECT * FROM s.orders WHERE customer_id = {victim} ORDER BY 1")
        == orders_before
    )


def test_table_hold_on_child_blocks_parent_and_release_frees_it(world):
    ps = policies(SHOP)
    with world.connect() as s:
        hold = control.add_hold(
            s,
            scope="table",
            table="s.orders",
            case_ref="AUTH-9",
            reason="authority_order",
            placed_by="test",
        )
    first = by_rule(run(world, ps))
    assert first["shop/ended"].deleted == 0 and first["shop/ended"].plan.held > 0
    n_orders = rows(world, "SELECT count(*) FROM s.orders")[0][0]
    assert n_orders == 900
    with world.connect() as s:
        assert control.release_hold(s, hold, "test")
    second = by_rule(run(world, ps))
    assert (
        second["shop/ended"].deleted
        == first["shop/ended"].plan.held - second["shop/ended"].plan.held
    )


def test_anonymise_is_idempotent_and_deletion_wins(world):
    ps = policies(SHOP, BOOKS)
    first = by_rule(run(world, ps))
    anon = first["shop/inactive"]
    assert anon.anonymised > 0
    assert anon.plan.superseded == first["shop/ended"].plan.to_act
    snapshot = rows(world, "SELECT * FROM s.customers ORDER BY id")
    second = by_rule(run(world, ps))
    assert all(r.deleted == 0 and r.anonymised == 0 for r in second.values())
    assert second["shop/inactive"].plan.already_done == anon.anonymised
    assert rows(world, "SELECT * FROM s.customers ORDER BY id") == snapshot


def test_anonymised_values_keep_types_and_lose_originals(world):
    run(world, policies(SHOP))
    changed = rows(
        world, "SELECT id, email, name, phone, born FROM s.customers WHERE email NOT LIKE 'person%'"
    )
    assert changed
    for cid, email, name, phone, born in changed:
        assert len(email) == 32 and all(ch in "0123456789abcdef" for ch in email)
        assert name != f"Person {cid}"
        assert phone.startswith("*") and phone[-2:] == f"{cid:04d}"[-2:]
        assert born.month == 1 and born.day == 1


def test_same_value_gets_same_pseudonym_across_runs(world, tmp_path):
    other = tmp_path / "other.duckdb"
    build_world(other)
    store2 = DuckDBStore(other)
    with store2.connect() as s:
        control.ensure_control_schema(store2, s)
    run(world, policies(SHOP))
    run(store2, policies(SHOP), batch_size=1000)
    q = "SELECT id, email, name FROM s.customers ORDER BY id"
    assert rows(world, q) == rows(store2, q)


def test_delete_guard_refuses_before_changing_anything(world):
    before = rows(world, "SELECT count(*) FROM s.subscribers")[0][0]
    with pytest.raises(ApprovalRequired, match=r"s\.subscribers: \d+ of 100 rows"):
        run(world, policies(NEWSLETTER), max_delete_fraction=0.25)
    assert rows(world, "SELECT count(*) FROM s.subscribers")[0][0] == before
    assert rows(world, "SELECT count(*) FROM retention_control.audit")[0][0] == 0


def test_related_clock_and_all_filter(world):
    expect = {
        r[0]
        for r in rows(
            world,
            """
        SELECT s.subscriber_id FROM s.subscribers s
        WHERE NOT EXISTS (SELECT 1 FROM s.list_subs l WHERE l.subscriber_id = s.subscriber_id AND l.status <> 'unsubscribed')
          AND (SELECT max(changed_at) FROM s.list_subs l WHERE l.subscriber_id = s.subscriber_id) < TIMESTAMP '2026-11-23'""",
        )
    }
    report = by_rule(run(world, policies(NEWSLETTER)))
    assert report["newsletter/unsubscribed"].deleted == len(expect) == 75
    assert {r[0] for r in rows(world, "SELECT subscriber_id FROM s.subscribers")}.isdisjoint(expect)


def test_crash_between_children_and_parent_is_finished_by_next_run(world, monkeypatch):
    """The clock lives in the children: after they are gone the parent no longer looks expired.
    The journal makes the next run finish the batch anyway."""
    real = control.append_audit
    crashed = []

    def crash_on_parent(session, **row):
        if row["action"] == "delete" and not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash inside the parent's transaction")
        return real(session, **row)

    monkeypatch.setattr(control, "append_audit", crash_on_parent)
    # the children committed before the parent failed: a partial run
    with pytest.raises(PartialRun, match="simulated crash"):
        run(world, policies(NEWSLETTER), batch_size=1000)
    monkeypatch.setattr(control, "append_audit", real)
    assert rows(world, "SELECT count(*) FROM s.subscribers")[0][0] == 100  # parent rolled back
    assert rows(world, "SELECT count(*) FROM retention_control.pending__s__subscribers")[0][0] == 75
    report = by_rule(run(world, policies(NEWSLETTER)))
    assert report["newsletter/unsubscribed"].deleted == 75
    assert rows(world, "SELECT count(*) FROM s.subscribers")[0][0] == 25
    assert rows(world, "SELECT count(*) FROM retention_control.pending__s__subscribers")[0][0] == 0


def test_audit_ledger_holds_no_personal_data(world):
    run(world, policies(SHOP, BOOKS, NEWSLETTER))
    ledger = rows(world, "SELECT * FROM retention_control.audit")
    runs = rows(world, "SELECT * FROM retention_control.runs")
    text = repr(ledger) + repr(runs)
    for needle in ("@example", "Person ", "+47"):
        assert needle not in text
    assert {r[5] for r in ledger} >= {"s.customers", "s.orders", "s.subscribers", "s.list_subs"}
    assert sum(r[13] or 0 for r in ledger if r[6] == "delete") > 0


@pytest.mark.parametrize("batch_size", [13, 100, 5000])
def test_overlapped_batches_end_exactly_as_one_batch_after_the_other(tmp_path, batch_size):
    """DuckDB prepares anonymise batch n+1 in a thread while batch n is written; the serial
    path is the oracle: same rows, values, markers, fingerprints and ledger counts."""
    import textwrap

    from stores import build_smoke
    from test_store import AS_OF, BOOKKEEPING, KEY, SHOP

    texts = [
        load_text(textwrap.dedent(t), n) for t, n in ((SHOP, "shop.yaml"), (BOOKKEEPING, "bk.yaml"))
    ]
    policies = PolicySet(tuple(texts))
    out = {}
    for overlap in (True, False):
        store = DuckDBStore(tmp_path / f"overlap-{overlap}.duckdb")
        with store.connect() as s:
            build_smoke(s)
            control.ensure_control_schema(store, s)
            control.add_hold(
                s,
                scope="subject",
                subject="customer:3",
                case_ref="LIT-1",
                reason="litigation",
                placed_by="test",
            )
        report = run_policies(
            store,
            policies,
            AS_OF,
            KEY,
            RunOptions(max_delete_fraction=None, batch_size=batch_size, overlap=overlap),
        )
        with store.connect(read_only=True) as s:
            out[overlap] = {
                "counts": [
                    (r.plan.rule_id, r.deleted, r.anonymised, r.batches, r.cascades)
                    for r in report.rules
                ],
                "customers": s.fetchall(sa.text("SELECT * FROM s.customers ORDER BY id")),
                "orders": s.fetchall(sa.text("SELECT * FROM s.orders ORDER BY order_id")),
                "markers": s.fetchall(
                    sa.text(
                        "SELECT id, columns, rule, original_hashes FROM retention_control.anonymised__s__customers "
                        "ORDER BY id, columns"
                    )
                ),
                "erased": s.fetchall(
                    sa.text(
                        "SELECT table_name, column_name, anchor_hash, value_hash, value_length "
                        "FROM retention_control.erased_values ORDER BY ALL"
                    )
                ),
                "ledger": s.fetchall(
                    sa.text(
                        "SELECT purpose, rule, table_name, action, batch, deleted, anonymised "
                        "FROM retention_control.audit WHERE action NOT LIKE 'purge%' ORDER BY seq"
                    )
                ),
            }
    assert out[True]["counts"][1][2] == 630  # the anonymise rule did act
    for part in out[False]:
        assert out[True][part] == out[False][part], part


def test_a_failure_while_preparing_the_next_batch_leaves_whole_batches_and_a_rerun_finishes(
    tmp_path, monkeypatch
):
    import textwrap

    from stores import build_smoke
    from test_store import AS_OF, KEY, SHOP

    from retention_jobs.apply import Applier

    policies = PolicySet((load_text(textwrap.dedent(SHOP), "shop.yaml"),))
    store = DuckDBStore(tmp_path / "w.duckdb")
    with store.connect() as s:
        build_smoke(s)
    real = Applier._prepare_rows
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in the prepare thread")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Applier, "_prepare_rows", failing)
    opts = RunOptions(max_delete_fraction=None, batch_size=100)
    with pytest.raises(PartialRun) as stopped:
        run_policies(store, policies, AS_OF, KEY, opts)
    failed = stopped.value.report.failed
    assert failed.error == "RuntimeError" and "boom in the prepare thread" in failed.message
    assert failed.committed_rows == 200
    with store.connect(read_only=True) as s:
        marked = s.scalar(
            sa.text("SELECT count(DISTINCT id) FROM retention_control.anonymised__s__customers")
        )
        status = s.scalar(sa.text("SELECT status FROM retention_control.runs WHERE mode = 'run'"))
    assert (
        marked == 200 and status == "partial"
    )  # batches 1 and 2 committed whole, batch 3 not at all
    monkeypatch.setattr(Applier, "_prepare_rows", real)
    again = run_policies(store, policies, AS_OF, KEY, opts)
    rule = {r.plan.rule_id: r for r in again.rules}["shop/inactive"]
    # the rerun finds the two committed batches done and anonymises exactly the rest
    assert rule.plan.already_done == 200 and rule.anonymised == rule.plan.expired - 200 > 0
    with store.connect(read_only=True) as s:
        marked = s.scalar(
            sa.text("SELECT count(DISTINCT id) FROM retention_control.anonymised__s__customers")
        )
        left = s.scalar(sa.text("SELECT count(*) FROM s.customers"))
    assert (
        marked == rule.plan.expired == left
    )  # every customer left was inactive: all anonymised once


def test_held_rows_are_fingerprinted_only_by_a_run_that_has_work(tmp_path):
    """The fingerprint reads every column of every held row; a run with nothing to change
    (the night after) skips it, a run with work takes it, and a journalled batch counts as work."""
    import textwrap

    from stores import build_smoke
    from test_store import AS_OF, KEY, SHOP

    from retention_jobs.check import run_checks

    policies = PolicySet((load_text(textwrap.dedent(SHOP), "shop.yaml"),))
    store = DuckDBStore(tmp_path / "w.duckdb")
    with store.connect() as s:
        build_smoke(s)
        control.ensure_control_schema(store, s)
        control.add_hold(
            s,
            scope="subject",
            subject="customer:3",
            case_ref="LIT-1",
            reason="litigation",
            placed_by="test",
        )
    options = RunOptions(max_delete_fraction=None, batch_size=100, purge=False)
    first = run_policies(store, policies, AS_OF, KEY, options)
    assert first.changed and first.held_fingerprints
    assert set(first.held_fingerprints) == {r.plan.rule_id for r in first.rules if r.plan.held}
    again = run_policies(store, policies, AS_OF, KEY, options)
    assert not again.changed and again.held_fingerprints == {}
    assert any(r.plan.held for r in again.rules)  # there are held rows; they were not read
    checks = {
        c.name: c
        for c in run_checks(
            store, policies, AS_OF, KEY, run_id=again.run_id, held_before=again.held_fingerprints
        )
    }
    assert checks["held_rows_unchanged"].passed
    with store.connect() as s:  # a journalled delete batch of an interrupted run is work
        applier = Applier(store, s, policies, AS_OF, KEY, options)
        plan = applier.planner.plan(None)
        bound = {b.id: b for b in applier.planner.rules(None)}
        assert not applier.has_work(plan, bound)
        journalled = next(b for b in bound.values() if b.rule.action == "delete" and b.cascades)
        pending = applier._pending_table(journalled)
        s.execute(sa.insert(pending).values({journalled.rule.keys[0]: 3, "rule": journalled.id}))
        assert applier.has_work(plan, bound)


def test_markers_keep_each_original_hash_compactly_and_the_check_reads_both_formats(tmp_path):
    """A marker keeps, per anonymised column, the first 8 bytes of the original value's keyed
    hash (base64, in the order of its `columns`); the check finds an original value written
    back, whether the markers are of this format or of the first one (named hex hashes)."""
    import base64
    import textwrap

    from stores import build_smoke
    from test_store import AS_OF, KEY, SHOP

    from retention_jobs.check import no_original_values
    from retention_jobs.plan import Planner

    def h(value: str) -> bytes:  # an independent reference for the engine's keyed hash
        return hashlib.blake2b(value.encode(), key=KEY.secret, digest_size=16).digest()[:8]

    policies = PolicySet((load_text(textwrap.dedent(SHOP), "shop.yaml"),))
    store = DuckDBStore(tmp_path / "w.duckdb")
    with store.connect() as s:
        build_smoke(s)
        before = {
            r[0]: r[1:]
            for r in s.fetchall(sa.text("SELECT id, email, name, phone FROM s.customers"))
        }
    run_policies(store, policies, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False))
    m = "retention_control.anonymised__s__customers"

    def check():
        with store.connect(read_only=True) as s:
            return no_original_values(Planner(store, s, policies, AS_OF), s, KEY, None)

    with store.connect() as s:
        markers = s.fetchall(sa.text(f"SELECT id, columns, original_hashes FROM {m} ORDER BY id"))
    assert markers
    for cid, columns, hashes in markers:
        assert hashes.startswith("2:")
        names, tokens = columns.strip(",").split(","), hashes[2:].split(";")
        assert len(tokens) == len(names)
        for name, token in zip(names, tokens, strict=True):
            original = dict(zip(("email", "name", "phone"), before[cid], strict=True)).get(name)
            if name == "born" or original is None:
                assert token == ""
            else:
                assert base64.b64decode(token + "=") == h(original)
    assert check().passed
    victim, columns, _ = next(r for r in markers if ",email," in r[1] and before[r[0]][0])
    with store.connect() as s:  # a sync job writes one original e-mail back
        anonymised = s.scalar(sa.text(f"SELECT email FROM s.customers WHERE id = {victim}"))
        s.execute(
            sa.text("UPDATE s.customers SET email = :e WHERE id = :i").bindparams(
                e=before[victim][0], i=victim
            )
        )
    first = check()
    assert not first.passed and first.counts == {"s.customers.email": 1}
    with store.connect() as s:  # the same markers in the first format
        for cid, columns, _ in markers:
            originals = dict(zip(("email", "name", "phone"), before[cid], strict=True))
            old = "".join(
                f"{c}={h(originals[c]).hex() if originals[c] is not None else 'null'};"
                for c in columns.strip(",").split(",")
                if c != "born"
            )
            s.execute(
                sa.text(f"UPDATE {m} SET original_hashes = :o WHERE id = :i").bindparams(
                    o=old, i=cid
                )
            )
    second = check()
    assert not second.passed and second.counts == first.counts and second.summary == first.summary
    with store.connect() as s:
        s.execute(
            sa.text("UPDATE s.customers SET email = :e WHERE id = :i").bindparams(
                e=anonymised, i=victim
            )
        )
    assert check().passed
