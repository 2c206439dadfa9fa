"""The one place a job's state changes.

One verb per transition. Each verb is one transaction: the status move, its event, `finished_at` and
`estimated_finish`, the lease, and what the move brings with it (the model row, result files, the
evaluation, webhooks through `store.jobs.move`). Local and hosted jobs finish through the same verbs.

A verb that is guarded by a worker (`worker_id`) writes only while that worker still holds the job,
and returns False when someone else moved the job first: the caller lost the race and stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from ftserve.domain.files import StoredFile
from ftserve.domain.jobs import LIVE, Checkpoint, Job, JobError, JobEvent, JobStatus
from ftserve.domain.naming import root_base
from ftserve.services.clock import now
from ftserve.store import events as event_rows
from ftserve.store import files as file_rows
from ftserve.store import jobs as job_rows
from ftserve.store import models as model_rows

Level = Literal["info", "warn", "error"]
RUNNING = (JobStatus.RUNNING, JobStatus.PAUSING)

STARTED = "Fine-tuning job started"
RESTARTED = "Fine-tuning job restarted"


@dataclass(frozen=True)
class Result:
    """What a job that trained to the end leaves behind."""

    trained_tokens: int | None
    model_path: str | None = None
    """The model's blob key, for a model this service serves."""
    remote_model: str | None = None
    """The provider's name for a model trained elsewhere."""
    evaluation: dict[str, Any] | None = None
    files: list[StoredFile] = field(default_factory=list)
    where: str = ""
    """Said after the model's name in the event, e.g. the provider's name for it."""


class Lifecycle:
    def __init__(self, engine: sa.Engine, max_attempts: int = 3):
        self.engine = engine
        self.max_attempts = max_attempts

    # Asked for through the API.

    def create(self, conn: sa.Connection, job: Job, *, request_hash: str | None, idempotency_key: str | None) -> None:
        """A new job, in the caller's transaction (which also checks the project's quota)."""
        job_rows.insert(conn, job, request_hash=request_hash, idempotency_key=idempotency_key)
        event_rows.append(conn, job.id, job.created_at, f"Created fine-tuning job: {job.id}")

    def cancel(self, job: Job) -> bool:
        """Cancelled at once; a worker running it sees that at its next heartbeat. A hosted job at its provider is
        due for a poll at once, which passes the cancel on."""
        hosted = {"poll_at": time.time()} if job.provider is not None and (job.remote or {}).get("id") else {}
        return self._end(job, JobStatus.CANCELLED, LIVE, "Fine-tuning job cancelled", values=hosted)

    def pause(self, job: Job) -> bool:
        """A running job is asked to pause (the trainer saves its state first); a waiting one pauses at once."""
        if job.status == JobStatus.RUNNING:
            return self._move(job, JobStatus.PAUSING, [JobStatus.RUNNING], "Pausing fine-tuning job")
        return self._move(job, JobStatus.PAUSED, [JobStatus.VALIDATING_FILES, JobStatus.QUEUED], "Fine-tuning job paused")

    def resume(self, job: Job) -> bool:
        """Back to the queue, or to validation when it was paused before its files were checked."""
        if job.files_validated:
            return self._move(job, JobStatus.QUEUED, [JobStatus.PAUSED], "Fine-tuning job resumed")
        return self._move(job, JobStatus.VALIDATING_FILES, [JobStatus.PAUSED],
                          "Fine-tuning job resumed; its files are checked first")

    # A worker's moves.

    def validated(self, job: Job, worker_id: str) -> bool:
        with self.engine.begin() as conn:
            moved = job_rows.move(conn, job.id, JobStatus.QUEUED, source=[JobStatus.VALIDATING_FILES],
                                  worker_id=worker_id, release=True, values={"files_validated": True})
            if moved:
                event_rows.append(conn, job.id, now(), "Files validated, moving job to queued state")
        return moved

    def start(self, job: Job, worker_id: str, *, values: dict[str, Any] | None = None,
              message: str | None = None) -> int | None:
        """queued -> running. The attempt's starting point is the newest state saved so far, so a later death
        can tell whether this attempt got further. Returns the last step whose metrics were recorded (where a
        restart may resume at the latest), or None when the job left the queue first."""
        at = now()
        update = {"attempt_saved_step": job.saved_step, "started_at": job.started_at or at, **(values or {})}
        with self.engine.begin() as conn:
            if not job_rows.move(conn, job.id, JobStatus.RUNNING, source=[JobStatus.QUEUED], worker_id=worker_id,
                                 values=update):
                return None
            restarted = job.started_at is not None
            event_rows.append(conn, job.id, at, RESTARTED if restarted else STARTED, data={"worker": worker_id})
            if message:
                event_rows.append(conn, job.id, at, message)
            return event_rows.last_metrics_step(conn, job.id)

    def run_number(self, job: Job) -> int:
        """How many times the job has started training, the current start included: with the job id, it names one
        run of it, the same however often it is asked for, and never the same for two runs."""
        with self.engine.connect() as conn:
            return event_rows.count_messages(conn, job.id, (STARTED, RESTARTED))

    def paused(self, job: Job, worker_id: str | None, step: int | None = None) -> bool:
        """pausing -> paused: the trainer stopped and kept its state (or the provider paused the job)."""
        message = f"Fine-tuning job paused at step {step}" if step is not None else "Fine-tuning job paused"
        return self._move(job, JobStatus.PAUSED, [JobStatus.PAUSING], message, worker_id=worker_id, release=True,
                          values={"poll_at": None})

    def requeue(self, job: Job, worker_id: str, step: int) -> bool:
        """running -> queued when the worker shuts down: the trainer saved its state, and handing the job on is
        not a failed attempt."""
        return self._move(job, JobStatus.QUEUED, [JobStatus.RUNNING], f"The worker shut down; job requeued at step {step}",
                          worker_id=worker_id, release=True, values={"attempts": max(0, job.attempts - 1)},
                          level="info")

    def lost(self, job: Job, why: str = "The worker stopped responding") -> None:
        """The worker holding `job` stopped renewing its lease, or the machine its engine ran on went away (`why`
        says which). A death counts against the job's attempts only when that attempt saved no newer state than the
        one it started from: a job that keeps moving survives any number of deaths, one that crashes its worker
        without progress fails after `max_attempts`."""
        with self.engine.begin() as conn:
            if job.provider is not None or job.status not in RUNNING:
                # A hosted job runs at its provider, and a job checking files restarts its check: only the lease was lost.
                job_rows.release(conn, job.id, job.worker_id or "")
                return
            source, holder = [job.status], job.worker_id
            if job.status == JobStatus.PAUSING:
                if job_rows.move(conn, job.id, JobStatus.PAUSED, source=source, worker_id=holder, release=True):
                    event_rows.append(conn, job.id, now(), "Fine-tuning job paused")
                return
            progressed = job.saved_step > job.attempt_saved_step
            if not progressed and job.attempts >= self.max_attempts:
                error = JobError("worker_lost", f"The job lost its worker {job.attempts} times without making progress.")
                if job_rows.move(conn, job.id, JobStatus.FAILED, source=source, worker_id=holder, release=True,
                                 values={"error": error, "finished_at": now(), "estimated_finish": None}):
                    event_rows.append(conn, job.id, now(), error.message, level="error")
                return
            values: dict[str, Any] = {"estimated_finish": None}
            if progressed:  # this death does not count
                values["attempts"] = max(0, job.attempts - 1)
            if job_rows.move(conn, job.id, JobStatus.QUEUED, source=source, worker_id=holder, release=True,
                             values=values):
                note = f" after saving its state at step {job.saved_step}" if progressed else ""
                event_rows.append(conn, job.id, now(), f"{why}{note}; job requeued", level="warn")

    def succeed(self, job: Job, worker_id: str, result: Result) -> bool:
        """running or pausing -> succeeded, with the model registered, the result files listed and the evaluation
        recorded in the same transaction."""
        finished = now()
        with self.engine.begin() as conn:
            moved = job_rows.move(
                conn, job.id, JobStatus.SUCCEEDED, source=RUNNING, worker_id=worker_id, release=True,
                values={
                    "fine_tuned_model": job.output_model, "finished_at": finished, "estimated_finish": None,
                    "trained_tokens": result.trained_tokens, "result_files": [f.id for f in result.files],
                    "poll_at": None,
                },
            )
            if not moved:
                return False
            for stored in result.files:
                file_rows.insert_file(conn, stored)
            # The row's base is the lineage's root (what the name says); a continued job's `model` is its parent.
            model_rows.add_model(conn, job.output_model, job.project, job.id, root_base(job.output_model), finished,
                                 result.model_path, provider=job.provider, remote_model=result.remote_model)
            if result.evaluation is not None:
                event_rows.append(conn, job.id, finished, evaluation_message(result.evaluation), type="metrics",
                                  data={"evaluation": result.evaluation})
            event_rows.append(conn, job.id, finished, f"New fine-tuned model created: {job.output_model}{result.where}")
            event_rows.append(conn, job.id, finished, "The job has successfully completed")
        return True

    def fail(self, job: Job, error: JobError, worker_id: str | None = None) -> bool:
        return self._end(job, JobStatus.FAILED, LIVE, error.message, worker_id=worker_id, level="error",
                         values={"error": error, "poll_at": None})

    def cancelled(self, job: Job, worker_id: str, message: str) -> bool:
        """The provider cancelled a job that ftserve did not."""
        return self._end(job, JobStatus.CANCELLED, RUNNING, message, worker_id=worker_id, values={"poll_at": None})

    # Progress while the job runs, recorded only while `worker_id` still holds it.

    def record_metrics(self, job: Job, worker_id: str, step: int, message: str, data: dict[str, Any],
                       estimated_finish: int | None) -> bool:
        with self.engine.begin() as conn:
            if not job_rows.update_running(conn, job.id, worker_id, {"estimated_finish": estimated_finish}):
                return False
            event_rows.append(conn, job.id, now(), message, type="metrics", data={"step": step, **data})
        return True

    def record_checkpoint(self, job: Job, worker_id: str, checkpoint: Checkpoint, message: str | None = None) -> bool:
        with self.engine.begin() as conn:
            if not job_rows.update_running(conn, job.id, worker_id, {}):
                return False
            event_rows.add_checkpoint(conn, checkpoint, job.project)
            if message:
                event_rows.append(conn, job.id, now(), message)
        return True

    def record_state(self, job: Job, worker_id: str, step: int) -> bool:
        """The engine saved resumable state at `step`: what tells a worker death with progress from one without."""
        with self.engine.begin() as conn:
            return job_rows.update_running(conn, job.id, worker_id, {"saved_step": step})

    def note(self, job: Job, message: str, *, level: Level = "info", worker_id: str | None = None) -> bool:
        """An event that changes no status. Given `worker_id`, only while that worker holds the running job."""
        with self.engine.begin() as conn:
            if worker_id is not None and not job_rows.update_running(conn, job.id, worker_id, {}):
                return False
            event_rows.append(conn, job.id, now(), message, level=level)
        return True

    def record_remote(self, job: Job, worker_id: str, remote: dict[str, Any] | None, poll_at: float | None, *,
                      events: list[JobEvent] | None = None, checkpoints: list[Checkpoint] | None = None,
                      values: dict[str, Any] | None = None) -> bool:
        """What a hosted job's provider reported: its state, when to ask again (None: never), and the events and
        checkpoints it had that the job lacked, in one transaction, while `worker_id` holds the job."""
        with self.engine.begin() as conn:
            if not job_rows.set_remote(conn, job.id, worker_id, remote, poll_at, values):
                return False
            for event in events or []:
                event_rows.append(conn, job.id, event.created_at, event.message, level=event.level, type=event.type,
                                  data=event.data)
            known = event_rows.checkpoint_steps(conn, job.id) if checkpoints else set()
            for checkpoint in checkpoints or []:
                if checkpoint.step_number not in known:
                    event_rows.add_checkpoint(conn, checkpoint, job.project)
        return True

    # Moves asked for by the API (no worker) or guarded by one.

    def _end(self, job: Job, target: JobStatus, source: tuple[JobStatus, ...], message: str, *,
             worker_id: str | None = None, level: Level = "info", values: dict[str, Any] | None = None) -> bool:
        return self._move(job, target, list(source), message, worker_id=worker_id, release=worker_id is not None,
                          level=level, values={"finished_at": now(), "estimated_finish": None, **(values or {})})

    def _move(self, job: Job, target: JobStatus, source: list[JobStatus], message: str, *,
              worker_id: str | None = None, release: bool = False, level: Level = "info",
              values: dict[str, Any] | None = None) -> bool:
        with self.engine.begin() as conn:
            moved = job_rows.move(conn, job.id, target, source=source, worker_id=worker_id, release=release,
                                  values=values)
            if moved:
                event_rows.append(conn, job.id, now(), message, level=level)
        return moved


def evaluation_message(evaluation: dict[str, Any]) -> str:
    base, tuned = evaluation["base"], evaluation["fine_tuned"]
    if evaluation.get("metric") == "reward":  # reinforcement: the grader's mean reward on greedy answers
        return (f"Evaluation on {evaluation['examples']} validation prompts, base → fine-tuned: "
                f"mean reward {base['reward_mean']:.4f} → {tuned['reward_mean']:.4f}")
    return (
        f"Evaluation on {evaluation['examples']} held-out examples, base → fine-tuned: "
        f"loss {base['loss']:.4f} → {tuned['loss']:.4f}, "
        f"token accuracy {base['token_accuracy']:.1%} → {tuned['token_accuracy']:.1%}, "
        f"exact match {base['exact_match']:.1%} → {tuned['exact_match']:.1%} (of {evaluation['generated']})"
    )


