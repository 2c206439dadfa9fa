"""Whether a grader can run here, checked before it does (graders/validate, graders/run, a reinforcement job's
create): what its shape allows but this server cannot do, or what can never work on the job's data."""

from __future__ import annotations

import ast
from typing import Any

from ftserve.graders.formula import FormulaError, parse
from ftserve.graders.model_graders import content_problem
from ftserve.graders.multi import sub_graders
from ftserve.graders.outcome import Judge
from ftserve.graders.sandbox import PythonLimits, source_problem
from ftserve.graders.templates import path_problem, placeholders


class GraderInvalid(ValueError):
    """The grader cannot run here. `param` is the path inside the grader (`graders.donors.source`), "" for
    the grader as a whole; the API puts it under `grader.` or `method.reinforcement.grader.`."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message = message
        self.param = param


def check_grader(grader: dict[str, Any], *, item_fields: set[str] | None, judge: Judge | None,
                 embed_available: bool, python: PythonLimits, top_level: bool = True) -> None:
    """Raise GraderInvalid for the first thing that stops `grader` from running. `item_fields`: the fields
    every dataset item has (None: unknown, not checked); `judge` None: model graders are refused; `top_level`:
    the grader is a reinforcement job's (or graders/run's) own, not a multi grader's part."""
    kind = grader["type"]
    if kind == "multi":
        _check_multi(grader, item_fields=item_fields, judge=judge, embed_available=embed_available, python=python)
    elif kind in ("string_check", "text_similarity"):
        for key in ("input", "reference"):
            _check_template(grader[key], item_fields, key)
        if kind == "text_similarity" and grader["evaluation_metric"] == "cosine" and not embed_available:
            raise GraderInvalid("The cosine metric needs an embeddings model, and this server has none configured "
                                "(FTSERVE_GRADER_EMBEDDINGS_MODEL); choose another evaluation_metric.",
                                "evaluation_metric")
    elif kind == "python":
        _check_python(grader["source"], python)
    elif kind in ("score_model", "label_model"):
        if kind == "label_model" and top_level:
            raise GraderInvalid("A label_model grader gives a label, not a reward: use it inside a multi grader.",
                                "type")
        _check_model(grader, item_fields, judge)
    else:
        raise GraderInvalid(f"{kind!r} is not a grader type.", "type")


def _check_multi(grader: dict[str, Any], **context: Any) -> None:
    named = sub_graders(grader["graders"])
    seen: set[str] = set()
    for name, where, sub in named:
        prefix = f"graders.{where}" if where else "graders"
        if name in seen:
            raise GraderInvalid(f"Two sub-graders are named {name!r}; calculate_output could not tell them apart.",
                                f"{prefix}.name")
        seen.add(name)
        try:
            check_grader(sub, top_level=False, **context)
        except GraderInvalid as error:
            raise GraderInvalid(error.message, f"{prefix}.{error.param}" if error.param else prefix) from None
    try:
        parse(grader["calculate_output"], seen)
    except FormulaError as error:
        raise GraderInvalid(str(error), "calculate_output") from None


def _check_template(template: str, item_fields: set[str] | None, param: str) -> None:
    for path in placeholders(template):
        problem = path_problem(path, item_fields)
        if problem is not None:
            raise GraderInvalid(f"{problem}.", param)


def _check_python(source: str, limits: PythonLimits) -> None:
    if not limits.enabled:
        raise GraderInvalid("Python graders are turned off on this server (FTSERVE_PYTHON_GRADERS).", "type")
    problem = source_problem(source, limits)
    if problem is not None:
        raise GraderInvalid(problem, "source")
    try:  # parsed and compiled, never run: compiling executes nothing of the source
        tree = ast.parse(source, "<grader>")
        compile(tree, "<grader>", "exec", dont_inherit=True)
    except SyntaxError as error:
        raise GraderInvalid(f"The source does not compile: {error.msg} (line {error.lineno}).", "source") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise GraderInvalid(f"The source does not compile: {error}.", "source") from None
    if not any(name == "grade" for node in tree.body for name in _defined(node)):
        raise GraderInvalid("The source defines no grade(sample, item) function.", "source")


def _defined(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds (def, class, assignment, import)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).partition(".")[0] for alias in node.names]
    return []


def _check_model(grader: dict[str, Any], item_fields: set[str] | None, judge: Judge | None) -> None:
    if judge is None:
        raise GraderInvalid("Model graders need a judge model, and none is available here.", "model")
    if not judge.known(grader["model"]):
        raise GraderInvalid(f"The model {grader['model']!r} cannot be a judge here: it is not one this project "
                            "may call.", "model")
    for index, message in enumerate(grader["input"]):
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        for place, part in enumerate(parts):
            where = f"input.{index}.content" + (f".{place}" if isinstance(content, list) else "")
            problem = content_problem(part)
            if problem is not None:
                raise GraderInvalid(f"{problem}.", where)
            _check_template(part if isinstance(part, str) else part["text"], item_fields, where)
    if grader["type"] == "score_model":
        bounds = grader.get("range")
        if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
            raise GraderInvalid("range is [low, high], with low below high.", "range")
        return
    if not grader["labels"]:
        raise GraderInvalid("labels lists the labels the judge may answer; it is empty.", "labels")
    if not grader["passing_labels"]:
        raise GraderInvalid("passing_labels names no label, so every sample would score 0.", "passing_labels")
    outside = [label for label in grader["passing_labels"] if label not in grader["labels"]]
    if outside:
        raise GraderInvalid(f"passing_labels must be among labels; {', '.join(map(repr, outside))} is not.",
                            "passing_labels")
