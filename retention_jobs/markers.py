"""Which columns of a row are already anonymised: the `columns` of an anonymisation marker
(`control.marker_table`). The one place that writes that list and the one place that reads it.

The form: `,` then, per column, its *token* and `,` (",email,phone,"). A token is the column's
name with `%` written `%25` and `,` written `%2C`, so no token contains a `,`: every `,` in the
list is a separator. That makes "the list names column c" exactly "`,<token of c>,` occurs in
it" (an occurrence starts and ends at separators, so the text between is one whole token, and
tokens are distinct for distinct names since the encoding is reversible). The test is an exact,
case-sensitive substring position (`strpos`), never a LIKE pattern: `_` and `%` in a name are
plain characters, and a name that is a prefix, suffix or wildcard-match of another is not it.

Compatibility: a name without `%` or `,` is its own token, so markers written by earlier
versions (plain ",a,b,") read as before. Earlier versions wrote a name containing `%` or `,`
unencoded; policies have only ever accepted names of letters, digits and `_` (policy.py), so
no such marker exists and no upgrade of stored markers is needed. Should one exist, its
column reads as not done and is anonymised again (never skipped).

Several markers of one row may be concatenated (",a,b," ",c," → ",a,b,,c,"): an empty token
between two separators names no column, so the reader stays exact."""

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    import polars as pl

SEP = ","


def token(column: str) -> str:
    """A column's name as it stands in a marker's list: never contains `SEP`."""
    return column.replace("%", "%25").replace(SEP, "%2C")


# --- the writer ------------------------------------------------------------------------------


def listed(columns: Iterable[str]) -> str:
    """The marker list naming exactly `columns`, in their order."""
    return SEP + "".join(token(c) + SEP for c in columns)


def listed_expr(named: Mapping[str, "pl.Expr"]) -> "pl.Expr":
    """Per row, the marker list of the columns (keys of `named`, in order) whose expression is
    true: the form `listed` gives for those columns."""
    import polars as pl

    return pl.concat_str(
        [
            pl.lit(SEP),
            *(
                pl.when(on).then(pl.lit(token(c) + SEP)).otherwise(pl.lit(""))
                for c, on in named.items()
            ),
        ]
    )


EMPTY = listed(())
"""The list naming no column."""


# --- the readers -----------------------------------------------------------------------------


def names(columns: sa.ColumnElement, column: str) -> sa.ColumnElement[bool]:
    """SQL (DuckDB and PostgreSQL): the marker list `columns` (one list or several
    concatenated) names `column`. NULL when `columns` is NULL."""
    return sa.func.strpos(columns, sa.literal(SEP + token(column) + SEP, sa.String())) > 0


def position(columns: "pl.Expr", column: str) -> "pl.Expr":
    """Polars: the index of `column` among the names of the marker list `columns` (the index
    of its hash in `original_hashes`), null where the list does not name it."""
    import polars as pl

    tokens = columns.str.strip_prefix(SEP).str.strip_suffix(SEP).str.split(SEP)
    hit = tokens.list.eval(pl.element() == token(column))
    return pl.when(hit.list.any()).then(hit.list.arg_max())
