"""score_model and label_model: the grader's `input` messages, filled from the sample and the item, go to a
judge model, and its reply is read as a score or a label.

What a reply may be (ftserve asks nothing of the judge beyond the grader's own prompt, so the prompt should say
what to answer):
- score_model: a number (`0.8`), or a JSON object with a number under `score` or `result`
  (`{"result": 0.8}`), optionally in a ```json fence. It must lie within `range` (default [0, 1]); the reward is
  that number. Anything else is `model_grader_parse_error` and a reward of 0.
- label_model: one of `labels`, bare or quoted (`positive`, `"positive"`) or as JSON `{"label": "positive"}`;
  matched exactly, else case-insensitively when that picks one label. The reward is 1 when the label is one of
  `passing_labels`, else 0; a label outside `labels` is `model_grader_parse_error`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ftserve.graders.outcome import Judge, JudgeError, JudgeReply, Outcome
from ftserve.graders.templates import Sample, render

TEXT_PARTS = ("input_text", "output_text")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class UnsupportedContent(ValueError):
    """A message part the judge cannot be sent: ftserve's judges read text only."""


def content_problem(content: Any) -> str | None:
    """Why a message's content cannot go to a judge (an image, audio), or None."""
    for part in content if isinstance(content, list) else [content]:
        if not isinstance(part, str) and part.get("type") not in TEXT_PARTS:
            return (f"{part.get('type')} content cannot be sent to a judge here: model graders take text "
                    "(a string, input_text or output_text)")
    return None


def messages(grader: dict[str, Any], sample: Sample, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The grader's input as chat messages of text, placeholders filled. Raises TemplateError,
    UnsupportedContent."""
    rendered = []
    for message in grader["input"]:
        content = message["content"]
        problem = content_problem(content)
        if problem is not None:
            raise UnsupportedContent(problem)
        parts = content if isinstance(content, list) else [content]
        text = "\n".join(part if isinstance(part, str) else part["text"] for part in parts)
        rendered.append({"role": message["role"], "content": render(text, sample, item)})
    return rendered


def model_grade(grader: dict[str, Any], chat: list[dict[str, Any]], judge: Judge | None) -> Outcome:
    """Ask the judge and read its reply as this grader's kind says."""
    outcome = Outcome(reward=0.0, name=grader["name"], type=grader["type"])
    if judge is None:
        outcome.errors.model_grader_server_error = True
        outcome.errors.model_grader_server_error_details = "No judge model is configured on this server."
        return outcome
    try:
        reply = judge(grader["model"], chat, dict(grader.get("sampling_params") or {}))
    except JudgeError as error:
        if error.kind == "refusal":
            outcome.errors.model_grader_refusal_error = True
        else:
            outcome.errors.model_grader_server_error = True
        outcome.errors.model_grader_server_error_details = error.details
        return outcome
    _record_usage(outcome, reply)
    if grader["type"] == "score_model":
        score = parse_score(reply.text, grader.get("range") or [0.0, 1.0])
        if score is None:
            outcome.errors.model_grader_parse_error = True
        else:
            outcome.reward = score
        return outcome
    label = parse_label(reply.text, grader["labels"])
    if label is None:
        outcome.errors.model_grader_parse_error = True
    else:
        outcome.reward = float(label in grader["passing_labels"])
    return outcome


def parse_score(text: str, bounds: list[float]) -> float | None:
    """The reply's score, if it is one within `bounds`."""
    value = _json(text)
    if isinstance(value, dict):
        value = value.get("score", value.get("result"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    low, high = bounds
    return float(value) if low <= value <= high else None


def parse_label(text: str, labels: list[str]) -> str | None:
    """The reply's label, if it is one of `labels`."""
    value = _json(text)
    if isinstance(value, dict):
        value = value.get("label")
    if not isinstance(value, str):
        value = _unfenced(text)
    value = value.strip()
    if value in labels:
        return value
    folded = [label for label in labels if label.casefold() == value.casefold()]
    return folded[0] if len(folded) == 1 else None


def _unfenced(text: str) -> str:
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1) if match else text


def _json(text: str) -> Any:
    try:
        return json.loads(_unfenced(text))
    except ValueError:
        return None


def _record_usage(outcome: Outcome, reply: JudgeReply) -> None:
    total = reply.prompt_tokens + reply.completion_tokens
    outcome.token_usage = total
    outcome.sampled_model_name = reply.model
    outcome.model_grader_token_usage_per_model = {reply.model: {
        "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens, "total_tokens": total,
        "cached_tokens": 0,
    }}

