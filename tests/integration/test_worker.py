"""The worker against the real database (SQLite, or PostgreSQL in the PostgreSQL run): claims are
exclusive under concurrency, a job whose worker died is taken back and finishes, and a worker
without a trainer fails jobs with a message that says what to set."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ftserve.domain.jobs import JobStatus
from ftserve.schemas.fine_tuning import CreateFineTuningJobRequest
from ftserve.services.jobs import CreateContext
from ftserve.services.runtime import Runtime, build
from ftserve.store import jobs as job_rows
from ftserve.testing import FakeTrainer
from ftserve.worker.loop import Worker, WorkerConfig
from tests.conftest import settings_for
from tests.helpers import chat_jsonl

pytestmark = pytest.mark.database


@pytest.fixture
def runtime(tmp_path, database_url) -> Runtime:  # type: ignore[no-untyped-def]
    built = build(settings_for(tmp_path, database_url))
    yield built
    built.engine.dispose()


def make_job(runtime: Runtime, **hyper: int) -> str:
    training = runtime.files.create("default", "t.jsonl", "fine-tune", io.BytesIO(chat_jsonl(4)))
    request = CreateFineTuningJobRequest(
        model="SmolLM2-135M-Instruct", training_file=training.id, hyperparameters=hyper or {"n_epochs": 1}
    )
    return runtime.jobs.create("default", request, CreateContext()).id


def worker(runtime: Runtime, trainer: FakeTrainer | None = None, lease: float = 3.0) -> Worker:
    return Worker(runtime.engine, runtime.blobs, runtime.files, trainer, WorkerConfig(poll_seconds=0.05, lease_seconds=lease))


def test_concurrent_claims_never_hand_one_job_to_two_workers(runtime: Runtime) -> None:
    ids = {make_job(runtime) for _ in range(12)}
    workers = [worker(runtime) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()

    def grab(w: Worker) -> None:
        while True:
            with runtime.engine.begin() as conn:
                job = job_rows.claim(conn, w.id, time.time() + 60)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(grab, workers))
    assert sorted(claimed) == sorted(ids)


def test_job_of_a_dead_worker_is_requeued_and_finishes_from_its_checkpoint(runtime: Runtime) -> None:
    job_id = make_job(runtime, n_epochs=3, batch_size=1)
    dying = worker(runtime, FakeTrainer(step_seconds=0.01), lease=0.5)
    dying.run_once()  # validating_files -> queued
    with runtime.engine.begin() as conn:
        job = job_rows.claim(conn, dying.id, time.time() + 0.5)
        assert job is not None
        job_rows.move(conn, job.id, JobStatus.RUNNING, source=[JobStatus.QUEUED])
    # The worker "dies" holding a running job: nobody renews its lease.
    time.sleep(0.6)
    survivor = worker(runtime, FakeTrainer(step_seconds=0.01))
    survivor.reap()
    assert runtime.jobs.get("default", job_id).status == JobStatus.QUEUED
    survivor.run_once()
    finished = runtime.jobs.get("default", job_id)
    assert finished.status == JobStatus.SUCCEEDED and finished.attempts == 2
    messages = [e.message for e in runtime.jobs.events("default", job_id, after=None, limit=100).items]
    assert "The worker stopped responding; job requeued" in messages


def test_without_a_trainer_jobs_fail_with_a_clear_error(runtime: Runtime) -> None:
    job_id = make_job(runtime)
    idle = worker(runtime, trainer=None)
    idle.run_once()
    idle.run_once()
    job = runtime.jobs.get("default", job_id)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert "FTSERVE_TRAINER" in job.error.message and job.finished_at is not None


def test_suite_runs_on_the_database_it_was_asked_for(runtime: Runtime) -> None:
    import os

    wanted = "postgresql" if os.environ.get("FTSERVE_TEST_DATABASE_URL") else "sqlite"
    assert runtime.engine.dialect.name == wanted


def test_store_refuses_moves_the_state_machine_does_not_have(runtime: Runtime) -> None:
    job_id = make_job(runtime)
    with runtime.engine.begin() as conn, pytest.raises(ValueError, match="no move"):
        job_rows.move(conn, job_id, JobStatus.SUCCEEDED, source=[JobStatus.VALIDATING_FILES])
    assert runtime.jobs.get("default", job_id).status == JobStatus.VALIDATING_FILES


def test_a_stopping_worker_hands_its_job_back_at_once_without_using_an_attempt(runtime: Runtime) -> None:
    job_id = make_job(runtime, n_epochs=4, batch_size=1)  # 16 steps, a checkpoint every 4
    config = WorkerConfig(poll_seconds=0.05, lease_seconds=30.0)
    stopping = Worker(runtime.engine, runtime.blobs, runtime.files, FakeTrainer(step_seconds=0.05), config)
    stop = threading.Event()
    thread = threading.Thread(target=stopping.run, args=(stop,))
    thread.start()
    deadline = time.time() + 30
    while not runtime.jobs.events("default", job_id, after=None, limit=100).items[0].message.startswith("Step 6/"):
        assert time.time() < deadline
        time.sleep(0.02)
    stop.set()  # what SIGTERM does
    thread.join(timeout=10)
    assert not thread.is_alive()

    job = runtime.jobs.get("default", job_id)
    assert job.status == JobStatus.QUEUED and job.worker_id is None  # nobody waits for the 30 s lease
    messages = [e.message for e in runtime.jobs.events("default", job_id, after=None, limit=100).items]
    stopped_at = int(messages[0].removeprefix("The worker shut down; job requeued at step "))
    assert stopped_at >= 6

    successor = Worker(runtime.engine, runtime.blobs, runtime.files, FakeTrainer(step_seconds=0.01), config)
    successor.run_once()
    job = runtime.jobs.get("default", job_id)
    # Started twice, but the hand-over was not a lost worker: one attempt used of max_attempts.
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    events = list(reversed(runtime.jobs.events("default", job_id, after=None, limit=100).items))
    assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(1, 17))  # repeats not recorded twice
    assert [e.message for e in events].count("Fine-tuning job restarted") == 1
    assert [e.message for e in events].count("Checkpoint created at step 4") == 1
