"""A job's life through `services/lifecycle.py`, against the real database: the verbs are the only writers of a
job's status and events, a job paused before its files were checked is checked when it resumes, and a worker's
death counts against the job only when that attempt made no progress."""

from __future__ import annotations

import ast
import io
import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from ftserve.domain.jobs import Job, JobStatus
from ftserve.schemas.fine_tuning import CreateFineTuningJobRequest
from ftserve.services.jobs import CreateContext
from ftserve.services.runtime import Runtime, build
from ftserve.store import events as event_rows
from ftserve.store import jobs as job_rows
from ftserve.testing import FakeTrainer
from ftserve.worker.loop import Worker, WorkerConfig
from tests.conftest import settings_for
from tests.helpers import chat_jsonl

pytestmark = pytest.mark.database

SOURCE = Path(__file__).resolve().parents[2] / "src" / "ftserve"
# What writes a job's status or its events, by module of the store.
WRITERS = {"ftserve.store.jobs": {"move", "insert", "update_running", "set_remote"},
           "ftserve.store.events": {"append", "add_checkpoint"}}


@pytest.fixture
def runtime(tmp_path: Path, database_url: str | None) -> Iterator[Runtime]:
    built = build(settings_for(tmp_path, database_url))
    yield built
    built.engine.dispose()


def _create(runtime: Runtime, data: bytes) -> str:
    training = runtime.files.create("default", "t.jsonl", "fine-tune", io.BytesIO(data))
    request = CreateFineTuningJobRequest(model="SmolLM2-135M-Instruct", training_file=training.id,
                                         hyperparameters={"n_epochs": 1})
    return runtime.jobs.create("default", request, CreateContext()).id


def _work_until_done(worker: Worker, runtime: Runtime, job_id: str) -> Job:
    deadline = time.time() + 30
    while time.time() < deadline:
        worker.run_once()
        job = runtime.jobs.get("default", job_id)
        if job.status.terminal:
            return job
    raise AssertionError(f"job {job_id} did not finish")


def test_only_the_lifecycle_writes_a_jobs_status_or_events() -> None:
    offenders = []
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).as_posix()
        if relative == "services/lifecycle.py" or relative.startswith("store/"):
            continue
        tree = ast.parse(path.read_text())
        aliases = {alias.asname or alias.name: f"{node.module}.{alias.name}"
                   for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
                   for alias in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.attr in WRITERS.get(aliases.get(node.func.value.id, ""), ())):
                offenders.append(f"{relative}:{node.lineno} {node.func.value.id}.{node.func.attr}")
    assert offenders == [], "job status or events written outside services/lifecycle.py"


def test_a_job_paused_before_its_files_were_checked_is_checked_when_resumed(runtime: Runtime) -> None:
    # Prompts without an assistant message: a reinforcement file, which supervised training must refuse.
    prompts = b"".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}"}]}).encode() + b"\n"
                       for i in range(4))
    job_id = _create(runtime, prompts)
    assert runtime.jobs.pause("default", job_id).status == JobStatus.PAUSED
    resumed = runtime.jobs.resume("default", job_id)
    assert resumed.status == JobStatus.VALIDATING_FILES

    job = _work_until_done(Worker(runtime.engine, runtime.blobs, runtime.files, FakeTrainer(step_seconds=0.0),
                                  WorkerConfig(poll_seconds=0.05, lease_seconds=3.0)), runtime, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.param == "training_file"
    assert "no assistant message" in job.error.message


def test_a_job_paused_after_its_files_were_checked_resumes_into_the_queue(runtime: Runtime) -> None:
    job_id = _create(runtime, chat_jsonl(4))
    worker = Worker(runtime.engine, runtime.blobs, runtime.files, None, WorkerConfig(0.05, 3.0))
    worker.run_once()  # checks the files
    assert runtime.jobs.get("default", job_id).status == JobStatus.QUEUED
    runtime.jobs.pause("default", job_id)
    assert runtime.jobs.resume("default", job_id).status == JobStatus.QUEUED


def _die(runtime: Runtime, worker: Worker, job_id: str, saved_step: int | None) -> Job:
    """The worker claims and starts the job, saves state at `saved_step` (None: saves nothing), and dies: its lease
    runs out, and another worker's reaper takes the job back."""
    with runtime.engine.begin() as conn:
        claimed = job_rows.claim(conn, worker.id, time.time() + 60)
    assert claimed is not None and claimed.id == job_id
    started = worker.lifecycle.start(claimed, worker.id)
    assert started is not None
    running = runtime.jobs.get("default", job_id)
    if saved_step is not None:
        worker.lifecycle.record_metrics(running, worker.id, saved_step, f"Step {saved_step}", {}, int(time.time()) + 60)
        assert worker.lifecycle.record_state(running, worker.id, saved_step)
    with runtime.engine.begin() as conn:  # the lease ran out
        conn.execute(job_rows.jobs.update().where(job_rows.jobs.c.id == job_id).values(lease_expires_at=0))
    worker.reap()
    return runtime.jobs.get("default", job_id)


def _queued(runtime: Runtime, job_id: str) -> None:
    """Past validation, waiting for a trainer."""
    worker = Worker(runtime.engine, runtime.blobs, runtime.files, None, WorkerConfig(0.05, 3.0))
    worker.run_once()
    assert runtime.jobs.get("default", job_id).status == JobStatus.QUEUED


def test_worker_deaths_after_progress_never_use_up_the_attempts(runtime: Runtime) -> None:
    job_id = _create(runtime, chat_jsonl(4))
    _queued(runtime, job_id)
    worker = Worker(runtime.engine, runtime.blobs, runtime.files, None, WorkerConfig(0.05, 3.0, max_attempts=3))
    for death in range(1, 6):
        job = _die(runtime, worker, job_id, saved_step=death * 2)
        assert job.status == JobStatus.QUEUED, f"death {death}"
        assert job.estimated_finish is None
    with runtime.engine.connect() as conn:
        messages = [e.message for e in event_rows.list_events(conn, job_id, after=None, limit=100).items]
    assert sum("after saving its state" in m for m in messages) == 5
    assert sum(m == "Fine-tuning job restarted" for m in messages) == 4


def test_worker_deaths_without_progress_fail_the_job_after_max_attempts(runtime: Runtime) -> None:
    job_id = _create(runtime, chat_jsonl(4))
    _queued(runtime, job_id)
    worker = Worker(runtime.engine, runtime.blobs, runtime.files, None, WorkerConfig(0.05, 3.0, max_attempts=3))
    assert _die(runtime, worker, job_id, saved_step=2).status == JobStatus.QUEUED  # progress: not counted
    assert _die(runtime, worker, job_id, saved_step=None).status == JobStatus.QUEUED
    assert _die(runtime, worker, job_id, saved_step=None).status == JobStatus.QUEUED
    failed = _die(runtime, worker, job_id, saved_step=None)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error.code == "worker_lost"
    assert failed.estimated_finish is None and failed.finished_at is not None
