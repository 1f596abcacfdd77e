"""Typed errors. Each says whether retrying can help; only the Dagster layer turns that into
`Failure(allow_retries=False)` or leaves it to a RetryPolicy."""

import re
from dataclasses import dataclass


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


class ApprovalRequired(RetentionError):
    """A run would delete more than the allowed share of a table; nothing was changed."""


class StoreUnavailable(RetentionError):
    """The store could not be reached or the connection was lost; a retry may help."""

    terminal = False


class RunInProgress(RetentionError):
    """Another run holds the store (one run per store at a time); nothing was changed. A retry
    after that run has finished may help."""

    terminal = False


def safe_message(exc: BaseException) -> str:
    """An unexpected error's message without quoted values or `(col)=(value)` details: a
    database error can quote a key. URLs keep no password."""
    from retention_jobs.store import mask_url

    text = re.sub(r"\"[^\"]*\"|'[^']*'|\([^()]*\)=\([^()]*\)", "<value>", str(exc))
    return mask_url(f"{type(exc).__name__}: {text}")
