"""`{json: ...}`: single keys of a JSON document dropped, redacted or hashed, and a NOT NULL
JSON column cleared to `{}`, on DuckDB (JSON) and PostgreSQL (JSONB); `check` proves no marked
document holds a removed key, and fails when an application writes one back.

The oracle edits the documents with plain dict operations written here, and hashes with
hashlib, apart from the engine's code.
"""

import hashlib
import json
from datetime import date

import pytest
from schema_cases import policies, rows, sql

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.check import run_checks
from retention_jobs.errors import PolicyError
from retention_jobs.load import load_text
from retention_jobs.resolve import resolve

AS_OF = date(2026, 11, 22)
KEY_TEXT = "json-strategy-key-0123456789"
KEY = PseudonymKey.from_text(KEY_TEXT)

DOCS = {
    1: {
        "email": "kari@example.no",
        "phone": "+47 400 00 001",
        "ip": "10.0.0.1",
        "address": {"street": "Storgata 1", "city": "Oslo"},
        "contacts": [{"name": "Ola", "phone": "+47 1"}, {"name": "Per"}],
        "plan": "gold",
    },
    2: {"email": "ola@example.no", "plan": "basic"},  # no phone, ip or address
    3: {"email": "per@example.se", "phone": "+46 1", "plan": "gold"},  # not expired
}


def _json_type(store) -> str:
    return "JSONB" if store.kind != "duckdb" else "JSON"


def _ddl(store) -> list[str]:
    t = _json_type(store)
    closed = {1: "DATE '2020-01-01'", 2: "DATE '2020-01-01'", 3: "NULL"}
    values = ", ".join(
        "({}, '{}', '{}', {})".format(
            i, json.dumps(d), json.dumps({"theme": "dark", "owner": i}), closed[i]
        )
        for i, d in DOCS.items()
    )
    return [
        "CREATE SCHEMA app",
        f"CREATE TABLE app.profiles (user_id BIGINT PRIMARY KEY, profile {t}, "
        f"settings {t} NOT NULL, closed_on DATE)",
        f"INSERT INTO app.profiles VALUES {values}",
    ]


POLICY = """
purpose: profiles
title: Closed accounts' profiles
legal_basis: contract
owner: app
rules:
  - name: closed
    table: app.profiles
    key: user_id
    subject: {kind: user, column: user_id}
    clock: closed_on
    keep_for: P1Y
    action: anonymise
    columns:
      profile: {json: {drop: [phone, ip, contacts.phone], redact: [address.street], hash: [email]}}
      settings: {json: {clear: object}}
"""


def _expected(doc: dict) -> dict:
    secret = hashlib.sha256(KEY_TEXT.encode()).digest()
    out = json.loads(json.dumps(doc))
    out.pop("phone", None)
    out.pop("ip", None)
    for c in out.get("contacts", []):
        c.pop("phone", None)
    if "address" in out:
        out["address"]["street"] = None
    out["email"] = hashlib.blake2b(out["email"].encode(), key=secret, digest_size=16).hexdigest()
    return out


def _docs(store) -> dict[int, tuple[dict, dict]]:
    def parse(v):
        return v if isinstance(v, dict) else json.loads(v)

    return {
        r[0]: (parse(r[1]), parse(r[2]))
        for r in rows(store, "SELECT user_id, profile, settings FROM app.profiles")
    }


def test_keys_are_dropped_redacted_and_hashed_and_the_check_proves_it(store):
    sql(store, *_ddl(store))
    ps = policies(POLICY)
    report = run_policies(store, ps, AS_OF, KEY, RunOptions(max_delete_fraction=None, purge=False))
    assert sum(r.anonymised for r in report.rules) == 2
    docs = _docs(store)
    assert docs[1] == (_expected(DOCS[1]), {})
    assert docs[2] == (_expected(DOCS[2]), {})
    assert docs[3] == (DOCS[3], {"theme": "dark", "owner": 3})
    results = {r.name: r for r in run_checks(store, ps, AS_OF, KEY)}
    assert results["no_original_values"].passed, results["no_original_values"].summary

    # an application writes the phone number back into an anonymised profile: the check fails
    with store.connect() as s:
        s.execute(
            "UPDATE app.profiles SET profile = "
            f"CAST('{json.dumps({**docs[1][0], 'phone': '+47 9'})}' AS {_json_type(store)}) "
            "WHERE user_id = 1"
        )
    results = {r.name: r for r in run_checks(store, ps, AS_OF, KEY)}
    assert not results["no_original_values"].passed
    assert results["no_original_values"].counts == {"app.profiles.profile": 1}


def test_json_on_a_text_column_is_refused_at_validate(store):
    sql(
        store,
        "CREATE SCHEMA app",
        "CREATE TABLE app.profiles (user_id BIGINT PRIMARY KEY, profile VARCHAR(400), "
        f"settings {_json_type(store)} NOT NULL, closed_on DATE)",
    )
    with store.connect(read_only=True) as s:
        catalog = store.catalog(s)
    with pytest.raises(PolicyError) as e:
        resolve(policies(POLICY), catalog, store.kind)
    assert "p0.yaml:15:" in str(e.value)
    assert "json edits a JSON document" in str(e.value)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("{json: {}}", "either clear: object|array, or drop/redact/hash paths"),
        ("{json: {clear: object, drop: [a]}}", "either clear"),
        ("{json: {drop: [a], redact: [a]}}", "listed twice: a"),
        ("{json: {drop: ['a..b']}}", "String should match pattern"),
        ("{json: {clear: table}}", "'object' or 'array'"),
    ],
)
def test_bad_json_strategies_are_located(strategy, message):
    text = POLICY.replace(
        "{json: {drop: [phone, ip, contacts.phone], redact: [address.street], hash: [email]}}",
        strategy,
    )
    with pytest.raises(PolicyError) as e:
        load_text(text, "profiles.yaml")
    assert "profiles.yaml:15:" in str(e.value)
    assert message in str(e.value)
