"""Typed errors. Each says whether retrying can help; only the Dagster layer turns that into
`Failure(allow_retries=False)` or leaves it to a RetryPolicy."""

import re
from dataclasses import dataclass
from typing import Any


class RetentionError(Exception):
    """Base class. `terminal` errors need a human (fix a policy, approve a deletion)."""

    terminal: bool = True


@dataclass(frozen=True)
class Problem:
    """One problem in a policy file, located as `file:line:col`."""

    file: str
    line: int
    col: int
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{text}; {self.hint}" if self.hint else text


class PolicyError(RetentionError):
    """One or more policy files are invalid. All problems are reported at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(RetentionError):
    """Bad command-line input or environment (missing key, bad date, unknown store)."""


class WrongKey(ConfigError):
    """The pseudonym key given cannot have made the hashes to compare with (its key id differs
    from the one recorded with them): a comparison would find nothing and pass vacuously."""


class ApprovalRequired(RetentionError):
    """A run would delete more than the allowed share of a table; nothing was changed."""


class StoreUnavailable(RetentionError):
    """The store could not be reached or the connection was lost; a retry may help."""

    terminal = False


class RunInProgress(RetentionError):
    """Another run holds the store (one run per store at a time); nothing was changed. A retry
    after that run has finished may help."""

    terminal = False


class PartialRun(RetentionError):
    """A rule failed after the run had started applying: the rules before it committed, the
    failing rule's transaction rolled back (its earlier batches stay committed), the rules
    after it did not start. `report` is the run's report with `failed` and `not_run` set; the
    run is recorded as `partial` (or `failed` if nothing committed) and the next run picks up
    the rest. Terminal or not as the error that stopped it."""

    def __init__(self, report: Any, cause: BaseException | bool):
        self.report = report
        self.terminal = cause if isinstance(cause, bool) else getattr(cause, "terminal", True)
        failed = report.failed
        done = [r.plan.rule_id for r in report.rules]
        super().__init__(
            f"run {report.run_id} stopped at rule {failed.rule_id}: {failed.error}: "
            f"{failed.message}. Committed: {', '.join(done) or 'no rule'}; not started: "
            f"{', '.join(report.not_run) or 'no rule'}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # a parallel run's worker raises it in another process: it must travel by pickle
        return (PartialRun, (self.report, self.terminal))


def describe(exc: BaseException) -> tuple[str, str]:
    """An error's class and a message safe to show and store: an engine error's own message
    (built without personal values), anything else through `safe_message` (a database's text
    never passes)."""
    from retention_jobs.store import mask_url

    if isinstance(exc, RetentionError):
        return type(exc).__name__, mask_url(str(exc))
    db = database_error(exc)
    if db is not None:
        return type(db).__name__, mask_url(str(db))
    return type(exc).__name__, safe_message(exc).removeprefix(f"{type(exc).__name__}: ")


class PurgeFailed(RetentionError):
    """A purge could not make the old bytes unrecoverable (the store's copy or vacuum failed).
    The run's changes are committed; the tables stay pending and the next run or
    `retention-jobs purge` tries again, so a retry may help once the cause is fixed."""

    terminal = False


class StoreRejected(RetentionError):
    """The database refused a statement (a constraint, a privilege, a value that does not fit a
    type): the batch's transaction was rolled back. The message names the error class, the
    SQLSTATE, the constraint, the table and the column, never the database's own text, which
    can quote the row (`Failing row contains (...)`, `Key (email)=(...) already exists`).
    Terminal unless the database says a retry can succeed (serialization failure, deadlock,
    lock or statement timeout)."""

    def __init__(self, message: str, sqlstate: str = "", terminal: bool = True):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.terminal = terminal


# What to do, by kind of refusal. A kind is a SQLSTATE (PostgreSQL), its class, or a name.
_ADVICE = {
    "23505": "a value the rule writes (a fake, a mask, a constant) collides with another row's "
    "under this UNIQUE constraint: use a strategy that keeps values distinct (hash), or drop "
    "the constraint",
    "23514": "a value the rule writes breaks this CHECK constraint: choose a strategy whose "
    "output satisfies it, or change the constraint",
    "23502": "the rule writes NULL into a NOT NULL column: use a strategy that writes a value, or "
    "allow NULL there",
    "23503": "other rows reference the rows this rule changes or deletes: add a cascade for the "
    "referencing table to the rule, or give the foreign key ON DELETE CASCADE / SET NULL",
    "23": "the change breaks an integrity constraint: change the rule's strategy or the constraint",
    "42501": "the store's role lacks a privilege on this table: grant it (SELECT, UPDATE, DELETE "
    "on the data tables; all on the control schema) or run as a role that has it",
    "22": "a value the rule writes does not fit the column (type, length or range): choose a "
    "strategy whose output fits the column's type",
    "40": "the database aborted the transaction (serialization failure or deadlock): run again",
    "55P03": "a lock could not be taken in time: run again when the table is not locked",
    "57014": "the statement was cancelled (statement timeout or an operator): run again, or raise "
    "the timeout",
}
_RETRYABLE = ("40", "55P03", "57014", "53")
_UNSHOWN = (
    "nothing of the failed batch was committed; the database's own message is not shown as it "
    "can quote personal values"
)


def _advice(sqlstate: str) -> str:
    return (
        _ADVICE.get(sqlstate)
        or _ADVICE.get(sqlstate[:2])
        or ("see the database's log for the statement that failed")
    )


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _ident(name: object) -> str:
    """An identifier from a driver's structured diagnostics, quoted when it is unusual."""
    text = str(name)
    if _IDENT.match(text):
        return text
    return '"' + re.sub(r"[\x00-\x1f]", "?", text).replace('"', '""') + '"'


def rejected_by_postgres(exc: BaseException, where: str = "") -> StoreRejected:
    """A psycopg error (or SQLAlchemy's wrapper of one) as a `StoreRejected` built from its
    structured diagnostics only (`e.diag`): never its message or DETAIL."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    sqlstate = str(getattr(orig, "sqlstate", None) or getattr(diag, "sqlstate", None) or "")

    def get(field: str) -> str | None:
        value = getattr(diag, field, None) if diag is not None else None
        return value if isinstance(value, str) and value else None

    schema, table = get("schema_name"), get("table_name")
    parts = [f"{type(orig).__name__} (SQLSTATE {sqlstate or 'unknown'})"]
    if table:
        parts.append(f"on {_ident(schema) + '.' if schema else ''}{_ident(table)}")
    elif where:
        parts.append(f"on {where}")
    if get("constraint_name"):
        parts.append(f"constraint {_ident(get('constraint_name'))}")
    if get("column_name"):
        parts.append(f"column {_ident(get('column_name'))}")
    if get("datatype_name"):
        parts.append(f"type {_ident(get('datatype_name'))}")
    return StoreRejected(
        f"the database refused a change: {', '.join(parts)}: {_advice(sqlstate)}; {_UNSHOWN}",
        sqlstate=sqlstate,
        terminal=not sqlstate.startswith(_RETRYABLE) if sqlstate else True,
    )


_DUCKDB_KINDS = (
    # (pattern on DuckDB's message, the SQLSTATE-like kind, a constraint description)
    (re.compile(r"violates unique constraint"), "23505", "UNIQUE"),
    (re.compile(r"violates primary key constraint"), "23505", "PRIMARY KEY"),
    (re.compile(r"PRIMARY KEY or UNIQUE constraint violat"), "23505", "UNIQUE or PRIMARY KEY"),
    (re.compile(r"^Constraint Error: NOT NULL constraint failed"), "23502", "NOT NULL"),
    (re.compile(r"^Constraint Error: CHECK constraint failed"), "23514", "CHECK"),
    (re.compile(r"foreign key constraint"), "23503", "FOREIGN KEY"),
)
_DUCKDB_NOT_NULL = re.compile(r"NOT NULL constraint failed: ([A-Za-z0-9_$.]+)\s*$")


def rejected_by_duckdb(exc: BaseException, where: str = "") -> StoreRejected:
    """A DuckDB error as a `StoreRejected`: only the kind of constraint and identifiers read from
    the fixed parts of its message (a NOT NULL failure names `table.column`); the quoted key,
    the expression and any value are left out."""
    text = str(exc)
    kind, what = "", ""
    for pattern, code, name in _DUCKDB_KINDS:
        if pattern.search(text):
            kind, what = code, name
            break
    cls = type(exc).__name__
    if not kind:
        kind = {
            "ConversionException": "22",
            "OutOfRangeException": "22",
            "TypeMismatchException": "22",
            "PermissionException": "42501",
            "TransactionException": "40",
            "InterruptException": "57014",
            "ConstraintException": "23",
            # a table, schema or column named in the statement does not exist
            "CatalogException": "42P01",
        }.get(cls, "")
    parts = [cls]
    if what:
        parts.append(f"{what} constraint")
    m = _DUCKDB_NOT_NULL.search(text) if kind == "23502" else None
    if m:
        parts.append(f"column {m.group(1)}")
    if where:
        parts.append(f"on {where}")
    return StoreRejected(
        f"the database refused a change: {', '.join(parts)}: {_advice(kind)}; {_UNSHOWN}",
        sqlstate=kind,
        terminal=not kind.startswith(_RETRYABLE) if kind else True,
    )


def database_error(exc: BaseException) -> StoreRejected | None:
    """`exc` as a `StoreRejected` if a database driver raised it (psycopg, SQLAlchemy, DuckDB)."""
    orig = getattr(exc, "orig", None) or exc
    module = type(orig).__module__ or ""
    if module.startswith("psycopg") or hasattr(orig, "diag"):
        return rejected_by_postgres(orig)
    if module.startswith(("duckdb", "_duckdb")):
        return rejected_by_duckdb(orig)
    if (type(exc).__module__ or "").startswith("sqlalchemy"):
        return StoreRejected(
            f"the database refused a change: {type(exc).__name__}: {_UNSHOWN}",
        )
    return None


def safe_message(exc: BaseException) -> str:
    """An unexpected error's message without quoted values or `(col)=(value)` details: a
    database error is described from its structured parts only (`database_error`), anything
    else loses its quoted strings, key details and DETAIL lines. URLs keep no password."""
    from retention_jobs.store import mask_url

    db = database_error(exc)
    if db is not None:
        return mask_url(str(db))
    text = re.split(r"\bDETAIL:|\bFailing row contains\b", str(exc), maxsplit=1)[0].rstrip()
    text = re.sub(r"\"[^\"]*\"|'[^']*'|\([^()]*\)=\([^()]*\)", "<value>", text)
    return mask_url(f"{type(exc).__name__}: {text}")
