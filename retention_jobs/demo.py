"""The demo warehouse: one table (or a few) for each promise in `policies/`, deterministic.

The clocks are spread over the years before the build date, so that on that date every rule
has rows that are expired, rows that are kept and, where a retain rule or a hold applies,
rows that are protected. Faker is slow, so it only fills small seeded pools (names, streets,
companies per locale); rows pick from the pools with a seeded random stream per schema,
column at a time in Polars. Nothing here prints a value: the data looks personal.
"""

import random
import re
from datetime import date, datetime, time
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import duckdb
import polars as pl
import pyarrow as pa
import sqlalchemy as sa

from retention_jobs.errors import ConfigError
from retention_jobs.store.base import Session, Store

# --- schema ----------------------------------------------------------------------------------

# Types are limited to what both DuckDB and PostgreSQL accept. Two DuckDB limits shape it:
# a foreign key cannot cross schemas (so telephony.call_records names its user and organisation
# without a declared key; CROSS_SCHEMA_FOREIGN_KEYS adds them on stores that can), and an
# indexed column cannot be updated in a table that others reference (so no UNIQUE on columns
# that a policy anonymises in a referenced table; hr.candidates.email is referenced by nobody).
_TABLES: dict[str, str] = {
    "marketing.newsletter_subscribers": """
        subscriber_id BIGINT PRIMARY KEY,
        email VARCHAR(254) NOT NULL,
        full_name VARCHAR(200),
        locale VARCHAR(5) NOT NULL,
        subscribed_at TIMESTAMP NOT NULL,
        consent_source VARCHAR(40) NOT NULL""",
    "marketing.list_subscriptions": """
        subscription_id BIGINT PRIMARY KEY,
        subscriber_id BIGINT NOT NULL,
        list_name VARCHAR(60) NOT NULL,
        status VARCHAR(12) NOT NULL CHECK (status IN ('subscribed', 'unsubscribed')),
        changed_at TIMESTAMP NOT NULL,
        FOREIGN KEY (subscriber_id) REFERENCES marketing.newsletter_subscribers (subscriber_id)""",
    "app.organisations": """
        org_id BIGINT PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        country VARCHAR(2) NOT NULL,
        agreement_started_at DATE NOT NULL,
        agreement_ended_at DATE""",
    "app.users": """
        user_id BIGINT PRIMARY KEY,
        org_id BIGINT NOT NULL,
        email VARCHAR(254) NOT NULL,
        full_name VARCHAR(200),
        phone VARCHAR(32),
        profile_picture_url VARCHAR(300),
        created_at TIMESTAMP NOT NULL,
        photo_consent_withdrawn_at TIMESTAMP,
        account_closed_at TIMESTAMP,
        FOREIGN KEY (org_id) REFERENCES app.organisations (org_id)""",
    "app.partner_contacts": """
        contact_id BIGINT PRIMARY KEY,
        company VARCHAR(200) NOT NULL,
        full_name VARCHAR(200) NOT NULL,
        email VARCHAR(254),
        phone VARCHAR(32),
        country VARCHAR(2) NOT NULL,
        agreement_started_at DATE NOT NULL,
        agreement_ended_at DATE""",
    "telephony.call_records": """
        call_id BIGINT PRIMARY KEY,
        user_id BIGINT,
        org_id BIGINT NOT NULL,
        caller_number VARCHAR(32) NOT NULL,
        callee_number VARCHAR(32) NOT NULL,
        started_at TIMESTAMP NOT NULL,
        duration_s INTEGER NOT NULL,
        direction VARCHAR(10) NOT NULL""",
    "billing.customers": """
        customer_id BIGINT PRIMARY KEY,
        full_name VARCHAR(200) NOT NULL,
        email VARCHAR(254) NOT NULL,
        phone VARCHAR(32),
        street_address VARCHAR(200),
        postal_code VARCHAR(10) NOT NULL,
        city VARCHAR(100) NOT NULL,
        birth_date DATE,
        national_id VARCHAR(20),
        country VARCHAR(2) NOT NULL CHECK (country IN ('NO', 'SE', 'DK')),
        status VARCHAR(10) NOT NULL CHECK (status IN ('active', 'closed')),
        customer_since DATE NOT NULL,
        relationship_ended_at DATE,
        last_purchase_at DATE,
        marketing_consent BOOLEAN NOT NULL""",
    "billing.subscriptions": """
        subscription_id BIGINT PRIMARY KEY,
        customer_id BIGINT NOT NULL,
        product VARCHAR(60) NOT NULL,
        started_at DATE NOT NULL,
        ended_at DATE,
        FOREIGN KEY (customer_id) REFERENCES billing.customers (customer_id)""",
    "billing.invoices": """
        invoice_id BIGINT PRIMARY KEY,
        customer_id BIGINT NOT NULL,
        subscription_id BIGINT,
        invoice_date DATE NOT NULL,
        amount DECIMAL(12,2) NOT NULL,
        currency VARCHAR(3) NOT NULL,
        country VARCHAR(2) NOT NULL,
        customer_name VARCHAR(200) NOT NULL,
        billing_address VARCHAR(300) NOT NULL,
        FOREIGN KEY (customer_id) REFERENCES billing.customers (customer_id),
        FOREIGN KEY (subscription_id) REFERENCES billing.subscriptions (subscription_id)""",
    "billing.credit_checks": """
        check_id BIGINT PRIMARY KEY,
        customer_id BIGINT NOT NULL,
        checked_at DATE NOT NULL,
        bureau VARCHAR(60) NOT NULL,
        score INTEGER NOT NULL,
        FOREIGN KEY (customer_id) REFERENCES billing.customers (customer_id)""",
    "crm.tenants": """
        tenant_id BIGINT PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        own_use BOOLEAN NOT NULL,
        contract_started_at DATE NOT NULL,
        contract_ended_at DATE""",
    "crm.contacts": """
        contact_id BIGINT PRIMARY KEY,
        tenant_id BIGINT NOT NULL,
        full_name VARCHAR(200) NOT NULL,
        email VARCHAR(254),
        phone VARCHAR(32),
        company VARCHAR(200),
        created_at TIMESTAMP NOT NULL,
        opted_out_at TIMESTAMP,
        FOREIGN KEY (tenant_id) REFERENCES crm.tenants (tenant_id)""",
    "crm.activities": """
        activity_id BIGINT PRIMARY KEY,
        contact_id BIGINT NOT NULL,
        occurred_at TIMESTAMP NOT NULL,
        kind VARCHAR(20) NOT NULL,
        note VARCHAR(500),
        FOREIGN KEY (contact_id) REFERENCES crm.contacts (contact_id)""",
    "hr.candidates": """
        candidate_id BIGINT PRIMARY KEY,
        full_name VARCHAR(200) NOT NULL,
        email VARCHAR(254) NOT NULL UNIQUE,
        phone VARCHAR(32),
        position VARCHAR(100) NOT NULL,
        applied_at DATE NOT NULL,
        decision_at DATE,
        outcome VARCHAR(12),
        keep_on_file_consent BOOLEAN NOT NULL""",
    "hr.employees": """
        employee_id BIGINT PRIMARY KEY,
        full_name VARCHAR(200) NOT NULL,
        national_id VARCHAR(20) NOT NULL,
        hired_at DATE NOT NULL,
        employed_until DATE""",
    "hr.payroll": """
        payslip_id BIGINT PRIMARY KEY,
        employee_id BIGINT NOT NULL,
        paid_on DATE NOT NULL,
        gross DECIMAL(12,2) NOT NULL,
        FOREIGN KEY (employee_id) REFERENCES hr.employees (employee_id)""",
    "web.access_logs": """
        log_id BIGINT PRIMARY KEY,
        logged_at TIMESTAMP NOT NULL,
        ip_address VARCHAR(45) NOT NULL,
        user_agent VARCHAR(400),
        path VARCHAR(200) NOT NULL,
        status INTEGER NOT NULL""",
    "telecom.subscribers": """
        msisdn_id BIGINT PRIMARY KEY,
        msisdn VARCHAR(16) NOT NULL,
        national_id VARCHAR(20) NOT NULL,
        full_name VARCHAR(200) NOT NULL,
        activated_at DATE NOT NULL""",
    "telecom.traffic_records": """
        record_id BIGINT PRIMARY KEY,
        msisdn_id BIGINT NOT NULL,
        started_at TIMESTAMP NOT NULL,
        cell_id VARCHAR(40),
        latitude DOUBLE PRECISION,
        longitude DOUBLE PRECISION,
        device_imei VARCHAR(16),
        bytes_up BIGINT NOT NULL,
        bytes_down BIGINT NOT NULL,
        FOREIGN KEY (msisdn_id) REFERENCES telecom.subscribers (msisdn_id)""",
}

TABLES: tuple[str, ...] = tuple(_TABLES)
"""Every demo table, parents before children (the order to insert in)."""

SCHEMAS: tuple[str, ...] = tuple(dict.fromkeys(t.split(".")[0] for t in _TABLES))

SCHEMA_DDL: list[str] = [f"CREATE SCHEMA IF NOT EXISTS {s}" for s in SCHEMAS] + [
    f"CREATE TABLE {name} ({' '.join(body.split())})" for name, body in _TABLES.items()
]

CROSS_SCHEMA_FOREIGN_KEYS: list[str] = [
    "ALTER TABLE telephony.call_records ADD FOREIGN KEY (user_id) REFERENCES app.users (user_id)",
    "ALTER TABLE telephony.call_records ADD FOREIGN KEY (org_id) REFERENCES app.organisations (org_id)",
]
"""Keys DuckDB cannot declare (across schemas); added on stores that can."""

SOFT_FOREIGN_KEYS: list[tuple[str, str, str, str]] = [
    ("telephony.call_records", "user_id", "app.users", "user_id"),
    ("telephony.call_records", "org_id", "app.organisations", "org_id"),
]


def table_columns(table: str) -> list[str]:
    """The column names of a demo table, in DDL order."""
    out = []
    for line in _TABLES[table].strip().splitlines():
        first = line.split()[0]
        if first not in ("FOREIGN", "PRIMARY", "UNIQUE", "CHECK"):
            out.append(first)
    return out


def foreign_keys() -> list[tuple[str, str, str, str]]:
    """(table, column, parent table, parent column) of every declared and soft reference."""
    out = []
    for table, body in _TABLES.items():
        for m in re.finditer(r"FOREIGN KEY \((\w+)\) REFERENCES ([\w.]+) \((\w+)\)", body):
            out.append((table, m.group(1), m.group(2), m.group(3)))
    return out + SOFT_FOREIGN_KEYS


# --- randomness and pools ---------------------------------------------------------------------

_YEAR = 365.25
COUNTRIES = ("NO", "SE", "DK")
_FAKER_LOCALE = {"NO": "no_NO", "SE": "sv_SE", "DK": "da_DK"}  # Faker's Norwegian is no_NO
_LOCALE_TAG = {"NO": "nb_NO", "SE": "sv_SE", "DK": "da_DK"}
_TLD = {"NO": "no", "SE": "se", "DK": "dk"}
_CURRENCY = {"NO": "NOK", "SE": "SEK", "DK": "DKK"}


class _Random:
    """A seeded stream of random numbers, drawn a whole column at a time (no numpy needed:
    `randbytes` is deterministic for a seed and Arrow reads its bytes as uint64)."""

    def __init__(self, seed: int, stream: str):
        self._r = random.Random(f"retention-jobs-demo:{seed}:{stream}")

    def _u64(self, n: int) -> pl.Series:
        buf = pa.py_buffer(self._r.randbytes(8 * n))
        return cast(pl.Series, pl.from_arrow(pa.Array.from_buffers(pa.uint64(), n, [None, buf])))

    def ints(self, n: int) -> pl.Series:
        """Non-negative Int64."""
        return (self._u64(n) // 2).cast(pl.Int64)

    def below(self, n: int, k: int | pl.Series) -> pl.Series:
        return self.ints(n) % k

    def uniform(self, n: int) -> pl.Series:
        """Floats in [0, 1)."""
        return (self._u64(n) // 2048).cast(pl.Float64) * 2.0**-53

    def choice(
        self, n: int, values: tuple | list, weights: tuple | list | None = None
    ) -> pl.Series:
        weights = weights or [1] * len(values)
        total = sum(weights)
        edges, acc = [], 0.0
        for w in weights[:-1]:
            acc += w / total
            edges.append(acc)
        idx = pl.Series(edges, dtype=pl.Float64).search_sorted(self.uniform(n), side="right")
        return pl.Series(values).gather(idx)


def _slug(e: pl.Expr) -> pl.Expr:
    return (
        e.str.to_lowercase()
        .str.replace_many(["æ", "ø", "å", "ä", "ö", "é", "ü"], ["ae", "o", "a", "a", "o", "e", "u"])
        .str.replace_all(r"[^a-z0-9]", "")
    )


_POOL_SIZES = {
    "first": 400,
    "last": 800,
    "street": 1000,
    "place": 400,
    "company": 250,
    "domain": 30,
}


@lru_cache(maxsize=4)
def _pools(seed: int) -> dict[str, tuple[pl.DataFrame, dict[str, int], dict[str, int]]]:
    """Per field: the values of all locales in one frame, with each locale's offset and size."""
    from faker import Faker

    parts: dict[str, list[pl.DataFrame]] = {f: [] for f in _POOL_SIZES}
    for i, country in enumerate(COUNTRIES):
        fk = Faker(_FAKER_LOCALE[country])
        fk.seed_instance(seed * 1009 + i)
        make = {
            "first": lambda fk=fk: {"value": fk.first_name()},
            "last": lambda fk=fk: {"value": fk.last_name()},
            "street": lambda fk=fk: {"value": fk.street_address()},
            "place": lambda fk=fk: {"postal_code": fk.postcode(), "city": fk.city()},
            "company": lambda fk=fk: {"value": fk.company()},
            "domain": lambda fk=fk: {"value": fk.free_email_domain()},
        }
        for field, size in _POOL_SIZES.items():
            df = pl.DataFrame([make[field]() for _ in range(size)])
            if field == "domain":
                df = df.unique(maintain_order=True)
            if "value" in df.columns:
                df = df.with_columns(slug=_slug(pl.col("value")))
            parts[field].append(df)
    out = {}
    for field, frames in parts.items():
        sizes = {c: f.height for c, f in zip(COUNTRIES, frames, strict=True)}
        offsets, acc = {}, 0
        for c in COUNTRIES:
            offsets[c], acc = acc, acc + sizes[c]
        out[field] = (pl.concat(frames), offsets, sizes)
    return out


@lru_cache(maxsize=4)
def _user_agents(seed: int) -> tuple[str, ...]:
    from faker import Faker

    fk = Faker("en_US")
    fk.seed_instance(seed)
    return tuple(dict.fromkeys(fk.user_agent() for _ in range(150)))


class _Gen:
    """Shared helpers: as-of clock arithmetic and picking from the pools by country."""

    def __init__(self, rows: int, as_of: date, seed: int):
        self.rows, self.as_of, self.seed = rows, as_of, seed
        self.midnight = datetime.combine(as_of, time(0))
        self.pools = _pools(seed)

    def random(self, stream: str) -> _Random:
        return _Random(self.seed, stream)

    def day(self, days_ago: pl.Expr) -> pl.Expr:
        """The date `days_ago` whole days before the as-of date."""
        return pl.lit(self.as_of) - pl.duration(days=days_ago.floor().cast(pl.Int64))

    def moment(self, days_ago: pl.Expr) -> pl.Expr:
        """A timestamp `days_ago` (fractional) days before the as-of date's midnight, always before it."""
        return pl.lit(self.midnight) - pl.duration(
            seconds=(days_ago * 86400).floor().cast(pl.Int64) + 1
        )

    def pick(self, field: str, country: pl.Series, rnd: _Random) -> pl.DataFrame:
        frame, offsets, sizes = self.pools[field]
        off = country.replace_strict(offsets, return_dtype=pl.Int64)
        size = country.replace_strict(sizes, return_dtype=pl.Int64)
        return frame.select(pl.all().gather(off + rnd.below(len(country), size)))

    def person(self, country: pl.Series, rnd: _Random) -> pl.DataFrame:
        """full_name, and an e-mail address made from it at a free mail domain of the locale."""
        first, last = self.pick("first", country, rnd), self.pick("last", country, rnd)
        domain = self.pick("domain", country, rnd)["value"]
        n = len(country)
        digits = pl.Series(rnd.below(n, 100)).cast(pl.String)
        with_digits = rnd.uniform(n) < 0.4
        local = first["slug"] + "." + last["slug"]
        local = pl.select(pl.when(with_digits).then(local + digits).otherwise(local)).to_series()
        return pl.DataFrame(
            {
                "full_name": first["value"] + " " + last["value"],
                "local": local,
                "email": local + "@" + domain,
            }
        )

    @staticmethod
    def phone(country: pl.Series, rnd: _Random) -> pl.Series:
        x = rnd.ints(len(country))
        return pl.select(
            pl.when(country == "NO")
            .then(pl.lit("+47") + (40_000_000 + x % 60_000_000).cast(pl.String))
            .when(country == "SE")
            .then(pl.lit("+467") + (x % 100_000_000).cast(pl.String).str.zfill(8))
            .otherwise(pl.lit("+45") + (20_000_000 + x % 80_000_000).cast(pl.String))
        ).to_series()

    @staticmethod
    def national_id(birth: pl.Series, country: pl.Series, rnd: _Random) -> pl.Series:
        """Shaped like the country's number and matching the birth date; not valid (no checksum)."""
        x = rnd.ints(len(country))
        return pl.select(
            pl.when(country == "NO")
            .then(birth.dt.strftime("%d%m%y") + (x % 100_000).cast(pl.String).str.zfill(5))
            .when(country == "SE")
            .then(birth.dt.strftime("%Y%m%d-") + (x % 10_000).cast(pl.String).str.zfill(4))
            .otherwise(birth.dt.strftime("%d%m%y-") + (x % 10_000).cast(pl.String).str.zfill(4))
        ).to_series()


def _number(df: pl.DataFrame, name: str, by: list[str]) -> pl.DataFrame:
    """Sort by `by` (time first) and number the rows from 1: ids grow with time, as they do."""
    return (
        df.sort(by, maintain_order=True)
        .with_row_index(name, offset=1)
        .with_columns(pl.col(name).cast(pl.Int64))
    )


def _uniforms(rnd: _Random, n: int, *names: str) -> dict[str, pl.Series]:
    return {name: rnd.uniform(n) for name in names}


# --- tables ----------------------------------------------------------------------------------

_LISTS = ("product-news", "webinars", "release-notes", "events")


def _marketing(g: _Gen) -> dict[str, pl.DataFrame]:
    n = max(20, g.rows // 2)
    r = g.random("marketing")
    country = r.choice(n, COUNTRIES, (0.6, 0.25, 0.15))
    p = g.person(country, r)
    s = pl.DataFrame(
        {
            "subscriber_id": pl.int_range(1, n + 1, eager=True),
            "email": p["email"],
            "full_name": p["full_name"],
            "country": country,
            "consent_source": r.choice(
                n, ("signup_form", "checkout", "event", "webinar"), (6, 2, 1, 1)
            ),
            "k": 1 + r.below(n, len(_LISTS)),
            "first_list": r.below(n, len(_LISTS)),
            **_uniforms(r, n, "u_since", "u_churn", "u_name"),
        }
    ).with_columns(
        since=1 + pl.col("u_since") * 8 * _YEAR,
        # about one in five has left every list: those are the rows the newsletter rule erases
        churned=pl.col("u_churn") < 0.2,
        full_name=pl.when(pl.col("u_name") < 0.1).then(None).otherwise(pl.col("full_name")),
    )
    subscribers = s.select(
        "subscriber_id",
        "email",
        "full_name",
        locale=pl.col("country").replace_strict(_LOCALE_TAG, return_dtype=pl.String),
        subscribed_at=g.moment(pl.col("since")),
        consent_source="consent_source",
    )
    ls = s.select(
        "subscriber_id", "since", "churned", "first_list", j=pl.int_ranges(0, "k")
    ).explode("j")
    m = ls.height
    ls = ls.with_columns(**_uniforms(r, m, "u_join", "u_unsub", "u_left")).with_columns(
        joined=pl.when(pl.col("j") == 0)
        .then(pl.col("since"))
        .otherwise(pl.col("since") * (1 - 0.5 * pl.col("u_join"))),
        unsub=pl.col("churned") | ((pl.col("j") > 0) & (pl.col("u_unsub") < 0.3)),
    )
    lists = (
        ls.select(
            "subscriber_id",
            list_name=((pl.col("first_list") + pl.col("j")) % len(_LISTS)).replace_strict(
                dict(enumerate(_LISTS)), return_dtype=pl.String
            ),
            status=pl.when(pl.col("unsub"))
            .then(pl.lit("unsubscribed"))
            .otherwise(pl.lit("subscribed")),
            changed_at=g.moment(
                pl.when(pl.col("unsub"))
                .then(pl.col("joined") * pl.col("u_left"))
                .otherwise(pl.col("joined"))
            ),
        )
        .with_row_index("subscription_id", offset=1)
        .with_columns(pl.col("subscription_id").cast(pl.Int64))
    )
    return {"marketing.newsletter_subscribers": subscribers, "marketing.list_subscriptions": lists}


def _app(g: _Gen) -> dict[str, pl.DataFrame]:
    r = g.random("app")
    n_org = max(8, g.rows // 100)
    oc = r.choice(n_org, COUNTRIES, (0.7, 0.15, 0.15))
    company = g.pick("company", oc, r)
    org = pl.DataFrame(
        {
            "org_id": pl.int_range(1, n_org + 1, eager=True),
            "name": company["value"],
            "slug": company["slug"],
            "country": oc,
            **_uniforms(r, n_org, "u_start", "u_end", "u_ended"),
        }
    ).with_columns(start_ago=(60 + pl.col("u_start") * 9 * _YEAR).floor())
    org = org.with_columns(
        end_ago=pl.when(pl.col("u_ended") < 0.22).then(
            (1 + pl.col("u_end") * pl.min_horizontal(pl.col("start_ago") - 30, 6 * _YEAR)).floor()
        )
    )
    organisations = org.select(
        "org_id",
        "name",
        "country",
        agreement_started_at=g.day(pl.col("start_ago")),
        agreement_ended_at=g.day(pl.col("end_ago")),
    )

    n_u = max(30, g.rows * 2 // 5)
    uc = pl.DataFrame({"org_id": 1 + r.below(n_u, n_org)}).join(
        org, on="org_id", how="left", maintain_order="left"
    )
    p = g.person(uc["country"], r)
    u = (
        pl.DataFrame(
            {
                "user_id": pl.int_range(1, n_u + 1, eager=True),
                "org_id": uc["org_id"],
                "email": p["local"]
                + "@"
                + uc["slug"]
                + "."
                + uc["country"].replace_strict(_TLD, return_dtype=pl.String),
                "full_name": p["full_name"],
                "phone": g.phone(uc["country"], r),
                "start_ago": uc["start_ago"],
                "end_ago": uc["end_ago"],
                **_uniforms(
                    r,
                    n_u,
                    "u_created",
                    "u_closed",
                    "u_close_at",
                    "u_pic",
                    "u_withdraw",
                    "u_withdraw_at",
                ),
            }
        )
        .with_columns(
            created_ago=pl.col("end_ago").fill_null(0)
            + pl.col("u_created") * (pl.col("start_ago") - pl.col("end_ago").fill_null(0)),
        )
        .with_columns(
            # When the employer's agreement ends most accounts are closed with it; some are
            # forgotten, which the saas-users rule on the organisation's end date catches.
            closed_ago=pl.when(pl.col("end_ago").is_not_null() & (pl.col("u_closed") < 0.85))
            .then(
                pl.min_horizontal(
                    pl.col("created_ago"), pl.col("end_ago") + pl.col("u_close_at") * 20
                )
            )
            .when(pl.col("end_ago").is_null() & (pl.col("u_closed") < 0.15))
            .then(pl.col("u_close_at") * pl.col("created_ago")),
            has_picture=pl.col("u_pic") < 0.65,
        )
        .with_columns(
            withdrawn_ago=pl.when(pl.col("has_picture") & (pl.col("u_withdraw") < 0.15)).then(
                pl.col("closed_ago").fill_null(0)
                + pl.col("u_withdraw_at")
                * (pl.col("created_ago") - pl.col("closed_ago").fill_null(0))
            ),
        )
    )
    users = u.select(
        "user_id",
        "org_id",
        "email",
        "full_name",
        "phone",
        profile_picture_url=pl.when(pl.col("has_picture")).then(
            pl.lit("https://cdn.miros.example/avatars/")
            + pl.col("user_id").cast(pl.String)
            + ".jpg"
        ),
        created_at=g.moment(pl.col("created_ago")),
        photo_consent_withdrawn_at=g.moment(pl.col("withdrawn_ago")),
        account_closed_at=g.moment(pl.col("closed_ago")),
    )

    n_p = max(10, g.rows // 40)
    pc = r.choice(n_p, COUNTRIES, (0.7, 0.15, 0.15))
    pp, company = g.person(pc, r), g.pick("company", pc, r)
    partners = (
        pl.DataFrame(
            {
                "contact_id": pl.int_range(1, n_p + 1, eager=True),
                "company": company["value"],
                "full_name": pp["full_name"],
                "email": pp["local"]
                + "@"
                + company["slug"]
                + "."
                + pc.replace_strict(_TLD, return_dtype=pl.String),
                "phone": g.phone(pc, r),
                "country": pc,
                **_uniforms(r, n_p, "u_start", "u_ended", "u_end"),
            }
        )
        .with_columns(start_ago=(30 + pl.col("u_start") * 8 * _YEAR).floor())
        .with_columns(
            agreement_started_at=g.day(pl.col("start_ago")),
            agreement_ended_at=g.day(
                pl.when(pl.col("u_ended") < 0.45).then(pl.col("u_end") * pl.col("start_ago"))
            ),
        )
        .select(table_columns("app.partner_contacts"))
    )

    calls = _calls(
        g,
        r,
        u.join(org.select("org_id", "country"), on="org_id", how="left", maintain_order="left"),
        n_org,
    )
    return {
        "app.organisations": organisations,
        "app.users": users,
        "app.partner_contacts": partners,
        "telephony.call_records": calls,
    }


def _calls(g: _Gen, r: _Random, users: pl.DataFrame, n_org: int) -> pl.DataFrame:
    n = max(50, g.rows * 2)
    pick = r.below(n, users.height)
    c = users.select(
        pl.col("user_id", "org_id", "phone", "country", "created_ago", "closed_ago").gather(pick)
    ).with_columns(**_uniforms(r, n, "u_when", "u_queue", "u_dur"))
    c = c.with_columns(
        hi=pl.col("closed_ago").fill_null(0),
        lo=pl.min_horizontal(pl.col("created_ago"), 3 * _YEAR),
    ).with_columns(
        lo=pl.when(pl.col("lo") < pl.col("hi")).then(pl.col("created_ago")).otherwise(pl.col("lo"))
    )
    c = c.with_columns(
        ago=pl.col("hi") + pl.col("u_when") * (pl.col("lo") - pl.col("hi")),
        # calls to a queue nobody picked up have no user
        user_id=pl.when(pl.col("u_queue") < 0.05).then(None).otherwise(pl.col("user_id")),
        direction=r.choice(n, ("inbound", "outbound", "internal"), (5, 4, 1)),
        other=g.phone(c["country"], r),
        switchboard=g.phone(c["country"], r),
    ).with_columns(
        own=pl.when(pl.col("user_id").is_null())
        .then(pl.col("switchboard"))
        .otherwise(pl.col("phone"))
    )
    c = c.with_columns(
        caller_number=pl.when(pl.col("direction") == "inbound")
        .then(pl.col("other"))
        .otherwise(pl.col("own")),
        callee_number=pl.when(pl.col("direction") == "inbound")
        .then(pl.col("own"))
        .otherwise(pl.col("other")),
        started_at=g.moment(pl.col("ago")),
        duration_s=(5 - 200 * (1 - pl.col("u_dur")).log()).cast(pl.Int32),
    )
    return _number(c, "call_id", ["started_at"]).select(table_columns("telephony.call_records"))


_PRODUCTS = {
    "Standard": 1490.0,
    "Pluss": 2490.0,
    "Premium": 3990.0,
    "Bedrift": 8900.0,
    "Service": 690.0,
}
_BUREAUS = {
    "NO": ("Experian", "Dun & Bradstreet"),
    "SE": ("UC", "Creditsafe"),
    "DK": ("Experian", "Creditsafe"),
}


def _billing(g: _Gen) -> dict[str, pl.DataFrame]:
    n = max(50, g.rows)
    r = g.random("billing")
    country = r.choice(n, COUNTRIES, (0.5, 0.3, 0.2))
    p, street, place = (
        g.person(country, r),
        g.pick("street", country, r),
        g.pick("place", country, r),
    )
    c = pl.DataFrame(
        {
            "customer_id": pl.int_range(1, n + 1, eager=True),
            "full_name": p["full_name"],
            "email": p["email"],
            "phone": g.phone(country, r),
            "street_address": street["value"],
            "postal_code": place["postal_code"],
            "city": place["city"],
            "country": country,
            **_uniforms(
                r,
                n,
                "u_status",
                "u_end",
                "u_span",
                "u_dormant",
                "u_last",
                "u_age",
                "u_consent",
                "u_subs",
                "u_oneoff",
                "u_check",
                "u_recheck",
            ),
        }
    ).with_columns(closed=pl.col("u_status") < 0.35)
    c = (
        c.with_columns(
            # closed customers ended up to 8.5 years ago: the oldest are past year end + 5 years
            end_ago=pl.when(pl.col("closed")).then((1 + pl.col("u_end") * 8.5 * _YEAR).floor()),
        )
        .with_columns(
            start_ago=pl.when(pl.col("closed"))
            .then(
                pl.min_horizontal(
                    pl.col("end_ago") + (120 + pl.col("u_span") * (6 * _YEAR - 120)).floor(),
                    pl.max_horizontal(pl.col("end_ago") + 60, int(10 * _YEAR)),
                )
            )
            .otherwise((30 + pl.col("u_span") * (9 * _YEAR - 30)).floor()),
        )
        .with_columns(
            # active but silent for over three years: the marketing profile is reduced
            dormant=~pl.col("closed")
            & (pl.col("u_dormant") < 0.3)
            & (pl.col("start_ago") > 3.3 * _YEAR),
        )
        .with_columns(
            last_ago=pl.when(pl.col("closed"))
            .then(pl.col("end_ago"))
            .when(pl.col("dormant"))
            .then((3.05 * _YEAR + pl.col("u_last") * (pl.col("start_ago") - 3.05 * _YEAR)).floor())
            .otherwise(0.0),
            birth_date=g.day(18 * _YEAR + pl.col("u_age") * 67 * _YEAR),
        )
    )
    c = c.with_columns(national_id=g.national_id(c["birth_date"], country, r))

    s = (
        c.select(
            "customer_id",
            "start_ago",
            "last_ago",
            ongoing=~pl.col("closed") & ~pl.col("dormant"),
            k=1 + (pl.col("u_subs") < 0.5).cast(pl.Int64) + (pl.col("u_subs") < 0.2).cast(pl.Int64),
        )
        .with_columns(j=pl.int_ranges(0, "k"))
        .explode("j")
    )
    m = s.height
    s = s.with_columns(
        product=r.choice(m, tuple(_PRODUCTS), (5, 3, 2, 1, 2)),
        **_uniforms(r, m, "u_start", "u_open", "u_end"),
    )
    s = s.with_columns(
        sub_start=pl.when(pl.col("j") == 0)
        .then(pl.col("start_ago"))
        .otherwise(
            pl.col("start_ago")
            - (pl.col("u_start") * (pl.col("start_ago") - pl.col("last_ago")) * 0.8).floor()
        ),
    ).with_columns(
        sub_end=pl.when(pl.col("ongoing") & ((pl.col("j") == 0) | (pl.col("u_open") < 0.5)))
        .then(None)
        .when(pl.col("j") == 0)
        .then(pl.col("last_ago"))
        .otherwise(
            pl.col("sub_start")
            - (pl.col("u_end") * (pl.col("sub_start") - pl.col("last_ago"))).floor()
        ),
    )
    s = _number(s, "subscription_id", ["customer_id", "j"])
    subscriptions = s.select(
        "subscription_id",
        "customer_id",
        "product",
        started_at=g.day(pl.col("sub_start")),
        ended_at=g.day(pl.col("sub_end")),
    )

    # yearly invoices over each subscription, plus the odd one-off purchase
    inv = (
        s.select(
            "customer_id",
            "subscription_id",
            "product",
            "sub_start",
            dur=pl.col("sub_start") - pl.col("sub_end").fill_null(0),
        )
        .with_columns(k=(pl.col("dur") // 365 + 1).clip(1, 10).cast(pl.Int64))
        .with_columns(i=pl.int_ranges(0, "k"))
        .explode("i")
    )
    inv = (
        inv.with_columns(u=r.uniform(inv.height))
        .with_columns(
            ago=pl.col("sub_start")
            - ((pl.col("i") + pl.col("u")) * pl.col("dur") / pl.col("k")).floor(),
            base=pl.col("product").replace_strict(_PRODUCTS, return_dtype=pl.Float64),
        )
        .select("customer_id", "subscription_id", "ago", "base", "i")
    )
    oneoff = c.filter(pl.col("u_oneoff") < 0.3)
    oneoff = oneoff.select(
        "customer_id",
        subscription_id=pl.lit(None, pl.Int64),
        ago=pl.col("last_ago")
        + (r.uniform(oneoff.height) * (pl.col("start_ago") - pl.col("last_ago"))).floor(),
        base=pl.lit(450.0),
        i=pl.lit(0, pl.Int64),
    )
    inv = pl.concat([inv, oneoff]).join(
        c.select("customer_id", "full_name", "street_address", "postal_code", "city", "country"),
        on="customer_id",
        how="left",
    )
    inv = _number(
        inv.with_columns(neg_ago=-pl.col("ago")),
        "invoice_id",
        ["neg_ago", "customer_id", "subscription_id", "i"],
    )
    invoices = inv.with_columns(u=r.uniform(inv.height)).select(
        "invoice_id",
        "customer_id",
        "subscription_id",
        invoice_date=g.day(pl.col("ago")),
        amount=(pl.col("base") * (0.9 + 0.2 * pl.col("u"))).round(2).cast(pl.Decimal(12, 2)),
        currency=pl.col("country").replace_strict(_CURRENCY, return_dtype=pl.String),
        country="country",
        customer_name="full_name",
        billing_address=pl.concat_str(
            [
                pl.col("street_address"),
                pl.lit(", "),
                pl.col("postal_code"),
                pl.lit(" "),
                pl.col("city"),
            ]
        ),
    )
    last = inv.group_by("customer_id").agg(last_ago=pl.col("ago").min())
    customers = (
        c.drop("last_ago")
        .join(last, on="customer_id", how="left", maintain_order="left")
        .select(
            "customer_id",
            "full_name",
            "email",
            "phone",
            "street_address",
            "postal_code",
            "city",
            "birth_date",
            "national_id",
            "country",
            status=pl.when(pl.col("closed")).then(pl.lit("closed")).otherwise(pl.lit("active")),
            customer_since=g.day(pl.col("start_ago")),
            relationship_ended_at=g.day(pl.col("end_ago")),
            last_purchase_at=g.day(pl.col("last_ago")),
            marketing_consent=pl.col("u_consent") < 0.4,
        )
    )

    first = c.filter(pl.col("u_check") < 0.65)
    first = first.select(
        "customer_id", "country", ago=pl.col("start_ago") + (r.uniform(first.height) * 14).floor()
    )
    again = c.filter(pl.col("u_recheck") < 0.15)
    again = again.select(
        "customer_id",
        "country",
        ago=pl.col("last_ago")
        + (r.uniform(again.height) * (pl.col("start_ago") - pl.col("last_ago"))).floor(),
    )
    cc = pl.concat([first, again]).with_columns(neg_ago=-pl.col("ago"))
    cc = _number(cc, "check_id", ["neg_ago", "customer_id"])
    cc = cc.with_columns(
        b=r.below(cc.height, 2), score=(1 + r.below(cc.height, 100)).cast(pl.Int32)
    )
    credit_checks = cc.select(
        "check_id",
        "customer_id",
        checked_at=g.day(pl.col("ago")),
        bureau=pl.when(pl.col("b") == 0)
        .then(
            pl.col("country").replace_strict(
                {k: v[0] for k, v in _BUREAUS.items()}, return_dtype=pl.String
            )
        )
        .otherwise(
            pl.col("country").replace_strict(
                {k: v[1] for k, v in _BUREAUS.items()}, return_dtype=pl.String
            )
        ),
        score="score",
    )
    return {
        "billing.customers": customers,
        "billing.subscriptions": subscriptions,
        "billing.invoices": invoices,
        "billing.credit_checks": credit_checks,
    }


_KINDS = ("email", "call", "meeting", "event", "note")
_NOTES = (
    "Uppföljning av offert",
    "Demo bokad",
    "Skickade prislista",
    "Träffades på mässan",
    "Ringde, inget svar",
    "Frågade om integrationer",
    "Bad om referenskund",
    None,
)


def _crm(g: _Gen) -> dict[str, pl.DataFrame]:
    r = g.random("crm")
    n_t = max(5, g.rows // 200)
    tc = r.choice(n_t, COUNTRIES, (0.2, 0.6, 0.2))
    t = (
        pl.DataFrame(
            {
                "tenant_id": pl.int_range(1, n_t + 1, eager=True),
                "name": g.pick("company", tc, r)["value"],
                **_uniforms(r, n_t, "u_start", "u_ended", "u_end"),
            }
        )
        .with_columns(
            # tenant 1 is the vendor's own CRM: the data it controls itself
            own_use=pl.col("tenant_id") == 1,
            start_ago=pl.when(pl.col("tenant_id") == 1)
            .then(10 * _YEAR)
            .otherwise(60 + pl.col("u_start") * 9 * _YEAR)
            .floor(),
        )
        .with_columns(
            name=pl.when(pl.col("own_use"))
            .then(pl.lit("Mira Network AB"))
            .otherwise(pl.col("name")),
            end_ago=pl.when(~pl.col("own_use") & (pl.col("u_ended") < 0.25)).then(
                (
                    1 + pl.col("u_end") * pl.min_horizontal(pl.col("start_ago") - 30, 5 * _YEAR)
                ).floor()
            ),
        )
    )
    tenants = t.select(
        "tenant_id",
        "name",
        "own_use",
        contract_started_at=g.day(pl.col("start_ago")),
        contract_ended_at=g.day(pl.col("end_ago")),
    )

    n = max(40, g.rows // 2)
    own = r.uniform(n) < 0.3
    tenant_id = pl.select(pl.when(own).then(1).otherwise(2 + r.below(n, n_t - 1))).to_series()
    cc = r.choice(n, COUNTRIES, (0.15, 0.7, 0.15))
    p, company = g.person(cc, r), g.pick("company", cc, r)
    c = pl.DataFrame(
        {
            "contact_id": pl.int_range(1, n + 1, eager=True),
            "tenant_id": tenant_id,
            "full_name": p["full_name"],
            "email": p["email"],
            "phone": g.phone(cc, r),
            "company": company["value"],
            **_uniforms(r, n, "u_last", "u_first", "u_opt", "u_opt_at", "u_k"),
        }
    ).join(
        t.select("tenant_id", "own_use", "start_ago", "end_ago"),
        on="tenant_id",
        how="left",
        maintain_order="left",
    )
    c = (
        c.with_columns(
            last_ago=pl.when(pl.col("own_use"))
            .then(6 * _YEAR * pl.col("u_last") ** 2)
            .otherwise(
                pl.col("end_ago").fill_null(0)
                + 0.5 * pl.col("u_last") * (pl.col("start_ago") - pl.col("end_ago").fill_null(0))
            ),
        )
        .with_columns(first_ago=pl.col("last_ago") + pl.col("u_first") * 3 * _YEAR)
        .with_columns(
            opted_ago=pl.when(
                pl.col("u_opt") < pl.when(pl.col("own_use")).then(0.1).otherwise(0.05)
            ).then(pl.col("u_opt_at") * pl.col("first_ago")),
        )
    )
    contacts = c.select(
        "contact_id",
        "tenant_id",
        "full_name",
        "email",
        "phone",
        "company",
        created_at=g.moment(pl.col("first_ago") + 1),
        opted_out_at=g.moment(pl.col("opted_ago")),
    )
    a = c.select(
        "contact_id",
        "last_ago",
        "first_ago",
        j=pl.int_ranges(0, 1 + (pl.col("u_k") * 7).cast(pl.Int64)),
    )
    a = a.explode("j")
    m = a.height
    a = a.with_columns(
        u=r.uniform(m), kind=r.choice(m, _KINDS, (5, 3, 2, 1, 2)), note=r.choice(m, _NOTES)
    )
    a = a.with_columns(
        ago=pl.when(pl.col("j") == 0)
        .then(pl.col("last_ago"))
        .otherwise(pl.col("last_ago") + pl.col("u") * (pl.col("first_ago") - pl.col("last_ago")))
    )
    a = _number(
        a.with_columns(occurred_at=g.moment(pl.col("ago"))),
        "activity_id",
        ["occurred_at", "contact_id"],
    )
    return {
        "crm.tenants": tenants,
        "crm.contacts": contacts,
        "crm.activities": a.select(table_columns("crm.activities")),
    }


def _month_index(d: pl.Expr) -> pl.Expr:
    return d.dt.year() * 12 + d.dt.month() - 1


_POSITIONS = ("Säljare", "Systemutvecklare", "Kundtjänst", "Projektledare", "Ekonom", "Konsult")


def _hr(g: _Gen) -> dict[str, pl.DataFrame]:
    r = g.random("hr")
    n = max(20, g.rows // 10)
    country = r.choice(n, COUNTRIES, (0.1, 0.85, 0.05))
    p = g.person(country, r)
    ids = pl.int_range(1, n + 1, eager=True)
    c = (
        pl.DataFrame(
            {
                "candidate_id": ids,
                "full_name": p["full_name"],
                # unique: nobody references candidates, so fakes must keep the column unique instead
                "email": p["local"]
                + "."
                + ids.cast(pl.String)
                + "@"
                + g.pick("domain", country, r)["value"],
                "phone": g.phone(country, r),
                "position": r.choice(n, _POSITIONS),
                "outcome": r.choice(n, ("hired", "rejected", "withdrawn"), (1, 8, 1)),
                **_uniforms(r, n, "u_applied", "u_decide", "u_stale", "u_keep"),
            }
        )
        .with_columns(applied_ago=(pl.col("u_applied") * 8 * _YEAR).floor())
        .with_columns(
            decision_ago=pl.col("applied_ago") - (14 + pl.col("u_decide") * 100).floor(),
        )
        .with_columns(
            open=(pl.col("decision_ago") < 0) | (pl.col("u_stale") < 0.03),
        )
    )
    candidates = c.select(
        "candidate_id",
        "full_name",
        "email",
        "phone",
        "position",
        applied_at=g.day(pl.col("applied_ago")),
        decision_at=g.day(pl.when(~pl.col("open")).then(pl.col("decision_ago"))),
        outcome=pl.when(~pl.col("open")).then(pl.col("outcome")),
        keep_on_file_consent=pl.col("u_keep") < 0.25,
    )

    n_e = max(10, g.rows // 50)
    se = pl.Series(["SE"] * n_e)
    e = (
        pl.DataFrame(
            {
                "employee_id": pl.int_range(1, n_e + 1, eager=True),
                "full_name": g.person(se, r)["full_name"],
                **_uniforms(r, n_e, "u_hired", "u_left", "u_until", "u_age", "u_salary"),
            }
        )
        .with_columns(hired_ago=(30 + pl.col("u_hired") * 12 * _YEAR).floor())
        .with_columns(
            until_ago=pl.when(pl.col("u_left") < 0.45).then(
                (pl.col("u_until") * (pl.col("hired_ago") - 30)).floor()
            ),
            birth=g.day(pl.col("hired_ago") + (20 + 45 * pl.col("u_age")) * _YEAR),
        )
        .with_columns(
            hired_at=g.day(pl.col("hired_ago")), employed_until=g.day(pl.col("until_ago"))
        )
    )
    e = e.with_columns(national_id=g.national_id(e["birth"], se, r))
    employees = e.select(table_columns("hr.employees"))

    # a payslip on the 25th of every month worked, up to the as-of date
    last_day = pl.coalesce(pl.col("employed_until"), pl.lit(g.as_of))
    pay = (
        e.select(
            "employee_id",
            salary=((320 + 430 * pl.col("u_salary")).round(0) * 100),
            first=_month_index(pl.col("hired_at"))
            + (pl.col("hired_at").dt.day() > 25).cast(pl.Int32),
            last=_month_index(last_day) - (last_day.dt.day() < 25).cast(pl.Int32),
        )
        .with_columns(
            idx=pl.int_ranges("first", pl.max_horizontal(pl.col("first"), pl.col("last") + 1))
        )
        .explode("idx")
    )
    pay = pay.filter(pl.col("idx").is_not_null()).with_columns(
        paid_on=pl.date(pl.col("idx") // 12, pl.col("idx") % 12 + 1, 25)
    )
    pay = _number(pay, "payslip_id", ["paid_on", "employee_id"])
    payroll = pay.with_columns(u=r.uniform(pay.height)).select(
        "payslip_id",
        "employee_id",
        "paid_on",
        gross=(pl.col("salary") * (1 + 0.08 * pl.col("u"))).round(2).cast(pl.Decimal(12, 2)),
    )
    return {"hr.candidates": candidates, "hr.employees": employees, "hr.payroll": payroll}


_PATHS = (
    "/",
    "/produkter",
    "/nettbutikk",
    "/nettbutikk/handlekurv",
    "/kundeservice",
    "/min-side",
    "/personvern",
    "/kontakt",
    "/om-oss",
)


def _web(g: _Gen) -> dict[str, pl.DataFrame]:
    r = g.random("web")
    n = max(50, g.rows * 3)
    o = [r.below(n, 223) + 1, r.below(n, 256), r.below(n, 256), 1 + r.below(n, 254)]
    logs = pl.DataFrame(
        {
            "ago": r.uniform(n) * 2 * _YEAR,
            "ip_address": pl.select(
                pl.concat_str([s.cast(pl.String) for s in o], separator=".")
            ).to_series(),
            "user_agent": pl.Series(_user_agents(g.seed)).gather(
                r.below(n, len(_user_agents(g.seed)))
            ),
            "path": r.choice(n, _PATHS, (10, 5, 5, 2, 3, 4, 1, 1, 1)),
            "status": r.choice(n, (200, 304, 301, 404, 500), (85, 6, 3, 5, 1)).cast(pl.Int32),
        }
    ).with_columns(logged_at=g.moment(pl.col("ago")))
    logs = _number(logs, "log_id", ["logged_at"])
    return {"web.access_logs": logs.select(table_columns("web.access_logs"))}


def _telecom(g: _Gen) -> dict[str, pl.DataFrame]:
    r = g.random("telecom")
    n = max(10, g.rows // 4)
    no = pl.Series(["NO"] * n)
    ids = pl.int_range(1, n + 1, eager=True)
    s = pl.DataFrame(
        {
            "msisdn_id": ids,
            # 37 is coprime to 58e6, so every id gets its own number
            "msisdn": "+47" + (41_000_000 + (ids * 37) % 58_000_000).cast(pl.String),
            "full_name": g.person(no, r)["full_name"],
            "imei": "35" + r.below(n, 10**13).cast(pl.String).str.zfill(13),
            **_uniforms(r, n, "u_age", "u_active"),
        }
    ).with_columns(
        birth=g.day((18 + 62 * pl.col("u_age")) * _YEAR),
        active_ago=(pl.col("u_active") * 10 * _YEAR).floor() + 1,
    )
    s = s.with_columns(national_id=g.national_id(s["birth"], no, r))
    subscribers = s.select(
        "msisdn_id", "msisdn", "national_id", "full_name", activated_at=g.day(pl.col("active_ago"))
    )

    n_cells = 500
    cells = pl.DataFrame(
        {
            "cell_id": "242-01-"
            + (1000 + r.below(n_cells, 9000)).cast(pl.String)
            + "-"
            + pl.int_range(1, n_cells + 1, eager=True).cast(pl.String),
            "latitude": (58.0 + 13.0 * r.uniform(n_cells)).round(5),
            "longitude": (5.0 + 20.0 * r.uniform(n_cells)).round(5),
        }
    )
    m = max(50, g.rows * 3)
    pick = r.below(m, n)
    tr = pl.concat(
        [
            s.select(pl.col("msisdn_id", "imei", "active_ago").gather(pick)),
            cells.select(pl.all().gather(r.below(m, n_cells))),
        ],
        how="horizontal",
    ).with_columns(**_uniforms(r, m, "u_when", "u_up", "u_down"))
    tr = tr.with_columns(
        started_at=g.moment(pl.col("u_when") * pl.min_horizontal(pl.col("active_ago"), _YEAR)),
        bytes_up=(-(1 - pl.col("u_up")).log() * 2e6).cast(pl.Int64),
        bytes_down=(-(1 - pl.col("u_down")).log() * 2e7).cast(pl.Int64),
    ).rename({"imei": "device_imei"})
    tr = _number(tr, "record_id", ["started_at"])
    return {
        "telecom.subscribers": subscribers,
        "telecom.traffic_records": tr.select(table_columns("telecom.traffic_records")),
    }


def build_tables(rows: int, as_of: date, seed: int = 7) -> dict[str, pl.DataFrame]:
    """Every demo table as a Polars frame, keyed schema.table, parents first. Deterministic:
    the same arguments give the same frames."""
    if rows < 1:
        raise ValueError("rows must be positive")
    g = _Gen(rows, as_of, seed)
    built: dict[str, pl.DataFrame] = {}
    for part in (_marketing, _app, _billing, _crm, _hr, _web, _telecom):
        built.update(part(g))
    return {name: built[name].select(table_columns(name)) for name in TABLES}


# --- holds -----------------------------------------------------------------------------------

DEMO_HOLDS: tuple[dict[str, str], ...] = (
    {"case_ref": "LIT-2026-17", "reason": "litigation", "placed_by": "legal@milas.example"},
    {"case_ref": "LIT-2025-41", "reason": "litigation", "placed_by": "legal@milas.example"},
    {
        "case_ref": "POL-2026-0311",
        "reason": "criminal_investigation",
        "placed_by": "legal@milas.example",
    },
)
"""The demo's legal holds; `demo_holds` attaches each to one customer."""


def demo_holds(tables: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    """Holds on the Norwegian customers whose relationship ended longest ago: expired under the
    customers policy (year end + 5 years) on any as-of date the data was built for, and their
    invoices too, so the held rows are exactly what the hold protects."""
    c = (
        tables["billing.customers"]
        .filter(
            (pl.col("status") == "closed")
            & (pl.col("country") == "NO")
            & pl.col("relationship_ended_at").is_not_null()
        )
        .sort("relationship_ended_at", "customer_id")
        .head(len(DEMO_HOLDS))
    )
    return [
        {"scope": "subject", "subject": f"customer:{cid}", **case}
        for cid, case in zip(c["customer_id"].to_list(), DEMO_HOLDS, strict=False)
    ]


def demo_holds_for(store: Store, session: Session) -> list[dict[str, Any]]:
    """`demo_holds` for a store the demo was loaded into."""
    t = sa.table(
        "customers",
        sa.column("customer_id"),
        sa.column("status"),
        sa.column("country"),
        sa.column("relationship_ended_at"),
        schema="billing",
    )
    df = cast(pl.DataFrame, pl.from_arrow(session.arrow(sa.select(*t.c))))
    return demo_holds({"billing.customers": df})


# --- loading ---------------------------------------------------------------------------------


def load_duckdb(path: str | Path, rows: int, as_of: date, seed: int = 7) -> dict[str, int]:
    """(Re)create the DuckDB file at `path` with the demo schema and data; row counts per table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in (path, path.with_name(path.name + ".wal")):
        old.unlink(missing_ok=True)
    tables = build_tables(rows, as_of, seed)
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN TRANSACTION")
        for ddl in SCHEMA_DDL:
            con.execute(ddl)
        for name, df in tables.items():
            con.register("demo_rows", df.to_arrow())
            cols = ", ".join(df.columns)
            con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM demo_rows")
            con.unregister("demo_rows")
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {name: df.height for name, df in tables.items()}


def load_store(store: Store, rows: int, as_of: date, seed: int = 7) -> dict[str, int]:
    """Load the demo into any store through its session. Refuses a store that already has one
    of the demo tables: the demo never overwrites data it did not create."""
    tables = build_tables(rows, as_of, seed)
    with store.connect() as session:
        present = sorted(set(tables) & set(store.catalog(session).tables))
        if present:
            raise ConfigError(
                f"{store.describe()} already has {len(present)} of the demo tables (e.g. {present[0]}); "
                "load the demo into an empty database"
            )
        with session.transaction():
            for ddl in SCHEMA_DDL:
                session.execute(ddl)
            if store.kind != "duckdb":
                for ddl in CROSS_SCHEMA_FOREIGN_KEYS:
                    session.execute(ddl)
            for name, df in tables.items():
                session.stage("demo_rows", df.to_arrow())
                cols = ", ".join(df.columns)
                session.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM demo_rows")
                session.drop_stage("demo_rows")
            if store.kind != "duckdb":
                # PostgreSQL does not index the referencing side of a foreign key; cascades,
                # related clocks and hold checks join on exactly those columns
                for table, column, _, _ in sorted(set(foreign_keys())):
                    session.execute(
                        f"CREATE INDEX IF NOT EXISTS {table.split('.')[1]}_{column}_idx "
                        f"ON {table} ({column})"
                    )
    return {name: df.height for name, df in tables.items()}


def build(store: Store, rows: int, as_of: date, seed: int = 7) -> dict[str, int]:
    """Build the demo warehouse in `store` (a DuckDB file is recreated from scratch)."""
    from retention_jobs.store.duckdb_store import DuckDBStore

    if isinstance(store, DuckDBStore):
        return load_duckdb(store.path, rows, as_of, seed)
    return load_store(store, rows, as_of, seed)
