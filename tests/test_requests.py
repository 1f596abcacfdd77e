"""Data-subject requests on a small demo warehouse: erasure against the bookkeeping period, legal
holds, consent withdrawal, objection, the access export against an SQL oracle, and not one
identifier of the subject in receipts, the audit ledger, the suppression list or CLI output.

The engine tests run on DuckDB and on PostgreSQL (a throw-away database on the local server,
see tests/stores.py; under CI=true it must be there, elsewhere the half is skipped without one).
"""

import csv
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from retention_jobs import control
from retention_jobs import requests as rq
from retention_jobs.anonymise import PseudonymKey
from retention_jobs.demo import DEMO_HOLDS, TABLES, build, demo_holds_for, foreign_keys
from retention_jobs.errors import ConfigError
from retention_jobs.load import PolicySet, load_policies, load_text
from retention_jobs.store.base import Store
from retention_jobs.store.duckdb_store import DuckDBStore

ROOT = Path(__file__).resolve().parent.parent
AS_OF = date(2026, 11, 22)
ROWS = 300
KEY_TEXT = "request-test-key-0123456789abcdef"
KEY = PseudonymKey.from_text(KEY_TEXT)
POLICIES = load_policies([ROOT / "policies"])
STORES = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]


# --- stores ----------------------------------------------------------------------------------


def _prepare(store: Store) -> None:
    with store.connect() as s:
        control.ensure_control_schema(store, s)
        for h in demo_holds_for(store, s):
            control.add_hold(s, **h)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The demo warehouse with its legal holds, built once; each test gets a copy."""
    path = tmp_path_factory.mktemp("demo") / "warehouse.duckdb"
    store = DuckDBStore(path)
    build(store, ROWS, AS_OF)
    _prepare(store)
    return path


@pytest.fixture(scope="module")
def pg_url():
    from stores import pg_database

    with pg_database() as url:
        # PostgreSQL's JIT compiles the planner's many-subquery statements for seconds each at
        # this size; retention statements are short (see the report on SqlStore sessions)
        yield (
            sa.engine.make_url(url)
            .update_query_dict({"options": "-c jit=off"})
            .render_as_string(hide_password=False)
        )


@pytest.fixture(params=STORES)
def store(request, template, tmp_path) -> Store:
    if request.param == "duckdb":
        path = tmp_path / "warehouse.duckdb"
        shutil.copy(template, path)
        return DuckDBStore(path)
    from stores import reset_pg_database

    from retention_jobs.store.sql_store import SqlStore

    url = request.getfixturevalue("pg_url")
    reset_pg_database(url)
    s = SqlStore(url)
    build(s, ROWS, AS_OF)
    _prepare(s)
    return s


@pytest.fixture
def duck(template, tmp_path) -> DuckDBStore:
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(template, path)
    return DuckDBStore(path)


def q(store: Store, sql: str) -> list[tuple]:
    with store.connect(read_only=True) as s:
        return s.fetchall(sa.text(sql))


def add(store: Store, kind: str, subject: str, purpose: str | None = None) -> rq.Request:
    subject_kind, subject_id = rq.parse_subject(subject)
    rq.check_request(POLICIES, kind, subject_kind, purpose)
    with store.connect() as s:
        return rq.add_request(
            s,
            kind=kind,
            subject_kind=subject_kind,
            subject_id=subject_id,
            received_on=AS_OF,
            purpose=purpose,
        )


def process(
    store: Store, request_id: str, as_of: date = AS_OF, out: Path | None = None
) -> rq.Processed:
    (p,) = rq.process_requests(store, POLICIES, as_of, KEY, [request_id], out)
    assert p.failed is None and p.skipped is None, p
    return p


def request(store: Store, request_id: str) -> rq.Request:
    with store.connect(read_only=True) as s:
        return rq.get_request(s, request_id)


def held_customers(store: Store) -> set[int]:
    return {
        int(r[0])
        for r in q(
            store, "SELECT subject_id FROM retention_control.holds WHERE subject_kind = 'customer'"
        )
    }


BILLING = (
    "billing.customers",
    "billing.subscriptions",
    "billing.invoices",
    "billing.credit_checks",
)


def customer_rows(store: Store, cid: int) -> dict[str, list[tuple]]:
    return {t: q(store, f"SELECT * FROM {t} WHERE customer_id = {cid} ORDER BY 1") for t in BILLING}


# --- erasure ---------------------------------------------------------------------------------


def pick_bookkeeping_customer(store: Store, extra: str = "") -> int:
    """A Norwegian customer, not held, with a credit check and with invoices on both sides of the
    five-year bookkeeping minimum (an invoice from year Y is free on 1 January of Y + 6)."""
    rows = q(
        store,
        f"""
        SELECT c.customer_id FROM billing.customers c WHERE c.country = 'NO' {extra}
          AND EXISTS (SELECT 1 FROM billing.invoices i WHERE i.customer_id = c.customer_id
                      AND i.invoice_date >= DATE '2021-01-01')
          AND EXISTS (SELECT 1 FROM billing.invoices i WHERE i.customer_id = c.customer_id
                      AND i.invoice_date < DATE '2021-01-01')
          AND EXISTS (SELECT 1 FROM billing.credit_checks k WHERE k.customer_id = c.customer_id)
        ORDER BY c.customer_id""",
    )
    free = [r[0] for r in rows if r[0] not in held_customers(store)]
    assert free, "the demo must have such a customer"
    return free[0]


def test_erasure_keeps_bookkeeping_invoices_until_their_date_then_completes(store):
    cid = pick_bookkeeping_customer(store)
    before = customer_rows(store, cid)
    invoices = {
        r[0]: r for r in before["billing.invoices"]
    }  # invoice_id, customer_id, subscription_id, date
    inside = {i for i, r in invoices.items() if r[3].year >= 2021}
    free_on = date(max(invoices[i][3].year for i in inside) + 6, 1, 1)

    req = add(store, "erasure", f"customer:{cid}")
    assert req.due_on == date(2026, 12, 22)
    p = process(store, req.request_id)

    # everything that may go went: old invoices and credit checks; the row is anonymised, not deleted
    after = customer_rows(store, cid)
    assert {r[0] for r in after["billing.invoices"]} == inside
    assert after["billing.credit_checks"] == []
    (row,) = after["billing.customers"]
    (orig,) = before["billing.customers"]
    assert row[2] != orig[2] and row[1] != orig[1], "e-mail and name must be anonymised"
    assert p.status == "partially_done"
    r = p.receipt
    assert r["deferred_until"] == free_on.isoformat()
    tables = {t["table"]: t for t in r["tables"]}
    assert tables["billing.invoices"]["deleted"] == len(invoices) - len(inside)
    assert tables["billing.credit_checks"]["deleted"] == len(before["billing.credit_checks"])
    assert tables["billing.customers"]["anonymised"] == 1
    deferred = {d["table"]: d for d in r["deferred"]}
    assert deferred["billing.invoices"]["rows"] == len(inside)
    assert deferred["billing.invoices"]["rules"] == ["bookkeeping/retain-invoices-no-dk"]
    assert deferred["billing.invoices"]["until"] == free_on.isoformat()
    assert deferred["billing.customers"]["reason"] == "retention_period"
    # every place of the customer is accounted for: the kept invoices by the rule keeping them
    left = {x["table"]: x for x in r["left"]}
    assert left["billing.invoices"]["rows"] == len(inside)
    assert left["billing.invoices"]["reason"] == "retention_period"
    assert left["billing.invoices"]["rules"] == ["bookkeeping/retain-invoices-no-dk"]
    assert "billing.customers" not in left  # anonymised on purpose: handled
    assert set(r["places"]) >= set(BILLING)
    assert r["policies_sha256"] == POLICIES.digest and r["suppression_entries_added"] >= 1
    assert request(store, req.request_id).recheck_on == free_on

    # the nightly processing leaves it alone until the day comes, then finishes it
    with store.connect(read_only=True) as s:
        assert req.request_id not in {
            x.request_id for x in rq.due_for_processing(s, free_on - timedelta(days=1))
        }
    (done,) = rq.process_requests(store, POLICIES, free_on, KEY)
    assert done.request_id == req.request_id and done.status == "done"
    assert all(rows == [] for rows in customer_rows(store, cid).values())
    assert done.receipt["deferred"] == [] and done.receipt["deferred_until"] is None
    assert done.receipt["left"] == []
    closed = request(store, req.request_id)
    assert closed.status == "done" and closed.subject_id is None and closed.completed_at is not None
    if isinstance(store, DuckDBStore):  # purged like a nightly run: not even in freed blocks
        raw = store.path.read_bytes()
        for value in (orig[2], orig[3], orig[8]):  # e-mail, phone, national id
            assert value.encode() not in raw


def test_held_subject_is_deferred_with_the_case_until_the_hold_is_released(store):
    with store.connect(read_only=True) as s:
        hold = next(h for h in control.list_holds(s) if h.case_ref == DEMO_HOLDS[0]["case_ref"])
    cid = int(hold.subject_id)
    before = customer_rows(store, cid)
    req = add(store, "erasure", f"customer:{cid}")
    p = process(store, req.request_id)

    assert p.status == "deferred"
    assert customer_rows(store, cid) == before, "held rows must not change"
    assert p.receipt["tables"] == []
    assert p.receipt["deferred"] and all(
        d["reason"] == "legal_hold" and d["case_refs"] == [hold.case_ref] and d["until"] is None
        for d in p.receipt["deferred"]
    )
    assert request(store, req.request_id).recheck_on is None  # looked at on every run
    # every place of the customer with rows is named, held under the case
    assert {x["table"] for x in p.receipt["left"]} == {t for t, rows in before.items() if rows}
    assert all(
        x["reason"] == "legal_hold" and x["case_refs"] == [hold.case_ref] for x in p.receipt["left"]
    )

    with store.connect(read_only=True) as s:
        effect = rq.hold_effect(store, s, POLICIES, AS_OF, hold.hold_id)
    assert (
        effect.protected >= 1 and effect.freed >= 1
    )  # the nightly run would erase the customer too

    with store.connect() as s:
        assert control.release_hold(s, hold.hold_id, "test")
    (done,) = rq.process_requests(store, POLICIES, AS_OF, KEY)
    assert done.status == "done"
    assert all(rows == [] for rows in customer_rows(store, cid).values())


# --- consent withdrawal and objection --------------------------------------------------------


def snapshot(store: Store) -> dict[str, list[tuple]]:
    return {t: q(store, f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}


def test_consent_withdrawal_removes_the_newsletter_rows_only(store):
    # a subscriber still on a list (the nightly rule would keep them), whose number is also a
    # phone subscriber's id: "subscriber" names two kinds of person in the shipped policies
    sid = q(
        store,
        """
        SELECT s.subscriber_id FROM marketing.newsletter_subscribers s
        WHERE EXISTS (SELECT 1 FROM marketing.list_subscriptions l
                      WHERE l.subscriber_id = s.subscriber_id AND l.status = 'subscribed')
          AND EXISTS (SELECT 1 FROM telecom.traffic_records r WHERE r.msisdn_id = s.subscriber_id)
        ORDER BY 1""",
    )[0][0]
    before = snapshot(store)
    req = add(store, "consent_withdrawal", f"subscriber:{sid}", purpose="newsletter")
    p = process(store, req.request_id)

    assert p.status == "done" and p.receipt["purposes"] == ["newsletter"]
    after = snapshot(store)
    for table in TABLES:
        if table.startswith("marketing."):
            assert after[table] == [
                r for r in before[table] if r[1 if "list" in table else 0] != sid
            ]
        else:
            assert after[table] == before[table], f"{table} must not change"
    tables = {t["table"]: t["deleted"] for t in p.receipt["tables"]}
    assert tables == {
        "marketing.newsletter_subscribers": 1,
        "marketing.list_subscriptions": sum(
            1 for r in before["marketing.list_subscriptions"] if r[1] == sid
        ),
    }
    assert p.receipt["suppression_entries_added"] == 1  # the address


def test_objection_acts_on_legitimate_interests_only(duck):
    contact = q(
        duck,
        "SELECT contact_id FROM crm.contacts WHERE tenant_id = 1 AND email IS NOT NULL "
        "AND phone IS NOT NULL AND opted_out_at IS NULL ORDER BY 1",
    )[0][0]
    req = add(duck, "objection", f"contact:{contact}")
    p = process(duck, req.request_id)
    assert p.status == "done" and p.receipt["purposes"] == ["crm-contacts"]
    assert q(duck, f"SELECT count(*) FROM crm.contacts WHERE contact_id = {contact}") == [(0,)]
    assert q(duck, f"SELECT count(*) FROM crm.activities WHERE contact_id = {contact}") == [(0,)]
    assert p.receipt["suppression_entries_added"] == 2  # e-mail and phone

    # customers rest on a contract: nothing to object to, and nothing changes
    cid = pick_bookkeeping_customer(duck)
    before = customer_rows(duck, cid)
    other = process(duck, add(duck, "objection", f"customer:{cid}").request_id)
    assert other.status == "done" and other.receipt["purposes"] == [] and other.receipt["note"]
    assert customer_rows(duck, cid) == before


def test_erasure_of_a_client_tenants_contact_is_forwarded_not_erased(store):
    """The demo's CRM service: a contact of a client whose contract runs is the client's
    (crm-processor, role: processor); an erasure changes nothing and names what to forward."""
    contact = q(
        store,
        "SELECT c.contact_id FROM crm.contacts c JOIN crm.tenants t ON t.tenant_id = c.tenant_id "
        "WHERE NOT t.own_use AND t.contract_ended_at IS NULL AND EXISTS "
        "(SELECT 1 FROM crm.activities a WHERE a.contact_id = c.contact_id) ORDER BY 1",
    )[0][0]
    crm = ("crm.tenants", "crm.contacts", "crm.activities")
    before = {t: q(store, f"SELECT * FROM {t} ORDER BY 1") for t in crm}
    p = process(store, add(store, "erasure", f"contact:{contact}").request_id)

    assert {t: q(store, f"SELECT * FROM {t} ORDER BY 1") for t in crm} == before
    assert p.status == "partially_done" and p.receipt["tables"] == []
    forward = {f["table"]: f["rows"] for f in p.receipt["forward_to_controller"]}
    assert forward == {
        "crm.contacts": 1,
        "crm.activities": q(
            store, f"SELECT count(*) FROM crm.activities WHERE contact_id = {contact}"
        )[0][0],
    }
    assert p.receipt["suppression_entries_added"] == 0


def test_requests_are_checked_against_the_policies():
    with pytest.raises(ConfigError, match="rests on contract, not consent"):
        rq.check_request(POLICIES, "consent_withdrawal", "customer", "customers")
    with pytest.raises(ConfigError, match="names the purpose"):
        rq.check_request(POLICIES, "consent_withdrawal", "subscriber", None)
    with pytest.raises(ConfigError, match="no policy rule has subject kind"):
        rq.check_request(POLICIES, "erasure", "patient", None)
    # the shipped policies give mobile subscribers a kind of their own; a policy set in which
    # two purposes share a kind over differently named id columns is refused
    assert rq.shared_kind_problem(POLICIES, "subscriber", ["newsletter", "telecom-traffic"]) is None
    telecom = (
        (ROOT / "policies/telecom-traffic.yaml")
        .read_text()
        .replace("kind: mobile_subscriber", "kind: subscriber")
    )
    shared = PolicySet(
        (POLICIES.by_purpose("newsletter"), load_text(telecom, "policies/telecom-traffic.yaml"))
    )
    assert rq.shared_kind_problem(shared, "subscriber", ["newsletter", "telecom-traffic"])
    assert rq.shared_kind_problem(shared, "subscriber", ["newsletter"]) is None
    assert rq.due_date(date(2027, 1, 31)) == date(2027, 2, 28)
    assert rq.due_date(date(2028, 1, 31)) == date(2028, 2, 29)
    assert rq.due_date(date(2026, 11, 22)) == date(2026, 12, 22)


def test_reject_closes_the_request_and_forgets_the_subject(duck):
    req = add(duck, "erasure", "customer:7")
    with duck.connect() as s:
        p = rq.reject_request(s, POLICIES, req.request_id, "identity_not_verified", AS_OF)
        assert p.receipt["reason"] == "identity_not_verified"
        with pytest.raises(ConfigError, match="rejected"):
            rq.reject_request(s, POLICIES, req.request_id, "excessive", AS_OF)
    closed = request(duck, req.request_id)
    assert closed.status == "rejected" and closed.subject_id is None


def test_email_resolves_through_the_policies_subject_columns(duck):
    cid, email = q(duck, "SELECT customer_id, email FROM billing.customers ORDER BY 1")[0]
    with duck.connect(read_only=True) as s:
        found = rq.resolve_email(duck, s, POLICIES, f"  {email.upper()} ")
        assert f"customer:{cid}" in found
        assert rq.resolve_email(duck, s, POLICIES, "nobody@nowhere.example") == []


# --- access ----------------------------------------------------------------------------------


def _norm(v):
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    return v


def oracle(store: Store, table: str, column: str, value: int) -> dict[str, dict]:
    """Every row linked to one row by foreign keys (declared or soft), found by walking the
    demo's key graph in plain SQL: independent of the policies."""
    found: dict[str, dict] = {}
    frontier = [(table, column, [value])]
    while frontier:
        t, col, values = frontier.pop()
        if not values:
            continue
        with store.connect(read_only=True) as s:
            res = s.fetchall(
                sa.text(f"SELECT * FROM {t} WHERE {col} IN ({', '.join(map(str, values))})")
            )
            names = [
                c[0]
                for c in s.fetchall(
                    sa.text(
                        f"SELECT column_name FROM information_schema.columns WHERE table_schema = '{t.split('.')[0]}' "
                        f"AND table_name = '{t.split('.')[1]}' ORDER BY ordinal_position"
                    )
                )
            ]
        rows = found.setdefault(t, {})
        new = [dict(zip(names, r, strict=True)) for r in res if r[0] not in rows]
        rows.update({r[names[0]]: r for r in new})
        for child, ccol, parent, pcol in foreign_keys():
            if parent == t and new:
                frontier.append(
                    (child, ccol, sorted({r[pcol] for r in new if r[pcol] is not None}))
                )
    return {t: rows for t, rows in found.items() if rows}


def test_access_export_holds_every_row_of_the_subject_and_nothing_else(store, tmp_path):
    cid = q(
        store,
        """
        SELECT c.customer_id FROM billing.customers c
        WHERE EXISTS (SELECT 1 FROM billing.invoices i JOIN billing.subscriptions s USING (subscription_id)
                      WHERE s.customer_id = c.customer_id)
          AND EXISTS (SELECT 1 FROM billing.invoices i WHERE i.customer_id = c.customer_id AND i.subscription_id IS NULL)
          AND EXISTS (SELECT 1 FROM billing.credit_checks k WHERE k.customer_id = c.customer_id)
        ORDER BY 1""",
    )[0][0]
    expect = oracle(store, "billing.customers", "customer_id", cid)
    assert set(expect) == set(BILLING)
    req = add(store, "access", f"customer:{cid}")
    out = tmp_path / "exports" / "access.zip"
    p = process(store, req.request_id, out=out)

    blob = out.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    e = p.receipt["export"]
    assert e["sha256"] == hashlib.sha256(blob).hexdigest()
    assert e["rows"] == sum(len(rows) for rows in expect.values()) and e["tables"] == len(expect)
    with store.connect(read_only=True) as s:
        (record,) = rq.export_records(s, req.request_id)
    assert record["sha256"] == e["sha256"] and record["row_count"] == e["rows"]

    z = zipfile.ZipFile(io.BytesIO(blob))
    doc = json.loads(z.read("export.json"))
    got = {t["table"]: t for t in doc["tables"]}
    assert set(got) == set(expect)
    for table, rows in expect.items():
        data = got[table]["data"]
        assert all(r["customer_id"] == cid for r in data), f"{table}: a row of another subject"
        key = next(iter(next(iter(rows.values()))))  # the first column: the primary key
        assert {r[key]: {k: v for k, v in r.items() if k != "_rules"} for r in data} == {
            k: {c: _norm(v) for c, v in r.items()} for k, r in rows.items()
        }
        assert all(r["_rules"] for r in data), f"{table}: a row without the rules that keep it"
        csv_rows = list(csv.DictReader(io.StringIO(z.read(f"tables/{table}.csv").decode())))
        assert len(csv_rows) == len(rows)
    for rule_id in {r for t in doc["tables"] for row in t["data"] for r in row["_rules"]}:
        info = doc["rules"][rule_id.split(" ")[0]]
        assert info["legal_basis"] and info["retention"] and info["purpose"]
    for inv in got["billing.invoices"]["data"]:
        expected_rule = (
            "bookkeeping/retain-invoices-se"
            if inv["country"] == "SE"
            else "bookkeeping/retain-invoices-no-dk"
        )
        assert expected_rule in inv["_rules"]
    assert p.status == "done" and request(store, req.request_id).subject_id is None


# --- nothing personal anywhere but the request row -------------------------------------------


def cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_PSEUDONYM_KEY"] = KEY_TEXT
    return subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_no_identifier_in_receipts_ledger_suppression_or_cli_output(template, tmp_path):
    d = tmp_path / "site"
    (d / ".retention").mkdir(parents=True)
    shutil.copytree(ROOT / "policies", d / "policies")
    shutil.copy(template, d / ".retention" / "warehouse.duckdb")
    store = DuckDBStore(d / ".retention" / "warehouse.duckdb")
    # a customer the nightly policies leave alone today (bought within three years), so the
    # request, not the policies, is what erases and anonymises
    cid = pick_bookkeeping_customer(store, "AND c.last_purchase_at >= DATE '2024-01-01'")
    (customer,) = q(
        store,
        f"SELECT full_name, email, phone, street_address, national_id FROM billing.customers "
        f"WHERE customer_id = {cid}",
    )
    invoice_values = q(
        store,
        f"SELECT customer_name, billing_address FROM billing.invoices WHERE customer_id = {cid}",
    )
    sid, sub_email, sub_name = q(
        store,
        """
        SELECT s.subscriber_id, s.email, s.full_name FROM marketing.newsletter_subscribers s
        WHERE s.full_name IS NOT NULL AND EXISTS (SELECT 1 FROM marketing.list_subscriptions l
              WHERE l.subscriber_id = s.subscriber_id AND l.status = 'subscribed') ORDER BY 1""",
    )[0]
    other_id, *other = q(
        store,
        f"SELECT customer_id, full_name, email, phone FROM billing.customers "
        f"WHERE customer_id <> {cid} ORDER BY customer_id LIMIT 1",
    )[0]
    values = {*customer, *(v for r in invoice_values for v in r), sub_email, sub_name} - {None}
    # an id must not be followed by a digit: customer:19 is not in customer:194
    ids = [re.compile(rf"customer:{cid}(?!\d)"), re.compile(rf"subscriber:{sid}(?!\d)")]

    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None, expect: int = 0) -> subprocess.CompletedProcess:
        proc = cli(*args, cwd=d, stdin=stdin)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == expect, (
            f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        return proc

    run("requests", "add", "--kind", "access", "--subject", f"customer:{cid}")
    run("requests", "add", "--kind", "erasure", "--email", "-", stdin=customer[1] + "\n")
    run(
        "requests",
        "add",
        "--kind",
        "consent_withdrawal",
        "--purpose",
        "newsletter",
        "--subject",
        f"subscriber:{sid}",
    )
    run("requests", "add", "--kind", "erasure", "--subject", f"subscriber:{sid}")
    listed = json.loads(run("requests", "list", "--format", "json").stdout)
    access = next(r["request_id"] for r in listed if r["kind"] == "access")
    run(
        "requests",
        "process",
        access,
        "--out",
        str(tmp_path / "export.zip"),
        "--as-of",
        AS_OF.isoformat(),
    )
    run(
        "holds",
        "add",
        "--subject",
        f"customer:{other_id}",
        "--case",
        "REV-1",
        "--reason",
        "review test",
        "--review",
        "2026-11-01",
    )
    run("holds", "review", "--as-of", AS_OF.isoformat())
    # the nightly run processes what is due after the policies; its JSON report stays parseable
    report = json.loads(
        run(
            "run", "--as-of", AS_OF.isoformat(), "--format", "json", "--max-delete-fraction", "1"
        ).stdout
    )
    assert report["run_id"]
    listed = json.loads(run("requests", "list", "--format", "json").stdout)
    # the customer's erasure waits for the bookkeeping minimum; the subscriber's is complete
    assert sorted((r["kind"], r["status"]) for r in listed) == [
        ("access", "done"),
        ("consent_withdrawal", "done"),
        ("erasure", "done"),
        ("erasure", "partially_done"),
    ]
    erasure = next(
        r["request_id"]
        for r in listed
        if r["kind"] == "erasure" and r["status"] == "partially_done"
    )
    assert (
        "retained by bookkeeping/retain-invoices-no-dk" in run("requests", "show", erasure).stdout
    )
    receipt = json.loads(run("requests", "show", erasure, "--receipt").stdout)
    assert (
        "subject_id" not in receipt
        and receipt["request_id"] == erasure
        and receipt["deferred_until"]
    )
    run("requests", "list")

    with (d / "import.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "e-mail", "telefon"])
        w.writerow(other)
        w.writerow(["someone", f"  {customer[1].upper()} ", ""])
        w.writerow(["", "", customer[2]])
    flagged = run("suppressed", "import.csv", expect=1).stdout
    assert "row 2: e-mail" in flagged and "row 3: telefon" in flagged and "row 1:" not in flagged

    with store.connect(read_only=True) as s:
        names = [
            r[0]
            for r in s.fetchall(
                sa.text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'retention_control'"
                )
            )
        ]
        # the request row names its subject while open, and holds name people by design
        dumps = {
            n: repr(s.fetchall(sa.text(f'SELECT * FROM retention_control."{n}"')))
            for n in names
            if n not in ("requests", "holds")
        }
    assert {
        "suppression",
        "request_receipts",
        "request_outcomes",
        "request_exports",
        "audit",
    } <= set(dumps)
    for n, text in [
        *(("retention_control." + n, t) for n, t in dumps.items()),
        *(("the CLI output", t) for t in outputs),
    ]:
        assert not any(v in text for v in values), f"a value of the subject is in {n}"
        assert not any(rx.search(text) for rx in ids), f"a subject id is in {n}"


# --- Dagster: sensor, asset, deadline check --------------------------------------------------


def test_dagster_sensor_processes_due_requests_and_the_check_flags_late_ones(duck):
    import dagster as dg

    from assets.requests import (
        data_subject_requests,
        request_deadline_check,
        request_deadline_job,
        request_sensor,
    )
    from assets.resources import PseudonymKeyResource, StoreResource

    cid = pick_bookkeeping_customer(duck)
    with duck.connect() as s:
        late = rq.add_request(
            s,
            kind="erasure",
            subject_kind="customer",
            subject_id=str(cid),
            received_on=date.today() - timedelta(days=45),
        )
    res = {
        "store": StoreResource(location=str(duck.path)),
        "pseudonym_key": PseudonymKeyResource(key=KEY_TEXT),
    }
    defs = dg.Definitions(
        assets=[data_subject_requests],
        asset_checks=[request_deadline_check],
        sensors=[request_sensor],
        jobs=[request_deadline_job],
        resources=res,
    )
    with dg.instance_for_test() as instance:
        assert isinstance(
            request_sensor(dg.build_sensor_context(instance=instance, resources=res)), dg.RunRequest
        )
        checks = defs.resolve_job_def("request_deadlines").execute_in_process(instance=instance)
        (evaluation,) = checks.get_asset_check_evaluations()
        assert not evaluation.passed and evaluation.metadata["overdue_ids"].value == late.request_id
        result = dg.materialize([data_subject_requests], resources=res, instance=instance)
        (event,) = result.get_asset_materialization_events()
        assert event.materialization.metadata["partially_done_ids"].value == late.request_id
        skip = request_sensor(dg.build_sensor_context(instance=instance, resources=res))
        assert isinstance(skip, dg.SkipReason)  # deferred to its retain date: nothing due now
