"""Resolve policies against the store's real schema: every table and column named must exist
with a type the rule can work with. All problems are reported at once, located in the file."""

import difflib
from dataclasses import dataclass, field
from datetime import date

from pydantic import ValidationError

from retention_jobs.errors import PolicyError, Problem
from retention_jobs.fakes import check_provider
from retention_jobs.literals import LiteralError, to_column_type
from retention_jobs.load import Loc, PolicyFile, PolicySet
from retention_jobs.policy import (
    ArrayRef,
    Cascade,
    Condition,
    Constant,
    Fake,
    Generalise,
    Hash,
    Json,
    Mask,
    Policy,
    Redact,
    RelatedClock,
    RelatedFilter,
    Rule,
    Strategy,
)
from retention_jobs.store.base import (
    Catalog,
    ColumnInfo,
    ForeignKey,
    TableInfo,
    castable_array,
    is_array,
)

DATE_TYPES = ("date", "timestamp", "timestamptz")
NUMERIC_TYPES = ("integer", "float", "decimal")


MAX_HOPS = 6
"""How many foreign keys subject inference follows from a rule's table."""


@dataclass(frozen=True)
class Hop:
    """One foreign key followed from a table (`columns`) to the rows it references."""

    table: TableInfo
    """The referenced table."""
    columns: tuple[str, ...]
    """The referencing columns, in the table the hop starts from."""
    ref_columns: tuple[str, ...]
    """The referenced columns of `table`, pairwise."""


@dataclass(frozen=True)
class SubjectPath:
    """A subject a row reaches without declaring it: the subject's id is `column` of the row
    reached over `hops` (none: of the row itself)."""

    kind: str
    hops: tuple[Hop, ...]
    column: str
    via: str = "foreign key"
    """How the engine found it: foreign key, or a rule's related table / related clock."""

    def describe(self, table: str) -> str:
        """`user via telephony.calls.user_id -> telephony.users.user_id` (names only)."""
        steps, at = [], table
        for h in self.hops:
            steps.append(
                f"{at}({', '.join(h.columns)}) -> {h.table.name}({', '.join(h.ref_columns)})"
            )
            at = h.table.name
        steps.append(f"{at}.{self.column}")
        return f"{self.kind} via {' -> '.join(steps)}" + (
            f" ({self.via})" if self.via != "foreign key" else ""
        )


@dataclass(frozen=True)
class Link:
    """A cascade bound to the store: child table, join columns and key."""

    spec: Cascade
    table: TableInfo
    on: str
    references: str
    key: tuple[str, ...]
    children: tuple["Link", ...] = ()
    inferred: tuple["SubjectPath", ...] = ()
    """Where no rule declares a subject for the child table: the subjects its rows reach over
    foreign keys, whose holds hold the parent like a declared subject's."""


@dataclass(frozen=True)
class BoundRule:
    """A rule bound to the store's schema."""

    file: PolicyFile
    index: int
    table: TableInfo
    clock_type: str
    cascades: tuple[Link, ...] = field(default=())
    inferred: tuple[SubjectPath, ...] = field(default=())
    """Rules without `subject:`: the subjects their rows reach over foreign keys (or a declared
    related link), whose holds they honour like a declared subject's."""

    @property
    def policy(self) -> Policy:
        return self.file.policy

    @property
    def rule(self) -> Rule:
        return self.file.policy.rules[self.index]

    @property
    def id(self) -> str:
        return f"{self.policy.purpose}/{self.rule.name}"

    def links(self) -> list[Link]:
        """Every cascade link, depth first, children before their parents."""
        out: list[Link] = []

        def walk(link: Link) -> None:
            for c in link.children:
                walk(c)
            out.append(link)

        for link in self.cascades:
            walk(link)
        return out


def _literal_loc(f: PolicyFile, loc: Loc, c: Condition, index: int | None) -> Loc:
    """Where a literal of a condition is written: `col: {op: v}`, `col: v`, `col: [v, ...]`
    or `col: {in: [v, ...]}`; the nearest written of these."""
    tail: tuple = () if index is None else (index,)
    for cand in ((*loc, c.column, c.op, *tail), (*loc, c.column, *tail)):
        if cand in f.marks:
            return cand
    return (*loc, c.column)


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def subject_identities(policies: PolicySet, catalog: Catalog) -> dict[tuple[str, str], set[str]]:
    """(table, column) -> subject kinds whose ids it holds as a key: for every rule
    `subject: {kind: K, column: C}` on T, T.C if C is T's key (the rule's or the store's), and
    the column C references by foreign key (the key of the subject's own table)."""
    out: dict[tuple[str, str], set[str]] = {}
    for f in policies.files:
        for r in f.policy.rules:
            info = catalog.tables.get(r.table)
            s = r.subject
            if s is None or info is None or s.column not in info.columns:
                continue
            if [s.column] == r.keys or (s.column,) == info.primary_key:
                out.setdefault((info.name, s.column), set()).add(s.kind)
            for fk in info.foreign_keys:
                if s.column in fk.columns and fk.ref_table in catalog.tables:
                    ref = fk.ref_columns[fk.columns.index(s.column)]
                    out.setdefault((fk.ref_table, ref), set()).add(s.kind)
    return out


def declared_links(r: Rule) -> list[tuple[str, str, str, str]]:
    """(related table, its linking column, the rule's column, how declared) of a rule's `related`
    filters (first hop) and related clock."""
    links = [(rel.table, rel.on, rel.parent_column, "related") for rel in r.related]
    if isinstance(r.clock, RelatedClock):
        links.append((r.clock.table, r.clock.on, r.clock.parent_column, "related clock"))
    return links


def infer_subjects(
    catalog: Catalog,
    identities: dict[tuple[str, str], set[str]],
    table: TableInfo,
    links: list[tuple[str, str, str, str]] | None = None,
) -> tuple[SubjectPath, ...]:
    """Every subject the rows of `table` reach: a column that is a subject identity, or that
    references one by foreign key, in the table itself or in a table reached over foreign
    keys (composite ones pairwise, up to MAX_HOPS, no table twice on a path). `links`:
    `declared_links` of the rule: where the related table's linking column is (or references)
    a subject identity there, the rule's column it links to is that subject's id."""
    out: list[SubjectPath] = []

    def add(p: SubjectPath) -> None:
        if all((q.kind, q.hops, q.column) != (p.kind, p.hops, p.column) for q in out):
            out.append(p)

    def identity_kinds(info: TableInfo, column: str) -> list[tuple[str, str]]:
        """(kind, how) for a column of `info` that is or references a subject identity."""
        found = [(k, "is") for k in sorted(identities.get((info.name, column), ()))]
        for fk in info.foreign_keys:
            if column in fk.columns:
                ref = fk.ref_columns[fk.columns.index(column)]
                found += [
                    (k, "references") for k in sorted(identities.get((fk.ref_table, ref), ()))
                ]
        return found

    def walk(info: TableInfo, hops: tuple[Hop, ...], seen: frozenset[str]) -> None:
        arrived = hops[-1].ref_columns if hops else ()
        for column in info.columns:
            for kind, how in identity_kinds(info, column):
                # a key reached over a foreign key is the referencing column's value, which
                # the table before already counted: no second path with one more join
                if not (how == "is" and column in arrived):
                    add(SubjectPath(kind, hops, column))
        if len(hops) >= MAX_HOPS:
            return
        for fk in info.foreign_keys:
            ref = catalog.tables.get(fk.ref_table)
            if ref is None or ref.name in seen:
                continue
            walk(ref, (*hops, Hop(ref, fk.columns, fk.ref_columns)), seen | {ref.name})

    walk(table, (), frozenset({table.name}))
    for rtable, on, mine, how in links or []:
        rinfo = catalog.tables.get(rtable)
        if rinfo is None or on not in rinfo.columns or mine not in table.columns:
            continue
        for kind, _ in identity_kinds(rinfo, on):
            add(SubjectPath(kind, (), mine, how))
    return tuple(out)


class _Resolver:
    def __init__(
        self,
        catalog: Catalog,
        store_kind: str,
        identities: dict[tuple[str, str], set[str]] | None = None,
    ):
        self.catalog = catalog
        self.store_kind = store_kind
        self.identities = identities or {}
        self.kinds: list[str] = []
        """Every subject kind the policies declare."""
        self.declared_tables: set[str] = set()
        """The tables some rule declares a subject for."""
        self.problems: list[Problem] = []

    def err(self, f: PolicyFile, loc: Loc, message: str, hint: str = "") -> None:
        self.problems.append(f.problem(loc, message, hint))

    def table(self, f: PolicyFile, loc: Loc, name: str) -> TableInfo | None:
        info = self.catalog.tables.get(name)
        if info is None:
            schema, _, short = name.partition(".")
            same = [t.split(".", 1)[1] for t in self.catalog.tables if t.startswith(schema + ".")]
            close = _suggest(short, same).replace("'", f"'{schema}.", 1) if same else ""
            if not same:  # the schema itself may be misspelt
                close = _suggest(name, list(self.catalog.tables))
            hint = close or "check schema.table against the store (retention-jobs tables)"
            self.err(f, loc, f"table {name!r} is not in the store", hint)
        return info

    def column(self, f: PolicyFile, loc: Loc, info: TableInfo, name: str) -> ColumnInfo | None:
        col = info.columns.get(name)
        if col is None:
            self.err(
                f,
                loc,
                f"column {name!r} is not in {info.name}",
                _suggest(name, list(info.columns)) or f"columns: {', '.join(info.columns)}",
            )
        return col

    # -- rules ----------------------------------------------------------------------------

    def rule(self, f: PolicyFile, i: int) -> BoundRule | None:
        r = f.policy.rules[i]
        base: Loc = ("rules", i)
        info = self.table(f, (*base, "table"), r.table)
        if info is None:
            return None
        for k in r.keys:
            self.column(f, (*base, "key"), info, k)
        if r.subject:
            self.column(f, (*base, "subject", "column"), info, r.subject.column)
        clock_type = self.clock(f, base, info, r)
        self.conditions(f, (*base, "where"), info, r.where)
        self.related(f, base, info, r.related)
        for col in r.suppress:
            self.column(f, (*base, "suppress"), info, col)
        for j, a in enumerate(r.remove_from):
            self.array_ref(f, (*base, "remove_from", j), info, r, a)
        self.strategies(f, (*base, "columns"), info, r.columns)
        links = tuple(
            link
            for j, c in enumerate(r.cascade)
            if (link := self.cascade(f, (*base, "cascade", j), info, r.keys, c)) is not None
        )
        if r.unreferenced and not self.catalog.referencing(info.name):
            self.err(
                f,
                (*base, "unreferenced"),
                f"no foreign key references {info.name}, so every row is unreferenced",
                "declare the foreign keys that point at the table, or drop `unreferenced`",
            )
        if r.action == "delete" and not r.unreferenced:
            # (an unreferenced row has no child a delete could break)
            links += self.fk_coverage(f, base, info, links, (info.name,))
        inferred = (
            self.infer(f, base, info, r) if r.subject is None and r.action != "retain" else ()
        )
        return BoundRule(f, i, info, clock_type or "date", links, inferred)

    def related(
        self,
        f: PolicyFile,
        base: Loc,
        info: TableInfo,
        filters: list[RelatedFilter],
        depth: int = 0,
    ) -> None:
        for j, rel in enumerate(filters):
            loc = (*base, "related", j)
            if depth >= MAX_HOPS:
                self.err(
                    f,
                    loc,
                    f"related filters nest more than {MAX_HOPS} hops deep",
                    "join fewer tables, or filter on a column the nearer table has",
                )
                return
            rinfo = self.table(f, (*loc, "table"), rel.table)
            if rinfo:
                self.link(f, loc, info, rinfo, rel.on, rel.references)
                self.conditions(f, (*loc, rel.quantifier), rinfo, rel.conditions)
                self.related(f, loc, rinfo, rel.related, depth + 1)

    def link(
        self,
        f: PolicyFile,
        loc: Loc,
        info: TableInfo,
        rinfo: TableInfo,
        on: str,
        references: str | None,
    ) -> None:
        """`on` (a column of the related table) and the column of `info` it holds."""
        self.column(f, (*loc, "on"), rinfo, on)
        if references is not None:
            self.column(f, (*loc, "references"), info, references)
        elif on not in info.columns:
            self.err(
                f,
                (*loc, "on"),
                f"{info.name} has no column {on!r} to link {rinfo.name}.{on} to",
                f"name the column of {info.name} that {on} holds: references: COLUMN"
                + (f" ({hint})" if (hint := _suggest(on, list(info.columns))) else ""),
            )

    def array_ref(self, f: PolicyFile, loc: Loc, info: TableInfo, r: Rule, a: ArrayRef) -> None:
        """An array column that holds ids of the rule's rows: it exists and is an array."""
        self.column(f, (*loc, "references"), info, a.references or r.keys[0])
        target = self.table(f, (*loc, "table"), a.table)
        if target is None:
            return
        col = self.column(f, (*loc, "column"), target, a.column)
        if col is not None and not (is_array(col) and castable_array(col.raw_type)):
            self.err(
                f,
                (*loc, "column"),
                f"{a.table}.{a.column} is {col.raw_type}, not an array",
                "remove_from takes an array column (BIGINT[], VARCHAR[], ...); for a plain "
                "column that references the rows use a cascade",
            )

    def infer(self, f: PolicyFile, base: Loc, info: TableInfo, r: Rule) -> tuple[SubjectPath, ...]:
        """The subjects a rule without `subject:` reaches; refused where it reaches none while
        the policies know subjects, unless it says `subject: {none: REASON}` (G1: a hold on a
        subject must not be bypassed because a rule forgot to say whose rows it changes)."""
        paths = infer_subjects(self.catalog, self.identities, info, declared_links(r))
        kinds = self.kinds
        if not paths and kinds and r.no_subject_reason is None:
            self.err(
                f,
                (*base, "name"),
                f"rule {r.name!r} names no subject, and no column of {info.name} is or references "
                f"(over foreign keys) the key of a subject's table ({', '.join(kinds)}): holds on "
                "subjects could not stop it",
                "add subject: {kind: KIND, column: COLUMN}, or subject: {none: REASON} if the rows "
                "are about no person",
            )
        return paths

    def clock(self, f: PolicyFile, base: Loc, info: TableInfo, r: Rule) -> str | None:
        loc = (*base, "clock")
        if isinstance(r.clock, RelatedClock):
            rinfo = self.table(f, (*loc, "table"), r.clock.table)
            if rinfo is None:
                return None
            self.link(f, loc, info, rinfo, r.clock.on, r.clock.references)
            col = self.column(f, (*loc, "column"), rinfo, r.clock.column)
        else:
            col = self.column(f, loc, info, r.clock)
        if col is None:
            return None
        if col.type not in DATE_TYPES:
            self.err(
                f,
                loc,
                f"clock column {col.name!r} is {col.raw_type}, not a date or timestamp",
                "a clock must be a DATE, TIMESTAMP or TIMESTAMPTZ column",
            )
            return None
        return col.type

    def conditions(self, f: PolicyFile, loc: Loc, info: TableInfo, conds: list[Condition]) -> None:
        """Every literal converts to its column's type (as the predicates will bind it)."""
        for c in conds:
            col = self.column(f, loc, info, c.column)
            if col is None or c.op == "is_null":
                continue
            values = c.value if isinstance(c.value, list) else [c.value]
            for i, v in enumerate(values):
                try:
                    to_column_type(v, col, f.policy.timezone)
                except LiteralError as e:
                    at = _literal_loc(f, loc, c, i if isinstance(c.value, list) else None)
                    self.err(f, at, e.message, e.hint)

    def strategies(
        self, f: PolicyFile, loc: Loc, info: TableInfo, columns: dict[str, Strategy]
    ) -> None:
        referenced = bool(self.catalog.referencing(info.name))
        for name, s in columns.items():
            col = self.column(f, (*loc, name), info, name)
            if col is None:
                continue
            problem = strategy_problem(s, col)
            if problem is None and isinstance(s, Fake):
                why = check_provider(s.provider, s.locale or f.policy.locale)
                problem = (
                    (why, "see the Faker provider list: name, email, phone_number, address, ...")
                    if why
                    else None
                )
            if problem:
                self.err(f, (*loc, name), problem[0], problem[1])
            elif self.store_kind == "duckdb" and referenced and info.indexes_on(name):
                self.err(
                    f,
                    (*loc, name),
                    *_duckdb_indexed(info, name, self.catalog.referencing(info.name)),
                )

    def cascade(
        self,
        f: PolicyFile,
        loc: Loc,
        parent: TableInfo,
        parent_key: list[str] | tuple[str, ...],
        c: Cascade,
        above: tuple[str, ...] = (),
    ) -> Link | None:
        """`above`: the tables of the cascade's ancestors (the rule's first)."""
        info = self.table(f, (*loc, "table"), c.table)
        if info is None:
            return None
        on = self.column(f, (*loc, "on"), info, c.on)
        references = c.references or (parent_key[0] if len(parent_key) == 1 else None)
        if references is None:
            self.err(
                f,
                (*loc, "references"),
                "the parent's key has several columns; name the one `on` refers to",
            )
            return None
        self.column(f, (*loc, "references"), parent, references)
        key: tuple[str, ...]
        if c.key is not None:
            key = (c.key,) if isinstance(c.key, str) else tuple(c.key)
            for k in key:
                self.column(f, (*loc, "key"), info, k)
        else:
            key = info.primary_key
            if not key and (c.action == "anonymise" or c.cascade):
                self.err(
                    f,
                    (*loc, "key"),
                    f"{info.name} has no primary key in the store",
                    "name its key with `key:`",
                )
        if (
            c.action == "unlink"
            and self.store_kind == "duckdb"
            and on is not None
            and self.catalog.referencing(info.name)
            and info.indexes_on(on.name)
        ):
            self.err(
                f,
                (*loc, "action"),
                *_duckdb_indexed(info, on.name, self.catalog.referencing(info.name)),
            )
        if c.action == "unlink" and on is not None and not on.nullable:
            self.err(
                f,
                (*loc, "action"),
                f"unlink sets {info.name}.{c.on} to NULL, but the column is NOT NULL",
                "use action delete, or make the column nullable",
            )
        self.strategies(f, (*loc, "columns"), info, c.columns)
        children = tuple(
            link
            for j, cc in enumerate(c.cascade)
            if (link := self.cascade(f, (*loc, "cascade", j), info, key, cc, (*above, info.name)))
            is not None
        )
        if c.action == "delete":
            children += self.fk_coverage(f, loc, info, children, (*above, info.name))
        inferred = (
            ()
            if info.name in self.declared_tables
            else infer_subjects(self.catalog, self.identities, info)
        )
        return Link(c, info, c.on, references, key, children, inferred)

    def fk_coverage(
        self,
        f: PolicyFile,
        loc: Loc,
        info: TableInfo,
        links: tuple[Link, ...],
        above: tuple[str, ...],
    ) -> tuple[Link, ...]:
        """A delete must not break a foreign key: every referencing table needs a cascade. A
        foreign key the database itself cascades (PostgreSQL's ON DELETE CASCADE / SET NULL)
        needs none: it becomes a cascade of the policy (`database_cascade`), so the plan
        counts its rows, holds on them stop the parent, and the ledger records them; the
        engine deletes or unlinks them first, and the database finds nothing left to do.
        Returns those cascades."""
        implied: list[Link] = []
        for fk in self.catalog.referencing(info.name):
            covered = any(
                link.table.name == fk.table
                and (link.on,) == fk.columns
                and (
                    link.spec.action in ("delete", "unlink")
                    or isinstance(link.spec.columns.get(link.on), Redact)
                )
                for link in links
            )
            if not covered and (link := self.database_cascade(f, loc, info, fk, above)):
                implied.append(link)
            elif not covered:
                self.err(
                    f,
                    (*loc, "cascade"),
                    f"deleting from {info.name} would violate foreign key {fk.name!r} of {fk.table}"
                    f"({', '.join(fk.columns)})",
                    f"add a cascade: {{table: {fk.table}, on: {fk.columns[0]}, action: delete | unlink}}",
                )
        return tuple(implied)

    def database_cascade(
        self, f: PolicyFile, loc: Loc, info: TableInfo, fk: ForeignKey, above: tuple[str, ...]
    ) -> Link | None:
        """The cascade the database itself would do for `fk`, as a policy cascade; None where
        it has none (or one the engine cannot follow: several columns, a cycle back to a
        table above, names a policy cannot spell)."""
        if fk.on_delete is None or len(fk.columns) != 1 or fk.table in above:
            return None
        if fk.table == info.name:
            return None
        try:
            spec = Cascade(
                table=fk.table,
                on=fk.columns[0],
                references=fk.ref_columns[0],
                action="delete" if fk.on_delete == "CASCADE" else "unlink",
            )
        except ValidationError:
            return None
        return self.cascade(f, loc, info, [fk.ref_columns[0]], spec, above)


def _duckdb_indexed(info: TableInfo, column: str, referencing: list[ForeignKey]) -> tuple[str, str]:
    """DuckDB rewrites an update of an indexed column as a delete and an insert, and the delete
    trips the foreign-key check of any row another row references ("key ... is still
    referenced"), whatever the index: found in DuckDB 2.0, also when the index is dropped in
    the same transaction. Refused here rather than failing mid-run."""
    names = ", ".join(info.indexes_on(column))
    by = sorted({fk.table for fk in referencing})
    return (
        f"DuckDB cannot update the column {info.name}.{column}: it is covered by {names}, and "
        f"rows of {info.name} are referenced by foreign keys of {', '.join(by)} (DuckDB rewrites "
        "such an update as delete + insert and the key check refuses it)",
        "drop that index if it is not a key (DROP INDEX ...), delete the rows instead of "
        "anonymising them, or keep the data in PostgreSQL, which has no such limit",
    )


def strategy_problem(s: Strategy, col: ColumnInfo) -> tuple[str, str] | None:
    """Why a strategy cannot write into this column, or None."""
    t = col.type
    if isinstance(s, Redact):
        if not col.nullable:
            return (
                f"redact writes NULL, but {col.name} is NOT NULL",
                "use hash, fake or constant, or make the column nullable",
            )
        return None
    if isinstance(s, Hash):
        if t != "string":
            return (
                f"hash writes text, but {col.name} is {col.raw_type}",
                "use redact, constant or generalise",
            )
        need = (s.length or 16) + (len(s.email_domain) + 1 if s.email_domain else 0)
        if col.max_length is not None and col.max_length < need:
            return (
                f"hash needs at least {need} characters, but {col.name} holds {col.max_length}",
                ("use a shorter length or email_domain, " if s.email_domain else "use ")
                + "mask or redact, or widen the column",
            )
        return None
    if isinstance(s, Fake):
        if t != "string":
            return (
                f"fake {s.provider} writes text, but {col.name} is {col.raw_type}",
                "use redact, constant or generalise for non-text columns",
            )
        return None
    if isinstance(s, Mask):
        if t != "string":
            return (
                f"mask works on text, but {col.name} is {col.raw_type}",
                "use redact or generalise",
            )
        if col.unique:
            return (
                f"masked values of the unique column {col.name} would collide",
                "use hash or fake",
            )
        return None
    if isinstance(s, Generalise):
        if s.to and t not in DATE_TYPES:
            return (
                f"generalise to {s.to} needs a date or timestamp, but {col.name} is {col.raw_type}",
                "use {generalise: {band: N}} for numbers",
            )
        if s.band and t not in NUMERIC_TYPES:
            return (
                f"generalise band needs a number, but {col.name} is {col.raw_type}",
                "use {generalise: year} for dates",
            )
        if col.unique:
            return (
                f"generalised values of the unique column {col.name} would collide",
                "use hash or fake",
            )
        return None
    if isinstance(s, Json):
        if col.raw_type.upper() not in ("JSON", "JSONB"):
            return (
                f"json edits a JSON document, but {col.name} is {col.raw_type}",
                "use it on a JSON or JSONB column; for text use redact, hash or mask",
            )
        if col.unique:
            return (f"edited documents of the unique column {col.name} could collide", "use hash")
        return None
    if isinstance(s, Constant):
        if col.unique:
            return (f"a constant cannot go into the unique column {col.name}", "use hash or fake")
        v = s.value
        if v is None and not col.nullable:
            return (
                f"constant null into the NOT NULL column {col.name}",
                "pick a non-null constant",
            )
        if v is not None and not (
            (t == "string" and isinstance(v, str))
            or (t in NUMERIC_TYPES and isinstance(v, (int, float)) and not isinstance(v, bool))
            or (t == "boolean" and isinstance(v, bool))
            or (t in DATE_TYPES and isinstance(v, date))
        ):
            return (
                f"constant {type(v).__name__} does not fit {col.name} ({col.raw_type})",
                "give a value of the column's type",
            )
        if isinstance(v, str) and col.max_length is not None and len(v) > col.max_length:
            return (f"constant is longer than {col.name} allows ({col.max_length})", "shorten it")
    return None


def resolve(policies: PolicySet, catalog: Catalog, store_kind: str) -> list[BoundRule]:
    r = _Resolver(catalog, store_kind, subject_identities(policies, catalog))
    r.kinds = sorted(
        {rule.subject.kind for f in policies.files for rule in f.policy.rules if rule.subject}
    )
    r.declared_tables = {
        rule.table for f in policies.files for rule in f.policy.rules if rule.subject
    }
    bound = [b for f in policies.files for i in range(len(f.policy.rules)) if (b := r.rule(f, i))]
    if r.problems:
        raise PolicyError(r.problems)
    return bound
