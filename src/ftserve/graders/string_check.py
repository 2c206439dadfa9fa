"""The string_check grader: 1.0 when the rendered input and reference compare as asked, else 0.0."""

from __future__ import annotations

from typing import Any, Literal

from ftserve.graders.templates import Sample, render

Operation = Literal["eq", "ne", "like", "ilike"]
OPERATIONS: tuple[Operation, ...] = ("eq", "ne", "like", "ilike")


def string_check(grader: dict[str, Any], sample: Sample, item: dict[str, Any]) -> float:
    text, reference = render(grader["input"], sample, item), render(grader["reference"], sample, item)
    operation: Operation = grader["operation"]
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":  # OpenAI's like and ilike test containment, not SQL patterns
        return float(reference in text)
    return float(reference.lower() in text.lower())
