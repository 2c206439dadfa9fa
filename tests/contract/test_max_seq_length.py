"""`ftserve.max_seq_length` through the official SDK: longer than the model's context (the catalogue's
context_length) is a 400 naming the field and the context, and no job is made; the context itself is taken."""

from __future__ import annotations

import uuid

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.helpers import chat_jsonl, upload

MODEL = "SmolLM2-135M-Instruct"  # a context of 8192 tokens


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def test_a_max_seq_length_past_the_models_context_is_a_400_naming_it(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(4))
    tag = {"suite": f"max-seq-length-{uuid.uuid4().hex[:8]}"}
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=MODEL, training_file=training, metadata=tag,
                                       extra_body={"ftserve": {"max_seq_length": 8193}})
    assert refused.value.param == "ftserve.max_seq_length" and refused.value.type == "invalid_request_error"
    assert "8192-token context" in str(refused.value.message)
    assert list(client.fine_tuning.jobs.list(metadata=tag)) == []

    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, metadata=tag,
                                         extra_body={"ftserve": {"max_seq_length": 8192}})
    assert [j.id for j in client.fine_tuning.jobs.list(metadata=tag)] == [job.id]
