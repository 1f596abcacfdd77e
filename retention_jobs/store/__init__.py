"""Stores: where the data lives. One place chooses the implementation from a URL or path."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from retention_jobs.errors import ConfigError

if TYPE_CHECKING:  # the stores import SQLAlchemy and PyArrow: only when one is opened
    from retention_jobs.store.base import Store

STORE_ENV = "RETENTION_STORE"
DEFAULT_STORE = ".retention/warehouse.duckdb"


SECRET_QUERY_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "credential")
"""A URL query argument whose name contains one of these is a secret (password=, sslpassword=,
passfile=, sslkey=, api_token=, ...): its value is masked."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_QUERY_START = re.compile(r"\?[^=&?#/\s]+=")
_QUERY_ARG = re.compile(r"([?&;])([^=&;#\s]*)=([^&;#\s]*)")


def _is_secret_key(name: str) -> bool:
    name = name.lower()
    return any(w in name for w in SECRET_QUERY_WORDS)


def _mask_one(url: str) -> str:
    scheme, rest = url.split("://", 1)
    # The query starts at the first `?name=`; the userinfo ends at the last `@` before it, so a
    # raw `@`, `:` or `/` in a password stays inside the masked part.
    q = _QUERY_START.search(rest)
    head, query = (rest[: q.start()], rest[q.start() :]) if q else (rest, "")
    at = head.rfind("@")
    if at >= 0:
        user, colon, _password = head[:at].partition(":")
        head = f"{user}:***{head[at:]}" if colon else head
    query = _QUERY_ARG.sub(
        lambda m: f"{m[1]}{m[2]}=***" if _is_secret_key(m[2]) else m[0],
        query,
    )
    return f"{scheme}://{head}{query}"


def mask_url(text: str) -> str:
    """`text` (a URL, or a message holding URLs) with every secret a URL can carry masked: the
    password of its userinfo (a raw `@` in it included) and the values of query arguments named
    like a secret (`SECRET_QUERY_WORDS`). The one function that makes a store location safe for
    messages, logs and Dagster metadata."""
    return _URL.sub(lambda m: _mask_one(m[0]), text)


def url_secrets(url: str) -> tuple[str, ...]:
    """The secret values a URL carries (as written and as a parser reads them), for scrubbing
    them out of driver messages that might echo them."""
    if "://" not in url:
        return ()
    from urllib.parse import unquote

    rest = url.split("://", 1)[1]
    q = _QUERY_START.search(rest)
    head, query = (rest[: q.start()], rest[q.start() :]) if q else (rest, "")
    found: list[str] = []
    at = head.rfind("@")
    if at >= 0 and ":" in head[:at]:
        found.append(head[:at].partition(":")[2])
    found += [m[3] for m in _QUERY_ARG.finditer(query) if _is_secret_key(m[2])]
    try:
        import sqlalchemy as sa

        parsed = sa.engine.make_url(url)
        if parsed.password:
            found.append(str(parsed.password))
        found += [
            v
            for k, vs in parsed.query.items()
            if _is_secret_key(k)
            for v in ((vs,) if isinstance(vs, str) else vs)
        ]
    except Exception:  # noqa: BLE001 - not every store location is a SQLAlchemy URL
        pass
    out = {s for v in found if v for s in (v, unquote(v))}
    # longest first, so a secret that contains another is replaced whole
    return tuple(sorted(out, key=len, reverse=True))


def store_location(value: str | None = None) -> str:
    return value or os.environ.get(STORE_ENV) or DEFAULT_STORE


def duckdb_path(value: str | None = None) -> Path | None:
    """The DuckDB file a store location names (a path or `duckdb:PATH`); None for a URL."""
    location = store_location(value)
    if location.startswith("duckdb:"):
        location = location.removeprefix("duckdb:").removeprefix("///")
    if "://" in location:
        return None
    if location.endswith((".yaml", ".yml")):
        raise ConfigError(
            f"--store {location!r} looks like a policy file; pass a DuckDB path or a database URL"
        )
    return Path(location)


def open_store(value: str | None = None) -> Store:
    """A DuckDB path (or `duckdb:PATH`), or any SQLAlchemy URL such as postgresql+psycopg://..."""
    location = store_location(value)
    path = duckdb_path(value)
    if path is None:
        try:
            from retention_jobs.store.sql_store import SqlStore
        except ImportError:
            raise ConfigError(
                f"SQL stores are not available in this build: {mask_url(location)}"
            ) from None
        return SqlStore(location)
    from retention_jobs.store.duckdb_store import DuckDBStore

    return DuckDBStore(path)
