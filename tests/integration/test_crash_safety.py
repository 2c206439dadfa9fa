"""Crash safety: SIGKILL the worker, and in separate runs the API server, at random points of training
jobs, restart it, and check that nothing was lost or recorded twice. Most kills land on the fake engine
(ftserve.testing_engine), which speaks the engine's protocol and writes its files but trains nothing;
two land on the real engine, training the tiny stand-in for the default model (tests/conftest.py), whose
steps take milliseconds, so kills land in its steps and saves rather than mostly in its start-up.

After every kill the job must still end `succeeded`: resumed from its last saved state (at most one
checkpoint interval of steps redone), with each step's metrics, each checkpoint and the job itself
recorded once, no half-written file or checkpoint visible, and a result model that answers a chat.
A SIGTERM instead stops the job cleanly: its state is saved, its lease released, nothing redone.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from safetensors import safe_open

from tests.cluster import TERMINAL, Cluster, attempts, events_of, last_step, patiently, resumed_at, wait_until
from tests.conftest import TINY_MODEL_ID, Databases
from tests.tasks import chat_examples, jsonl

pytestmark = pytest.mark.acceptance

CHECKPOINT_INTERVAL = 2
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 2}  # 12 training examples: 12 steps, checkpoints at 6 and 12
SEED = 20261121
TOTAL_STEPS = 12
FAKE_STEP_SECONDS = 0.3


@dataclass
class Kill:
    job_id: str
    seconds: float
    """After the process started."""
    status: str
    step: int
    """The last step recorded before the kill."""


@dataclass(frozen=True)
class Pace:
    """Where kills land for an engine: up to `after_step` seconds after a step is reported, or up to
    `after_start` seconds after the target started (long enough to reach the job's finish)."""

    after_step: float
    after_start: float


REAL = Pace(after_step=0.5, after_start=15.0)
FAKE = Pace(after_step=2 * FAKE_STEP_SECONDS, after_start=6.0)


def new_job(client: OpenAI, training: str, validation: str, model: str) -> str:
    return patiently(lambda: client.fine_tuning.jobs.create(
        model=model, training_file=training, validation_file=validation,
        hyperparameters=HYPERPARAMETERS, seed=7,
        extra_body={"ftserve": {"checkpoint_interval": CHECKPOINT_INTERVAL}},
    )).id


def check_job(client: OpenAI, cluster: Cluster, job_id: str) -> dict[str, int]:
    """Everything a user would notice about a job that was killed under its worker; returns its figures."""
    job = patiently(lambda: client.fine_tuning.jobs.retrieve(job_id))
    assert job.status == "succeeded", (job_id, job.error)
    events = events_of(client, job_id)
    messages = [e.message for e in events]

    steps = [e.data["step"] for e in events if e.type == "metrics" and "step" in (e.data or {})]
    assert steps == list(range(1, TOTAL_STEPS + 1)), f"each step reported once, in order: {steps}"
    for once in ("The job has successfully completed", f"New fine-tuned model created: {job.fine_tuned_model}",
                 "Checkpoint created at step 6", "Checkpoint created at step 12"):
        assert messages.count(once) == 1, (once, messages)
    assert len({e.id for e in events}) == len(events)

    # Every restart that trained resumed from the newest state saved before the kill: at most one interval
    # redone. It may resume past the last recorded step, when the engine ran ahead of a worker killed before it
    # wrote the reports; the engine then reports those steps again, and each step is still recorded once (above).
    # (One killed again before it loaded any state says nothing either way.)
    runs = attempts(events)
    redone = []
    for index, run in enumerate(runs[1:], start=1):
        reached = last_step([e for earlier in runs[:index] for e in earlier])
        start = resumed_at(run)
        trained = any(e.type == "metrics" or e.message == "The job has successfully completed" for e in run)
        if start is None and not trained:
            continue
        start = start or 0  # trained without resuming: there was no state yet
        assert start >= reached - CHECKPOINT_INTERVAL, (reached, start, messages)
        redone.append(max(0, reached - start))

    checkpoints = patiently(lambda: client.fine_tuning.jobs.checkpoints.list(job_id)).data
    assert sorted(c.step_number for c in checkpoints) == [6, 12]
    data = cluster.root / "data"
    for step in (6, 12):  # each listed checkpoint is whole on disk: its manifest, and weights that parse
        directory = data / "blobs" / "artifacts" / job_id / f"checkpoint-{step}"
        assert (directory / "ftserve_model.json").exists()
        with safe_open(str(directory / "adapter_model.safetensors"), "pt") as weights:
            assert len(list(weights.keys())) > 0

    # Result files: exactly the ones the job lists, each downloadable in full.
    assert len(job.result_files) == 2  # step_metrics.csv and evaluation.json
    for file_id in job.result_files:
        record = patiently(lambda: client.files.retrieve(file_id))
        content = patiently(lambda: client.files.content(file_id).read())
        assert len(content) == record.bytes > 0
    answer = patiently(lambda: client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "List: kilo echo lima"}], max_tokens=12,
    ), seconds=180)
    assert answer.choices[0].message.content
    return {"attempts": len(runs), "redone": max(redone, default=0)}


def kill_at_random(cluster: Cluster, client: OpenAI, rng: random.Random, kills: int,
                   pace: Pace, model: str) -> tuple[list[Kill], list[str]]:
    """Start the target and kill it at a random point of the job, again and again until `kills` kills landed
    on a live job, starting a new job whenever one finished; then let the last one finish.

    A point is either a step the job has not reported yet, plus a moment after it reports it, or a time
    after the start, so kills land in start-up, steps, state saves, checkpoint saves, and the final
    evaluation, export and finishing transaction.
    """
    def upload(name: str, data: bytes) -> str:
        return patiently(lambda: client.files.create(file=(name, data), purpose="fine-tune")).id

    training, validation = upload("train.jsonl", jsonl(chat_examples(12))), upload("valid.jsonl", jsonl(chat_examples(4, 100)))
    landed: list[Kill] = []
    jobs = [new_job(client, training, validation, model)]
    while len(landed) < kills:
        job = patiently(lambda: client.fine_tuning.jobs.retrieve(jobs[-1]))
        if job.status in TERMINAL:
            assert job.status == "succeeded", job.error
            jobs.append(new_job(client, training, validation, model))
        reached = last_step(events_of(client, jobs[-1]))
        # Every other kill waits for a step the job has not reported yet; the others (and all once every step is
        # reported) come at a random time after the start, landing in start-up, replayed steps or the finish.
        if reached < TOTAL_STEPS and len(landed) % 2 == 0:
            target, delay = rng.randint(reached + 1, TOTAL_STEPS), rng.uniform(0.0, pace.after_step)
        else:
            target, delay = reached, rng.uniform(0.0, pace.after_start)
        started = time.monotonic()
        cluster.start_target()
        wait_until(client, jobs[-1], lambda job, events: job.status in TERMINAL or last_step(events) >= target,
                   f"step {target}")
        time.sleep(delay)
        cluster.kill_target()
        job = patiently(lambda: client.fine_tuning.jobs.retrieve(jobs[-1]))
        if job.status not in TERMINAL:
            landed.append(Kill(job.id, round(time.monotonic() - started, 1), job.status, last_step(events_of(client, job.id))))
    cluster.start_target()
    for job_id in jobs:
        wait_until(client, job_id, lambda job, _: job.status in TERMINAL, "its end")
    return landed, jobs


def no_orphaned_engines(root: Path) -> bool:
    """No engine child of a killed process is still running on this test's data."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (b"ftserve.engine" in command or b"ftserve.testing_engine" in command) and str(root).encode() in command:
            return False
    return True


# Worker kills run in the PostgreSQL pass and server kills in the SQLite pass, as each is deployed. Most kill
# points land on the fake engine (the real protocol and files, a sleep per step); two on the real one.
RUNS = [
    pytest.param(False, "fake-engine", 6, id="kill-worker", marks=pytest.mark.database),
    pytest.param(True, "fake-engine", 6, id="kill-server"),
    pytest.param(True, "local", 2, id="kill-server-real-engine"),
]


@pytest.mark.parametrize("server_is_target, trainer, kills", RUNS)
def test_jobs_survive_random_kills(tmp_path: Path, databases: Databases, default_model_dir: Path, tiny_catalogue: Path,
                                   server_is_target: bool, trainer: str, kills: int) -> None:
    if server_is_target == (databases.server is not None):
        pytest.skip("runs in the " + ("SQLite" if server_is_target else "PostgreSQL") + " pass")
    cluster = Cluster(tmp_path, server_is_target, databases.new(), trainer,
                      {"FTSERVE_MAX_ATTEMPTS": "50", "FTSERVE_FAKE_ENGINE_STEP_SECONDS": str(FAKE_STEP_SECONDS),
                       "FTSERVE_CATALOGUE_FILE": str(tiny_catalogue)})
    client = cluster.client
    cluster.start_observer()
    try:
        pace, model = (REAL, TINY_MODEL_ID) if trainer == "local" else (FAKE, "SmolLM2-135M-Instruct")
        kills_landed, jobs = kill_at_random(cluster, client, random.Random(SEED + server_is_target), kills, pace, model)
        listed = patiently(lambda: client.fine_tuning.jobs.list(limit=100)).data
        assert sorted(j.id for j in listed) == sorted(jobs)  # no job recorded twice, none lost
        figures = {job_id: check_job(client, cluster, job_id) for job_id in jobs}
        deadline = time.time() + 30
        while not no_orphaned_engines(tmp_path):
            assert time.time() < deadline, "an engine outlived its killed parent"
            time.sleep(0.5)
        print(f"\n{'server' if server_is_target else 'worker'} kills on {trainer}: {len(kills_landed)} landed on "
              f"{len({k.job_id for k in kills_landed})} of {len(jobs)} jobs; statuses {[k.status for k in kills_landed]}; "
              f"steps at kill {[k.step for k in kills_landed]}; seconds after start {[k.seconds for k in kills_landed]}; "
              f"per job {list(figures.values())}")
    finally:
        cluster.stop_all()


def test_sigterm_saves_state_and_hands_the_job_on(tmp_path: Path, databases: Databases, default_model_dir: Path) -> None:
    # On the fake engine: the subject is the worker's hand-on. The real engine saves state on `shutdown` as it
    # does on `pause` (one branch of engine/loop.py), which tests/integration/test_engine_training.py covers.
    if databases.server is not None:
        pytest.skip("runs in the SQLite pass")
    cluster = Cluster(tmp_path, True, databases.new(), "fake-engine",
                      {"FTSERVE_FAKE_ENGINE_STEP_SECONDS": str(FAKE_STEP_SECONDS)})
    client = cluster.client
    cluster.start_observer()
    cluster.start_target()
    try:
        training = client.files.create(file=("train.jsonl", jsonl(chat_examples(12))), purpose="fine-tune").id
        job_id = client.fine_tuning.jobs.create(
            model="SmolLM2-135M-Instruct", training_file=training, hyperparameters=HYPERPARAMETERS,
            extra_body={"ftserve": {"checkpoint_interval": 4}},
        ).id
        wait_until(client, job_id, lambda _, events: last_step(events) >= 5, "step 5")  # past the state saved at step 4
        assert cluster.target is not None
        cluster.target.send_signal(signal.SIGTERM)
        assert cluster.target.wait(timeout=90) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled

        job = client.fine_tuning.jobs.retrieve(job_id)
        assert job.status == "queued"  # at once: nobody waits for a lease to expire
        events = events_of(client, job_id)
        requeued = [e.message for e in events if e.message.startswith("The worker shut down; job requeued at step ")]
        assert len(requeued) == 1
        stopped_at = int(requeued[0].rsplit(" ", 1)[1])
        assert stopped_at == last_step(events) >= 5

        cluster.start_worker()
        job = wait_until(client, job_id, lambda job, _: job.status in TERMINAL, "its end")
        assert job.status == "succeeded", job.error
        events = events_of(client, job_id)
        messages = [e.message for e in events]
        assert resumed_at(attempts(events)[-1]) == stopped_at  # nothing redone
        assert "The worker stopped responding; job requeued" not in messages
        assert [e.data["step"] for e in events if e.type == "metrics" and "step" in e.data] == list(range(1, 13))
    finally:
        cluster.stop_all()
