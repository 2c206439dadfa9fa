"""score_model and label_model against a fake judge: what it is sent, how its reply is read, what it costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ftserve.graders import JudgeError, JudgeReply, run_batch, run_grader


@dataclass
class FakeJudge:
    """Answers each call with the next of `replies` (a JudgeError is raised), and keeps what it was asked."""

    replies: list[str | JudgeError]
    models: set[str] = field(default_factory=lambda: {"judge-1"})
    calls: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)

    def known(self, model: str) -> bool:
        return model in self.models

    def __call__(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> JudgeReply:
        self.calls.append((model, messages, sampling))
        reply = self.replies.pop(0)
        if isinstance(reply, JudgeError):
            raise reply
        return JudgeReply(text=reply, model=f"{model}-2025", prompt_tokens=100, completion_tokens=7)


SCORE = {
    "type": "score_model", "name": "judged", "model": "judge-1", "range": [0, 10],
    "sampling_params": {"temperature": 0.2, "seed": 7},
    "input": [
        {"role": "system", "content": "Score the answer from 0 to 10. Reply with the number only."},
        {"role": "user", "content": [{"type": "input_text", "text": "Reference: {{item.reference}}"},
                                     {"type": "input_text", "text": "Answer: {{sample.output_text}}"}]},
    ],
}
LABEL = {
    "type": "label_model", "name": "sentiment", "model": "judge-1", "labels": ["positive", "neutral", "negative"],
    "passing_labels": ["positive"],
    "input": [{"role": "user", "content": "Label the sentiment of: {{sample.output_text}}"}],
}


def test_the_judge_gets_the_filled_messages_and_the_sampling_params() -> None:
    judge = FakeJudge(["7"])
    outcome = run_grader(SCORE, "Paris", {"reference": "Paris, France"}, judge=judge)
    model, messages, sampling = judge.calls[0]
    assert model == "judge-1" and sampling == {"temperature": 0.2, "seed": 7}
    assert messages == [
        {"role": "system", "content": "Score the answer from 0 to 10. Reply with the number only."},
        {"role": "user", "content": "Reference: Paris, France\nAnswer: Paris"},
    ]
    assert outcome.reward == 7.0 and not outcome.errors.any


@pytest.mark.parametrize(("reply", "reward"), [
    ("7", 7.0), (" 3.5\n", 3.5), ('{"score": 9}', 9.0), ('{"result": 0, "steps": ["wrong"]}', 0.0),
    ('```json\n{"result": 10}\n```', 10.0),
])
def test_score_model_reads_a_number_or_a_json_score(reply: str, reward: float) -> None:
    assert run_grader(SCORE, "x", {"reference": "y"}, judge=FakeJudge([reply])).reward == reward


@pytest.mark.parametrize("reply", ["11", "-1", "about 7", '{"grade": 7}', "true", "NaN", ""])
def test_score_model_refuses_a_reply_out_of_range_or_unreadable(reply: str) -> None:
    outcome = run_grader(SCORE, "x", {"reference": "y"}, judge=FakeJudge([reply]))
    assert outcome.reward == 0.0 and outcome.errors.model_grader_parse_error
    assert outcome.token_usage == 107  # the judge answered, and its tokens count


def test_score_model_ranges_default_to_zero_to_one() -> None:
    grader = {**SCORE, "range": None}
    assert run_grader(grader, "x", {"reference": "y"}, judge=FakeJudge(["0.8"])).reward == 0.8
    assert run_grader(grader, "x", {"reference": "y"}, judge=FakeJudge(["7"])).errors.model_grader_parse_error


@pytest.mark.parametrize(("reply", "reward"), [
    ("positive", 1.0), ("negative", 0.0), ('"positive"', 1.0), ('{"label": "neutral"}', 0.0), ("Positive\n", 1.0),
])
def test_label_model_passes_only_the_passing_labels(reply: str, reward: float) -> None:
    outcome = run_grader(LABEL, "I love it", {}, judge=FakeJudge([reply]))
    assert outcome.reward == reward and not outcome.errors.any


def test_label_model_refuses_a_label_it_was_not_given() -> None:
    outcome = run_grader(LABEL, "I love it", {}, judge=FakeJudge(["ecstatic"]))
    assert outcome.reward == 0.0 and outcome.errors.model_grader_parse_error


def test_judge_failures_map_onto_server_and_refusal_errors() -> None:
    down = run_grader(SCORE, "x", {"reference": "y"}, judge=FakeJudge([JudgeError("server", "judge-1 is down")]))
    assert down.errors.model_grader_server_error and down.errors.model_grader_server_error_details == "judge-1 is down"
    refused = run_grader(SCORE, "x", {"reference": "y"}, judge=FakeJudge([JudgeError("refusal", "I can't")]))
    assert refused.errors.model_grader_refusal_error and not refused.errors.model_grader_server_error
    missing = run_grader(SCORE, "x", {"reference": "y"}, judge=None)
    assert missing.errors.model_grader_server_error and missing.reward == 0.0


def test_token_usage_is_recorded_per_model() -> None:
    outcome = run_grader(SCORE, "x", {"reference": "y"}, judge=FakeJudge(["5"]))
    wire = outcome.wire()
    assert wire["metadata"]["token_usage"] == 107 and wire["metadata"]["sampled_model_name"] == "judge-1-2025"
    assert wire["model_grader_token_usage_per_model"] == {"judge-1-2025": {
        "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107, "cached_tokens": 0}}


def test_a_batch_asks_the_judge_once_per_sample() -> None:
    judge = FakeJudge(["1", "9"])
    outcomes = run_batch(SCORE, ["bad", "good"], [{"reference": "r"}, {"reference": "r"}], judge=judge)
    assert [o.reward for o in outcomes] == [1.0, 9.0]
    assert [call[1][1]["content"] for call in judge.calls] == ["Reference: r\nAnswer: bad", "Reference: r\nAnswer: good"]


def test_a_missing_item_field_never_reaches_the_judge_and_images_are_refused() -> None:
    judge = FakeJudge([])
    outcome = run_grader(SCORE, "x", {}, judge=judge)
    assert outcome.errors.invalid_variable_error and judge.calls == []
    image = {**LABEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}
    refused = run_grader(image, "x", {}, judge=judge)
    assert refused.errors.other_error and refused.reward == 0.0 and judge.calls == []
