"""Real fine-tuning through the official SDK: a live server whose worker runs the local engine on the
default model, SmolLM2-135M-Instruct. What a user sees: falling losses in the events, the last three
epochs as checkpoints, the `step_metrics.csv` result file and an `ft:` model."""

from __future__ import annotations

import base64
import csv
import io
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest
from openai import OpenAI

from tests.conftest import (
    LEARNED_BATCH,
    LEARNED_EPOCHS,
    LEARNED_EVAL_INTERVAL,
    LEARNED_EXAMPLES,
    Databases,
    Learned,
    LiveServer,
    settings_for,
    start_server,
)
from tests.helpers import upload, wait_for
from tests.tasks import chat_examples, jsonl, preference_examples

TRAINING_TIMEOUT = 900


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, databases: Databases, default_model_dir: Path) -> Iterator[LiveServer]:
    settings = settings_for(tmp_path_factory.mktemp("local"), databases.new(), trainer="local", lease_seconds=10.0)
    live, server, thread = start_server(settings)
    yield live
    server.should_exit = True
    thread.join(timeout=60)
    live.runtime.engine.dispose()


@pytest.fixture
def client(trainer: LiveServer) -> OpenAI:
    return OpenAI(base_url=trainer.base_url, api_key="unused", max_retries=0)


def losses(client: OpenAI, job_id: str) -> list[tuple[int, float]]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    # Step metrics; the before/after evaluation is a metrics event of its own, with `evaluation` instead.
    return sorted((e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics" and "step" in e.data)  # type: ignore[index, operator]


def test_a_supervised_job_fine_tunes_the_default_model(learned: Learned) -> None:
    client, job = learned.client, learned.job  # the session's shared job: 36 steps, validated every 4
    total = LEARNED_EXAMPLES // LEARNED_BATCH * LEARNED_EPOCHS
    per_epoch = total // LEARNED_EPOCHS
    steps = losses(client, job.id)
    assert [s for s, _ in steps] == list(range(1, total + 1))
    assert steps[-1][1] < steps[0][1] / 3

    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    validated = sorted(e.data["step"] for e in events if e.type == "metrics" and "valid_loss" in e.data)  # type: ignore[index, operator]
    # Every eval_interval steps, and at epoch ends.
    assert validated == sorted({*range(LEARNED_EVAL_INTERVAL, total + 1, LEARNED_EVAL_INTERVAL),
                                *range(per_epoch, total + 1, per_epoch)})

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == list(range(per_epoch, total + 1, per_epoch))
    for checkpoint in checkpoints:
        assert checkpoint.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
        assert checkpoint.metrics.full_valid_loss is not None
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:SmolLM2-135M-Instruct:")
    assert client.models.retrieve(job.fine_tuned_model).owned_by

    # With a validation file, the before/after evaluation comes beside the step metrics.
    results = {client.files.retrieve(f).filename: client.files.retrieve(f) for f in job.result_files}
    assert set(results) == {"step_metrics.csv", "evaluation.json"}
    result = results["step_metrics.csv"]
    assert result.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(client.files.content(result.id).read()).decode())))
    assert [int(r["step"]) for r in rows] == list(range(1, total + 1))
    assert float(rows[-1]["train_loss"]) == pytest.approx(steps[-1][1], abs=1e-4)


def test_a_dpo_job_fine_tunes_on_preferences(client: OpenAI) -> None:
    training = upload(client, jsonl(preference_examples(12)), name="prefs.jsonl")
    validation = upload(client, jsonl(preference_examples(8, offset=500)), name="prefs-valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=training, validation_file=validation,
        method={"type": "dpo", "dpo": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 4, "beta": 0.1, "learning_rate_multiplier": 2.5,
        }}},
        extra_body={"ftserve": {"eval_interval": 3}},
    )
    job = wait_for(client, job.id, timeout=TRAINING_TIMEOUT)
    assert job.status == "succeeded", job.error
    steps = losses(client, job.id)
    assert len(steps) == 9
    assert steps[0][1] == pytest.approx(0.693, abs=0.01)  # the policy starts as the reference
    assert steps[-1][1] < 0.3
    # On held-out preferences too: the last epoch's full validation prefers every preferred answer.
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    last = max((e.data for e in events if e.type == "metrics" and "full_valid_loss" in (e.data or {})),
               key=lambda data: data["step"])  # type: ignore[index]  # event data is a dict
    assert last["step"] == 9 and last["full_valid_loss"] < 0.3  # type: ignore[index]  # as above
    assert last["full_valid_mean_token_accuracy"] == 1.0  # type: ignore[index]  # as above
    assert len(client.fine_tuning.jobs.checkpoints.list(job.id).data) == 3
    assert job.fine_tuned_model and client.models.retrieve(job.fine_tuned_model)


@pytest.mark.parametrize(("grader", "param"), [
    ({"type": "score_model", "name": "judge", "model": "SmolLM2-135M-Instruct",
      "input": [{"role": "user", "content": "Score {{sample.output_text}} against {{item.answer}}"}]},
     "method.reinforcement.grader.type"),
    ({"type": "multi", "name": "both", "calculate_output": "close", "graders": {"close": {
        "type": "text_similarity", "name": "close", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
        "evaluation_metric": "cosine"}}},
     "method.reinforcement.grader.graders.close.evaluation_metric"),
])
def test_a_reinforcement_job_the_engine_cannot_grade_is_refused_at_create_naming_the_grader(
        client: OpenAI, grader: dict, param: str) -> None:
    rows = [{"messages": [{"role": "user", "content": "Say yes."}], "answer": "yes"}] * 4
    training = upload(client, jsonl(rows))
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model="SmolLM2-135M-Instruct", training_file=training,
            method={"type": "reinforcement", "reinforcement": {"grader": grader}},  # type: ignore[typeddict-item]  # a plain dict grader
        )
    assert refused.value.body["param"] == param  # type: ignore[index]  # the error envelope's body
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before


def test_pause_keeps_the_state_and_resume_continues_from_it(client: OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=upload(client, jsonl(chat_examples(8))),
        hyperparameters={"n_epochs": 2, "batch_size": 2},
    )
    deadline = time.time() + TRAINING_TIMEOUT
    while not losses(client, job.id) or losses(client, job.id)[-1][0] < 3:
        assert time.time() < deadline, "the job never reached step 3"
        time.sleep(0.2)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, statuses=("paused", "failed"), timeout=120)
    assert paused.status == "paused", paused.error
    paused_at = losses(client, job.id)[-1][0]
    assert paused_at < 8

    client.fine_tuning.jobs.resume(job.id)
    job = wait_for(client, job.id, timeout=TRAINING_TIMEOUT)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert f"Fine-tuning job paused at step {paused_at}" in messages
    assert f"Resuming from step {paused_at}" in messages
    assert [s for s, _ in losses(client, job.id)] == list(range(1, 9))  # no step trained twice, none skipped
