"""`--as-of` as a moment: timestamp clocks are "strictly older than keep_for" exactly, never a
second early, on DuckDB and PostgreSQL; a date keeps its documented whole-day meaning.

The oracle for the bound is a brute force over clock values: a row has expired when its clock
plus the period (calendar arithmetic on the date, same time of day) is before the moment.
"""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from schema_cases import policies, rows, sql

from retention_jobs.anonymise import PseudonymKey
from retention_jobs.apply import RunOptions, run_policies
from retention_jobs.periods import Period, add_period, exact_cutoff

KEY = PseudonymKey.from_text("as-of-moment-key-0123456789")
ROOT = Path(__file__).resolve().parents[1]
OSLO = ZoneInfo("Europe/Oslo")


def expired(clock: datetime, period: Period, moment: datetime) -> bool:
    """Brute force: clock + period (wall time in the moment's zone) is strictly before it."""
    end = datetime.combine(add_period(clock.date(), period), clock.timetz()).replace(
        tzinfo=clock.tzinfo
    )
    return end < moment


periods = st.builds(
    Period,
    years=st.integers(0, 3),
    months=st.integers(0, 14),
    days=st.integers(0, 40),
)
moments = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(OSLO)
)


@settings(max_examples=300, deadline=None)
@given(moment=moments, period=periods, back=st.integers(-3 * 86400, 3 * 86400))
def test_the_bound_never_acts_early_and_is_exact_without_month_clipping(moment, period, back):
    bound = exact_cutoff(moment, period)
    # clocks around the bound, and around "moment minus the period" by the calendar
    naive_start = datetime.combine(
        add_period(moment.date(), Period(-period.years, -period.months, -period.days)),
        moment.time(),
    )
    for base in (bound.replace(tzinfo=None), naive_start):
        clock = (base + timedelta(seconds=back)).replace(tzinfo=OSLO)
        selected = clock < bound
        if selected:
            assert expired(clock, period, moment), (clock, bound)
        elif period.years == 0 and period.months == 0:
            # days only: no two dates share an expiry date, so the bound is exact
            assert not expired(clock, period, moment), (clock, bound)


DDL = [
    "CREATE SCHEMA app",
    "CREATE TABLE app.sessions (session_id BIGINT PRIMARY KEY, "
    "ended_at TIMESTAMP WITH TIME ZONE, ended_utc TIMESTAMP)",
]

POLICY = """
purpose: sessions
title: Session records
legal_basis: legitimate_interests
owner: web
timezone: Europe/Oslo
rules:
  - name: old-sessions
    table: app.sessions
    key: session_id
    subject: {{none: sessions name no person in this test}}
    clock: {clock}
    keep_for: P30D
    action: delete
"""

MOMENT = datetime(2026, 12, 2, 2, 0, tzinfo=OSLO)


def _seed(store) -> None:
    # around "30 days before the moment": one second older, exactly 30 days, one second younger,
    # and earlier on the same calendar day the date semantics would take whole
    edge = MOMENT - timedelta(days=30)
    values = {
        1: edge - timedelta(seconds=1),
        2: edge,
        3: edge + timedelta(seconds=1),
        4: edge + timedelta(hours=20),  # 2 November, 22:00 in Oslo
    }
    inserts = ", ".join(
        f"({i}, TIMESTAMP WITH TIME ZONE '{v.astimezone(UTC).isoformat()}', "
        f"TIMESTAMP '{v.astimezone(UTC).replace(tzinfo=None).isoformat(sep=' ')}')"
        for i, v in values.items()
    )
    sql(store, *DDL, f"INSERT INTO app.sessions VALUES {inserts}")


def _run(store, clock: str, moment: datetime | None) -> list[int]:
    opts = RunOptions(max_delete_fraction=None, purge=False, as_of_instant=moment)
    day = (moment or MOMENT).astimezone(OSLO).date()
    run_policies(store, policies(POLICY.format(clock=clock)), day, KEY, opts)
    return [r[0] for r in rows(store, "SELECT session_id FROM app.sessions ORDER BY 1")]


def test_a_moment_takes_only_rows_strictly_older_than_the_period(store):
    _seed(store)
    assert _run(store, "ended_at", MOMENT) == [2, 3, 4]


def test_a_moment_on_a_naive_utc_timestamp_clock(store):
    _seed(store)
    assert _run(store, "ended_utc", MOMENT) == [2, 3, 4]


def test_a_date_keeps_its_whole_day_meaning(store):
    # as of 2 December the cut-off is the end of 2 November in Oslo: every row here is older
    _seed(store)
    assert _run(store, "ended_at", None) == []


def test_a_moment_without_an_offset_is_refused_with_exit_2(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "s.yaml").write_text(POLICY.format(clock="ended_at"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "retention_jobs.cli",
            "plan",
            "--as-of",
            "2026-12-02T02:00:00",
            "--policies",
            str(tmp_path / "policies"),
            "--store",
            str(tmp_path / "w.duckdb"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "has no offset" in proc.stderr
