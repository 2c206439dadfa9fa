"""The memory estimate and QLoRA through the official SDK, on a server whose engine trains on the CPU and whose
jobs may use 3 GiB (FTSERVE_TRAIN_MEMORY_GB). No worker runs: a refused job must be refused at create, before
anything trains.

On the default model (SmolLM2-135M, LoRA, fp32 on the CPU with eager attention) the fixed part of the estimate is
about 1.6 GiB; the rest grows with the tokens of a step (docs/training.md, "Memory estimate").
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload

MODEL = "SmolLM2-135M-Instruct"
RESOLVE = "/ftserve/fine_tuning/resolve"
LIMIT_GB = 3.0


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[OpenAI]:
    settings = settings_for(tmp_path_factory.mktemp("memory"), databases.new(), device="cpu",
                            train_memory_gb=LIMIT_GB)
    with serving(settings, with_worker=False) as live:
        yield OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def _long(client: OpenAI, characters: int) -> str:
    """A training file whose examples are each a JSONL line of about `characters` characters."""
    words = "a few words to repeat " * (characters // 22)
    lines = [{"messages": [{"role": "user", "content": f"{i}: {words}"}, {"role": "assistant", "content": "ok"}]}
             for i in range(4)]
    return upload(client, "".join(json.dumps(line) + "\n" for line in lines).encode())


def _body(training: str, batch_size: int | str = "auto", **ftserve: Any) -> dict[str, Any]:
    return {"model": MODEL, "training_file": training, "ftserve": ftserve,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": batch_size}}}}


def _refused(client: OpenAI, body: dict[str, Any]) -> openai.BadRequestError:
    """The same 400 from the dry run and from create, and no job made."""
    tag = {"suite": f"memory-{uuid.uuid4().hex[:8]}"}
    errors = []
    for attempt in (lambda: client.post(RESOLVE, body=body, cast_to=object),
                    lambda: client.fine_tuning.jobs.create(
                        model=body["model"], training_file=body["training_file"], method=body["method"],
                        metadata=tag, extra_body={"ftserve": body["ftserve"]})):
        with pytest.raises(openai.BadRequestError) as refused:
            attempt()
        errors.append(refused.value)
    assert errors[0].param == errors[1].param and errors[0].message == errors[1].message
    assert list(client.fine_tuning.jobs.list(metadata=tag)) == []
    return errors[1]


def _resolve(client: OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post(RESOLVE, body=body, cast_to=object)
    assert isinstance(answer, dict)
    return answer


def test_qlora_on_the_cpu_is_a_400_naming_the_training_type(client: OpenAI) -> None:
    error = _refused(client, _body(upload(client, chat_jsonl(4)), training_type="qlora"))
    assert error.param == "ftserve.training_type" and error.type == "invalid_request_error"
    assert "QLoRA needs a CUDA GPU" in error.message


def test_the_dry_run_shows_the_memory_estimate_and_the_limit(client: OpenAI) -> None:
    answer = _resolve(client, _body(upload(client, chat_jsonl(4))))
    estimate = answer["estimate"]
    assert estimate["memory_limit_gb"] == LIMIT_GB
    assert 1.5 < estimate["memory_gb"] < LIMIT_GB
    assert "memory at its peak: 0.13B params (fp32)" in estimate["basis"]
    assert answer["native"]["gradient_checkpointing"] is False and answer["native"]["memory_limit_gb"] == LIMIT_GB


def test_gradient_checkpointing_comes_on_when_the_job_fits_only_with_it(client: OpenAI) -> None:
    training = _long(client, 1200)  # rows of about 600 tokens: ~3.7 GiB kept, ~1.9 GiB recomputed
    answer = _resolve(client, _body(training, batch_size=1))
    assert answer["native"]["gradient_checkpointing"] is True
    assert answer["estimate"]["memory_gb"] < LIMIT_GB
    assert "with gradient checkpointing" in answer["estimate"]["basis"]

    error = _refused(client, _body(training, batch_size=1, gradient_checkpointing=False))
    assert error.param == "ftserve.gradient_checkpointing"


def test_a_job_that_cannot_fit_is_a_400_naming_what_to_lower(client: OpenAI) -> None:
    training = _long(client, 6000)  # rows of about 3,000 tokens
    error = _refused(client, _body(training, batch_size=8))
    assert error.param == "hyperparameters.batch_size"
    assert f"more than the {LIMIT_GB:g} GiB it may use (FTSERVE_TRAIN_MEMORY_GB), even with gradient checkpointing" \
        in error.message

    error = _refused(client, _body(training, batch_size=1, max_seq_length=4096))
    assert error.param == "ftserve.max_seq_length"

    error = _refused(client, _body(upload(client, chat_jsonl(4)), training_type="full"))
    assert error.param == "ftserve.training_type"
