"""A reinforcement job's grader is checked when the job is created, against the fields the training file's
items have (recorded at upload): each grader that could not run is a 400 naming where in
`method.reinforcement.grader` it is wrong, and no job is made."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.helpers import upload

MODEL = "SmolLM2-135M-Instruct"
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}


def prompts(n: int = 4, **extra: Any) -> bytes:
    lines = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i), **extra}
             for i in range(n)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


@pytest.fixture
def training(client: OpenAI) -> str:
    return upload(client, prompts(meta={"level": 1}))


def create(client: OpenAI, training: str, grader: dict[str, Any], **kwargs: Any) -> Any:
    return client.fine_tuning.jobs.create(
        model=MODEL, training_file=training, method={"type": "reinforcement", "reinforcement": {"grader": grader}},
        **kwargs,
    )


BAD_GRADERS = {
    "item field the file lacks": ({**EXACT, "reference": "{{item.solution}}"}, "reference"),
    "python that does not compile": ({"type": "python", "name": "py", "source": "def grade(sample, item:\n"}, "source"),
    "unknown judge": ({"type": "score_model", "name": "j", "model": "gpt-nowhere",
                       "input": [{"role": "user", "content": "{{sample.output_text}}"}]}, "model"),
    "formula naming an unknown grader": ({"type": "multi", "name": "m", "graders": {"exact": EXACT},
                                          "calculate_output": "exact + missing"}, "calculate_output"),
    "label_model at the top": ({"type": "label_model", "name": "l", "model": MODEL, "labels": ["a", "b"],
                                "passing_labels": ["a"], "input": [{"role": "user", "content": "{{item.answer}}"}]},
                               "type"),
    "nested item field": ({"type": "multi", "name": "m", "calculate_output": "exact",
                           "graders": {"exact": {**EXACT, "input": "{{item.meta.level}} {{item.hint}}"}}},
                          "graders.exact.input"),
}


@pytest.mark.parametrize(("grader", "path"), BAD_GRADERS.values(), ids=BAD_GRADERS.keys())
def test_a_grader_that_cannot_run_is_refused_naming_where(client: OpenAI, training: str, grader: dict[str, Any],
                                                          path: str) -> None:
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, training, grader)
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]  # the error envelope's inner object
    assert body["param"] == f"method.reinforcement.grader.{path}", body
    assert body["type"] == "invalid_request_error"
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before


def test_the_validation_files_items_must_have_the_fields_too(client: OpenAI, training: str) -> None:
    validation = upload(client, b'{"messages": [{"role": "user", "content": "1 + 1?"}], "meta": {"level": 1}}\n',
                        name="valid.jsonl")
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, training, EXACT, validation_file=validation)
    assert refused.value.body["param"] == "method.reinforcement.grader.reference"  # type: ignore[index]
    assert "answer" in refused.value.body["message"]  # type: ignore[index]


def test_a_grader_whose_item_fields_every_example_has_passes_the_checks(client: OpenAI, training: str) -> None:
    grader = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * level",
              "graders": {"exact": EXACT,
                          "level": {"type": "python", "name": "level",
                                    "source": "def grade(sample, item):\n    return item['meta']['level'] / 2\n"}}}
    job = create(client, training, grader)
    assert job.status == "validating_files"
    assert job.method.reinforcement.grader.calculate_output == grader["calculate_output"]  # type: ignore[union-attr]
