"""Policies checked against a real DuckDB schema: every problem located in the policy file, all
reported at once, and nothing in the store touched while checking (the file's bytes stay the same).
"""

import dataclasses
import hashlib
import re
import textwrap
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from retention_jobs.errors import PolicyError, Problem
from retention_jobs.load import load_policies
from retention_jobs.resolve import BoundRule, resolve
from retention_jobs.store.duckdb_store import DuckDBStore

FILE = "policies/shop.yaml"

SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.customers (
    customer_id BIGINT PRIMARY KEY, email VARCHAR UNIQUE, full_name VARCHAR, phone VARCHAR(8),
    born DATE, ended_at TIMESTAMP, status VARCHAR NOT NULL, score INTEGER);
CREATE TABLE shop.orders (
    order_id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES shop.customers(customer_id),
    placed_at DATE, note VARCHAR NOT NULL);
CREATE TABLE shop.order_lines (
    line_id BIGINT PRIMARY KEY, order_id BIGINT NOT NULL REFERENCES shop.orders(order_id), sku VARCHAR);
CREATE TABLE shop.leads (lead_id BIGINT PRIMARY KEY, email VARCHAR UNIQUE, created_at DATE);
INSERT INTO shop.customers VALUES (1, 'kari@example.no', 'Kari Nordmann', '12345678', DATE '1980-02-29',
                                   TIMESTAMP '2018-06-30 23:30:00', 'ended', 37);
INSERT INTO shop.orders VALUES (10, 1, DATE '2018-05-01', 'first order');
INSERT INTO shop.order_lines VALUES (100, 10, 'SKU-1');
INSERT INTO shop.leads VALUES (5, 'ola@example.no', DATE '2020-01-01');
"""


@dataclasses.dataclass(frozen=True)
class Warehouse:
    path: Path
    fk: dict[str, str]
    """Foreign key constraint names as DuckDB reports them, by referencing table."""


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    # named like its schema on purpose: `shop.customers` must still mean the table
    path = tmp_path_factory.mktemp("store") / "shop.duckdb"
    con = duckdb.connect(":memory:")
    con.execute("ATTACH ? AS w", [str(path)])
    con.execute("USE w")
    con.execute(SCHEMA)
    fk = dict(
        con.execute(
            "SELECT schema_name || '.' || table_name, constraint_name FROM duckdb_constraints() "
            "WHERE database_name = 'w' AND constraint_type = 'FOREIGN KEY'"
        ).fetchall()
    )
    con.execute("USE memory")
    con.execute("DETACH w")
    con.close()
    return Warehouse(path, fk)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


HEAD = """\
purpose: shop
title: Shop customers
legal_basis: contract
owner: data-team
rules:
"""

# Lines 7-11 of the rule (the rule's `- name:` is line 6).
BODY = """\
table: shop.customers
key: customer_id
clock: ended_at
keep_for: P5Y
action: retain
"""


def doc(body: str = BODY, head: str = HEAD) -> str:
    return head + "  - name: r\n" + textwrap.indent(textwrap.dedent(body), "    ")


def anonymise(columns: str, body: str = BODY) -> str:
    """`columns:` on line 12; its entries from line 13, column 7."""
    return doc(
        body.replace("action: retain", "action: anonymise")
        + "columns:\n"
        + textwrap.indent(textwrap.dedent(columns), "  ")
    )


LEADS = (
    BODY.replace("shop.customers", "shop.leads")
    .replace("customer_id", "lead_id")
    .replace("ended_at", "created_at")
)
ORDERS = (
    BODY.replace("shop.customers", "shop.orders")
    .replace("customer_id", "order_id")
    .replace("ended_at", "placed_at")
)


def check(
    tmp_path: Path,
    monkeypatch,
    wh: Warehouse,
    files: dict[str, str],
    store_kind: str = "duckdb",
    adjust=None,
) -> list[BoundRule]:
    """Load and resolve the files against the warehouse; assert its bytes are unchanged."""
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        p = tmp_path / "policies" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    before = sha256(wh.path)
    try:
        policies = load_policies(["policies"])
        store = DuckDBStore(wh.path)
        session = store.session(read_only=True)
        try:
            catalog = store.catalog(session)
        finally:
            session.close()
        if adjust:
            catalog = adjust(catalog)
        return resolve(policies, catalog, store_kind)
    finally:
        assert sha256(wh.path) == before, "checking policies changed the store"
        assert not wh.path.with_name(wh.path.name + ".wal").exists()


def problems_of(tmp_path, monkeypatch, wh, files, **kw) -> list[Problem]:
    with pytest.raises(PolicyError) as exc:
        check(tmp_path, monkeypatch, wh, files, **kw)
    return exc.value.problems


def assert_problems(
    problems: list[Problem], expected: list[tuple[str, str, str]], file: str = FILE
) -> None:
    shown = "\n".join(str(p) for p in problems)
    assert len(problems) == len(expected), f"expected {len(expected)} problem(s), got:\n{shown}"
    remaining = list(problems)
    for where, fld, fragment in expected:
        prefix = f"{file}:{where}: {fld}: "
        hit = next((p for p in remaining if str(p).startswith(prefix) and fragment in str(p)), None)
        assert hit is not None, f"no problem {prefix}...{fragment}... in:\n{shown}"
        remaining.remove(hit)


CASES = [
    # --- tables and columns --------------------------------------------------------------
    pytest.param(
        doc(BODY.replace("shop.customers", "shop.customer")),
        [
            (
                "7:5",
                "rules[0].table",
                "table 'shop.customer' is not in the store; did you mean 'shop.customers'?",
            )
        ],
        id="unknown-table",
    ),
    pytest.param(
        doc(BODY.replace("shop.customers", "billing.invoices")),
        [
            (
                "7:5",
                "rules[0].table",
                "table 'billing.invoices' is not in the store; check schema.table",
            )
        ],
        id="unknown-table-no-suggestion",
    ),
    pytest.param(
        doc(BODY.replace("clock: ended_at", "clock: endedat")),
        [
            (
                "9:5",
                "rules[0].clock",
                "column 'endedat' is not in shop.customers; did you mean 'ended_at'?",
            )
        ],
        id="unknown-clock-column",
    ),
    pytest.param(
        doc(BODY.replace("key: customer_id", "key: [customer_id, id]")),
        [
            (
                "8:5",
                "rules[0].key",
                "column 'id' is not in shop.customers; columns: customer_id, email",
            )
        ],
        id="unknown-key-column",
    ),
    pytest.param(
        doc(BODY + "subject: {kind: customer, column: customerid}\n"),
        [
            (
                "12:31",
                "rules[0].subject.column",
                "column 'customerid' is not in shop.customers; did you mean 'customer_id'?",
            )
        ],
        id="unknown-subject-column",
    ),
    pytest.param(
        doc(BODY + "where:\n  stauts: closed\n"),
        [
            (
                "12:5",
                "rules[0].where",
                "column 'stauts' is not in shop.customers; did you mean 'status'?",
            )
        ],
        id="unknown-where-column",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: delete")
            + "suppress: [mail]\n"
            + "cascade:\n  - {table: shop.orders, on: customer_id, action: delete, "
            + "cascade: [{table: shop.order_lines, on: order_id, action: delete}]}\n"
        ),
        [
            (
                "12:5",
                "rules[0].suppress",
                "column 'mail' is not in shop.customers; did you mean 'email'?",
            )
        ],
        id="unknown-suppress-column",
    ),
    # --- clocks --------------------------------------------------------------------------
    pytest.param(
        doc(BODY.replace("clock: ended_at", "clock: status")),
        [
            (
                "9:5",
                "rules[0].clock",
                "clock column 'status' is VARCHAR, not a date or timestamp; "
                "a clock must be a DATE, TIMESTAMP or TIMESTAMPTZ column",
            )
        ],
        id="clock-not-a-date",
    ),
    pytest.param(
        doc(
            BODY.replace(
                "clock: ended_at", "clock: {table: shop.orders, on: customer_id, column: placed}"
            )
        ),
        [
            (
                "9:50",
                "rules[0].clock.column",
                "column 'placed' is not in shop.orders; did you mean 'placed_at'?",
            )
        ],
        id="related-clock-unknown-column",
    ),
    pytest.param(
        doc(
            BODY.replace(
                "clock: ended_at", "clock: {table: shop.orders, on: customer_id, column: note}"
            )
        ),
        [("9:5", "rules[0].clock", "clock column 'note' is VARCHAR, not a date or timestamp")],
        id="related-clock-not-a-date",
    ),
    pytest.param(
        doc(
            BODY.replace(
                "clock: ended_at", "clock: {table: shop.order, on: customer_id, column: placed_at}"
            )
        ),
        [
            (
                "9:13",
                "rules[0].clock.table",
                "table 'shop.order' is not in the store; did you mean 'shop.orders'?",
            )
        ],
        id="related-clock-unknown-table",
    ),
    # --- where ---------------------------------------------------------------------------
    pytest.param(
        doc(BODY + "where:\n  score: {gt: high}\n"),
        [
            (
                "13:15",
                "rules[0].where.score.gt",
                "value str 'high' does not fit the column's type INTEGER; "
                "quote strings, leave numbers bare",
            )
        ],
        id="where-string-for-integer",
    ),
    pytest.param(
        doc(BODY + "where:\n  status: [ended, 3]\n"),
        [
            (
                "13:23",
                "rules[0].where.status[1]",
                "value int 3 does not fit the column's type VARCHAR",
            )
        ],
        id="where-integer-for-string",
    ),
    pytest.param(
        doc(BODY + "where:\n  born: {lt: 1990}\n"),
        [("13:14", "rules[0].where.born.lt", "value int 1990 does not fit the column's type DATE")],
        id="where-integer-for-date",
    ),
    # --- related filters -----------------------------------------------------------------
    pytest.param(
        doc(
            BODY
            + "related:\n  - table: shop.payments\n    on: customer_id\n    none: {status: open}\n"
        ),
        [("13:9", "rules[0].related[0].table", "table 'shop.payments' is not in the store")],
        id="related-filter-table-missing",
    ),
    pytest.param(
        doc(
            BODY
            + "related:\n  - table: shop.order_lines\n    on: customer_id\n    none: {sku: X}\n"
        ),
        [("14:9", "rules[0].related[0].on", "column 'customer_id' is not in shop.order_lines")],
        id="related-filter-on-missing",
    ),
    pytest.param(
        doc(
            BODY
            + "related:\n  - table: shop.orders\n    on: customer_id\n    all: {placed_at: {lt: 2020}}\n"
        ),
        [
            (
                "15:27",
                "rules[0].related[0].all.placed_at.lt",
                "value int 2020 does not fit the column's type DATE",
            )
        ],
        id="related-filter-value-type",
    ),
    # --- strategies ----------------------------------------------------------------------
    pytest.param(
        anonymise("full_name: redact\nstatus: redact\n"),
        [
            (
                "14:7",
                "rules[0].columns.status",
                "redact writes NULL, but status is NOT NULL; use hash, fake",
            )
        ],
        id="redact-not-null",
    ),
    pytest.param(
        anonymise("score: hash\n"),
        [("13:7", "rules[0].columns.score", "hash writes text, but score is INTEGER")],
        id="hash-integer",
    ),
    pytest.param(
        anonymise("born: {fake: date}\n"),
        [("13:7", "rules[0].columns.born", "fake date writes text, but born is DATE")],
        id="fake-into-date",
    ),
    pytest.param(
        anonymise("email: {mask: {keep_last: 4}}\n", LEADS),
        [
            (
                "13:7",
                "rules[0].columns.email",
                "masked values of the unique column email would collide; use hash or fake",
            )
        ],
        id="mask-unique",
    ),
    pytest.param(
        anonymise("email: {constant: gone@example.com}\n", LEADS),
        [("13:7", "rules[0].columns.email", "a constant cannot go into the unique column email")],
        id="constant-unique",
    ),
    pytest.param(
        anonymise("full_name: {generalise: year}\n"),
        [
            (
                "13:7",
                "rules[0].columns.full_name",
                "generalise to year needs a date or timestamp, but full_name is VARCHAR",
            )
        ],
        id="generalise-year-on-string",
    ),
    pytest.param(
        anonymise("born: {generalise: {band: 10}}\n"),
        [("13:7", "rules[0].columns.born", "generalise band needs a number, but born is DATE")],
        id="band-on-date",
    ),
    pytest.param(
        anonymise("full_name: {fake: nmae}\n"),
        # refused by the loader already (no store needed), at the provider
        [("13:19", "rules[0].columns.full_name.fake", "Faker has no provider 'nmae'; did you")],
        id="fake-unknown-provider",
    ),
    pytest.param(
        anonymise("full_name: {fake: {provider: name, locale: xx_XX}}\n"),
        [("13:7", "rules[0].columns.full_name", "fake: locale: 'xx_XX' is not a locale")],
        id="fake-unknown-locale",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: anonymise")
            + "columns: {full_name: {fake: name}}\n",
            HEAD.replace("rules:", "locale: zz_ZZ\nrules:"),
        ),
        [("5:1", "locale", "'zz_ZZ' is not a locale such as nb_NO that Faker knows")],
        id="fake-unknown-policy-locale",
    ),
    pytest.param(
        anonymise("score: {constant: none}\n"),
        [("13:7", "rules[0].columns.score", "constant str does not fit score (INTEGER)")],
        id="constant-wrong-type",
    ),
    pytest.param(
        anonymise("status: {constant: null}\n"),
        [("13:7", "rules[0].columns.status", "constant null into the NOT NULL column status")],
        id="constant-null-not-null",
    ),
    pytest.param(
        anonymise("nickname: redact\n"),
        [("13:7", "rules[0].columns.nickname", "column 'nickname' is not in shop.customers")],
        id="anonymise-unknown-column",
    ),
    pytest.param(
        anonymise("email: hash\n"),
        [
            (
                "13:7",
                "rules[0].columns.email",
                "DuckDB cannot update the column shop.customers.email: it is covered by "
                "customers_email_key, and rows of shop.customers are referenced by foreign "
                "keys of shop.orders",
            )
        ],
        id="duckdb-unique-column-of-referenced-table",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: delete")
            + "cascade:\n  - {table: shop.orders, on: customer_id, action: unlink}\n"
        ),
        [
            (
                "13:47",
                "rules[0].cascade[0].action",
                "DuckDB cannot update the column shop.orders.customer_id: it is covered by "
                "orders_customer_id_customer_id_fkey, and rows of shop.orders are referenced by "
                "foreign keys of shop.order_lines",
            )
        ],
        id="duckdb-unlink-of-a-referenced-row",
    ),
    # --- deletes and cascades ------------------------------------------------------------
    pytest.param(
        doc(BODY.replace("action: retain", "action: delete")),
        [
            (
                "6:5",
                "rules[0].cascade",
                "deleting from shop.customers would violate foreign key "
                "'{fk_orders}' of shop.orders(customer_id); add a cascade: "
                "{{table: shop.orders, on: customer_id, action: delete | unlink}}",
            )
        ],
        id="delete-referenced-without-cascade",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: delete")
            + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: delete\n"
        ),
        [
            (
                "13:9",
                "rules[0].cascade[0].cascade",
                "deleting from shop.orders would violate foreign key "
                "'{fk_order_lines}' of shop.order_lines(order_id)",
            )
        ],
        id="cascade-delete-without-grandchild",
    ),
    pytest.param(
        doc(
            ORDERS.replace("action: retain", "action: delete")
            + "cascade:\n  - table: shop.order_lines\n    on: order_id\n    action: unlink\n"
        ),
        [
            (
                "15:9",
                "rules[0].cascade[0].action",
                "unlink sets shop.order_lines.order_id to NULL, but the "
                "column is NOT NULL; use action delete",
            )
        ],
        id="unlink-not-null-fk",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: delete")
            + "cascade:\n  - {table: shop.order, on: customer_id, action: delete}\n"
        ),
        [
            ("12:5", "rules[0].cascade", "would violate foreign key"),
            (
                "13:10",
                "rules[0].cascade[0].table",
                "table 'shop.order' is not in the store; did you mean 'shop.orders'?",
            ),
        ],
        id="cascade-unknown-table",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: delete")
            + "cascade:\n  - {table: shop.orders, on: cust_id, action: unlink}\n"
        ),
        [
            ("12:5", "rules[0].cascade", "would violate foreign key"),
            (
                "13:30",
                "rules[0].cascade[0].on",
                "column 'cust_id' is not in shop.orders; did you mean 'customer_id'?",
            ),
        ],
        id="cascade-unknown-on-column",
    ),
    pytest.param(
        doc(
            BODY.replace("key: customer_id", "key: [customer_id, email]").replace(
                "action: retain", "action: delete"
            )
            + "cascade:\n  - {table: shop.orders, on: customer_id, action: unlink}\n"
        ),
        [
            (
                "13:9",
                "rules[0].cascade[0].references",
                "the parent's key has several columns; name the one `on` refers to",
            ),
            ("12:5", "rules[0].cascade", "would violate foreign key"),
        ],
        id="cascade-composite-parent-key",
    ),
    pytest.param(
        doc(
            BODY.replace("action: retain", "action: anonymise")
            + "columns: {full_name: redact}\n"
            + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: anonymise\n"
            + "    columns: {note: redact}\n"
        ),
        [("17:19", "rules[0].cascade[0].columns.note", "redact writes NULL, but note is NOT NULL")],
        id="cascade-anonymise-strategy",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_resolve_problem(tmp_path, monkeypatch, warehouse, text, expected):
    problems = problems_of(tmp_path, monkeypatch, warehouse, {"shop.yaml": text})
    # constraint names are read from duckdb_constraints(), not written into the cases
    names = {"fk_" + table.split(".")[1]: name for table, name in warehouse.fk.items()}
    expected = [(w, f, frag.format(**names) if "{fk_" in frag else frag) for w, f, frag in expected]
    assert_problems(problems, expected)


def test_fk_names_are_the_ones_duckdb_reports(warehouse):
    assert set(warehouse.fk) == {"shop.orders", "shop.order_lines"}
    assert all(name for name in warehouse.fk.values())


def test_no_far_fetched_table_suggestion(tmp_path, monkeypatch, warehouse):
    text = doc(
        BODY + "related:\n  - table: shop.payments\n    on: customer_id\n    none: {status: open}\n"
    )
    (problem,) = problems_of(tmp_path, monkeypatch, warehouse, {"shop.yaml": text})
    assert "did you mean" not in problem.hint, problem


def test_hash_into_short_varchar(tmp_path, monkeypatch, warehouse):
    """DuckDB accepts VARCHAR(8) but keeps no length (and enforces none), so on DuckDB a hash fits;
    a store that reports the length (PostgreSQL) must reject a hash that cannot fit."""
    text = anonymise("phone: hash\n")
    check(tmp_path, monkeypatch, warehouse, {"shop.yaml": text})

    def with_length(catalog):
        t = catalog.tables["shop.customers"]
        cols = {**t.columns, "phone": dataclasses.replace(t.columns["phone"], max_length=8)}
        return dataclasses.replace(
            catalog, tables={**catalog.tables, t.name: dataclasses.replace(t, columns=cols)}
        )

    problems = problems_of(
        tmp_path,
        monkeypatch,
        warehouse,
        {"shop.yaml": text},
        store_kind="postgresql",
        adjust=with_length,
    )
    assert_problems(
        problems,
        [
            (
                "13:7",
                "rules[0].columns.phone",
                "hash needs at least 16 characters, but phone holds 8; use mask or redact",
            )
        ],
    )


def test_unique_column_of_referenced_table_is_fine_outside_duckdb(tmp_path, monkeypatch, warehouse):
    bound = check(
        tmp_path,
        monkeypatch,
        warehouse,
        {"shop.yaml": anonymise("email: hash\n")},
        store_kind="postgresql",
    )
    assert [b.id for b in bound] == ["shop/r"]


# --- all problems at once ------------------------------------------------------------------


def test_every_resolver_problem_of_a_file_at_once(tmp_path, monkeypatch, warehouse):
    text = doc(
        BODY.replace("clock: ended_at", "clock: status").replace(
            "action: retain", "action: anonymise"
        )
        + "where:\n  score: {gt: high}\ncolumns:\n  email: {mask: {keep_last: 2}}\n  born: hash\n"
    )
    text += "  - name: leads\n" + textwrap.indent(LEADS.replace("shop.leads", "shop.lead"), "    ")
    problems = problems_of(tmp_path, monkeypatch, warehouse, {"shop.yaml": text})
    assert [f"{p.line}:{p.col} {p.field}" for p in problems] == [
        "9:5 rules[0].clock",
        "13:15 rules[0].where.score.gt",
        "15:7 rules[0].columns.email",
        "16:7 rules[0].columns.born",
        "18:5 rules[1].table",
    ]


def test_resolver_problems_across_files(tmp_path, monkeypatch, warehouse):
    problems = problems_of(
        tmp_path,
        monkeypatch,
        warehouse,
        {
            "leads.yaml": doc(
                LEADS.replace("created_at", "created"), HEAD.replace("shop", "leads", 1)
            ),
            "shop.yaml": doc(BODY.replace("action: retain", "action: delete")),
        },
    )
    assert [str(p)[: str(p).index(": ", str(p).index(": ") + 1)] for p in problems] == [
        "policies/leads.yaml:9:5: rules[0].clock",
        "policies/shop.yaml:6:5: rules[0].cascade",
    ]


# --- what resolves -----------------------------------------------------------------------


def test_a_complete_policy_resolves(tmp_path, monkeypatch, warehouse):
    text = HEAD + textwrap.dedent("""\
          - name: ended-customers
            table: shop.customers
            key: customer_id
            subject: {kind: customer, column: customer_id}
            clock: ended_at
            round_clock_to: year_end
            keep_for: P5Y
            where:
              status: [ended, closed]
              score: {ge: 0}
            related:
              - table: shop.orders
                on: customer_id
                all: {placed_at: {lt: 2024-01-01}}
            action: delete
            suppress: [email]
            cascade:
              - table: shop.orders
                on: customer_id
                action: delete
                cascade:
                  - {table: shop.order_lines, on: order_id, action: delete}
          - name: old-orders
            table: shop.orders
            key: order_id
            clock: placed_at
            keep_for: P1Y
            action: anonymise
            columns:
              note: {constant: removed}
          - name: last-order
            table: shop.customers
            key: customer_id
            clock: {table: shop.orders, on: customer_id, column: placed_at, aggregate: max}
            keep_for: P3Y
            action: anonymise
            columns:
              full_name: {fake: name}
              phone: {mask: {keep_last: 2}}
              born: {generalise: year}
              score: {generalise: {band: 10}}
          - name: leads
            table: shop.leads
            key: lead_id
            subject: {kind: lead, column: lead_id}
            clock: created_at
            keep_for: P6M
            action: delete
        """)
    bound = check(tmp_path, monkeypatch, warehouse, {"shop.yaml": text})
    assert [(b.id, b.clock_type) for b in bound] == [
        ("shop/ended-customers", "timestamp"),
        ("shop/old-orders", "date"),
        ("shop/last-order", "date"),
        ("shop/leads", "date"),
    ]
    # rules without `subject:` reach the customer over the store's foreign keys
    assert [[p.describe(b.table.name) for p in b.inferred] for b in bound] == [
        [],
        ["customer via shop.orders.customer_id"],
        ["customer via shop.customers.customer_id"],
        [],
    ]
    first = bound[0]
    # grandchildren before children: the order in which deletes keep every foreign key intact
    assert [link.table.name for link in first.links()] == ["shop.order_lines", "shop.orders"]
    assert [(link.on, link.references, link.key) for link in first.links()] == [
        ("order_id", "order_id", ("line_id",)),
        ("customer_id", "customer_id", ("order_id",)),
    ]


def test_delete_covered_by_redacting_the_foreign_key(tmp_path, monkeypatch, warehouse):
    text = doc(
        BODY.replace("action: retain", "action: delete")
        + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: anonymise\n"
        + "    columns: {customer_id: redact}\n"
    )
    (b,) = check(tmp_path, monkeypatch, warehouse, {"shop.yaml": text}, store_kind="postgresql")
    assert b.cascades[0].spec.action == "anonymise"
    # DuckDB cannot update the key column of orders that order lines reference
    [problem] = problems_of(tmp_path, monkeypatch, warehouse, {"shop.yaml": text})
    assert "DuckDB cannot update the column shop.orders.customer_id" in str(problem)


def test_load_and_resolve_leave_the_store_untouched(tmp_path, monkeypatch, warehouse):
    before = sha256(warehouse.path)
    problems_of(
        tmp_path,
        monkeypatch,
        warehouse,
        {"shop.yaml": doc(BODY.replace("action: retain", "action: delete"))},
    )
    with DuckDBStore(warehouse.path).connect(read_only=True) as session:
        assert session.fetchall(
            sa.select(sa.func.count()).select_from(sa.table("customers", schema="shop"))
        ) == [(1,)]
    assert sha256(warehouse.path) == before


# --- docs/policies.md stays true -----------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "policies.md"


def docs_block(lang: str, starts: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, re.S)
    return next(b for b in blocks if b.startswith(starts))


@pytest.fixture(scope="module")
def docs_store(tmp_path_factory) -> Warehouse:
    path = tmp_path_factory.mktemp("docs") / "billing.duckdb"
    con = duckdb.connect(":memory:")
    con.execute("ATTACH ? AS w", [str(path)])
    con.execute("USE w")
    con.execute(docs_block("sql", "CREATE SCHEMA billing"))
    con.execute("USE memory")
    con.execute("DETACH w")
    con.close()
    return Warehouse(path, {})


def test_the_documented_example_resolves(tmp_path, monkeypatch, docs_store):
    bound = check(
        tmp_path,
        monkeypatch,
        docs_store,
        {"customers.yaml": docs_block("yaml", "purpose: customers")},
    )
    assert [b.id for b in bound] == [
        "customers/invoices-bookkeeping",
        "customers/ended-customers",
        "customers/dormant-customers",
        "customers/old-tickets",
    ]


def test_the_documented_error_messages_are_the_real_ones(tmp_path, monkeypatch, docs_store):
    example = docs_block("yaml", "purpose: customers")
    shown = [
        line
        for line in DOCS.read_text(encoding="utf-8").splitlines()
        if line.startswith("policies/customers.yaml:")
    ]
    load_errors = problems_of(
        tmp_path,
        monkeypatch,
        docs_store,
        {
            "customers.yaml": example.replace("keep_for: P3M", "keep_for: P3 months").replace(
                "      country: [NO, SE]", "      country: [NO, SE]\n      status: closed"
            )
        },
    )
    resolve_errors = problems_of(
        tmp_path,
        monkeypatch,
        docs_store,
        {
            "customers.yaml": example.replace(
                "clock: invoice_date  ", "clock: invoice_dat   "
            ).replace("phone: {mask", "phone_no: {mask")
        },
    )
    assert shown == [str(p) for p in load_errors + resolve_errors]
