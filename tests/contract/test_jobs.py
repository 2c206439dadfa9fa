"""Fine-tuning jobs through the official SDK, against a live server whose worker runs the fake trainer:
the whole lifecycle, auto hyperparameters, events and checkpoints newest first, the result file,
paging, metadata filters, cancel/pause/resume on a running job, failures that name the file and
line, request errors, and retry-safe create."""

from __future__ import annotations

import base64
import csv
import io
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.helpers import chat_jsonl, preference_jsonl, upload, wait_for

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def client(live) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def test_job_runs_to_success_with_events_checkpoints_results_and_model(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(10))
    validation = upload(client, chat_jsonl(4), name="valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training, validation_file=validation, suffix="unit_test",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
    )
    assert job.status == "validating_files" and isinstance(job.seed, int)
    assert job.hyperparameters.learning_rate_multiplier == "auto" and job.fine_tuned_model is None
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 2
    assert done.hyperparameters.learning_rate_multiplier == 1.0
    assert done.method.supervised.hyperparameters.n_epochs == 2
    assert done.fine_tuned_model.startswith(f"ft:{MODEL}:default:unit-test:")
    assert done.finished_at >= done.created_at and done.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"
    assert f"Created fine-tuning job: {job.id}" == messages[-1]
    for expected in ("Files validated, moving job to queued state", "Fine-tuning job started",
                     f"New fine-tuned model created: {done.fine_tuned_model}"):
        assert expected in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 10 and metrics[0].data["step"] == 10 and "valid_loss" in metrics[0].data

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [10, 5]
    assert checkpoints.data[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-10"
    assert checkpoints.first_id == checkpoints.data[0].id and checkpoints.has_more is False

    result = client.files.retrieve(done.result_files[0])
    assert result.purpose == "fine-tune-results" and result.filename == "step_metrics.csv"
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(client.files.content(result.id).read()).decode())))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert set(rows[0]) == {"step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"}

    models = {m.id for m in client.models.list()}
    assert {MODEL, done.fine_tuned_model, checkpoints.data[0].fine_tuned_model_checkpoint} <= models
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "default"


def test_same_seed_gives_same_losses(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(6))
    losses = []
    for _ in range(2):
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, seed=42,
                                             hyperparameters={"n_epochs": 1, "batch_size": 2})
        wait_for(client, job.id)
        losses.append([e.data["train_loss"] for e in client.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_dpo_job_needs_preference_data_and_names_the_line(client: OpenAI) -> None:
    chat = upload(client, chat_jsonl(4))
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=chat, method={"type": "dpo"})
    failed = wait_for(client, job.id)
    assert failed.status == "failed" and failed.error.param == "training_file"
    assert chat in failed.error.message and "line 1" in failed.error.message and "preference" in failed.error.message
    assert failed.finished_at is not None

    preference = upload(client, preference_jsonl(4))
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=preference, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}}
    )
    done = wait_for(client, job.id)
    assert done.status == "succeeded" and done.method.dpo.hyperparameters.beta == 0.2


def test_cancel_pause_resume_a_running_job(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(20))
    slow = {"n_epochs": 50, "batch_size": 1}
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters=slow)
    wait_for(client, job.id, ("running",))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)

    # 10 epochs of 20 steps at 0.02 s: long enough that a pause (seen within a 1 s heartbeat) lands mid-run.
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 10, "batch_size": 1})
    wait_for(client, job.id, ("running",))
    # Wait for a first checkpoint (end of epoch 1), so the resume has somewhere to start from.
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        time.sleep(0.02)
    assert client.fine_tuning.jobs.pause(job.id).status in ("pausing", "paused")
    paused = wait_for(client, job.id, ("paused",), timeout=10)
    step_at_pause = max(e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=200) if e.type == "metrics")
    assert step_at_pause < 200
    assert client.fine_tuning.jobs.resume(paused.id).status == "queued"
    done = wait_for(client, job.id)
    assert done.status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    steps = {c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)}
    resumed = [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("Resuming from step")]
    assert len(resumed) == 1 and resumed[0] in steps and resumed[0] <= step_at_pause
    assert any(m.startswith("Fine-tuning job paused at step") for m in messages)


@pytest.mark.database
def test_list_pages_and_filters_by_metadata(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(3))
    tag = f"run-{training[-6:]}"
    made = [
        client.fine_tuning.jobs.create(model=MODEL, training_file=training, metadata={"batch": tag, "i": str(i)}).id
        for i in range(5)
    ]
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=2, metadata={"batch": tag})]
    assert listed == list(reversed(made))
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"batch": tag, "i": "3"})] == [made[3]]
    page = client.fine_tuning.jobs.list(limit=2)
    assert page.has_more is True and len(page.data) == 2
    untagged = client.fine_tuning.jobs.create(model=MODEL, training_file=training).id
    without = httpx.get(f"{client.base_url}fine_tuning/jobs", params={"metadata": "null", "limit": 1000}).json()
    ids = {j["id"] for j in without["data"]}
    assert untagged in ids and not ids & set(made)


def test_request_errors_are_openai_shaped_400s(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(3))
    cases = [
        (dict(model="no-such-model", training_file=training), "model"),
        (dict(model=MODEL, training_file="file-missing"), "training_file"),
        (dict(model=MODEL, training_file=training, suffix="x" * 65), "suffix"),
        (dict(model=MODEL, training_file=training, hyperparameters={"n_epochs": 0}), "hyperparameters.n_epochs"),
        (dict(model=MODEL, training_file=training, metadata={str(i): "v" for i in range(17)}), "metadata"),
        (dict(model=MODEL, training_file=training, extra_body={"unknown_thing": 1}), "unknown_thing"),
        (dict(model=MODEL, training_file=training, method={"type": "reinforcement"}), "method.reinforcement"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as error:
            client.fine_tuning.jobs.create(**kwargs)  # type: ignore[arg-type]
        assert error.value.status_code == 400
        assert error.value.param == param, (param, error.value.body)
        assert error.value.type == "invalid_request_error"
    raw = httpx.post(f"{client.base_url}fine_tuning/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.headers["x-request-id"]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


@pytest.mark.database
def test_retried_create_does_not_make_a_second_job(client: OpenAI) -> None:
    training = upload(client, chat_jsonl(3))
    body = {"model": MODEL, "training_file": training, "metadata": {"dedup": training}}
    first = httpx.post(f"{client.base_url}fine_tuning/jobs", json=body).json()
    retry = httpx.post(f"{client.base_url}fine_tuning/jobs", json=body, headers={"x-stainless-retry-count": "1"}).json()
    assert retry["id"] == first["id"]
    fresh = httpx.post(f"{client.base_url}fine_tuning/jobs", json=body).json()
    assert fresh["id"] != first["id"]

    keyed = {"Idempotency-Key": f"key-{training}"}
    one = httpx.post(f"{client.base_url}fine_tuning/jobs", json=body, headers=keyed).json()
    two = httpx.post(f"{client.base_url}fine_tuning/jobs", json=body, headers=keyed).json()
    assert one["id"] == two["id"]
    other = httpx.post(f"{client.base_url}fine_tuning/jobs", json={**body, "suffix": "x"}, headers=keyed)
    assert other.status_code == 400 and other.json()["error"]["code"] == "idempotency_key_reused"


async def test_async_client_jobs(live) -> None:  # type: ignore[no-untyped-def]
    client = openai.AsyncOpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    training = (await client.files.create(file=("a.jsonl", chat_jsonl(3)), purpose="fine-tune")).id
    job = await client.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 1})
    seen = [j.id async for j in client.fine_tuning.jobs.list(limit=1)]
    assert job.id in seen
    events = [e async for e in client.fine_tuning.jobs.list_events(job.id)]
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    await client.close()
