"""`scan` against a hand-written list of which columns of a foreign schema are personal, on
DuckDB and PostgreSQL. Column names are deliberately neutral (`c01`, `ref_a`, ...) where the
content should decide, so the recognisers are tested, not the name patterns. Values come from
Faker's own national-id generators (an implementation apart from ours) and, for Danish CPR,
a generator written here. Precision and recall are reported per class."""

import random
from datetime import date, timedelta

import pyarrow as pa
import pytest
from faker import Faker
from schema_cases import policies, sql
from stores import load

from retention_jobs import identifiers
from retention_jobs.scan import scan_store

ROWS = 200

POLICY = """
purpose: crm
title: CRM
legal_basis: contract
owner: crm
rules:
  - name: old-people
    table: x.people
    key: id
    subject: {kind: person, column: id}
    clock: seen_on
    keep_for: P2Y
    action: anonymise
    columns: {c01: redact, c02: redact}
"""


def _cpr(rng: random.Random, mod11: bool) -> str:
    while True:
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(25000))
        serial = f"{rng.randrange(10000):04d}"
        digits = born.strftime("%d%m%y") + serial
        ok = (
            sum(int(c) * w for c, w in zip(digits, (4, 3, 2, 7, 6, 5, 4, 3, 2, 1), strict=True))
            % 11
            == 0
        )
        if ok or not mod11:
            return f"{digits[:6]}-{digits[6:]}" if not mod11 else digits


def _columns() -> dict[str, tuple[list, set[str]]]:
    """column -> (values, the classes a person reading the data says it has)."""
    rng = random.Random(7)
    Faker.seed(7)
    no, se, fi, dk_f = Faker("no_NO"), Faker("sv_SE"), Faker("fi_FI"), Faker("da_DK")
    en = Faker("en_GB")
    return {
        "c01": ([en.email() for _ in range(ROWS)], {"email"}),
        "c02": ([no.ssn() for _ in range(ROWS)], {"national_id"}),
        "c03": ([se.ssn() for _ in range(ROWS)], {"national_id"}),
        "c04": ([fi.ssn() for _ in range(ROWS)], {"national_id"}),
        "c05": ([_cpr(rng, mod11=rng.random() < 0.5) for _ in range(ROWS)], {"national_id"}),
        "c06": ([se.phone_number() for _ in range(ROWS)], {"phone"}),
        "c07": ([fi.phone_number() for _ in range(ROWS)], {"phone"}),
        "c08": ([f"+47 {rng.randrange(40000000, 99999999)}" for _ in range(ROWS)], {"phone"}),
        "c09": ([en.phone_number() for _ in range(ROWS)], {"phone"}),
        # a mixed Nordic id column, as a group's customer table has
        "c10": ([rng.choice([no.ssn(), se.ssn(), fi.ssn()]) for _ in range(ROWS)], {"national_id"}),
        # free text that sometimes quotes an e-mail address
        "notes": (
            [
                en.sentence() + (f" Reply to {en.email()}" if i % 10 == 0 else "")
                for i in range(ROWS)
            ],
            {"free_text:email"},
        ),
        # decoys: ids, codes, amounts, dates as text, UUIDs, SKUs, plain prose
        "ref_a": ([str(rng.randrange(10**7, 10**9)) for _ in range(ROWS)], set()),
        "ref_b": ([f"ORD-{rng.randrange(10**5, 10**6)}" for _ in range(ROWS)], set()),
        "ref_c": ([str(en.uuid4()) for _ in range(ROWS)], set()),
        "ref_d": (
            [f"{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}" for _ in range(ROWS)],
            set(),
        ),
        "ref_e": ([en.date() for _ in range(ROWS)], set()),
        "ref_f": ([f"{rng.random() * 1000:.2f}" for _ in range(ROWS)], set()),
        "ref_g": ([en.sentence() for _ in range(ROWS)], set()),
        "ref_h": ([rng.choice(["gold", "silver", "basic"]) for _ in range(ROWS)], set()),
        "ref_i": ([dk_f.postcode() for _ in range(ROWS)], set()),
    }


CLASSES = ("email", "phone", "national_id")


def _precision_recall(found: dict[str, set[str]], truth: dict[str, set[str]], cls: str):
    predicted = {c for c, k in found.items() if cls in k}
    actual = {c for c, k in truth.items() if cls in k}
    tp = len(predicted & actual)
    precision = tp / len(predicted) if predicted else 1.0
    recall = tp / len(actual) if actual else 1.0
    return precision, recall, predicted - actual, actual - predicted


def test_scan_finds_what_the_hand_written_list_says(store):
    cols = _columns()
    ddl = ", ".join(f"{c} VARCHAR(400)" for c in cols)
    sql(
        store,
        "CREATE SCHEMA x",
        f"CREATE TABLE x.people (id BIGINT PRIMARY KEY, seen_on DATE, {ddl})",
    )
    data = pa.table(
        {
            "id": list(range(ROWS)),
            "seen_on": [date(2020, 1, 1)] * ROWS,
            **{c: v for c, (v, _) in cols.items()},
        }
    )
    with store.connect() as s:
        load(s, "x.people", data)
    result = scan_store(store, policies(POLICY))
    found = {f.column: set(f.classes) for f in result.findings if f.table == "x.people"}
    truth = {c: k for c, (_, k) in cols.items()}
    report = {}
    for cls in CLASSES:
        p, r, extra, missed = _precision_recall(found, truth, cls)
        report[cls] = (p, r)
        assert p >= 0.95 and r >= 0.95, (cls, p, r, sorted(extra), sorted(missed))
    print("precision, recall per class:", report)
    assert "free_text:email" in found.get("notes", set())
    for decoy in [c for c, k in truth.items() if not k]:
        assert decoy not in found, (decoy, found.get(decoy))
    # covered: the rule anonymises c01 and c02; everything else found is uncovered
    covered = {f.column for f in result.findings if f.table == "x.people" and f.covered}
    assert covered == {"c01", "c02", "id"}
    # counts and classes only: no sampled value in what scan returns
    text = repr(result.to_dict()) + result.markdown()
    assert not any(v in text for v, _ in [(cols["c01"][0][0], 0), (cols["c02"][0][0], 0)])


@pytest.mark.parametrize(
    ("cls", "good", "bad"),
    [
        ("national_id_no", "01010150074", "01010150075"),
        ("national_id_se", "811218-9876", "811218-9877"),
        ("national_id_fi", "131052-308T", "131052-308U"),
        ("national_id_dk", "070761-4285", "320761-4285"),
        ("iban", "NO9386011117947", "NO9386011117948"),
        ("payment_card", "4111 1111 1111 1111", "4111 1111 1111 1112"),
    ],
)
def test_check_digits_decide(cls, good, bad):
    assert identifiers.RECOGNISERS[cls](good)
    assert not identifiers.RECOGNISERS[cls](bad)
