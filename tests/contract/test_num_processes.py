"""`ftserve.num_processes` through the official SDK: a value that is not a whole number from 1 to 64, or several
processes for a reinforcement job (which trains in one), is a 400 naming the field, and no job is made; a valid
one is kept on the job."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.helpers import chat_jsonl, upload

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def test_a_bad_num_processes_is_a_400_naming_it(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(4))
    prompts = upload(client, "".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}"}], "answer": str(i)})
                                     + "\n" for i in range(4)).encode())
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "eq"}
    cases: list[tuple[Any, dict[str, Any]]] = [
        (0, {}), (65, {}), ("two", {}), (1.5, {}),
        (2, {"training_file": prompts, "method": {"type": "reinforcement", "reinforcement": {"grader": grader}}}),
    ]
    tag = {"suite": f"num-processes-{uuid.uuid4().hex[:8]}"}
    for value, fields in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(**{"model": MODEL, "training_file": training, "metadata": tag, **fields},
                                           extra_body={"ftserve": {"num_processes": value}})
        assert refused.value.param == "ftserve.num_processes", (value, refused.value.body)
        assert refused.value.type == "invalid_request_error"
    assert "one process" in str(refused.value.message)  # the reinforcement job's refusal says why
    assert list(client.fine_tuning.jobs.list(metadata=tag)) == []

    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, metadata=tag,
                                         extra_body={"ftserve": {"num_processes": 2}})
    assert job.model_extra is not None and job.model_extra["ftserve"]["num_processes"] == 2
    assert [j.id for j in client.fine_tuning.jobs.list(metadata=tag)] == [job.id]
