"""What one project may ask of the server: a request rate and a number of active jobs (429 with
Retry-After, which the official SDK waits out and retries), and a body size (413)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload, wait_for


@contextmanager
def server_with(tmp_path: Path, databases: Databases, **limits: object) -> Iterator[LiveServer]:
    """A server with two projects, alpha and beta, and the given limits."""
    settings = settings_for(tmp_path, databases.new(), api_keys="sk-alpha-0000000000=alpha,sk-beta-00000000000=beta",
                            fake_step_seconds=0.05, **limits)
    with serving(settings) as live:
        yield live


@pytest.fixture
def rate_limited(tmp_path: Path, databases: Databases) -> Iterator[LiveServer]:
    with server_with(tmp_path, databases, rate_limit_per_minute=60) as live:
        yield live


@pytest.fixture
def limited(tmp_path: Path, databases: Databases) -> Iterator[LiveServer]:
    with server_with(tmp_path, databases, max_active_jobs=2, max_request_bytes=64 * 1024) as live:
        yield live


def test_a_project_over_its_request_rate_gets_429_with_retry_after(rate_limited: LiveServer) -> None:
    alpha = OpenAI(base_url=rate_limited.base_url, api_key="sk-alpha-0000000000", max_retries=0)
    beta = OpenAI(base_url=rate_limited.base_url, api_key="sk-beta-00000000000", max_retries=0)
    for _ in range(60):  # the whole burst the bucket holds
        alpha.files.list()
    with pytest.raises(openai.RateLimitError) as refused:
        alpha.files.list()
    response = refused.value.response
    assert response.status_code == 429
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 2  # one request comes back every second
    assert refused.value.code == "rate_limit_exceeded" and "60 per minute" in refused.value.message
    beta.files.list()  # another project's allowance is its own

    # The SDK reads Retry-After, waits and retries: with retries on, the same call succeeds.
    patient = OpenAI(base_url=rate_limited.base_url, api_key="sk-alpha-0000000000", max_retries=3)
    started = time.monotonic()
    assert patient.files.list().object == "list"
    assert time.monotonic() - started >= 0.5


def test_a_project_at_its_job_quota_gets_429_until_a_job_finishes(limited: LiveServer) -> None:
    client = OpenAI(base_url=limited.base_url, api_key="sk-beta-00000000000", max_retries=0)
    training = upload(client, chat_jsonl(10))
    long = {"n_epochs": 4, "batch_size": 1}  # 40 steps of 0.05 s: about 2 s each
    first = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training, hyperparameters=long)
    second = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training, hyperparameters=long)
    with pytest.raises(openai.RateLimitError) as refused:
        client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training)
    assert refused.value.code == "too_many_active_jobs"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert len(client.fine_tuning.jobs.list().data) == 2  # the refused create stored nothing

    # Paused jobs hold no worker and do not count; resuming one counts again.
    client.fine_tuning.jobs.pause(first.id)
    wait_for(client, first.id, ("paused",), timeout=30)
    third = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training, hyperparameters=long)
    with pytest.raises(openai.RateLimitError):
        client.fine_tuning.jobs.resume(first.id)

    # With retries on, the SDK waits as told and the create goes through once a job has finished.
    patient = OpenAI(base_url=limited.base_url, api_key="sk-beta-00000000000", max_retries=5)
    fourth = patient.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training)
    assert fourth.status in ("validating_files", "queued")
    assert {wait_for(client, job.id, timeout=60).status for job in (second, third, fourth)} == {"succeeded"}


def test_a_body_over_the_limit_gets_413_and_stores_nothing(limited: LiveServer) -> None:
    client = OpenAI(base_url=limited.base_url, api_key="sk-alpha-0000000000", max_retries=0)
    training = upload(client, chat_jsonl(5))
    huge = {f"key{i}": "x" * 500 for i in range(16)}  # metadata values are small; the body is not
    with pytest.raises(openai.APIStatusError) as refused:
        client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training,
                                       suffix="big", extra_body={"padding": "x" * 100_000}, metadata=huge)
    assert refused.value.status_code == 413
    assert refused.value.code == "payload_too_large" and "65536 bytes" in refused.value.message
    assert client.fine_tuning.jobs.list().data == []

    # A chunked body (no Content-Length) is counted as it arrives.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'

    response = httpx.post(f"{limited.base_url}/chat/completions", content=chunks(),
                          headers={"authorization": "Bearer sk-alpha-0000000000", "content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    # File uploads have their own, larger limit: a 100 KiB training file goes through.
    assert client.files.retrieve(upload(client, chat_jsonl(2000))).bytes > 64 * 1024
