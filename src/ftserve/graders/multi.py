"""The multi grader: each sub-grader scores the sample, and `calculate_output` combines their scores.

Sub-graders come as OpenAI's guide sends them (a map name -> grader, the names the formula uses), as its API
reference shows (a list, each named by its `name`), or as the spec types them (one grader). A sub-grader that
fails scores 0 in the formula, and its error flags become the multi grader's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ftserve.graders.formula import Formula, FormulaError, parse
from ftserve.graders.outcome import Errors, Outcome


def sub_graders(graders: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, where in `graders`, grader) for each sub-grader, in order."""
    if isinstance(graders, list):
        return [(grader["name"], str(index), grader) for index, grader in enumerate(graders)]
    if isinstance(graders.get("type"), str):  # one grader; in a map, every value is a grader object
        return [(graders["name"], "", graders)]
    return [(name, name, grader) for name, grader in graders.items()]


def multi_batch(grader: dict[str, Any], count: int,
                grade: Callable[[dict[str, Any]], list[Outcome]]) -> list[Outcome]:
    """The multi grader's outcome for each of `count` samples; `grade` scores them all with one sub-grader."""
    named = sub_graders(grader["graders"])
    try:
        formula = parse(grader["calculate_output"], {name for name, _, _ in named})
    except FormulaError:
        return [Outcome(0.0, grader["name"], "multi", Errors(formula_parse_error=True)) for _ in range(count)]
    by_grader = {name: grade(sub) for name, _, sub in named}
    return [combine(grader["name"], {name: outcomes[index] for name, outcomes in by_grader.items()}, formula)
            for index in range(count)]


def combine(name: str, parts: dict[str, Outcome], formula: Formula) -> Outcome:
    rewards = {part: outcome.reward for part, outcome in parts.items()}
    combined = Outcome(0.0, name, "multi", sub_rewards=rewards, scores=dict(rewards),
                       execution_time=sum(outcome.execution_time for outcome in parts.values()))
    for outcome in parts.values():
        _merge_errors(combined.errors, outcome.errors)
        _add_usage(combined, outcome)
    try:
        combined.reward = formula(rewards)
    except FormulaError:
        combined.errors.formula_parse_error = True
    return combined


def _merge_errors(into: Errors, other: Errors) -> None:
    """Each flag set where either has it; each detail the first one given."""
    for field in fields(Errors):
        mine, theirs = getattr(into, field.name), getattr(other, field.name)
        if isinstance(mine, bool):
            setattr(into, field.name, mine or theirs)
        elif mine is None:
            setattr(into, field.name, theirs)


def _add_usage(into: Outcome, other: Outcome) -> None:
    if other.token_usage is not None:
        into.token_usage = (into.token_usage or 0) + other.token_usage
    into.sampled_model_name = into.sampled_model_name or other.sampled_model_name
    for model, usage in other.model_grader_token_usage_per_model.items():
        mine = into.model_grader_token_usage_per_model.setdefault(model, dict.fromkeys(usage, 0))
        for key, value in usage.items():
            mine[key] = mine.get(key, 0) + value
