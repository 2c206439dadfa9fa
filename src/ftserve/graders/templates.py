"""Grader templates as OpenAI fills them: `{{sample.output_text}}`, `{{sample.output_json.a.b}}`,
`{{sample.output_tools[0].function.name}}` and `{{item.<field>...}}`, each path walked through objects and
list indices (`.0` and `[0]` alike)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.\[\]]*)\s*\}\}")
_INDEX = re.compile(r"\[(\d+)\]")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")


class TemplateError(ValueError):
    """A placeholder names something the sample or the item does not have."""


@dataclass(frozen=True)
class Sample:
    output_text: str
    output_tools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output_json(self) -> Any:
        """The output parsed as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.output_text)
        except ValueError:
            return None


def render(template: str, sample: Sample, item: dict[str, Any]) -> str:
    """The template with each placeholder replaced; values that are not strings are written as JSON."""
    def value(match: re.Match[str]) -> str:
        found = lookup(match.group(1), sample, item)
        return found if isinstance(found, str) else json.dumps(found)

    return _PLACEHOLDER.sub(value, template)


def placeholders(template: str) -> list[str]:
    """The paths the template's placeholders name, as written."""
    return [match.group(1) for match in _PLACEHOLDER.finditer(template)]


def path_problem(path: str, item_fields: set[str] | None) -> str | None:
    """Why `path` can never be filled (a root other than sample and item, a field no item has), or None.
    `item_fields`: the fields every item has; None when not known."""
    head, *rest = _INDEX.sub(r".\1", path).split(".")
    if head == "sample" and rest and rest[0] in SAMPLE_FIELDS:
        return None
    if head == "sample":
        return f"{{{{{path}}}}}: a sample has {', '.join(SAMPLE_FIELDS)}"
    if head != "item":
        return f"{{{{{path}}}}}: a placeholder starts with sample. or item."
    if rest and item_fields is not None and rest[0] not in item_fields:
        return f"{{{{{path}}}}}: the items have no field {rest[0]!r}"
    return None


def lookup(path: str, sample: Sample, item: dict[str, Any]) -> Any:
    problem = path_problem(path, None)
    if problem is not None:
        raise TemplateError(problem)
    head, *rest = _INDEX.sub(r".\1", path).split(".")
    current: Any = item if head == "item" else {
        "output_text": sample.output_text, "output_json": sample.output_json, "output_tools": sample.output_tools,
    }
    for key in rest:
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            raise TemplateError(f"{{{{{path}}}}}: there is no {key!r} here")
    return current
