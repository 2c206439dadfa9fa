"""The reconcile loop against the real database, with a scripted provider standing in for a hosted one:
unknown statuses, back-off, outages, a provider that loses the job, failures and cancels."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from ftserve.domain.jobs import Job, JobStatus
from ftserve.providers.contract import (
    Capabilities,
    Estimate,
    ProviderError,
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteJob,
    Resolved,
    Staged,
)
from ftserve.providers.openai_compatible_api import OpenAICompatibleOptions
from ftserve.schemas.fine_tuning import CreateFineTuningJobRequest
from ftserve.services.jobs import CreateContext
from ftserve.services.runtime import Runtime, build
from ftserve.store import jobs as job_rows
from ftserve.store import models as model_rows
from ftserve.store.tables import jobs
from ftserve.worker.loop import Worker, WorkerConfig
from ftserve.worker.reconcile import Backoff
from tests.conftest import settings_for
from tests.helpers import chat_jsonl

pytestmark = pytest.mark.database


class Scripted:
    """A hosted provider whose answers the test writes: `get` returns the next scripted job (or raises it)."""

    kind = "openai_compatible"
    name = "remote-s"
    Options = OpenAICompatibleOptions

    def __init__(self) -> None:
        self.script: list[RemoteJob | ProviderError] = []
        self.feed: list[RemoteEvent] = []
        self.saved: list[RemoteCheckpoint] = []
        self.calls: list[str] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(methods=("supervised",), training_types=("lora",), data="file_api", serving="ready",
                            events=True, checkpoints=True)

    def list_base_models(self) -> list:
        return []

    def resolve(self, request, staged=None) -> Resolved:  # type: ignore[no-untyped-def]
        return Resolved(self.name, {"model": request.model})

    def estimate(self, request) -> Estimate:  # type: ignore[no-untyped-def]
        return Estimate(1, 1)

    def stage_data(self, request) -> Staged:  # type: ignore[no-untyped-def]
        return Staged("file-remote")

    def submit(self, request, staged) -> RemoteJob:  # type: ignore[no-untyped-def]
        self.calls.append("submit")
        return RemoteJob("r-1", "queued", "queued")

    def get(self, remote_id: str) -> RemoteJob:
        self.calls.append("get")
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    def events(self, remote_id: str, after: str | None = None) -> list[RemoteEvent]:
        ids = [e.id for e in self.feed]
        return self.feed[ids.index(after) + 1:] if after in ids else list(self.feed)

    def checkpoints(self, remote_id: str) -> list[RemoteCheckpoint]:
        return list(self.saved)

    def cancel(self, remote_id: str) -> RemoteJob:
        self.calls.append("cancel")
        return RemoteJob(remote_id, "cancelling", "cancelling")


@pytest.fixture
def setup(tmp_path, database_url) -> Iterator[tuple[Runtime, Scripted, Worker]]:  # type: ignore[no-untyped-def]
    runtime = build(settings_for(tmp_path, database_url, providers={"remote-s": {"base_url": "http://unused/v1"}}))
    scripted = Scripted()
    runtime.providers.providers.hosted["remote-s"] = scripted  # type: ignore[assignment]
    worker = Worker(runtime.engine, runtime.blobs, runtime.files, None,
                    WorkerConfig(poll_seconds=0.05, lease_seconds=5, backoff=Backoff(1.0, 8.0)),
                    runtime.providers.providers)
    yield runtime, scripted, worker
    runtime.engine.dispose()


def submitted(runtime: Runtime, worker: Worker) -> Job:
    training = runtime.files.create("default", "t.jsonl", "fine-tune", io.BytesIO(chat_jsonl(4)))
    job = runtime.jobs.create("default", CreateFineTuningJobRequest(model="remote-s/base", training_file=training.id),
                              CreateContext())
    worker.run_once()  # validate the files
    worker.run_once()  # submit
    return runtime.jobs.get("default", job.id)


def poll(runtime: Runtime, worker: Worker, job_id: str) -> Job:
    """One poll now, whatever the back-off says."""
    with runtime.engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id, jobs.c.poll_at.is_not(None)).values(poll_at=0))
    assert worker.run_once()
    return runtime.jobs.get("default", job_id)


def messages(runtime: Runtime, job_id: str) -> list[tuple[str, str]]:
    page = runtime.jobs.events("default", job_id, after=None, limit=100)
    return [(e.level, e.message) for e in reversed(page.items)]


def test_an_unknown_status_keeps_the_job_running_with_a_warning_then_it_finishes(setup) -> None:  # type: ignore[no-untyped-def]
    runtime, scripted, worker = setup
    scripted.script = [RemoteJob("r-1", "running", "running"), RemoteJob("r-1", "unknown", "hibernating"),
                       RemoteJob("r-1", "succeeded", "succeeded", model="remote-model-1", trained_tokens=1234)]
    job = submitted(runtime, worker)
    assert job.status == JobStatus.RUNNING and job.remote["id"] == "r-1"
    assert poll(runtime, worker, job.id).status == JobStatus.RUNNING
    held = poll(runtime, worker, job.id)
    assert held.status == JobStatus.RUNNING and held.remote["provider_status"] == "hibernating"
    assert ("warn", "remote-s status: hibernating (a status ftserve does not know; still polling)") in messages(runtime, job.id)
    done = poll(runtime, worker, job.id)
    assert done.status == JobStatus.SUCCEEDED and done.trained_tokens == 1234
    with runtime.engine.connect() as conn:
        model = model_rows.find_model(conn, done.fine_tuned_model or "")
    assert model is not None and (model.provider, model.remote_model) == ("remote-s", "remote-model-1")
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(jobs.c.poll_at).where(jobs.c.id == job.id)).scalar() is None  # polling stops


def test_polls_back_off_while_nothing_changes_and_events_mirror_once(setup) -> None:  # type: ignore[no-untyped-def]
    runtime, scripted, worker = setup
    scripted.script = [RemoteJob("r-1", "running", "running")]
    job = submitted(runtime, worker)
    intervals = [poll(runtime, worker, job.id).remote["interval"] for _ in range(5)]
    assert intervals == [1.0, 2.0, 4.0, 8.0, 8.0]
    scripted.feed = [RemoteEvent("e1", 100, "step 1", type="metrics", data={"step": 1, "train_loss": 2.0}),
                     RemoteEvent("e2", 101, "step 2", type="metrics", data={"step": 2, "train_loss": 1.5})]
    assert poll(runtime, worker, job.id).remote["interval"] == 1.0  # news resets the back-off
    poll(runtime, worker, job.id)
    scripted.feed.append(RemoteEvent("e3", 102, "halfway", level="warn"))
    poll(runtime, worker, job.id)
    mirrored = [m for _, m in messages(runtime, job.id) if m in ("step 1", "step 2", "halfway")]
    assert mirrored == ["step 1", "step 2", "halfway"]


def test_an_outage_backs_off_and_warns_once_and_a_lost_job_fails(setup) -> None:  # type: ignore[no-untyped-def]
    runtime, scripted, worker = setup
    scripted.script = [RemoteJob("r-1", "running", "running")]
    job = submitted(runtime, worker)
    outage = ProviderError("remote-s could not be reached: timed out", retryable=True)
    scripted.script = [outage, outage, outage, ProviderError("remote-s answered 404: no such job", status=404)]
    states = [poll(runtime, worker, job.id) for _ in range(3)]
    assert [s.status for s in states] == [JobStatus.RUNNING] * 3
    assert [s.remote["interval"] for s in states] == [1.0, 2.0, 4.0]
    warned = [m for level, m in messages(runtime, job.id) if level == "warn"]
    assert warned == ["remote-s could not be reached: timed out; polling again with back-off"]
    lost = poll(runtime, worker, job.id)
    assert lost.status == JobStatus.FAILED and lost.error.code == "provider_lost_job"


def test_a_failure_keeps_the_providers_code_and_message(setup) -> None:  # type: ignore[no-untyped-def]
    runtime, scripted, worker = setup
    scripted.script = [RemoteJob("r-1", "failed", "error", error=RemoteError("invalid_data", "line 3 has no assistant turn"))]
    job = submitted(runtime, worker)
    failed = poll(runtime, worker, job.id)
    assert failed.status == JobStatus.FAILED
    assert (failed.error.code, failed.error.message) == ("invalid_data", "remote-s: line 3 has no assistant turn")


def test_a_cancel_here_is_passed_on_once_and_checkpoints_are_mirrored(setup) -> None:  # type: ignore[no-untyped-def]
    runtime, scripted, worker = setup
    scripted.script = [RemoteJob("r-1", "running", "running")]
    scripted.saved = [RemoteCheckpoint(5, 100, {"train_loss": 1.0}, model="remote-ckpt-5")]
    job = submitted(runtime, worker)
    poll(runtime, worker, job.id)
    poll(runtime, worker, job.id)
    checkpoints = runtime.jobs.checkpoints("default", job.id, after=None, limit=10).items
    assert [(c.step_number, c.remote_model) for c in checkpoints] == [(5, "remote-ckpt-5")]
    runtime.jobs.cancel("default", job.id)
    assert worker.run_once()  # due at once
    assert scripted.calls.count("cancel") == 1
    assert not worker.run_once()  # nothing more to do for it
    assert ("info", "Cancel passed on to remote-s (cancelling)") in messages(runtime, job.id)
    with runtime.engine.connect() as conn:
        assert job_rows.get(conn, job.id).status == JobStatus.CANCELLED
