"""Typed policy models: the contract of `policies/*.yaml`.

Frozen pydantic models with `extra="forbid"`; the field docstrings become the JSON Schema
descriptions that editors show (`retention-jobs schema`).
"""

import re
from datetime import date
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from retention_jobs.periods import Period

Identifier = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="A column name (letters, digits, _)."),
]
TableName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
        description="A table as schema.table, e.g. billing.customers.",
    ),
]
Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
Scalar = str | int | float | bool | date | None

LegalBasis = Literal[
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
]
Operator = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null"]
FAKE_LOCALES = ("nb_NO", "sv_SE", "da_DK", "fi_FI", "en_GB", "en_US")


def _known_locale(v: str) -> str:
    """A locale Faker knows; a typo gets a suggestion (`nb_NOO`: did you mean 'nb_NO'?)."""
    from retention_jobs.fakes import locale_problem

    why = locale_problem(v)
    if why:
        raise ValueError(why)
    return v


class Located(ValueError):
    """A validation error that points below the model it was raised in."""

    def __init__(self, message: str, loc: tuple = ()):
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# --- anonymisation strategies -------------------------------------------------------------


class Redact(_Model):
    kind: Literal["redact"] = "redact"
    """Replace the value with NULL. Rejected on NOT NULL columns."""


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+"
)


class Hash(_Model):
    kind: Literal["hash"] = "hash"
    length: int | None = Field(default=None, ge=16, le=32)
    """Hex characters kept of the keyed BLAKE2b digest (default: 32, or what the column fits)."""
    email_domain: str | None = None
    """Write `<hash>@<email_domain>`, so an e-mail column's unique index and an application's
    format check still accept the pseudonym. Use a domain that can never receive mail, such as
    `anonymised.invalid` (RFC 2606 reserves `.invalid`)."""

    @field_validator("email_domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v is not None and not _HOSTNAME.fullmatch(v):
            raise ValueError(
                f"email_domain {v!r} is not a host name: use lowercase labels of letters, digits "
                "and hyphens separated by dots, e.g. anonymised.invalid"
            )
        return v


class Fake(_Model):
    kind: Literal["fake"] = "fake"
    provider: str
    """A Faker provider method, e.g. name, email, phone_number, street_address, company."""
    locale: str | None = None
    """Faker locale; default: the policy's `locale`."""

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str | None) -> str | None:
        return None if v is None else _known_locale(v)


class Mask(_Model):
    kind: Literal["mask"] = "mask"
    keep_last: int = Field(default=0, ge=0)
    """Characters left readable at the end."""
    keep_first: int = Field(default=0, ge=0)
    """Characters left readable at the start."""
    char: str = Field(default="*", min_length=1, max_length=1)
    """The masking character."""


class Generalise(_Model):
    kind: Literal["generalise"] = "generalise"
    to: Literal["year", "month"] | None = None
    """Dates and timestamps: truncate to the first day of the year or month."""
    band: float | None = Field(default=None, gt=0)
    """Numbers: round down to a multiple of `band` (e.g. 10 turns 37 into 30)."""

    @model_validator(mode="after")
    def _one_of(self) -> "Generalise":
        if (self.to is None) == (self.band is None):
            raise ValueError("generalise takes either a date unit (year | month) or {band: N}")
        return self


class Constant(_Model):
    kind: Literal["constant"] = "constant"
    value: Scalar
    """The value written into every anonymised row."""


JsonPath = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$")]


class Json(_Model):
    kind: Literal["json"] = "json"
    drop: list[JsonPath] = Field(default_factory=list)
    """Keys removed from the document, as dotted paths (`phone`, `address.street`); a path
    through a list applies to every element."""
    redact: list[JsonPath] = Field(default_factory=list)
    """Keys whose values become null."""
    hash: list[JsonPath] = Field(default_factory=list)
    """Keys whose values become their keyed hash (32 hex characters), so joins still work."""
    clear: Literal["object", "array"] | None = None
    """Replace the whole document with `{}` or `[]` (a NOT NULL JSON column)."""

    @model_validator(mode="after")
    def _something(self) -> "Json":
        paths = [*self.drop, *self.redact, *self.hash]
        if (self.clear is None) == (not paths):
            raise ValueError("json takes either clear: object|array, or drop/redact/hash paths")
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"json path(s) listed twice: {', '.join(twice)}")
        return self


Strategy = Redact | Hash | Fake | Mask | Generalise | Constant | Json
STRATEGY_NAMES = ("redact", "hash", "fake", "mask", "generalise", "constant", "json")


def parse_strategy(raw: Any) -> Strategy:
    """Turn the short YAML forms (`hash`, `{fake: name}`, `{mask: {keep_last: 2}}`) into models."""
    if isinstance(raw, (Redact, Hash, Fake, Mask, Generalise, Constant, Json)):
        return raw
    if isinstance(raw, str):
        if raw == "redact":
            return Redact()
        if raw == "hash":
            return Hash()
        raise ValueError(
            f"unknown strategy {raw!r}; use one of: redact, hash, {{fake: PROVIDER}}, "
            "{mask: {keep_last: N}}, {generalise: year|month|{band: N}}, {constant: VALUE}, "
            "{json: {drop: [PATH]}}"
        )
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(
            "a strategy is a name (redact, hash) or a mapping with exactly one key, "
            "e.g. {fake: name}"
        )
    ((name, arg),) = raw.items()
    if name == "redact":
        return Redact()
    if name == "hash":
        return Hash(**(arg or {})) if isinstance(arg, dict) or arg is None else Hash(length=arg)
    if name == "fake":
        return Fake(provider=arg) if isinstance(arg, str) else Fake(**_mapping(arg, "fake"))
    if name == "mask":
        return Mask(**(_mapping(arg, "mask") if arg is not None else {}))
    if name == "generalise":
        return (
            Generalise.model_validate({"to": arg})
            if isinstance(arg, str)
            else Generalise(**_mapping(arg, "generalise"))
        )
    if name == "constant":
        return Constant(value=arg)
    if name == "json":
        return Json(**_mapping(arg, "json"))
    raise ValueError(f"unknown strategy {name!r}; use one of: {', '.join(STRATEGY_NAMES)}")


def _mapping(arg: Any, name: str) -> dict:
    if not isinstance(arg, dict):
        raise ValueError(f"{name} takes a mapping of options, got {type(arg).__name__}")
    return arg


def _strategy(raw: Any) -> Any:
    """Parse one column's strategy, so that an error lands on that column's line."""
    try:
        return parse_strategy(raw)
    except ValidationError as e:
        name = next(iter(raw)) if isinstance(raw, dict) else raw
        raise ValueError(
            "; ".join(
                f"{name}: {'.'.join(map(str, err['loc'])) + ': ' if err['loc'] else ''}"
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
        ) from None


StrategyField = Annotated[Strategy, BeforeValidator(_strategy)]


# --- filters and clocks -------------------------------------------------------------------


class Condition(_Model):
    """One column condition of a `where` filter."""

    column: Identifier
    op: Operator
    value: Scalar | list[Scalar]


def parse_where(raw: Any) -> Any:
    """`{status: closed}`, `{status: [a, b]}`, `{amount: {gt: 10}}`, `{ended_at: {is_null: false}}`."""
    if isinstance(raw, list):
        raise ValueError("a filter is a mapping column: value | [values] | {op: value}, not a list")
    if not isinstance(raw, dict):
        return raw
    conditions: list[Condition] = []
    for column, spec in raw.items():
        if not isinstance(column, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", column):
            raise ValueError(f"{column!r} is not a column name (letters, digits, _)")
        if isinstance(spec, dict):
            if not spec:
                raise ValueError(f"{column}: an empty operator mapping")
            for op, value in spec.items():
                if op not in get_args(Operator):
                    raise ValueError(
                        f"{column}: unknown operator {op!r}; use one of: {', '.join(get_args(Operator))}"
                    )
                if op in ("in", "not_in") and not isinstance(value, list):
                    raise ValueError(f"{column}: {op} takes a list of values")
                if op == "is_null" and not isinstance(value, bool):
                    raise ValueError(f"{column}: is_null takes true or false")
                conditions.append(Condition(column=column, op=op, value=value))
        elif isinstance(spec, list):
            conditions.append(Condition(column=column, op="in", value=spec))
        else:
            conditions.append(Condition(column=column, op="eq", value=spec))
    return conditions


class RelatedClock(_Model):
    """A clock kept in related rows, e.g. the last activity of a contact."""

    table: TableName
    """The related table."""
    on: Identifier
    """The related table's column that links its rows to the rule's rows (e.g. contact_id)."""
    references: Identifier | None = None
    """The rule's column that `on` holds (e.g. id); default: a column named like `on`."""
    column: Identifier
    """The date or timestamp column of the related table."""
    aggregate: Literal["max", "min"] = "max"
    """max: the latest related date (last activity); min: the earliest."""

    @property
    def parent_column(self) -> str:
        return self.references or self.on


class RelatedFilter(_Model):
    """A condition on related rows: all, any or none of them must match."""

    table: TableName
    on: Identifier
    """The related table's column that links its rows to the rows it filters."""
    references: Identifier | None = None
    """The filtered table's column that `on` holds; default: a column named like `on`."""
    all: list[Condition] | None = None
    """Every related row matches (also true when there are none)."""
    any: list[Condition] | None = None
    """At least one related row matches."""
    none: list[Condition] | None = None
    """No related row matches."""
    related: list["RelatedFilter"] = Field(default_factory=list)
    """Conditions on rows one hop further, linked to the related rows (e.g. the group of a
    membership): part of what a related row must match."""

    _parse = field_validator("all", "any", "none", mode="before")(
        classmethod(lambda cls, v: parse_where(v))
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "RelatedFilter":
        given = [k for k in ("all", "any", "none") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a related filter takes exactly one of: all, any, none")
        return self

    @property
    def parent_column(self) -> str:
        return self.references or self.on

    @property
    def quantifier(self) -> str:
        return next(k for k in ("all", "any", "none") if getattr(self, k) is not None)

    @property
    def conditions(self) -> list[Condition]:
        return getattr(self, self.quantifier)


class Subject(_Model):
    """Whose data a row is: used by holds and data-subject requests."""

    kind: Slug
    """The kind of person, e.g. customer, subscriber, contact, user."""
    column: Identifier
    """The column holding the subject's id."""


class Cascade(_Model):
    """A foreign-key child handled before its parent row is deleted or changed."""

    table: TableName
    on: Identifier
    """The child's column that references the parent."""
    references: Identifier | None = None
    """The parent's column that `on` points to; default: the parent's key."""
    key: Identifier | list[Identifier] | None = None
    """The child's primary key; default: read from the store."""
    action: Literal["delete", "anonymise", "unlink"]
    """delete the child rows; anonymise their `columns`; unlink: set `on` to NULL, keep the row."""
    columns: dict[Identifier, StrategyField] = Field(default_factory=dict)
    """With action anonymise: column -> strategy."""
    cascade: list["Cascade"] = Field(default_factory=list)
    """Grandchildren, handled before this child."""

    @model_validator(mode="after")
    def _columns_match_action(self) -> "Cascade":
        if self.action == "anonymise" and not self.columns:
            raise ValueError("action anonymise needs `columns` (column: strategy)")
        if self.action != "anonymise" and self.columns:
            raise ValueError(f"`columns` is only for action anonymise, not {self.action}")
        if self.action != "delete" and self.cascade:
            raise ValueError("nested cascades are only allowed under action delete")
        return self


class ArrayRef(_Model):
    """An array column elsewhere that holds ids of the rule's rows (e.g. projects.member_ids)."""

    table: TableName
    """The table with the array column."""
    column: Identifier
    """The array column (BIGINT[], VARCHAR[], ...)."""
    references: Identifier | None = None
    """The rule's column whose values the array holds; default: the rule's key."""


class Rule(_Model):
    """One table's retention: which rows expire when, and what happens to them."""

    name: Slug
    """Unique within the policy; appears in reports and the audit ledger."""
    description: str | None = None
    table: TableName
    """The table as schema.table."""
    key: Identifier | list[Identifier]
    """The primary key: a column or a list of columns."""
    subject: Subject | None = None
    """Whose data the rows are (needed for holds on subjects and for requests). Left out, the
    subjects are inferred from the store's foreign keys (`validate --store`); `{none: REASON}`
    says the rows are about no person (they still honour any subject a foreign key reaches)."""
    no_subject_reason: str | None = Field(default=None, min_length=1)
    """Why the rows belong to no subject: written `subject: {none: REASON}`."""
    clock: Identifier | RelatedClock
    """The column (or related rows) whose date starts the retention period. NULL: not started."""
    round_clock_to: Literal["year_end", "month_end"] | None = None
    """Round the clock up before adding keep_for (fiscal year = calendar year)."""
    keep_for: str
    """ISO-8601 period of whole days: P0D (immediately), P30D, P6M, P5Y, P1Y6M."""
    where: list[Condition] = Field(default_factory=list)
    """Only rows matching every condition: column: value | [values] | {op: value}."""
    related: list[RelatedFilter] = Field(default_factory=list)
    """Conditions on related rows (e.g. every list subscription is unsubscribed)."""
    unreferenced: bool = False
    """Only rows that no row of any table references by foreign key: parents left without a
    purpose, such as an address whose customer was erased."""
    action: Literal["delete", "anonymise", "retain"]
    """delete the rows; anonymise `columns`; retain: a minimum period nothing may cut short."""
    columns: dict[Identifier, StrategyField] = Field(default_factory=dict)
    """With action anonymise: column -> strategy. Columns not listed are kept."""
    cascade: list[Cascade] = Field(default_factory=list)
    """Foreign-key children handled before the parent (deletes only)."""
    suppress: list[Identifier] = Field(default_factory=list)
    """Columns whose keyed hashes go to the suppression list before the row is erased."""
    remove_from: list[ArrayRef] = Field(default_factory=list)
    """With action delete: array columns from which a deleted row's id is removed, in the same
    transaction (a contact's id in projects.member_ids)."""
    filters_in_requests: bool = True
    """Whether a data-subject request honours `where` and `related` (default): they say which
    rows the rule covers (our own tenant, a country), and a request acts only on those. false:
    they only say when the rows expire (every list subscription unsubscribed), so a request
    takes every row of the subject. The clock never applies to a request."""

    _where = field_validator("where", mode="before")(classmethod(lambda cls, v: parse_where(v)))

    @model_validator(mode="before")
    @classmethod
    def _subject_none(cls, data: Any) -> Any:
        """`subject: {none: REASON}` is the written form of `no_subject_reason`."""
        if not isinstance(data, dict):
            return data
        s = data.get("subject")
        if isinstance(s, dict) and "none" in s:
            if set(s) != {"none"}:
                raise Located(
                    "subject takes either {kind, column} or {none: REASON}, not both",
                    ("subject",),
                )
            reason = s["none"]
            if not isinstance(reason, str) or not reason.strip():
                raise Located(
                    "subject: {none: REASON} needs the reason, as text: why the rows are about "
                    "no person",
                    ("subject", "none"),
                )
            if "no_subject_reason" in data:
                raise Located("give subject: {none: REASON} once", ("subject",))
            data = {k: v for k, v in data.items() if k != "subject"}
            data["no_subject_reason"] = reason.strip()
        return data

    @field_validator("keep_for")
    @classmethod
    def _period(cls, v: str) -> str:
        Period.parse(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        if self.action == "anonymise" and not self.columns:
            raise ValueError("action anonymise needs `columns` (column: strategy)")
        if self.action != "anonymise" and self.columns:
            raise ValueError(f"`columns` is only for action anonymise, not {self.action}")
        if self.action == "retain" and (self.cascade or self.suppress):
            raise ValueError("a retain rule changes nothing: it takes no cascade or suppress")
        if self.action == "anonymise" and any(c.action == "delete" for c in self.cascade):
            raise ValueError(
                "an anonymised parent keeps its children: cascade delete needs action delete"
            )
        if self.remove_from and self.action != "delete":
            raise ValueError(
                "remove_from takes a deleted row's id out of array columns: it needs action delete"
            )
        keys = self.keys
        if (
            self.remove_from
            and len(keys) > 1
            and any(a.references is None for a in self.remove_from)
        ):
            raise ValueError(
                "remove_from: with a composite key, name the column the array holds (references)"
            )
        if len(set(keys)) != len(keys):
            raise ValueError("key lists a column twice")
        overlap = set(keys) & set(self.columns)
        if overlap:
            raise ValueError(f"the key column {sorted(overlap)[0]!r} cannot be anonymised")
        return self

    @property
    def keys(self) -> list[str]:
        return [self.key] if isinstance(self.key, str) else list(self.key)

    @property
    def period(self) -> Period:
        return Period.parse(self.keep_for)


class Policy(_Model):
    """One purpose of processing, its legal basis, and the retention rules that serve it."""

    purpose: Slug
    """Short name of the purpose, e.g. newsletter, customers, call-records."""
    title: str = Field(min_length=1)
    """One line for people: what this processing is."""
    legal_basis: LegalBasis
    """GDPR Art. 6(1) basis of the processing."""
    role: Literal["controller", "processor"] = "controller"
    """controller (default): we decide why and how. processor: we hold the data for a client
    (GDPR Art. 28); a data-subject request never changes it, it reports the rows as to be
    forwarded to the controller. The nightly rules still run: they carry out the contract."""
    owner: str = Field(min_length=1)
    """The team answerable for this purpose (shown in Dagster as the asset owner)."""
    description: str | None = None
    timezone: str = "UTC"
    """IANA zone in which the as-of date is read, e.g. Europe/Oslo."""
    locale: str = "nb_NO"
    """Default Faker locale for `fake` strategies."""
    purge: Literal["vacuum", "full"] = "vacuum"
    """PostgreSQL after deletions: vacuum (default) or full (VACUUM FULL rewrites the table and
    returns the space, but locks it). DuckDB always compacts into a fresh file."""
    rules: list[Rule] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}; use an IANA name such as Europe/Oslo"
            ) from None
        return v

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str) -> str:
        return _known_locale(v)

    @model_validator(mode="after")
    def _unique_rule_names(self) -> "Policy":
        seen: set[str] = set()
        for i, r in enumerate(self.rules):
            if r.name in seen:
                raise Located(
                    f"two rules are named {r.name!r}; rule names must be unique",
                    ("rules", i, "name"),
                )
            seen.add(r.name)
        return self
