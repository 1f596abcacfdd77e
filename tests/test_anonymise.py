"""Anonymisation strategies: types kept, lengths fitted, uniqueness kept, stable per key."""

import hashlib
from datetime import date, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention_jobs.anonymise import PseudonymKey, anonymise_frame, key_from_env, keyed_hashes
from retention_jobs.errors import ConfigError
from retention_jobs.policy import Constant, Fake, Generalise, Hash, Mask, Redact
from retention_jobs.store.base import ColumnInfo

KEY = PseudonymKey.from_text("unit-test-key-0123456789")


def col(name, type_="string", **kw):
    return ColumnInfo(name, type_, type_.upper(), kw.pop("nullable", True), **kw)


def test_keyed_hash_is_keyed_stable_and_matches_reference():
    s = pl.Series("v", ["a@b.no", None, "a@b.no", "x"])
    h = keyed_hashes(s, KEY)
    ref = hashlib.blake2b(b"a@b.no", key=KEY.secret, digest_size=16).hexdigest()
    assert h.to_list() == [
        ref,
        None,
        ref,
        hashlib.blake2b(b"x", key=KEY.secret, digest_size=16).hexdigest(),
    ]
    other = keyed_hashes(s, PseudonymKey.from_text("another-key-0123456789"))
    assert other[0] != h[0]


def test_key_comes_from_env_and_is_never_shown(monkeypatch):
    monkeypatch.delenv("RETENTION_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="RETENTION_PSEUDONYM_KEY is not set"):
        key_from_env()
    assert key_from_env(allow_demo=True).key_id
    monkeypatch.setenv("RETENTION_PSEUDONYM_KEY", "short")
    with pytest.raises(ConfigError, match="too short"):
        key_from_env()
    monkeypatch.setenv("RETENTION_PSEUDONYM_KEY", "s3cret-value-that-is-long-enough")
    k = key_from_env()
    assert "s3cret" not in repr(k) and "s3cret" not in k.key_id


def test_each_strategy_keeps_the_column_type():
    df = pl.DataFrame(
        {
            "email": ["ola@example.no", "kari@example.se"],
            "name": ["Ola Nordmann", "Kari Nordmann"],
            "phone": ["+4712345678", "12"],
            "born": [date(1980, 5, 17), date(1991, 12, 31)],
            "seen": [datetime(2020, 3, 4, 5, 6), datetime(2021, 7, 8, 9, 10)],
            "age": [37, 42],
            "street": ["Storgata 1", "Kungsgatan 2"],
            "tier": ["gold", "silver"],
        }
    )
    cols = {
        "email": Hash(),
        "name": Fake(provider="name"),
        "phone": Mask(keep_last=2),
        "born": Generalise(to="year"),
        "seen": Generalise(to="month"),
        "age": Generalise(band=10),
        "street": Redact(),
        "tier": Constant(value="none"),
    }
    out = anonymise_frame(df, cols, {c: col(c) for c in cols}, KEY, "nb_NO")
    assert out.schema == df.schema
    assert out["email"].str.len_chars().to_list() == [32, 32]
    assert out["name"].to_list() != df["name"].to_list()
    assert out["phone"].to_list() == ["*********78", "**"]
    assert out["born"].to_list() == [date(1980, 1, 1), date(1991, 1, 1)]
    assert out["seen"].to_list() == [datetime(2020, 3, 1), datetime(2021, 7, 1)]
    assert out["age"].to_list() == [30, 40]
    assert out["street"].to_list() == [None, None]
    assert out["tier"].to_list() == ["none", "none"]


def test_done_rows_are_left_alone():
    df = pl.DataFrame({"email": ["a@x.no", "b@x.no"], "_done__email": [True, False]})
    out = anonymise_frame(df, {"email": Hash()}, {"email": col("email")}, KEY, "nb_NO")
    assert out["email"][0] == "a@x.no" and out["email"][1] != "b@x.no"


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.emails(), min_size=1, max_size=300, unique=True),
    st.integers(min_value=30, max_value=80),
)
def test_fakes_in_a_unique_column_stay_unique_and_fit(emails, max_len):
    df = pl.DataFrame({"email": emails})
    info = col("email", max_length=max_len, unique=True)
    out = anonymise_frame(df, {"email": Fake(provider="email")}, {"email": info}, KEY, "sv_SE")[
        "email"
    ]
    assert out.n_unique() == len(emails)
    assert out.str.len_chars().max() <= max_len
    assert out.str.contains("@").all()
    again = anonymise_frame(df, {"email": Fake(provider="email")}, {"email": info}, KEY, "sv_SE")[
        "email"
    ]
    assert again.to_list() == out.to_list()


def test_same_input_same_fake_across_frames():
    a = pl.DataFrame({"n": ["Ola", "Kari", "Per"]})
    b = pl.DataFrame({"n": ["Per", "Ola"]})
    cols = {"n": Fake(provider="name", locale="da_DK")}
    fa = anonymise_frame(a, cols, {"n": col("n")}, KEY, "nb_NO")["n"].to_list()
    fb = anonymise_frame(b, cols, {"n": col("n")}, KEY, "nb_NO")["n"].to_list()
    assert fb == [fa[2], fa[0]]


def test_mask_never_leaves_a_short_value_whole():
    df = pl.DataFrame({"p": ["1", "12", "123", None]})
    out = anonymise_frame(
        df, {"p": Mask(keep_first=1, keep_last=1)}, {"p": col("p")}, KEY, "nb_NO"
    )["p"]
    assert out.to_list() == ["*", "**", "1*3", None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(), st.binary()), max_size=30))
def test_hex_digests_equal_keyed_blake2b_of_each_value(values):
    """The copied keyed state gives exactly RFC 7693 keyed BLAKE2b, value by value."""
    from retention_jobs.anonymise import hex_digests

    key = PseudonymKey.from_text("hypothesis-key-0123456789")
    expected = [
        hashlib.blake2b(
            v.encode("utf-8") if isinstance(v, str) else v, key=key.secret, digest_size=16
        ).hexdigest()
        for v in values
    ]
    assert hex_digests(values, key) == expected
