"""Crash safety with the real engine: SIGKILL the worker, and in separate runs the API server, at random
points of real training jobs, restart it, and check that nothing was lost or recorded twice.

After every kill the job must still end `succeeded`: resumed from its last saved state (at most one
checkpoint interval of steps redone), with each step's metrics, each checkpoint and the job itself
recorded once, no half-written file or checkpoint visible, and a result model that answers a chat.
A SIGTERM instead stops the job cleanly: its state is saved, its lease released, nothing redone.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import openai
import pytest
from openai import OpenAI
from safetensors import safe_open

from tests.conftest import MODEL_CACHE, Databases
from tests.tasks import chat_examples, jsonl

pytestmark = pytest.mark.acceptance

KILLS_PER_RUN = 10  # two runs, worker and server: 20 kill points
CHECKPOINT_INTERVAL = 2
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 2}  # 12 training examples: 12 steps, checkpoints at 6 and 12
SEED = 20261121
TOTAL_STEPS = 12
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Kill:
    job_id: str
    seconds: float
    """After the process started."""
    status: str
    step: int
    """The last step recorded before the kill."""


@dataclass
class Cluster:
    """Processes over one data dir and database: an API server that is never killed (`observer`, which the
    test reads through), and the target, killed and restarted: a worker, or a second API server with its
    embedded worker."""

    root: Path
    server_is_target: bool
    database_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    observer: subprocess.Popen[bytes] | None = None
    target: subprocess.Popen[bytes] | None = None
    ports: tuple[int, int] = (0, 0)
    starts: int = 0

    def __post_init__(self) -> None:
        self.ports = (_free_port(), _free_port())
        self.env = {
            **os.environ, "FTSERVE_DATA_DIR": str(self.root / "data"), "FTSERVE_TRAINER": "local",
            "FTSERVE_MODELS_DIR": str(MODEL_CACHE), "FTSERVE_LEASE_SECONDS": "2", "FTSERVE_WORKER_POLL_SECONDS": "0.2",
            "FTSERVE_MAX_ATTEMPTS": "50",
        }
        if self.database_url:
            self.env["FTSERVE_DATABASE_URL"] = self.database_url

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/v1"

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        with (self.root / f"process-{self.starts}.log").open("ab") as log:
            return subprocess.Popen([sys.executable, "-m", "ftserve.cli.main", *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _serve(self, port: int, worker: bool) -> subprocess.Popen[bytes]:
        process = self._spawn("serve", "--host", "127.0.0.1", "--port", str(port), *([] if worker else ["--no-worker"]))
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.1)

    def start_observer(self) -> None:
        self.observer = self._serve(self.ports[0], worker=False)

    def start_target(self) -> None:
        self.target = self._serve(self.ports[1], worker=True) if self.server_is_target else self._spawn("worker")

    def start_worker(self) -> None:
        self.target = self._spawn("worker")

    def kill_target(self) -> None:
        assert self.target is not None
        if self.server_is_target:
            self.target.kill()  # the server alone: its orphaned engine child must stop by itself
        else:
            os.killpg(self.target.pid, signal.SIGKILL)  # the worker and its engine, as an OOM kill of a container
        self.target.wait()

    def stop_all(self) -> None:
        for process in (self.target, self.observer):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def patiently(call: Callable[[], Any], seconds: float = 90) -> Any:
    """Call the API, waiting out a server that is restarting."""
    deadline = time.time() + seconds
    while True:
        try:
            return call()
        except (openai.APIConnectionError, openai.InternalServerError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def events_of(client: OpenAI, job_id: str) -> list[Any]:
    return list(reversed(patiently(lambda: client.fine_tuning.jobs.list_events(job_id, limit=10000)).data))


def last_step(events: list[Any]) -> int:
    return max((e.data["step"] for e in events if e.type == "metrics" and "step" in (e.data or {})), default=0)


def attempts(events: list[Any]) -> list[list[Any]]:
    """The events of each time the job was started, in order."""
    runs: list[list[Any]] = []
    for event in events:
        if event.message in ("Fine-tuning job started", "Fine-tuning job restarted"):
            runs.append([])
        if runs:
            runs[-1].append(event)
    return runs


def resumed_at(run: list[Any]) -> int | None:
    found = [int(e.message.removeprefix("Resuming from step ")) for e in run if e.message.startswith("Resuming from step ")]
    return found[0] if found else None


def new_job(client: OpenAI, training: str, validation: str) -> str:
    return patiently(lambda: client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=training, validation_file=validation,
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
    # redone. (One killed again before it loaded any state says nothing either way.)
    runs = attempts(events)
    redone = []
    for index, run in enumerate(runs[1:], start=1):
        reached = last_step([e for earlier in runs[:index] for e in earlier])
        start = resumed_at(run)
        trained = any(e.type == "metrics" or e.message == "The job has successfully completed" for e in run)
        if start is None and not trained:
            continue
        start = start or 0  # trained without resuming: there was no state yet
        assert reached - CHECKPOINT_INTERVAL <= start <= reached, (reached, start, messages)
        redone.append(reached - start)

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


def kill_at_random(cluster: Cluster, client: OpenAI, rng: random.Random, kills: int) -> tuple[list[Kill], list[str]]:
    """Start the target and kill it at a random point of the job, again and again until `kills` kills landed
    on a live job, starting a new job whenever one finished; then let the last one finish.

    A point is either a step the job has not reported yet, plus up to 3 s after it reports it, or a time
    up to 40 s after the start, so kills land in start-up, steps, state saves, checkpoint saves, and the
    final evaluation, export and finishing transaction.
    """
    def upload(name: str, data: bytes) -> str:
        return patiently(lambda: client.files.create(file=(name, data), purpose="fine-tune")).id

    training, validation = upload("train.jsonl", jsonl(chat_examples(12))), upload("valid.jsonl", jsonl(chat_examples(4, 100)))
    landed: list[Kill] = []
    jobs = [new_job(client, training, validation)]
    while len(landed) < kills:
        job = patiently(lambda: client.fine_tuning.jobs.retrieve(jobs[-1]))
        if job.status in TERMINAL:
            assert job.status == "succeeded", job.error
            jobs.append(new_job(client, training, validation))
        reached = last_step(events_of(client, jobs[-1]))
        # Half the kills wait for a step the job has not reported yet; the others (and all once every step is
        # reported) come at a random time after the start, landing in start-up, replayed steps or the finish.
        if reached < TOTAL_STEPS and rng.random() < 0.5:
            target, delay = rng.randint(reached + 1, TOTAL_STEPS), rng.uniform(0.0, 3.0)
        else:
            target, delay = reached, rng.uniform(0.0, 40.0)
        started = time.monotonic()
        cluster.start_target()
        deadline = time.time() + 600  # a guard against a hang; a loaded 2-core machine has taken 280 s
        while (job := patiently(lambda: client.fine_tuning.jobs.retrieve(jobs[-1]))).status not in TERMINAL:
            if last_step(events_of(client, job.id)) >= target:
                break
            assert time.time() < deadline, f"{job.id} made no progress"
            time.sleep(0.1)
        time.sleep(delay)
        cluster.kill_target()
        job = patiently(lambda: client.fine_tuning.jobs.retrieve(jobs[-1]))
        if job.status not in TERMINAL:
            landed.append(Kill(job.id, round(time.monotonic() - started, 1), job.status, last_step(events_of(client, job.id))))
    cluster.start_target()
    for job_id in jobs:
        deadline = time.time() + 600
        while patiently(lambda: client.fine_tuning.jobs.retrieve(job_id)).status not in TERMINAL:
            assert time.time() < deadline, f"{job_id} never finished"
            time.sleep(0.5)
    return landed, jobs


def no_orphaned_engines(root: Path) -> bool:
    """No engine child of a killed process is still running on this test's data."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ftserve.engine" in command and str(root).encode() in command:
            return False
    return True


@pytest.mark.parametrize("server_is_target", [False, True], ids=["kill-worker", "kill-server"])
def test_jobs_survive_random_kills(tmp_path: Path, databases: Databases, default_model_dir: Path,
                                   server_is_target: bool) -> None:
    # Ten kills in each pass of `make test`: the server on SQLite, workers on PostgreSQL, as each is deployed.
    if server_is_target == (databases.server is not None):
        pytest.skip("runs in the " + ("SQLite" if server_is_target else "PostgreSQL") + " pass")
    cluster = Cluster(tmp_path, server_is_target, databases.new())
    client = OpenAI(base_url=cluster.url(cluster.ports[0]), api_key="unused", max_retries=0)
    cluster.start_observer()
    try:
        kills, jobs = kill_at_random(cluster, client, random.Random(SEED + server_is_target), KILLS_PER_RUN)
        listed = patiently(lambda: client.fine_tuning.jobs.list(limit=100)).data
        assert sorted(j.id for j in listed) == sorted(jobs)  # no job recorded twice, none lost
        figures = {job_id: check_job(client, cluster, job_id) for job_id in jobs}
        deadline = time.time() + 30
        while not no_orphaned_engines(tmp_path):
            assert time.time() < deadline, "an engine outlived its killed parent"
            time.sleep(0.5)
        print(f"\n{'server' if server_is_target else 'worker'} kills: {len(kills)} landed on "
              f"{len({k.job_id for k in kills})} of {len(jobs)} jobs; statuses {[k.status for k in kills]}; "
              f"steps at kill {[k.step for k in kills]}; seconds after start {[k.seconds for k in kills]}; "
              f"per job {list(figures.values())}")
    finally:
        cluster.stop_all()


def test_sigterm_saves_state_and_hands_the_job_on(tmp_path: Path, databases: Databases, default_model_dir: Path) -> None:
    if databases.server is not None:
        pytest.skip("runs in the SQLite pass")
    cluster = Cluster(tmp_path, True, databases.new())
    client = OpenAI(base_url=cluster.url(cluster.ports[0]), api_key="unused", max_retries=0)
    cluster.start_observer()
    cluster.start_target()
    try:
        training = client.files.create(file=("train.jsonl", jsonl(chat_examples(12))), purpose="fine-tune").id
        job_id = client.fine_tuning.jobs.create(
            model="SmolLM2-135M-Instruct", training_file=training, hyperparameters=HYPERPARAMETERS,
            extra_body={"ftserve": {"checkpoint_interval": 4}},
        ).id
        deadline = time.time() + 300
        while last_step(events_of(client, job_id)) < 5:  # past the state saved at step 4
            assert time.time() < deadline
            time.sleep(0.1)
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
        deadline = time.time() + 300
        while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.time() < deadline
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        events = events_of(client, job_id)
        messages = [e.message for e in events]
        assert resumed_at(attempts(events)[-1]) == stopped_at  # nothing redone
        assert "The worker stopped responding; job requeued" not in messages
        assert [e.data["step"] for e in events if e.type == "metrics" and "step" in e.data] == list(range(1, 13))
    finally:
        cluster.stop_all()
