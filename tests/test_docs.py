"""The policy reference documents every key a policy file accepts.

The field lists come from the pydantic models, so a field added to `retention_jobs/policy.py`
without a line in `docs/policies.md` fails here rather than surprising a reviewer.
"""

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from retention_jobs import policy

DOC = Path(__file__).parents[1] / "docs" / "policies.md"

# Model -> the heading of the section whose field table documents it.
SECTIONS: dict[type[BaseModel], str] = {
    policy.Policy: "## Policy",
    policy.Rule: "## Rule",
    policy.Subject: "## Subject",
    policy.RelatedClock: "### Related clocks",
    policy.RelatedFilter: "### Related filters",
    policy.Cascade: "## Cascades",
    policy.ArrayRef: "### Ids in array columns",
    policy.Mask: "## Anonymisation strategies",
    policy.Hash: "## Anonymisation strategies",
    policy.Fake: "## Anonymisation strategies",
    policy.Generalise: "## Anonymisation strategies",
    policy.Json: "## Anonymisation strategies",
}

# Fields whose YAML spelling differs from the attribute name.
SPELLED = {"no_subject_reason": "none", "conditions": None}


def _section(text: str, heading: str) -> str:
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, re.M)]
    return rest[: ends[0]] if ends else rest


def _keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        if name == "kind" and model.__name__ != "Subject":
            continue  # a strategy's kind is its YAML key, listed in the strategy table
        spelled = SPELLED.get(name, info.alias or name)
        if spelled:
            keys.append(spelled)
    return keys


@pytest.mark.parametrize("model", list(SECTIONS), ids=lambda m: m.__name__)
def test_every_policy_key_is_documented_in_its_section(model):
    section = _section(DOC.read_text(encoding="utf-8"), SECTIONS[model])
    missing = [k for k in _keys(model) if f"`{k}`" not in section and f"{k}:" not in section]
    assert not missing, f"{model.__name__}: not documented under {SECTIONS[model]!r}: {missing}"


def test_the_section_finder_sees_a_missing_key():
    # The check above must be able to fail: the Policy section without its `purge` row.
    text = DOC.read_text(encoding="utf-8")
    section = _section(text, "## Policy")
    stripped = "\n".join(line for line in section.splitlines() if not line.startswith("| `purge`"))
    assert "`purge`" in section and "`purge`" not in stripped


def test_the_readme_links_every_doc():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted(DOC.parent.glob("*.md")) if f"(docs/{p.name}" not in readme]
    assert not unlinked, f"README links to no {unlinked}"
