"""Load policy files: YAML -> typed models, every problem located as file:line:col."""

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from retention_jobs import policy as P
from retention_jobs.errors import PolicyError, Problem
from retention_jobs.policy import Policy

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyFile:
    """A validated policy with where it came from, so later stages can point into the file."""

    policy: Policy
    path: str
    sha256: str
    marks: dict[Loc, tuple[int, int]] = field(repr=False, compare=False)

    def where(self, loc: Loc) -> tuple[int, int]:
        """The line and column of `loc`, or of its nearest enclosing node."""
        while loc not in self.marks and loc:
            loc = loc[:-1]
        return self.marks.get(loc, (1, 1))

    def problem(self, loc: Loc, message: str, hint: str = "") -> Problem:
        line, col = self.where(loc)
        return Problem(self.path, line, col, format_loc(loc), message, hint)


@dataclass(frozen=True)
class PolicySet:
    files: tuple[PolicyFile, ...]

    @property
    def policies(self) -> list[Policy]:
        return [f.policy for f in self.files]

    def by_purpose(self, purpose: str) -> PolicyFile:
        for f in self.files:
            if f.policy.purpose == purpose:
                return f
        raise KeyError(purpose)

    @property
    def digest(self) -> str:
        """One hash over all files, for receipts and the audit ledger."""
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.policy.purpose):
            h.update(f.policy.purpose.encode() + b"\0" + f.sha256.encode() + b"\0")
        return h.hexdigest()


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _MarkedLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `on`, `yes`, `no`, `off` stay strings (cascades
    have an `on:` key, and a country code NO must not turn into false)."""


_MarkedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


MAX_FILE_BYTES = 256 * 1024
"""A policy file is a few kilobytes; anything above this is refused unread. The pure-Python
YAML parser reads about 1 MB in several seconds, so the limit also bounds the time."""

MAX_NODES = 10_000
"""A policy has a few hundred YAML nodes; a file of many tiny ones (`[1,1,1,...]`) is refused
when it passes this, before validation builds an error for each."""

MAX_DEPTH = 32
"""Nesting depth of a policy is about 6 (rules[0].columns.email.fake); 32 leaves room."""

_YAML = "tag:yaml.org,2002:"
# Scalar tags the safe constructor builds without surprises; everything else is refused.
_SCALAR_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
# YAML forbids these anyway; found before the parser, they are located and named, not a crash.
_BAD_CHAR = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Refused(Exception):
    """A construct policy files do not allow, with where it starts."""

    def __init__(self, mark: yaml.Mark, message: str, hint: str):
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


class _SafeLoader(_MarkedLoader):
    """The policy loader: no anchors or aliases (so no alias bombs or recursive aliases), no
    explicit tags but `!!str`, no merge keys, nesting at most MAX_DEPTH (the composer recurses
    per level). Each is refused where it starts, before anything is built from it."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                event.start_mark,
                f"alias *{event.anchor} is not allowed in policy files",
                "write the value out in full (anchors and aliases are refused)",
            )
        if event.anchor is not None:
            raise _Refused(
                event.start_mark,
                f"anchor &{event.anchor} is not allowed in policy files",
                "remove it and write values out in full (anchors and aliases are refused)",
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and not (
            isinstance(event, yaml.ScalarEvent) and tag == _YAML + "str"
        ):
            raise _Refused(
                event.start_mark,
                f"tag {_short_tag(tag)} is not allowed in policy files",
                "remove the tag; quote the value if it must stay text",
            )
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                event.start_mark,
                f"nested deeper than {MAX_DEPTH} levels",
                "a policy needs about 6 levels; check the file",
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(
                event.start_mark,
                f"more than {MAX_NODES} values in one file",
                "a policy has a few hundred; check that this is a policy file",
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.ScalarNode) and node.tag not in _SCALAR_TAGS:
            if node.tag == _YAML + "merge":
                raise _Refused(
                    node.start_mark,
                    "merge key '<<' is not allowed in policy files",
                    "write the keys out in full",
                )
            raise _Refused(
                node.start_mark,
                f"value {node.value[:20]!r} is not plain text, a number, a date or a boolean",
                "quote it",
            )
        return node


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


def _too_big(path: str, size: int) -> Problem:
    return Problem(
        path,
        1,
        1,
        "",
        f"the file is {size} bytes, more than the {MAX_FILE_BYTES} a policy file may have",
        "check that this is a policy file; a policy is a few kilobytes",
    )


def _bad_char(text: str, path: str) -> Problem | None:
    m = _BAD_CHAR.search(text)
    if not m:
        return None
    line = text.count("\n", 0, m.start()) + 1
    col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
    return Problem(
        path,
        line,
        col,
        "",
        f"control character U+{ord(m.group()):04X} is not allowed in YAML",
        "remove it (write it as an escape such as \\t, \\n or \\u00e9 inside double quotes if it is meant)",
    )


def _construct(node: yaml.Node, loc: Loc, problems: list, path: str, loader) -> Any:
    """A scalar's value; a value YAML cannot build (2026-02-30, an int of 5000 digits) is a
    located problem, not a crash."""
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as e:
        what = "date" if node.tag == _YAML + "timestamp" else node.tag.rsplit(":", 1)[-1]
        problems.append(
            Problem(
                path,
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                format_loc(loc),
                f"not a valid {what}: {getattr(e, 'problem', None) or str(e)[:80]}",
                "correct it, or quote it to keep it as text",
            )
        )
        return None


def _to_python(node: yaml.Node, loc: Loc, marks: dict, problems: list, path: str, loader) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            before = len(problems)
            key = (
                _construct(key_node, loc, problems, path, loader)
                if isinstance(key_node, yaml.ScalarNode)
                else None
            )
            if len(problems) > before:
                continue
            if not isinstance(key, (str, int)):
                problems.append(
                    Problem(
                        path,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        format_loc(loc),
                        "mapping keys must be plain names",
                        "write the key as a plain word, such as a field or column name",
                    )
                )
                continue
            child = (*loc, key)
            if key in out:
                problems.append(
                    Problem(
                        path,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        format_loc(child),
                        f"duplicate key {key!r}",
                        "YAML would silently keep only the last one; remove one",
                    )
                )
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _to_python(value_node, child, marks, problems, path, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            child = (*loc, i)
            marks[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
            items.append(_to_python(item, child, marks, problems, path, loader))
        return items
    return _construct(node, loc, problems, path, loader)


_FIELD_NAMES = sorted(
    {
        n
        for m in (
            P.Policy,
            P.Rule,
            P.Subject,
            P.RelatedClock,
            P.RelatedFilter,
            P.Cascade,
            P.Hash,
            P.Fake,
            P.Mask,
            P.Generalise,
            P.Json,
        )
        for n in m.model_fields
    }
    - {"kind"}
)


def _hint(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _FIELD_NAMES, n=1, cutoff=0.8)
        if close:
            return f"did you mean {close[0]!r}?"
        return "remove it or check its spelling against docs/policies.md"
    if kind == "missing":
        return "add it (see docs/policies.md)"
    if kind == "literal_error":
        return ""
    if kind == "string_pattern_mismatch" and "[A-Za-z0-9_]" in str(err.get("ctx", {})):
        # quoting would let a name carry `%`, quotes or `.`; the engine names tables and columns
        # in control tables, marker lists and messages, so the policy language keeps to these
        return (
            "policies name tables (schema.table) and columns with letters, digits and _ only; "
            "rename the table or column in the store to cover it"
        )
    return ""


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


_BRANCH_TAG = re.compile(
    r"^(?:[A-Z]\w*|str|int|float|bool|date|none|list\[.*\]|dict\[.*\]|constrained-str|function-\w+\[.*\])$"
)
_TYPE_ERRORS = {
    "string_type",
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "int_type",
    "float_type",
    "bool_type",
    "date_type",
    "none_required",
    "string_pattern_mismatch",
}


def _drop_union_tags(loc: Loc) -> Loc:
    # pydantic puts the union member's name (e.g. 'str', 'RelatedClock') into the location.
    return tuple(p for p in loc if not (isinstance(p, str) and _BRANCH_TAG.match(p)))


def _errors(e: ValidationError) -> list[tuple[Loc, ErrorDetails]]:
    """Pydantic's errors with union noise removed: when one branch of a union fits the input's
    shape, the other branches' 'input should be a valid string' errors only confuse."""
    raw = [
        (
            _drop_union_tags(tuple(err["loc"])),
            err,
            len(err["loc"]) != len(_drop_union_tags(tuple(err["loc"]))),
        )
        for err in e.errors()
    ]
    out = []
    for loc, err, in_union in raw:
        if (
            in_union
            and err["type"] in _TYPE_ERRORS
            and any(
                o is not err
                and oloc[: len(loc)] == loc
                and (len(oloc) > len(loc) or o["type"] not in _TYPE_ERRORS)
                for oloc, o, _ in raw
            )
        ):
            continue
        out.append((loc, err))
    return out


def load_text(text: str, path: str) -> PolicyFile:
    """Parse one policy document; raise PolicyError with every problem in it."""
    problems: list[Problem] = []
    marks: dict[Loc, tuple[int, int]] = {(): (1, 1)}
    if len(text) > MAX_FILE_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise PolicyError([_too_big(path, len(text.encode("utf-8", "replace")))])
    bad = _bad_char(text, path)
    if bad:
        raise PolicyError([bad])
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
    except _Refused as e:
        line, col = e.mark.line + 1, e.mark.column + 1
        raise PolicyError([Problem(path, line, col, "", e.message, e.hint)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyError(
            [
                Problem(
                    path,
                    line,
                    col,
                    "",
                    f"not valid YAML: {getattr(e, 'problem', e)}",
                    "check indentation and quoting",
                )
            ]
        ) from None
    finally:
        loader.dispose()
    if node is None:
        raise PolicyError(
            [
                Problem(
                    path,
                    1,
                    1,
                    "",
                    "the file is empty",
                    "a policy needs purpose, title, legal_basis, owner and rules",
                )
            ]
        )
    data = _to_python(node, (), marks, problems, path, loader)
    if not isinstance(data, dict):
        raise PolicyError(
            [Problem(path, 1, 1, "", "a policy file is a mapping (purpose: ..., rules: ...)", "")]
        )
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        for loc, err in _errors(e):
            loc = (*loc, *getattr((err.get("ctx") or {}).get("error"), "loc", ()))
            line, col = _locate(marks, loc)
            problems.append(
                Problem(path, line, col, format_loc(loc), _clean(err["msg"]), _hint(err))
            )
        raise PolicyError(problems) from None
    if problems:
        raise PolicyError(problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    f = PolicyFile(policy=policy, path=path, sha256=digest, marks=marks)
    problems = _fake_problems(f)
    if problems:
        raise PolicyError(problems)
    return f


def _fake_problems(f: PolicyFile) -> list[Problem]:
    """Every `fake` provider exists for its locale and takes no arguments (no store needed)."""
    from retention_jobs.fakes import check_provider, provider_hint

    out = []
    for i, rule in enumerate(f.policy.rules):
        for column, s in rule.columns.items():
            if not isinstance(s, P.Fake):
                continue
            locale = s.locale or f.policy.locale
            why = check_provider(s.provider, locale)
            if why:
                loc: Loc = ("rules", i, "columns", column)
                for tail in (("fake", "provider"), ("fake",), ("provider",)):
                    if (*loc, *tail) in f.marks:
                        loc = (*loc, *tail)
                        break
                out.append(f.problem(loc, why, provider_hint(s.provider, locale)))
    return out


def _locate(marks: dict, loc: Loc) -> tuple[int, int]:
    while loc not in marks and loc:
        loc = loc[:-1]
    return marks.get(loc, (1, 1))


NOT_POLICIES = {"coverage.yaml"}
"""Files in a policy directory that are not policies (`scan`'s allow-list)."""


def policy_paths(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            # the scan's allow-list lives beside the policies but is not one
            out.extend(f for f in found if f.name not in NOT_POLICIES)
        else:
            out.append(p)
    return out


def load_texts(
    items: Iterable[tuple[str, str]], problems: list[Problem] | None = None
) -> PolicySet:
    """Validate policy texts given as (shown path, text); collect the problems of all of them
    (and those passed in), duplicate purposes too, before raising."""
    problems = list(problems or [])
    files: list[PolicyFile] = []
    for shown, text in items:
        try:
            files.append(load_text(text, shown))
        except PolicyError as e:
            problems.extend(e.problems)
    seen: dict[str, PolicyFile] = {}
    for f in files:
        other = seen.get(f.policy.purpose)
        if other:
            problems.append(
                f.problem(
                    ("purpose",),
                    f"purpose {f.policy.purpose!r} is also defined in {other.path}",
                    "one file per purpose",
                )
            )
        seen[f.policy.purpose] = f
    if problems:
        raise PolicyError(problems)
    return PolicySet(tuple(files))


def load_policies(paths: Iterable[str | Path]) -> PolicySet:
    """Load every file; collect the problems of all of them before raising."""
    problems: list[Problem] = []
    found = policy_paths(paths)
    if not found:
        raise PolicyError(
            [
                Problem(
                    str(next(iter(paths), "policies")),
                    1,
                    1,
                    "",
                    "no policy files found",
                    "put one YAML file per purpose in policies/",
                )
            ]
        )
    items: list[tuple[str, str]] = []
    for path in found:
        shown = _display(path)
        try:
            with path.open("rb") as fh:  # never more than the limit is read
                raw = fh.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                problems.append(_too_big(shown, path.stat().st_size))
                continue
            # newlines as read_text gives them, so digests stay what they were
            text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
            items.append((shown, text))
        except (OSError, UnicodeDecodeError) as e:
            problems.append(
                Problem(
                    shown,
                    1,
                    1,
                    "",
                    f"cannot read the file: {e.__class__.__name__}",
                    "check the path",
                )
            )
    return load_texts(items, problems)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
