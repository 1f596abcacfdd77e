"""Resources: where the store is and which pseudonymisation key to use, both from the environment.

`dg.EnvVar` fails the run when its variable is unset, so `resources()` only uses it when the
variable is set and otherwise falls back to the resource's default: the demo store under the
project root, and no key (a dry run needs none; a real run then fails with a clear message).
Through `EnvVar` the launchpad shows the variable's name, never its value.
"""

import os
from pathlib import Path

import dagster as dg

from retention_jobs.anonymise import KEY_ENV, MIN_KEY_LENGTH, PseudonymKey, key_from_text
from retention_jobs.errors import ConfigError
from retention_jobs.store import DEFAULT_STORE, STORE_ENV, mask_url, open_store
from retention_jobs.store.base import Store

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class StoreResource(dg.ConfigurableResource):
    """The database the policies are enforced on: a DuckDB file or a SQLAlchemy URL."""

    location: str = str(PROJECT_ROOT / DEFAULT_STORE)
    """DuckDB path (relative paths are read from the project root) or a database URL."""

    def open(self) -> Store:
        return open_store(self.resolved())

    def resolved(self) -> str:
        if "://" in self.location or self.location.startswith("duckdb:"):
            return self.location
        path = Path(self.location)
        return str(path if path.is_absolute() else PROJECT_ROOT / path)

    def describe(self) -> str:
        return mask_url(self.resolved())


class PseudonymKeyResource(dg.ConfigurableResource):
    """The secret for keyed hashes and fakes. Only its key id ever leaves this object."""

    key: str = ""

    def get(self) -> PseudonymKey:
        if not self.key:
            raise ConfigError(
                f"{KEY_ENV} is not set: a run that anonymises needs a secret key of at least "
                f"{MIN_KEY_LENGTH} characters in the environment of the Dagster processes"
            )
        return key_from_text(self.key)


def resources() -> dict[str, dg.ConfigurableResource]:
    store = (
        StoreResource(location=dg.EnvVar(STORE_ENV))
        if os.environ.get(STORE_ENV)
        else StoreResource()
    )
    key = (
        PseudonymKeyResource(key=dg.EnvVar(KEY_ENV))
        if os.environ.get(KEY_ENV)
        else PseudonymKeyResource()
    )
    return {"store": store, "pseudonym_key": key}
