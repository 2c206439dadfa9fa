"""The reconcile loop: hosted jobs advance by polling their provider, and what it reports becomes rows.

A queued hosted job is submitted by whichever worker claims it (`submit`). From then on its row
carries the provider's job id and a `poll_at`; any worker leases the most overdue one, asks the
provider, mirrors new events and checkpoints, and writes the next `poll_at` in the same
transaction, so a crash between polls loses nothing and repeats nothing. The interval doubles
while nothing changes, up to `max_seconds`, and drops back as soon as something does. A provider
that cannot be reached backs the job off; it does not fail it. Deploying a finished model is never
done here: it costs money, so it is an explicit call (`POST /v1/ftserve/deployments`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from ftserve.domain.ids import new_id
from ftserve.domain.jobs import Checkpoint, Job, JobError, JobEvent, JobStatus
from ftserve.domain.naming import checkpoint_name
from ftserve.files.storage import BlobStore
from ftserve.providers.contract import (
    HasCheckpoints,
    HasEvents,
    HostedProvider,
    Pausable,
    ProviderError,
    RemoteJob,
    Resumable,
    lacking,
)
from ftserve.providers.registry import Providers
from ftserve.services.clock import now
from ftserve.services.files import FileService
from ftserve.services.lifecycle import Level, Lifecycle, Result
from ftserve.services.providers import job_request
from ftserve.store import jobs as job_rows
from ftserve.worker.reporter import metrics_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    min_seconds: float
    max_seconds: float

    def next(self, previous: float | None, changed: bool) -> float:
        if changed or previous is None:
            return self.min_seconds
        return min(self.max_seconds, previous * 2)


def remote_state(state: RemoteJob, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a job row keeps of its provider's job; the raw payload stays with the provider."""
    kept = dict(before or {})
    kept.update(id=state.id, status=state.status, provider_status=state.provider_status, model=state.model,
                serving=state.serving)
    return kept


class Reconciler:
    def __init__(self, engine: sa.Engine, lifecycle: Lifecycle, blobs: BlobStore, files: FileService,
                 providers: Providers, worker_id: str, lease_seconds: float, backoff: Backoff):
        self.engine = engine
        self.lifecycle = lifecycle
        self.blobs = blobs
        self.files = files
        self.providers = providers
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.backoff = backoff

    # Submitting: queued -> running, with the provider's job id recorded.

    def submit(self, job: Job) -> None:
        """Stage the data and start the job at its provider (or resume it there), for a queued job this worker holds."""
        assert job.provider is not None
        provider = self.providers.get(job.provider)
        remote = job.remote or {}
        with self._lease_kept(job):
            try:
                if remote.get("id"):
                    if not isinstance(provider, Resumable):
                        raise lacking(provider, "resume")
                    state = provider.resume(remote["id"])
                    message = f"Fine-tuning job resumed at {job.provider}"
                else:
                    state = self._start(job, provider)
                    message = f"Submitted to {job.provider} as job {state.id}"
            except ProviderError as error:
                if not error.retryable:
                    raise  # the job boundary fails the job with the provider's message
                self._retry_later(job, error)
                return
        poll_at = time.time() + self.backoff.min_seconds
        started = self.lifecycle.start(
            job, self.worker_id, message=message,
            values={"remote": {**remote_state(state, remote), "interval": None}, "poll_at": poll_at},
        )
        if started is None:
            # Cancelled while it was being submitted: the reconcile loop cancels it at the provider.
            self.lifecycle.record_remote(job, self.worker_id, remote_state(state, remote), time.time())

    def _start(self, job: Job, provider: HostedProvider) -> RemoteJob:
        request = job_request(job, self.providers.route(job.model), self.files, self.blobs)
        return provider.submit(request, provider.stage_data(request))

    def _retry_later(self, job: Job, error: ProviderError) -> None:
        remote = dict(job.remote or {})
        interval = self.backoff.next(remote.get("interval"), changed=False)
        remote.update(interval=interval, last_error=error.message)
        self.lifecycle.record_remote(job, self.worker_id, remote, time.time() + interval, events=[
            _event(job, f"{error.message}; trying again in {interval:.0f} s", "warn")])

    # Polling: running / pausing / a cancel to pass on.

    def poll_once(self) -> bool:
        """Poll the most overdue hosted job, if one is due. False when none was."""
        with self.engine.connect() as conn:
            if not job_rows.poll_due(conn, time.time()):
                return False
        with self.engine.begin() as conn:
            job = job_rows.claim_remote(conn, self.worker_id, time.time() + self.lease_seconds, time.time())
        if job is None:
            return False
        try:
            with self._lease_kept(job):
                self._poll(job)
        except ProviderError as error:
            self._unreachable(job, error)
        except Exception:  # the loop outlives one bad poll; the job is polled again after a back-off
            log.exception("polling hosted job %s failed", job.id)
            self._unreachable(job, ProviderError("polling the provider failed inside ftserve; see the worker log"))
        finally:
            with self.engine.begin() as conn:
                job_rows.release(conn, job.id, self.worker_id)
        return True

    def _poll(self, job: Job) -> None:
        provider = self.providers.hosted.get(job.provider or "")
        remote = dict(job.remote or {})
        if provider is None:
            raise ProviderError(f"the provider '{job.provider}' is no longer configured on this worker")
        if job.status == JobStatus.CANCELLED:
            self._pass_on_cancel(job, provider, remote)
            return
        if job.status == JobStatus.PAUSING and not remote.get("pause_sent") and isinstance(provider, Pausable):
            provider.pause(remote["id"])
            remote["pause_sent"] = True
        state = provider.get(remote["id"])
        events = provider.events(state.id, remote.get("events_after")) if isinstance(provider, HasEvents) else []
        checkpoints = provider.checkpoints(state.id) if isinstance(provider, HasCheckpoints) else []
        changed = state.provider_status != remote.get("provider_status") or state.model != remote.get("model") or bool(events)
        interval = self.backoff.next(remote.get("interval"), changed)
        remote = {**remote_state(state, remote), "interval": interval, "last_error": None}
        if events:
            remote["events_after"] = events[-1].id
        finished = state.status in ("succeeded", "failed", "cancelled") or (
            state.status == "paused" and job.status == JobStatus.PAUSING)
        noted = []
        if state.provider_status != (job.remote or {}).get("provider_status"):
            unknown = state.status == "unknown"
            note = " (a status ftserve does not know; still polling)" if unknown else ""
            noted.append(_event(job, f"{job.provider} status: {state.provider_status}{note}", "warn" if unknown else "info"))
        mirrored = [Checkpoint(
            id=new_id("ftckpt_"), job_id=job.id, created_at=found.created_at,
            fine_tuned_model_checkpoint=checkpoint_name(job.output_model, found.step), step_number=found.step,
            metrics={"step": found.step, **found.metrics}, remote_model=found.model,
        ) for found in checkpoints]
        # A finished job is due again at once: if finishing below is cut short, the next poll finishes it.
        if not self.lifecycle.record_remote(
            job, self.worker_id, remote, time.time() if finished else time.time() + interval,
            events=noted + [_event(job, e.message, e.level, e.created_at, e.type, e.data) for e in events],
            checkpoints=mirrored, values={"estimated_finish": state.estimated_finish},
        ):
            return  # another worker took the job over: it writes from here on
        if finished:
            self._finish(job, state)

    def _finish(self, job: Job, state: RemoteJob) -> None:
        """Move the job to where its provider's job ended; every move is guarded by this worker's lease."""
        if state.status == "paused":
            self.lifecycle.paused(job, self.worker_id)
        elif state.status == "succeeded":
            # Built from the mirrored metrics events, as for a local job; stored before the move that lists it.
            with self.engine.connect() as conn:
                csv = metrics_csv(conn, job.id)
            results = [self.files.result_file(job.project, job.id, "step_metrics.csv", csv)]
            where = f" ({job.provider}: {state.model})" if state.model else ""
            if not self.lifecycle.succeed(job, self.worker_id, Result(state.trained_tokens, None, state.model, None,
                                                                      results, where)):
                for result in results:
                    self.blobs.delete(result.storage_key)
        elif state.status == "failed":
            reason = state.error.message if state.error else "no reason given"
            self.lifecycle.fail(job, JobError(state.error.code if state.error else "provider_failed",
                                              f"{job.provider}: {reason}"), self.worker_id)
        else:
            self.lifecycle.cancelled(job, self.worker_id, f"Fine-tuning job cancelled at {job.provider}")

    def _pass_on_cancel(self, job: Job, provider: HostedProvider, remote: dict[str, Any]) -> None:
        if not remote.get("id"):
            state = None
        elif remote.get("status") in ("succeeded", "failed", "cancelled"):
            state = None
        else:
            state = provider.cancel(remote["id"])
        passed = [_event(job, f"Cancel passed on to {job.provider} ({state.provider_status})")] if state else []
        self.lifecycle.record_remote(job, self.worker_id, remote_state(state, remote) if state else remote, None,
                                     events=passed)

    def _unreachable(self, job: Job, error: ProviderError) -> None:
        remote = dict(job.remote or {})
        if error.status == 404 and job.status in (JobStatus.RUNNING, JobStatus.PAUSING):
            message = f"{job.provider} no longer knows job {remote.get('id')}: {error.message}"
            self.lifecycle.fail(job, JobError("provider_lost_job", message), self.worker_id)
            return
        interval = self.backoff.next(remote.get("interval"), changed=False)
        first = remote.get("last_error") != error.message
        remote.update(interval=interval, last_error=error.message)
        said = [_event(job, f"{error.message}; polling again with back-off", "warn")] if first else []
        self.lifecycle.record_remote(job, self.worker_id, remote, time.time() + interval, events=said)

    @contextmanager
    def _lease_kept(self, job: Job) -> Iterator[None]:
        """Renew the lease while a slow provider call (an upload, say) runs, so no other worker takes the job."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease_seconds / 3):
                with self.engine.begin() as conn:
                    job_rows.heartbeat(conn, job.id, self.worker_id, time.time() + self.lease_seconds)

        beat = threading.Thread(target=renew, daemon=True)
        beat.start()
        try:
            yield
        finally:
            done.set()
            beat.join()


def _event(job: Job, message: str, level: Level = "info", created_at: int | None = None,
           type: Literal["message", "metrics"] = "message", data: dict[str, Any] | None = None) -> JobEvent:
    return JobEvent(id="", job_id=job.id, created_at=created_at or now(), level=level, message=message, type=type,
                    data=data)
