"""Grading with any of OpenAI's graders: one sample (`run_grader`, the graders/run endpoint) or a batch of
samples with their items (`run_batch`, a reinforcement step's rewards: a python grader's samples share one
sandboxed process, a model grader asks its judge once per sample).

A grader that fails on a sample scores 0 and says why in `Outcome.errors`, as OpenAI's flags:
- a placeholder naming what the sample or item lacks: `invalid_variable_error`;
- python: an exception or a source over the size limit: `python_grader_runtime_error` with its details (the
  exception's last line and the grader's line number); a return that is not a finite number:
  `invalid_variable_error`, the details saying what came back; a limit or a crash (timeout, cpu_time,
  memory, killed, exited, output, or disabled here): `python_grader_server_error` with that type;
- model graders: the judge failing or unknown: `model_grader_server_error` with details; declining:
  `model_grader_refusal_error`; a reply that is not a score in range or one of the labels:
  `model_grader_parse_error` (what is accepted: model_graders.py);
- image or audio content for a judge, or cosine without embeddings: `other_error`;
- multi: `formula_parse_error` when `calculate_output` does not parse or cannot be computed, and every flag
  of its sub-graders.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftserve.graders.model_graders import UnsupportedContent, messages, model_grade
from ftserve.graders.multi import multi_batch
from ftserve.graders.outcome import Errors, Judge, Outcome
from ftserve.graders.sandbox import RUNTIME_FAILURES, PythonLimits, SampleResult, grade_batch
from ftserve.graders.string_check import string_check
from ftserve.graders.templates import Sample, TemplateError, render
from ftserve.graders.text_similarity import Embed, NoEmbeddings, similarity


@dataclass(frozen=True)
class _Context:
    judge: Judge | None
    embed: Embed | None
    python: PythonLimits


def run_grader(grader: dict[str, Any], model_sample: str, item: dict[str, Any], *, judge: Judge | None = None,
               embed: Embed | None = None, python: PythonLimits = PythonLimits(),
               output_tools: list[dict[str, Any]] | None = None) -> Outcome:
    """Grade one sample (the model's output text, and its tool calls) against its dataset item."""
    return run_batch(grader, [model_sample], [item], judge=judge, embed=embed, python=python,
                     output_tools=[output_tools or []])[0]


def run_batch(grader: dict[str, Any], samples: Sequence[str], items: Sequence[dict[str, Any]], *,
              judge: Judge | None = None, embed: Embed | None = None, python: PythonLimits = PythonLimits(),
              output_tools: Sequence[list[dict[str, Any]]] | None = None) -> list[Outcome]:
    """Grade each sample against the item at the same place; the outcomes in that order."""
    if len(samples) != len(items) or (output_tools is not None and len(output_tools) != len(samples)):
        raise ValueError("run_batch needs one item (and one list of tool calls, if any) per sample")
    batch = [Sample(text, list(tools)) for text, tools in zip(samples, output_tools or [[]] * len(samples),
                                                               strict=True)]
    context = _Context(judge, embed, python)
    if grader["type"] == "multi":
        return multi_batch(grader, len(batch), lambda sub: _graded(sub, batch, items, context))
    return _graded(grader, batch, items, context)


def _graded(grader: dict[str, Any], batch: list[Sample], items: Sequence[dict[str, Any]],
            context: _Context) -> list[Outcome]:
    if grader["type"] == "python":
        return _python(grader, batch, items, context.python)
    outcomes = []
    for sample, item in zip(batch, items, strict=True):
        started = time.monotonic()
        outcome = _one(grader, sample, item, context)
        outcome.execution_time = time.monotonic() - started
        outcomes.append(outcome)
    return outcomes


def _one(grader: dict[str, Any], sample: Sample, item: dict[str, Any], context: _Context) -> Outcome:
    kind = grader["type"]
    outcome = Outcome(0.0, grader["name"], kind)
    try:
        if kind == "string_check":
            outcome.reward = string_check(grader, sample, item)
        elif kind == "text_similarity":
            outcome.reward = similarity(grader["evaluation_metric"], render(grader["input"], sample, item),
                                        render(grader["reference"], sample, item), context.embed)
        elif kind in ("score_model", "label_model"):
            return model_grade(grader, messages(grader, sample, item), context.judge)
        else:
            raise ValueError(f"{kind!r} is not a grader type")
    except TemplateError:
        outcome.errors.invalid_variable_error = True
    except (UnsupportedContent, NoEmbeddings):
        outcome.errors.other_error = True
    return outcome


def _python(grader: dict[str, Any], batch: list[Sample], items: Sequence[dict[str, Any]],
            limits: PythonLimits) -> list[Outcome]:
    if not batch:
        return []
    if not limits.enabled:
        results = [SampleResult(None, "disabled")] * len(batch)
    else:
        started = time.monotonic()
        pairs = [({"output_text": sample.output_text, "output_json": sample.output_json,
                   "output_tools": sample.output_tools}, item) for sample, item in zip(batch, items, strict=True)]
        results = grade_batch(grader["source"], pairs, limits)
        # The process's start and confinement, shared by the batch, counted in each sample's time.
        shared = max(0.0, time.monotonic() - started - sum(result.seconds for result in results)) / len(batch)
        results = [SampleResult(r.score, r.failure, r.details, r.seconds + shared) for r in results]
    return [Outcome(result.score or 0.0, grader["name"], "python", _python_errors(result),
                    execution_time=result.seconds) for result in results]


def _python_errors(result: SampleResult) -> Errors:
    errors = Errors()
    if result.failure in RUNTIME_FAILURES:
        errors.python_grader_runtime_error = True
        errors.python_grader_runtime_error_details = result.details
    elif result.failure == "invalid":
        errors.invalid_variable_error = True
        errors.python_grader_runtime_error_details = result.details
    elif result.failure is not None:
        errors.python_grader_server_error = True
        errors.python_grader_server_error_type = result.failure
    return errors
