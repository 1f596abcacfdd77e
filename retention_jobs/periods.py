"""ISO-8601 periods and retention clocks.

A row expires on `round(clock) + keep_for`. Planning inverts that into a single cutoff date
so that the store can answer `clock <= cutoff` from its zone maps or indexes.
"""

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

Rounding = Literal["year_end", "month_end"]

_PERIOD = re.compile(r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")


@dataclass(frozen=True, order=True)
class Period:
    years: int = 0
    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str) -> "Period":
        m = _PERIOD.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise ValueError(
                f"{text!r} is not an ISO-8601 period of whole days such as P0D, P30D, P6M, P5Y "
                "or P1Y6M (time parts like PT12H are not supported: retention is counted in days)"
            )
        y, mo, w, d = (int(g) if g else 0 for g in m.groups())
        return cls(years=y, months=mo, days=w * 7 + d)

    def __str__(self) -> str:
        parts = [
            f"{v}{u}" for v, u in ((self.years, "Y"), (self.months, "M"), (self.days, "D")) if v
        ]
        return "P" + ("".join(parts) or "0D")


def add_period(d: date, p: Period) -> date:
    """Calendar addition: years and months first (day clamped to the month's end), then days."""
    month_index = d.year * 12 + (d.month - 1) + p.years * 12 + p.months
    year, month = divmod(month_index, 12)
    month += 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return date(year, month, day) + timedelta(days=p.days)


def round_clock(d: date, rounding: Rounding | None) -> date:
    """Where the period starts. `year_end`: when the (calendar) fiscal year of `d` has ended,
    i.e. the first day of the next year, so that "five years after the end of the fiscal year
    2020" keeps the row through 31 December 2025 and frees it on 1 January 2026. `month_end`
    likewise starts on the first day of the next month."""
    if rounding == "year_end":
        return date(d.year + 1, 1, 1)
    if rounding == "month_end":
        return date(d.year, d.month, calendar.monthrange(d.year, d.month)[1]) + timedelta(days=1)
    return d


def period_end(d: date, rounding: Rounding | None) -> date:
    """The last clock date that rounds like `d` (the last day of its year or month)."""
    if rounding == "year_end":
        return date(d.year, 12, 31)
    if rounding == "month_end":
        return date(d.year, d.month, calendar.monthrange(d.year, d.month)[1])
    return d


def expires_on(clock: date, keep_for: Period, rounding: Rounding | None = None) -> date:
    """The first day on which a row with this clock is past its period."""
    return add_period(round_clock(clock, rounding), keep_for)


def exact_cutoff(instant: datetime, keep_for: Period) -> datetime:
    """For a timestamp clock and a run at `instant` (aware, in the policy's zone): the bound B
    such that `clock < B` selects clocks strictly older than `keep_for` at `instant`
    (`clock + keep_for < instant`, in wall time of that zone).

    Adding a period keeps the time of day, so a clock on a date whose expiry date is before
    the instant's date has expired whatever its time, and one on a date whose expiry date is
    the instant's date has expired when its time is earlier. Month arithmetic maps several
    dates to one expiry date (29, 30 and 31 January + P1M are all 28 February); of those, the
    bound takes the earliest, so a run never acts early and at worst waits a day.
    """
    first = cutoff(instant.date() - timedelta(days=1), keep_for) + timedelta(days=1)
    return datetime.combine(first, instant.timetz()).replace(tzinfo=instant.tzinfo)


def cutoff(as_of: date, keep_for: Period, rounding: Rounding | None = None) -> date:
    """The latest clock date whose period has run out on `as_of`.

    `expires_on` is non-decreasing in the clock, so the expired clocks form a down-set and one
    date bounds it. Start from an estimate and walk to the exact boundary.
    """
    back = Period(-keep_for.years, -keep_for.months, -keep_for.days)
    c = add_period(as_of, back)
    if rounding:
        # every clock in one year (month) expires on the same day: walk whole periods
        c = period_end(c, rounding)
        nxt = period_end(c + timedelta(days=1), rounding)
        while expires_on(nxt, keep_for, rounding) <= as_of:
            c, nxt = nxt, period_end(nxt + timedelta(days=1), rounding)
        while expires_on(c, keep_for, rounding) > as_of:
            c = period_end(
                c.replace(day=1) - timedelta(days=1)
                if rounding == "month_end"
                else date(c.year - 1, 12, 31),
                rounding,
            )
        return c
    while expires_on(c + timedelta(days=1), keep_for) <= as_of:
        c += timedelta(days=1)
    while expires_on(c, keep_for) > as_of:
        c -= timedelta(days=1)
    return c
