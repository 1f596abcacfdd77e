"""ISO-8601 periods, calendar arithmetic and the cutoff that planning inverts `expires_on` into."""

from datetime import date, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from retention_jobs.periods import Period, add_period, cutoff, expires_on, round_clock

DAY = timedelta(days=1)


# --- Period.parse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("P0D", Period()),
        ("P30D", Period(days=30)),
        ("P6M", Period(months=6)),
        ("P5Y", Period(years=5)),
        ("P1Y6M", Period(years=1, months=6)),
        ("P2W", Period(days=14)),
        ("P1W3D", Period(days=10)),
        ("P1Y2M3W4D", Period(years=1, months=2, days=25)),
        ("P18M", Period(months=18)),
        ("P0Y", Period()),
        (" P7Y ", Period(years=7)),
    ],
)
def test_parse(text, period):
    assert Period.parse(text) == period


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "5Y",
        "P5Q",
        "PT12H",
        "P1DT12H",
        "PT0S",
        "p5y",
        "P5y",
        "P1.5Y",
        "P1,5Y",
        "P-1D",
        "P+1D",
        "P1D1M",
        "P1M1Y",
        "P1Y1Y",
        "P 1Y",
        "R5/P1Y",
        "-P1Y",
    ],
)
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="is not an ISO-8601 period of whole days"):
        Period.parse(text)


@pytest.mark.parametrize("value", [None, 5, 5.0, ["P5Y"]])
def test_parse_rejects_non_strings(value):
    with pytest.raises(ValueError, match="is not an ISO-8601 period"):
        Period.parse(value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("P0D", "P0D"),
        ("P2W", "P14D"),
        ("P1Y6M", "P1Y6M"),
        ("P5Y", "P5Y"),
        ("P1Y0M3D", "P1Y3D"),
    ],
)
def test_str(text, shown):
    assert str(Period.parse(text)) == shown
    assert Period.parse(str(Period.parse(text))) == Period.parse(text)


# --- add_period ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "period", "result"),
    [
        (date(2024, 1, 15), "P0D", date(2024, 1, 15)),
        (date(2024, 1, 15), "P30D", date(2024, 2, 14)),
        (date(2023, 12, 31), "P1D", date(2024, 1, 1)),
        # months: the day is clamped to the end of a shorter month
        (date(2024, 1, 31), "P1M", date(2024, 2, 29)),
        (date(2023, 1, 31), "P1M", date(2023, 2, 28)),
        (date(2024, 3, 31), "P1M", date(2024, 4, 30)),
        (date(2024, 8, 31), "P6M", date(2025, 2, 28)),
        (date(2024, 12, 15), "P1M", date(2025, 1, 15)),
        (date(2024, 11, 30), "P3M", date(2025, 2, 28)),
        # years: 29 February lands on 28 February in a common year, stays in a leap year
        (date(2024, 2, 29), "P1Y", date(2025, 2, 28)),
        (date(2024, 2, 29), "P4Y", date(2028, 2, 29)),
        (date(2000, 2, 29), "P100Y", date(2100, 2, 28)),
        (date(2019, 12, 31), "P5Y", date(2024, 12, 31)),
        (date(2023, 2, 28), "P1Y", date(2024, 2, 28)),
        # years and months first (clamped), then days
        (date(2023, 1, 31), "P1M1D", date(2023, 3, 1)),
        (date(2024, 1, 31), "P1M1D", date(2024, 3, 1)),
        (date(2023, 1, 30), "P1M1D", date(2023, 3, 1)),
        (date(2023, 8, 31), "P1Y6M", date(2025, 2, 28)),
        (date(2023, 8, 31), "P18M", date(2025, 2, 28)),
        (date(2023, 12, 31), "P1W", date(2024, 1, 7)),
    ],
)
def test_add_period(start, period, result):
    assert add_period(start, Period.parse(period)) == result


def test_add_period_negative_goes_back_with_clamping():
    assert add_period(date(2024, 3, 31), Period(months=-1)) == date(2024, 2, 29)
    assert add_period(date(2024, 1, 15), Period(years=-1, months=-2)) == date(2022, 11, 15)
    assert add_period(date(2024, 3, 1), Period(days=-1)) == date(2024, 2, 29)


# --- round_clock and expires_on --------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "rounding", "rounded"),
    [
        # the period starts when the fiscal year (month) has ended: on the first day of the next
        (date(2021, 3, 15), None, date(2021, 3, 15)),
        (date(2021, 3, 15), "year_end", date(2022, 1, 1)),
        (date(2021, 12, 31), "year_end", date(2022, 1, 1)),
        (date(2021, 1, 1), "year_end", date(2022, 1, 1)),
        (date(2021, 3, 15), "month_end", date(2021, 4, 1)),
        (date(2024, 2, 1), "month_end", date(2024, 3, 1)),
        (date(2023, 2, 1), "month_end", date(2023, 3, 1)),
        (date(2023, 4, 30), "month_end", date(2023, 5, 1)),
        (date(2023, 12, 5), "month_end", date(2024, 1, 1)),
    ],
)
def test_round_clock(clock, rounding, rounded):
    assert round_clock(clock, rounding) == rounded


@pytest.mark.parametrize(
    ("clock", "keep_for", "rounding", "expires"),
    [
        # an invoice from March 2019 under Norway's 5 years from the fiscal-year end: kept through
        # 31 December 2024, free on 1 January 2025
        (date(2019, 3, 15), "P5Y", "year_end", date(2025, 1, 1)),
        # Sweden: 7 years
        (date(2017, 1, 2), "P7Y", "year_end", date(2025, 1, 1)),
        # without rounding the same invoice would be free nine months too early
        (date(2019, 3, 15), "P5Y", None, date(2024, 3, 15)),
        (date(2024, 1, 10), "P0D", None, date(2024, 1, 10)),
        (date(2024, 1, 10), "P1M", "month_end", date(2024, 3, 1)),
        (date(2023, 11, 30), "P3M", "month_end", date(2024, 3, 1)),
    ],
)
def test_expires_on(clock, keep_for, rounding, expires):
    assert expires_on(clock, Period.parse(keep_for), rounding) == expires


def test_a_row_expires_on_its_day_not_the_day_after():
    p = Period.parse("P30D")
    clock = date(2024, 1, 1)
    assert expires_on(clock, p) == date(2024, 1, 31)
    assert cutoff(date(2024, 1, 31), p) == clock
    assert cutoff(date(2024, 1, 30), p) == clock - DAY


@pytest.mark.parametrize(
    ("as_of", "keep_for", "rounding", "expected"),
    [
        (date(2024, 12, 31), "P5Y", "year_end", date(2018, 12, 31)),
        (date(2024, 12, 30), "P5Y", "year_end", date(2018, 12, 31)),
        (date(2025, 1, 1), "P5Y", "year_end", date(2019, 12, 31)),
        (date(2024, 2, 29), "P1M", None, date(2024, 1, 31)),
        (date(2023, 2, 28), "P1M", None, date(2023, 1, 31)),
        (date(2023, 3, 1), "P1M", None, date(2023, 2, 1)),
        (date(2025, 2, 28), "P1Y", None, date(2024, 2, 29)),
        (date(2024, 3, 1), "P1M", "month_end", date(2024, 1, 31)),
        (date(2024, 2, 29), "P1M", "month_end", date(2023, 12, 31)),
        (date(2024, 5, 1), "P0D", None, date(2024, 5, 1)),
    ],
)
def test_cutoff_examples(as_of, keep_for, rounding, expected):
    assert cutoff(as_of, Period.parse(keep_for), rounding) == expected


# --- cutoff is the exact boundary ------------------------------------------------------------

periods = st.builds(
    Period, years=st.integers(0, 12), months=st.integers(0, 30), days=st.integers(0, 800)
)
as_of_dates = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))
roundings = st.sampled_from([None, "year_end", "month_end"])


@given(as_of=as_of_dates, p=periods, rounding=roundings)
@example(as_of=date(2024, 2, 29), p=Period(years=1), rounding=None)
@example(as_of=date(2025, 2, 28), p=Period(years=1), rounding=None)
@example(as_of=date(2024, 3, 31), p=Period(months=1, days=1), rounding=None)
@example(as_of=date(2024, 12, 31), p=Period(years=5), rounding="year_end")
@example(as_of=date(2024, 12, 30), p=Period(years=5), rounding="year_end")
@example(as_of=date(2024, 2, 29), p=Period(months=1), rounding="month_end")
@example(as_of=date(2024, 3, 30), p=Period(months=1), rounding="month_end")
def test_cutoff_is_the_exact_boundary(as_of, p, rounding):
    c = cutoff(as_of, p, rounding)
    assert expires_on(c, p, rounding) <= as_of
    assert expires_on(c + DAY, p, rounding) > as_of
    # brute force: over a stretch of clock dates around the cutoff, a clock has expired on
    # as_of exactly when it is on or before the cutoff
    for offset in range(-400, 401):
        clock = c + timedelta(days=offset)
        assert (expires_on(clock, p, rounding) <= as_of) == (clock <= c), clock


@given(as_of=as_of_dates, p=periods, rounding=roundings)
def test_cutoff_never_falls_before_an_earlier_cutoff(as_of, p, rounding):
    """One more day of as-of never un-expires a row."""
    assert cutoff(as_of, p, rounding) <= cutoff(as_of + DAY, p, rounding)


def test_cutoff_brute_force_over_a_calendar():
    """Every as-of day of 2023-2025 against every clock day of 2015-2026, for awkward periods."""
    clocks = [
        date(2015, 1, 1) + timedelta(days=i)
        for i in range((date(2026, 12, 31) - date(2015, 1, 1)).days + 1)
    ]
    for keep_for in ("P0D", "P1M", "P1Y", "P1M1D", "P5Y", "P30D", "P1Y6M"):
        p = Period.parse(keep_for)
        for rounding in (None, "year_end", "month_end"):
            expiry = [expires_on(c, p, rounding) for c in clocks]
            for i in range(0, (date(2025, 12, 31) - date(2023, 1, 1)).days + 1, 7):
                as_of = date(2023, 1, 1) + timedelta(days=i)
                c = cutoff(as_of, p, rounding)
                expired = [clock for clock, e in zip(clocks, expiry, strict=True) if e <= as_of]
                assert (expired[-1] if expired else None) == c, (keep_for, rounding, as_of)
                assert all(clock <= c for clock in expired)
