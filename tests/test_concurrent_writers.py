"""The application writes to exactly the rows a batch has read, between the batch's read and
its write (PostgreSQL, READ COMMITTED): the application's committed change wins. A row made
unexpired is not touched, a new phone number is not overwritten, and every such row is
counted as `skipped_changed`."""

import textwrap
from datetime import date

import psycopg
import pytest
from stores import pg_database

from retention_jobs import apply as apply_module
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.load import load_policies
from retention_jobs.store.sql_store import SqlStore

pytestmark = pytest.mark.postgres

AS_OF = date(2026, 6, 1)
KEY = PseudonymKey.from_text("concurrent-writers-test-key-0123")
ROWS = 300

POLICY = """
purpose: {purpose}
title: Customers
legal_basis: contract
owner: ops
rules:
  - name: inactive
    table: app.customers
    key: id
    clock: last_purchase_at
    keep_for: P1Y
    action: {action}
"""

ANON_COLUMNS = """
    columns:
      phone: redact
      email: hash
"""


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def build(url: str) -> None:
    """Every customer inactive since 2020 (expired as of 2026-06-01)."""
    with psycopg.connect(libpq(url), autocommit=True) as con:
        con.execute("CREATE SCHEMA app")
        con.execute(
            "CREATE TABLE app.customers (id BIGINT PRIMARY KEY, email TEXT, phone TEXT, "
            "last_purchase_at DATE)"
        )
        con.execute(
            f"INSERT INTO app.customers SELECT i, 'c' || i || '@shop.example', "
            f"'+45 ' || (10000000 + i), DATE '2020-01-01' FROM generate_series(1, {ROWS}) i"
        )


@pytest.fixture
def db(tmp_path):
    with pg_database() as url:
        build(url)
        yield url, tmp_path


def _policies(tmp_path, action: str):
    text = POLICY.format(purpose=f"customers_{action}", action=action)
    if action == "anonymise":
        text += ANON_COLUMNS
    path = tmp_path / f"{action}.yaml"
    path.write_text(textwrap.dedent(text))
    return load_policies([str(path)])


def _app_commits(url: str, ids: list[int]) -> tuple[list[int], list[int]]:
    """In a connection of its own, commit a new phone on half of `ids` and a purchase today
    (the row is no longer expired) on the other half."""
    phoned, bought = ids[::2], ids[1::2]
    with psycopg.connect(libpq(url), autocommit=True) as con:
        for i in phoned:
            con.execute("UPDATE app.customers SET phone = %s WHERE id = %s", [f"new-{i}", i])
        for i in bought:
            con.execute(
                "UPDATE app.customers SET last_purchase_at = DATE '2026-05-30' WHERE id = %s",
                [i],
            )
    return phoned, bought


def test_anonymise_keeps_updates_committed_between_read_and_write(db, monkeypatch):
    url, tmp = db
    policies = _policies(tmp, "anonymise")
    changed: dict[str, list[int]] = {}
    real = apply_module.Applier._prepare_rows

    def prepare_then_app_writes(self, b, info, keys, columns, data):
        # between the batch's read (`_read_rows`) and its write (`_write_rows`)
        if not changed and info.name == "app.customers" and data.height:
            ids = sorted(data["id"].to_list())[:40]
            changed["phone"], changed["bought"] = _app_commits(url, ids)
        return real(self, b, info, keys, columns, data)

    monkeypatch.setattr(apply_module.Applier, "_prepare_rows", prepare_then_app_writes)
    report = run_policies(
        SqlStore(url), policies, AS_OF, KEY, RunOptions(batch_size=100, purge=False)
    )
    assert changed, "the hook never ran"
    rule = report.rules[0]
    n_changed = len(changed["phone"]) + len(changed["bought"])
    with psycopg.connect(libpq(url)) as con:
        phones = dict(
            con.execute(
                "SELECT id, phone FROM app.customers WHERE id = ANY(%s)", [changed["phone"]]
            ).fetchall()
        )
        assert phones == {i: f"new-{i}" for i in changed["phone"]}, "an application update was lost"
        fresh = con.execute(
            "SELECT id, email, phone FROM app.customers WHERE id = ANY(%s) ORDER BY id",
            [changed["bought"]],
        ).fetchall()
        assert fresh == [
            (i, f"c{i}@shop.example", f"+45 {10000000 + i}") for i in changed["bought"]
        ]
        # no marker claims a skipped row was anonymised; every other row was
        marked = {
            r[0]
            for r in con.execute(
                'SELECT id FROM retention_control."anonymised__app__customers"'
            ).fetchall()
        }
        assert marked == set(range(1, ROWS + 1)) - set(changed["phone"]) - set(changed["bought"])
        assert rule.skipped_changed == n_changed
        assert rule.anonymised == ROWS - n_changed
        summary = con.execute(
            "SELECT summary FROM retention_control.runs WHERE run_id = %s", [report.run_id]
        ).fetchone()
        assert f'"skipped_changed": {n_changed}' in summary[0]
    # the phone-changed rows are still expired: the next run anonymises them
    again = run_policies(SqlStore(url), policies, AS_OF, KEY, RunOptions(purge=False))
    assert again.rules[0].anonymised == len(changed["phone"])
    assert again.rules[0].skipped_changed == 0


def test_delete_rechecks_the_predicate_when_it_deletes(db, monkeypatch):
    url, tmp = db
    policies = _policies(tmp, "delete")
    changed: dict[str, list[int]] = {}
    real = apply_module.Applier._delete_batch

    def app_writes_then_delete(self, b, confirmed, counts, batch_no, resumed=False):
        # the batch's keys were confirmed (read) at its start; the application commits now
        if not changed:
            ids = sorted(r[0] for r in self.session.fetchall(confirmed.select()))[:40]
            _phone, changed["bought"] = _app_commits(url, ids)
        return real(self, b, confirmed, counts, batch_no, resumed)

    monkeypatch.setattr(apply_module.Applier, "_delete_batch", app_writes_then_delete)
    report = run_policies(
        SqlStore(url),
        policies,
        AS_OF,
        KEY,
        RunOptions(batch_size=100, purge=False, max_delete_fraction=None),
    )
    assert changed, "the hook never ran"
    rule = report.rules[0]
    with psycopg.connect(libpq(url)) as con:
        left = [r[0] for r in con.execute("SELECT id FROM app.customers ORDER BY id").fetchall()]
    assert left == changed["bought"], "a row was deleted that was no longer expired"
    assert rule.skipped_changed == len(changed["bought"])
    assert rule.deleted == ROWS - len(changed["bought"])
