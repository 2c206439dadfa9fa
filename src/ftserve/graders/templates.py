"""Grader templates as OpenAI fills them: `{{sample.output_text}}`, `{{sample.output_json.a.b}}`,
`{{sample.output_tools}}` and `{{item.<field>...}}`, each path walked through objects (and list indices)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")


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


def lookup(path: str, sample: Sample, item: dict[str, Any]) -> Any:
    head, *rest = path.split(".")
    if head == "item":
        current: Any = item
    elif head == "sample" and rest:
        name, *rest = rest
        roots = {"output_text": sample.output_text, "output_json": sample.output_json,
                 "output_tools": sample.output_tools}
        if name not in roots:
            raise TemplateError(f"{{{{{path}}}}}: a sample has output_text, output_json and output_tools")
        current = roots[name]
    else:
        raise TemplateError(f"{{{{{path}}}}}: a placeholder starts with sample. or item.")
    for key in rest:
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            raise TemplateError(f"{{{{{path}}}}}: there is no {key!r} here")
    return current
