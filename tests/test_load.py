"""Malformed policy files: every problem located as file:line:col with its field path.

Each case is a small policy file and the complete list of problems it must produce, as
(line:col, field path, message fragment). A case listing several problems also checks that
they are all reported at once.
"""

import re
import textwrap
from pathlib import Path

import pytest

from retention_jobs.errors import PolicyError, Problem
from retention_jobs.load import load_policies, load_text
from retention_jobs.policy import Cascade, Fake, Generalise, Hash, Mask, Redact

FILE = "policies/shop.yaml"

# Lines 1-5 of every rule-level case; the rule's `- name:` is line 6, its body starts on line 7.
HEAD = """\
purpose: shop
title: Shop customers
legal_basis: contract
owner: data-team
rules:
"""

# A valid rule body (lines 7-11). Cases append to it from line 12 on, or replace a line.
BODY = """\
table: shop.customers
key: customer_id
clock: ended_at
keep_for: P5Y
action: delete
"""


def doc(body: str = BODY, name: str = "old") -> str:
    """HEAD, then one rule named `name` on line 6 whose body (dedented) starts on line 7."""
    return HEAD + f"  - name: {name}\n" + textwrap.indent(textwrap.dedent(body), "    ")


def anonymise(columns: str) -> str:
    """BODY with action anonymise and `columns:` on line 12; column entries from line 13, col 7."""
    return doc(
        BODY.replace("action: delete", "action: anonymise")
        + "columns:\n"
        + textwrap.indent(textwrap.dedent(columns), "  ")
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / "policies" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def problems_of(tmp_path: Path, monkeypatch, files: dict[str, str]) -> list[Problem]:
    """Write the files under tmp_path/policies and load them the way the CLI does."""
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(PolicyError) as exc:
        load_policies(["policies"])
    assert str(exc.value) == "\n".join(str(p) for p in exc.value.problems)
    return exc.value.problems


def assert_problems(
    problems: list[Problem], expected: list[tuple[str, str, str]], file: str = FILE
) -> None:
    """Exactly the expected problems, each at line:col with its field path and message fragment."""
    shown = "\n".join(str(p) for p in problems)
    assert len(problems) == len(expected), f"expected {len(expected)} problem(s), got:\n{shown}"
    remaining = list(problems)
    for where, fld, fragment in expected:
        prefix = f"{file}:{where}: {fld}: " if fld else f"{file}:{where}: "
        hit = next(
            (
                p
                for p in remaining
                if str(p).startswith(prefix) and fragment in str(p) and p.field == fld
            ),
            None,
        )
        assert hit is not None, f"no problem {prefix}...{fragment}... in:\n{shown}"
        remaining.remove(hit)


CASES = [
    # --- not a policy document at all ------------------------------------------------------
    pytest.param(
        "purpose: [shop\ntitle: Shop\n",
        [("2:6", "", "not valid YAML: expected ',' or ']'")],
        id="not-yaml-unclosed-flow-sequence",
    ),
    pytest.param(
        "purpose: shop\n title: Shop\nlegal_basis: contract\n",
        [("2:7", "", "not valid YAML: mapping values are not allowed here")],
        id="bad-indentation-top-level",
    ),
    pytest.param(
        doc(BODY.replace("key: customer_id", " key: customer_id")),
        [("8:9", "", "not valid YAML: mapping values are not allowed here")],
        id="bad-indentation-in-rule",
    ),
    pytest.param(
        "purpose: shop\n\ttitle: Shop\n",
        [("2:1", "", "found character '\\t'")],
        id="tab-indentation",
    ),
    pytest.param(
        doc(BODY.replace("keep_for: P5Y", "keep_for: *five_years")),
        [("10:15", "", "alias *five_years is not allowed in policy files; write the value out")],
        id="undefined-alias",
    ),
    pytest.param("", [("1:1", "", "the file is empty")], id="empty-file"),
    pytest.param(
        "# retention for the shop\n\n", [("1:1", "", "the file is empty")], id="comments-only"
    ),
    pytest.param(
        "- purpose: shop\n  title: Shop\n",
        [("1:1", "", "a policy file is a mapping")],
        id="top-level-list",
    ),
    pytest.param("shop\n", [("1:1", "", "a policy file is a mapping")], id="top-level-scalar"),
    # --- top-level fields ------------------------------------------------------------------
    pytest.param(
        doc().replace("legal_basis", "legal_bassis"),
        [
            ("1:1", "legal_basis", "Field required; add it"),
            ("3:1", "legal_bassis", "Extra inputs are not permitted"),
        ],
        id="unknown-top-level-field-typo",
    ),
    pytest.param(
        "purpose: shop\nrules:\n  - name: old\n    table: shop.customers\n",
        [
            ("1:1", "title", "Field required"),
            ("1:1", "legal_basis", "Field required"),
            ("1:1", "owner", "Field required"),
            ("3:5", "rules[0].key", "Field required"),
            ("3:5", "rules[0].clock", "Field required"),
            ("3:5", "rules[0].keep_for", "Field required"),
            ("3:5", "rules[0].action", "Field required"),
        ],
        id="missing-required-fields",
    ),
    pytest.param(
        doc().replace("legal_basis: contract", "legal_basis: contractual"),
        [("3:1", "legal_basis", "Input should be 'consent', 'contract', 'legal_obligation'")],
        id="bad-legal-basis",
    ),
    pytest.param(
        doc().replace("purpose: shop", "purpose: Shop Customers"),
        [("1:1", "purpose", "String should match pattern")],
        id="purpose-not-a-slug",
    ),
    pytest.param(
        doc().replace("title: Shop customers", "title: ''"),
        [("2:1", "title", "String should have at least 1 character")],
        id="empty-title",
    ),
    pytest.param(
        doc() + "timezone: Europe/Olso\n",
        [("12:1", "timezone", "unknown time zone 'Europe/Olso'; use an IANA name")],
        id="bad-timezone",
    ),
    pytest.param(
        doc() + "locale: norwegian\n",
        [("12:1", "locale", "'norwegian' is not a locale such as nb_NO")],
        id="bad-locale",
    ),
    pytest.param(
        HEAD.replace("rules:", "rules: []"),
        [("5:1", "rules", "List should have at least 1 item")],
        id="no-rules",
    ),
    pytest.param(
        HEAD + "  name: old\n",
        [("5:1", "rules", "Input should be a valid list")],
        id="rules-not-a-list",
    ),
    # --- duplicates ------------------------------------------------------------------------
    pytest.param(
        doc(BODY + "clock: born\n"),
        [
            (
                "12:5",
                "rules[0].clock",
                "duplicate key 'clock'; YAML would silently keep only the last one",
            )
        ],
        id="duplicate-key-in-rule",
    ),
    pytest.param(
        doc(BODY + "where: {status: closed, status: ended}\n"),
        [("12:29", "rules[0].where.status", "duplicate key 'status'")],
        id="duplicate-key-in-flow-mapping",
    ),
    pytest.param(
        doc() + "  - name: old\n" + textwrap.indent(BODY, "    "),
        [("12:5", "rules[1].name", "two rules are named 'old'")],
        id="duplicate-rule-names",
    ),
    # --- rule fields -----------------------------------------------------------------------
    pytest.param(
        doc(BODY.replace("table: shop.customers", "table: customers")),
        [("7:5", "rules[0].table", "String should match pattern")],
        id="table-without-schema",
    ),
    pytest.param(
        doc(name="Old Rule"),
        [("6:5", "rules[0].name", "String should match pattern")],
        id="rule-name-not-a-slug",
    ),
    *[
        pytest.param(
            doc(BODY.replace("P5Y", bad)),
            [("10:5", "rules[0].keep_for", f"{bad!r} is not an ISO-8601 period of whole days")],
            id=f"bad-keep_for-{bad}",
        )
        for bad in ("P5Q", "PT12H", "5Y", "P", "P1.5Y", "P-1D", "P1D1M")
    ],
    pytest.param(
        doc(BODY.replace("P5Y", "5")),
        [("10:5", "rules[0].keep_for", "Input should be a valid string")],
        id="keep_for-a-number",
    ),
    pytest.param(
        doc(BODY + "round_clock_to: fiscal_year\n"),
        [("12:5", "rules[0].round_clock_to", "Input should be 'year_end' or 'month_end'")],
        id="bad-round_clock_to",
    ),
    pytest.param(
        doc(BODY.replace("action: delete", "action: erase")),
        [("11:5", "rules[0].action", "Input should be 'delete', 'anonymise' or 'retain'")],
        id="bad-action",
    ),
    pytest.param(
        doc(BODY.replace("action: delete", "action: anonymise")),
        [("6:5", "rules[0]", "action anonymise needs `columns`")],
        id="anonymise-without-columns",
    ),
    pytest.param(
        doc(BODY + "columns:\n  email: hash\n"),
        [("6:5", "rules[0]", "`columns` is only for action anonymise, not delete")],
        id="columns-with-delete",
    ),
    pytest.param(
        doc(BODY.replace("key: customer_id", "key: [customer_id, customer_id]")),
        [("6:5", "rules[0]", "key lists a column twice")],
        id="key-listed-twice",
    ),
    pytest.param(
        anonymise("full_name: redact\ncustomer_id: hash\n"),
        [("6:5", "rules[0]", "the key column 'customer_id' cannot be anonymised")],
        id="key-column-anonymised",
    ),
    pytest.param(
        doc(
            BODY.replace("action: delete", "action: retain")
            + "cascade:\n  - {table: shop.orders, on: customer_id, action: delete}\n"
        ),
        [("6:5", "rules[0]", "a retain rule changes nothing: it takes no cascade or suppress")],
        id="retain-with-cascade",
    ),
    pytest.param(
        doc(BODY.replace("action: delete", "action: retain") + "suppress: [email]\n"),
        [("6:5", "rules[0]", "a retain rule changes nothing")],
        id="retain-with-suppress",
    ),
    pytest.param(
        doc(BODY + "subject: {kind: Customer, col: customer_id}\n"),
        [
            ("12:5", "rules[0].subject.column", "Field required"),
            ("12:15", "rules[0].subject.kind", "String should match pattern"),
            ("12:31", "rules[0].subject.col", "Extra inputs are not permitted"),
        ],
        id="bad-subject",
    ),
    # --- strategies ------------------------------------------------------------------------
    pytest.param(
        anonymise("email: scramble\n"),
        [
            (
                "13:7",
                "rules[0].columns.email",
                "unknown strategy 'scramble'; use one of: redact, hash",
            )
        ],
        id="unknown-strategy",
    ),
    pytest.param(
        anonymise("email: {fake: email, hash: 16}\n"),
        [("13:7", "rules[0].columns.email", "a mapping with exactly one key")],
        id="strategy-with-two-keys",
    ),
    pytest.param(
        anonymise("born: {generalise: {to: year, band: 10}}\n"),
        [
            (
                "13:7",
                "rules[0].columns.born",
                "generalise takes either a date unit (year | month) or {band: N}",
            )
        ],
        id="generalise-both",
    ),
    pytest.param(
        anonymise("born: {generalise: {}}\n"),
        [("13:7", "rules[0].columns.born", "generalise takes either a date unit")],
        id="generalise-neither",
    ),
    pytest.param(
        anonymise("born: {generalise: week}\n"),
        [("13:7", "rules[0].columns.born", "Input should be 'year' or 'month'")],
        id="generalise-bad-unit",
    ),
    pytest.param(
        anonymise("phone: {mask: {keep_end: 2}}\n"),
        [("13:7", "rules[0].columns.phone", "keep_end: Extra inputs are not permitted")],
        id="mask-unknown-option",
    ),
    pytest.param(
        anonymise("phone: {mask: {char: '##'}}\n"),
        [("13:7", "rules[0].columns.phone", "String should have at most 1 character")],
        id="mask-char-too-long",
    ),
    pytest.param(
        anonymise("phone: {mask: 3}\n"),
        [("13:7", "rules[0].columns.phone", "mask takes a mapping of options, got int")],
        id="mask-not-a-mapping",
    ),
    pytest.param(
        anonymise("email: {hash: 8}\n"),
        [("13:7", "rules[0].columns.email", "greater than or equal to 16")],
        id="hash-too-short",
    ),
    # --- where -----------------------------------------------------------------------------
    pytest.param(
        doc(BODY + "where:\n  status: {like: closed}\n"),
        [("12:5", "rules[0].where", "status: unknown operator 'like'; use one of: eq, ne")],
        id="where-unknown-operator",
    ),
    pytest.param(
        doc(BODY + "where:\n  status: {in: closed}\n"),
        [("12:5", "rules[0].where", "status: in takes a list of values")],
        id="where-in-with-scalar",
    ),
    pytest.param(
        doc(BODY + "where:\n  status: {not_in: closed}\n"),
        [("12:5", "rules[0].where", "status: not_in takes a list of values")],
        id="where-not_in-with-scalar",
    ),
    pytest.param(
        doc(BODY + "where:\n  ended_at: {is_null: yes}\n"),
        [("12:5", "rules[0].where", "ended_at: is_null takes true or false")],
        id="where-is_null-not-bool",
    ),
    pytest.param(
        doc(BODY + "where:\n  status: {}\n"),
        [("12:5", "rules[0].where", "status: an empty operator mapping")],
        id="where-empty-operator",
    ),
    pytest.param(
        doc(BODY + "where:\n  1st_status: closed\n"),
        [("12:5", "rules[0].where", "'1st_status' is not a column name")],
        id="where-bad-column-name",
    ),
    pytest.param(
        doc(BODY + "where:\n  - status: closed\n"),
        [("12:5", "rules[0].where", "a filter is a mapping column: value")],
        id="where-given-as-list",
    ),
    # --- related filters and clocks --------------------------------------------------------
    pytest.param(
        doc(
            BODY + "related:\n  - table: shop.orders\n    on: customer_id\n"
            "    all: {status: paid}\n    none: {status: open}\n"
        ),
        [("13:9", "rules[0].related[0]", "a related filter takes exactly one of: all, any, none")],
        id="related-two-quantifiers",
    ),
    pytest.param(
        doc(BODY + "related:\n  - table: shop.orders\n    on: customer_id\n"),
        [("13:9", "rules[0].related[0]", "exactly one of: all, any, none")],
        id="related-no-quantifier",
    ),
    pytest.param(
        doc(
            BODY
            + "related:\n  - table: shop.orders\n    on: customer_id\n    any: {status: {like: x}}\n"
        ),
        [("15:9", "rules[0].related[0].any", "status: unknown operator 'like'")],
        id="related-unknown-operator",
    ),
    pytest.param(
        doc(
            BODY.replace(
                "clock: ended_at",
                "clock:\n  table: shop.orders\n  on: customer_id\n"
                "  column: placed_at\n  aggregate: avg",
            )
        ),
        [("13:7", "rules[0].clock.aggregate", "Input should be 'max' or 'min'")],
        id="related-clock-bad-aggregate",
    ),
    pytest.param(
        doc(BODY.replace("clock: ended_at", "clock: {table: shop.orders, on: customer_id}")),
        [("9:5", "rules[0].clock.column", "Field required")],
        id="related-clock-without-column",
    ),
    # --- cascades --------------------------------------------------------------------------
    pytest.param(
        doc(
            BODY + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: anonymise\n"
        ),
        [("13:9", "rules[0].cascade[0]", "action anonymise needs `columns`")],
        id="cascade-anonymise-without-columns",
    ),
    pytest.param(
        doc(
            BODY + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: unlink\n"
            "    cascade:\n      - {table: shop.order_lines, on: order_id, action: delete}\n"
        ),
        [("13:9", "rules[0].cascade[0]", "nested cascades are only allowed under action delete")],
        id="unlink-with-nested-cascade",
    ),
    pytest.param(
        doc(
            BODY + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: delete\n"
            "    columns: {note: redact}\n"
        ),
        [("13:9", "rules[0].cascade[0]", "`columns` is only for action anonymise, not delete")],
        id="cascade-columns-with-delete",
    ),
    pytest.param(
        doc(BODY + "cascade:\n  - table: shop.orders\n    on: customer_id\n    action: nullify\n"),
        [
            (
                "15:9",
                "rules[0].cascade[0].action",
                "Input should be 'delete', 'anonymise' or 'unlink'",
            )
        ],
        id="cascade-bad-action",
    ),
    pytest.param(
        doc(
            BODY.replace("action: delete", "action: anonymise")
            + "columns: {full_name: redact}\ncascade:\n  - {table: shop.orders, on: customer_id, action: delete}\n"
        ),
        [("6:5", "rules[0]", "an anonymised parent keeps its children")],
        id="anonymise-with-cascade-delete",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_malformed_policy(tmp_path, monkeypatch, text, expected):
    assert_problems(problems_of(tmp_path, monkeypatch, {"shop.yaml": text}), expected)


def test_printed_format_is_file_line_col_field_message_hint(tmp_path, monkeypatch):
    problems = problems_of(tmp_path, monkeypatch, {"shop.yaml": doc(BODY + "clock: born\n")})
    assert [str(p) for p in problems] == [
        "policies/shop.yaml:12:5: rules[0].clock: duplicate key 'clock'; "
        "YAML would silently keep only the last one; remove one"
    ]


def test_typo_in_field_name_suggests_the_field(tmp_path, monkeypatch):
    problems = problems_of(
        tmp_path, monkeypatch, {"shop.yaml": doc().replace("legal_basis", "legal_bassis")}
    )
    extra = next(p for p in problems if p.field == "legal_bassis")
    assert extra.hint == "did you mean 'legal_basis'?"


# --- all problems at once ------------------------------------------------------------------


def test_every_problem_of_one_file_is_reported_at_once(tmp_path, monkeypatch):
    text = (
        HEAD.replace("legal_basis: contract", "legal_basis: because")  # 3:1
        + "  - name: old\n"
        + textwrap.indent(
            BODY.replace("P5Y", "P5Q").replace("action: delete", "action: purge")  # 10:5  # 11:5
            + "where:\n  status: {like: x}\n",
            "    ",
        )  # 12:5
        + "timezone: Mars/Olympus\n"
    )  # 14:1
    problems = problems_of(tmp_path, monkeypatch, {"shop.yaml": text})
    assert [(p.line, p.col, p.field) for p in problems] == [
        (3, 1, "legal_basis"),
        (10, 5, "rules[0].keep_for"),
        (11, 5, "rules[0].action"),
        (12, 5, "rules[0].where"),
        (14, 1, "timezone"),
    ]


def test_yaml_and_model_problems_of_a_file_come_together(tmp_path, monkeypatch):
    text = doc(BODY + "clock: born\n" + "where:\n  status: {in: closed}\n")
    problems = problems_of(tmp_path, monkeypatch, {"shop.yaml": text})
    assert_problems(
        problems,
        [
            ("12:5", "rules[0].clock", "duplicate key 'clock'"),
            ("13:5", "rules[0].where", "status: in takes a list of values"),
        ],
    )


def test_problems_across_files_are_reported_together(tmp_path, monkeypatch):
    problems = problems_of(
        tmp_path,
        monkeypatch,
        {
            "a_newsletter.yaml": doc()
            .replace("purpose: shop", "purpose: newsletter")
            .replace("P5Y", "5 years"),
            "b_shop.yaml": doc() + "locale: Norsk\n",
            "c_fine.yaml": doc().replace("purpose: shop", "purpose: fine"),
            "d_empty.yml": "",
        },
    )
    assert [str(p).split(": ")[0] + ": " + p.field for p in problems] == [
        "policies/a_newsletter.yaml:10:5: rules[0].keep_for",
        "policies/b_shop.yaml:12:1: locale",
        "policies/d_empty.yml:1:1: ",
    ]


def test_duplicate_purpose_across_two_files(tmp_path, monkeypatch):
    problems = problems_of(
        tmp_path,
        monkeypatch,
        {
            "customers.yaml": doc(),
            "shop.yaml": "# the same purpose again\n" + doc(),
        },
    )
    assert_problems(
        problems,
        [
            (
                "2:1",
                "purpose",
                "purpose 'shop' is also defined in policies/customers.yaml; one file per purpose",
            )
        ],
    )


def test_unreadable_file_is_a_problem_too(tmp_path, monkeypatch):
    problems = problems_of(tmp_path, monkeypatch, {"shop.yaml": doc(BODY.replace("P5Y", "P5Q"))})
    (tmp_path / "policies" / "z_latin1.yaml").write_bytes("title: bøker\n".encode("latin-1"))
    with pytest.raises(PolicyError) as exc:
        load_policies(["policies"])
    assert [str(p) for p in exc.value.problems][1] == (
        "policies/z_latin1.yaml:1:1: cannot read the file: UnicodeDecodeError; check the path"
    )
    assert len(exc.value.problems) == len(problems) + 1


def test_no_policy_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    with pytest.raises(
        PolicyError, match=r"^policies:1:1: no policy files found; put one YAML file"
    ):
        load_policies(["policies"])


# --- YAML 1.2 scalars: on / yes / no stay strings --------------------------------------------


def test_on_yes_no_stay_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "shop.yaml",
        doc(
            BODY
            + textwrap.dedent("""\
        where:
          country: NO
          newsletter: yes
          paused: off
          active: true
          closed: False
        cascade:
          - table: shop.orders
            on: customer_id
            action: delete
        """)
        ),
    )
    rule = load_policies(["policies"]).by_purpose("shop").policy.rules[0]
    assert [(c.column, c.op, c.value) for c in rule.where] == [
        ("country", "eq", "NO"),
        ("newsletter", "eq", "yes"),
        ("paused", "eq", "off"),
        ("active", "eq", True),
        ("closed", "eq", False),
    ]
    assert rule.cascade == [Cascade(table="shop.orders", on="customer_id", action="delete")]


def test_short_and_long_strategy_forms():
    text = anonymise("""\
        full_name: redact
        email: {fake: {provider: email, locale: sv_SE}}
        phone: {mask: {keep_last: 2, char: '#'}}
        born: {generalise: year}
        score: {generalise: {band: 10}}
        note: {hash: {length: 20}}
        city: {hash: 24}
        street: hash
        name2: {fake: name}
        """)
    cols = load_text(text, FILE).policy.rules[0].columns
    assert cols == {
        "full_name": Redact(),
        "email": Fake(provider="email", locale="sv_SE"),
        "phone": Mask(keep_last=2, char="#"),
        "born": Generalise(to="year"),
        "score": Generalise(band=10),
        "note": Hash(length=20),
        "city": Hash(length=24),
        "street": Hash(),
        "name2": Fake(provider="name"),
    }


def test_marks_point_into_the_file():
    f = load_text(doc(BODY + "where:\n  status: closed\n"), FILE)
    assert f.where(("rules", 0, "where", "status")) == (13, 7)
    assert f.where(("rules", 0, "keep_for")) == (10, 5)
    # an unmarked location falls back to its nearest marked parent
    assert f.where(("rules", 0, "cascade", 0)) == (6, 5)
    assert (
        str(f.problem(("rules", 0, "clock"), "bad", "fix it"))
        == f"{FILE}:9:5: rules[0].clock: bad; fix it"
    )


def test_the_documented_example_loads():
    docs = Path(__file__).resolve().parent.parent / "docs" / "policies.md"
    example = next(
        b
        for b in re.findall(r"```yaml\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
        if b.startswith("purpose: customers")
    )
    policy = load_text(example, "policies/customers.yaml").policy
    assert [(r.name, r.action) for r in policy.rules] == [
        ("invoices-bookkeeping", "retain"),
        ("ended-customers", "delete"),
        ("dormant-customers", "anonymise"),
        ("old-tickets", "anonymise"),
    ]
    ended = policy.rules[1]
    assert [(c.column, c.op, c.value) for c in ended.where] == [
        ("status", "eq", "ended"),
        ("country", "in", ["NO", "SE"]),
    ]
    assert [c.on for c in ended.cascade] == ["customer_id", "customer_id"]


# --- hostile YAML (G5): refused where it starts, in bounded time and memory ----------------

BOMB = "".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(
            f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)

TOP = HEAD.removesuffix("rules:\n")  # lines 1-4; cases put their own `rules:` on line 5

HOSTILE = [
    pytest.param(BOMB, "1:4", "anchor &a is not allowed", id="billion-laughs"),
    pytest.param(TOP + "rules: &r [*r]\n", "5:8", "anchor &r is not allowed", id="recursive-alias"),
    pytest.param(
        doc(BODY + "where: {status: &s closed}\nnote: *s\n"),
        "12:21",
        "anchor &s is not allowed",
        id="any-anchor",
    ),
    pytest.param(
        TOP + "rules: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "5:39",
        "nested deeper than 32 levels",
        id="deep-flow-sequences-10k",
    ),
    pytest.param(
        TOP + "rules: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
        "5:129",
        "nested deeper than 32 levels",
        id="deep-flow-mappings-10k",
    ),
    pytest.param(
        doc().replace("key: customer_id", "key: cust\x00omer_id"),
        "8:14",
        "control character U+0000 is not allowed",
        id="nul-byte",
    ),
    pytest.param(
        doc().replace("owner: data-team", "owner: data\x1bteam"),
        "4:12",
        "control character U+001B is not allowed",
        id="escape-byte",
    ),
    pytest.param(
        doc().replace("action: delete", "action: !foo delete"),
        "11:13",
        "tag !foo is not allowed",
        id="unknown-tag",
    ),
    pytest.param(
        doc().replace("action: delete", "action: !!python/object/apply:os.system [id]"),
        "11:13",
        "tag !!python/object/apply:os.system is not allowed",
        id="python-tag",
    ),
    pytest.param(
        doc().replace("action: delete", "action: !!binary ZGVsZXRl"),
        "11:13",
        "tag !!binary is not allowed",
        id="binary-tag",
    ),
    pytest.param(
        doc(BODY + "<<: {action: anonymise}\n"),
        "12:5",
        "merge key '<<' is not allowed",
        id="merge-key",
    ),
    pytest.param(
        TOP + "rules: [" + ",".join(["1"] * 20_000) + "]\n",
        "5:",
        "more than 10000 values in one file",
        id="many-tiny-values",
    ),
    pytest.param(
        doc() + "#" + "x" * 5_000_000 + "\n",
        "1:1",
        "more than the 262144 a policy file may have",
        id="5-MB-file",
    ),
    pytest.param(
        doc(BODY + "where: {ended_at: {lt: 2026-02-30}}\n"),
        "12:28",
        "rules[0].where.ended_at.lt: not a valid date: day is out of range for month",
        id="impossible-unquoted-date",
    ),
    pytest.param(
        doc(BODY + "where: {n: {lt: " + "9" * 5000 + "}}\n"),
        "12:21",
        "rules[0].where.n.lt: not a valid int: Exceeds the limit",
        id="int-of-5000-digits",
    ),
    pytest.param(
        doc(BODY + "where:\n  ? [a, b]\n  : 1\n"),
        "13:9",
        "mapping keys must be plain names",
        id="complex-key",
    ),
]


@pytest.mark.parametrize(("text", "where", "fragment"), HOSTILE)
def test_hostile_yaml_is_refused_with_its_location(tmp_path, monkeypatch, text, where, fragment):
    problems = problems_of(tmp_path, monkeypatch, {"shop.yaml": text})
    hits = [p for p in problems if f"{FILE}:{where}" in str(p) and fragment in str(p)]
    assert hits, "\n".join(str(p) for p in problems)
    assert all(p.hint for p in hits), "each refusal says what to do"


def test_a_huge_file_is_not_read_whole(tmp_path, monkeypatch):
    """A policy path that is a 64 MB file is refused after reading the limit, not all of it."""
    p = write(tmp_path, "shop.yaml", doc())
    with p.open("ab") as fh:
        fh.truncate(64 * 1024 * 1024)
    reads: list[int] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        fh = real_open(self, *args, **kwargs)
        real_read = fh.read
        fh.read = lambda n=-1: reads.append(n) or real_read(n)  # type: ignore[method-assign]
        return fh

    monkeypatch.setattr(Path, "open", counting_open)
    problems = problems_of(tmp_path, monkeypatch, {})
    assert [str(x) for x in problems] == [
        f"{FILE}:1:1: the file is {64 * 1024 * 1024} bytes, more than the 262144 a policy file"
        " may have; check that this is a policy file; a policy is a few kilobytes"
    ]
    assert reads and all(0 < n <= 262144 + 1 for n in reads)


@pytest.mark.parametrize(("text", "where", "fragment"), HOSTILE)
def test_hostile_yaml_through_the_cli_exits_2_in_bounded_time(tmp_path, text, where, fragment):
    """The CLI refuses each with exit 2 and the located message, no traceback. The timeout
    bounds it (the design does the rest: nothing is expanded, nothing recursed into)."""
    import subprocess
    import sys

    write(tmp_path, "shop.yaml", text)
    proc = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "validate", "policies"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{FILE}:{where}" in proc.stderr and fragment in proc.stderr, proc.stderr[-2000:]
    assert "nothing was changed" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# --- Faker providers and locales, checked without a store ----------------------------------

FAKES = [
    pytest.param(
        anonymise("name: {fake: nmae}\n"),
        [
            (
                "13:14",
                "rules[0].columns.name.fake",
                "Faker has no provider 'nmae'; did you mean 'name'?",
            )
        ],
        id="provider-typo",
    ),
    pytest.param(
        anonymise("email: {fake: {provider: emial, locale: sv_SE}}\n"),
        [
            (
                "13:22",
                "rules[0].columns.email.fake.provider",
                "Faker has no provider 'emial'; did you mean 'email'?",
            )
        ],
        id="provider-typo-long-form",
    ),
    pytest.param(
        anonymise("email: {fake: {provider: email, locale: nb_NOO}}\n"),
        [
            (
                "13:7",
                "rules[0].columns.email",
                "fake: locale: 'nb_NOO' is not a locale such as nb_NO that Faker knows; did you mean 'nb_NO'?",
            )
        ],
        id="fake-locale-typo",
    ),
    pytest.param(
        doc() + "locale: sv_SEE\n",
        [
            (
                "12:1",
                "locale",
                "'sv_SEE' is not a locale such as nb_NO that Faker knows; did you mean",
            )
        ],
        id="policy-locale-typo",
    ),
    pytest.param(
        doc() + "locale: xx_YY\n",
        [("12:1", "locale", "'xx_YY' is not a locale such as nb_NO that Faker knows; use e.g.")],
        id="policy-locale-unknown",
    ),
    pytest.param(
        anonymise("name: {fake: pyfloat_zzz}\nphone: {fake: date_time}\ncity: {fake: seed}\n"),
        [
            ("13:14", "rules[0].columns.name.fake", "Faker has no provider 'pyfloat_zzz'"),
            ("14:15", "rules[0].columns.phone.fake", "returns datetime, not text; pick one"),
            ("15:14", "rules[0].columns.city.fake", "'seed' is not a Faker provider"),
        ],
        id="every-bad-provider-at-once",
    ),
]


@pytest.mark.parametrize(("text", "expected"), FAKES)
def test_fake_providers_and_locales_are_checked_without_a_store(
    tmp_path, monkeypatch, text, expected
):
    assert_problems(problems_of(tmp_path, monkeypatch, {"shop.yaml": text}), expected)


def test_a_provider_typo_fails_validate_without_a_store(tmp_path):
    """`retention-jobs validate` (no store anywhere) exits 2 on `{fake: nmae}`."""
    import subprocess
    import sys

    write(tmp_path, "shop.yaml", anonymise("name: {fake: nmae}\n"))
    proc = subprocess.run(
        [sys.executable, "-m", "retention_jobs.cli", "validate", "policies"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        f"{FILE}:13:14: rules[0].columns.name.fake: Faker has no provider 'nmae'; "
        "did you mean 'name'?" in proc.stderr
    )
