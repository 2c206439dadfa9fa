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
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from ftserve.domain.ids import new_id
from ftserve.domain.jobs import Checkpoint, Job, JobError, JobStatus
from ftserve.domain.naming import checkpoint_name
from ftserve.files.storage import BlobStore
from ftserve.providers.contract import HostedProvider, ProviderError, RemoteJob
from ftserve.providers.registry import Providers
from ftserve.services.clock import now
from ftserve.services.files import FileService
from ftserve.services.providers import job_request
from ftserve.store import events as event_rows
from ftserve.store import files as file_rows
from ftserve.store import jobs as job_rows
from ftserve.store import models as model_rows
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
    def __init__(self, engine: sa.Engine, blobs: BlobStore, files: FileService, providers: Providers,
                 worker_id: str, lease_seconds: float, backoff: Backoff):
        self.engine = engine
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
        with self.engine.begin() as conn:
            moved = job_rows.move(
                conn, job.id, JobStatus.RUNNING, source=[JobStatus.QUEUED], worker_id=self.worker_id,
                values={"remote": {**remote_state(state, remote), "interval": None}, "poll_at": poll_at},
            )
            if moved:
                event_rows.append(conn, job.id, now(), "Fine-tuning job started")
                event_rows.append(conn, job.id, now(), message)
            else:
                # Cancelled while it was being submitted: the reconcile loop cancels it at the provider.
                job_rows.set_remote(conn, job.id, self.worker_id, remote_state(state, remote), time.time())

    def _start(self, job: Job, provider: HostedProvider) -> RemoteJob:
        request = job_request(job, self.providers.route(job.model), self.files, self.blobs)
        return provider.submit(request, provider.stage_data(request))

    def _retry_later(self, job: Job, error: ProviderError) -> None:
        remote = dict(job.remote or {})
        interval = self.backoff.next(remote.get("interval"), changed=False)
        remote.update(interval=interval, last_error=error.message)
        with self.engine.begin() as conn:
            job_rows.set_remote(conn, job.id, self.worker_id, remote, time.time() + interval)
            event_rows.append(conn, job.id, now(), f"{error.message}; trying again in {interval:.0f} s", level="warn")

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
        if job.status == JobStatus.PAUSING and not remote.get("pause_sent"):
            provider.pause(remote["id"])
            remote["pause_sent"] = True
        state = provider.get(remote["id"])
        capabilities = provider.capabilities()
        events = provider.events(state.id, remote.get("events_after")) if capabilities.events else []
        checkpoints = provider.checkpoints(state.id) if capabilities.checkpoints else []
        changed = state.provider_status != remote.get("provider_status") or state.model != remote.get("model") or bool(events)
        interval = self.backoff.next(remote.get("interval"), changed)
        remote = {**remote_state(state, remote), "interval": interval, "last_error": None}
        if events:
            remote["events_after"] = events[-1].id
        finished = state.status in ("succeeded", "failed", "cancelled") or (
            state.status == "paused" and job.status == JobStatus.PAUSING)
        with self.engine.begin() as conn:
            # A finished job is due again at once: if finishing below is cut short, the next poll finishes it.
            if not job_rows.set_remote(conn, job.id, self.worker_id, remote,
                                       time.time() if finished else time.time() + interval,
                                       {"estimated_finish": state.estimated_finish}):
                return  # another worker took the job over: it writes from here on
            if state.provider_status != (job.remote or {}).get("provider_status"):
                level = "warn" if state.status == "unknown" else "info"
                note = " (a status ftserve does not know; still polling)" if state.status == "unknown" else ""
                event_rows.append(conn, job.id, now(), f"{job.provider} status: {state.provider_status}{note}", level=level)
            for event in events:
                event_rows.append(conn, job.id, event.created_at, event.message, level=event.level, type=event.type,
                                  data=event.data)
            self._mirror_checkpoints(conn, job, checkpoints)
        if finished:
            self._finish(job, state, remote)

    def _mirror_checkpoints(self, conn: sa.Connection, job: Job, checkpoints: list[Any]) -> None:
        known = event_rows.checkpoint_steps(conn, job.id)
        for found in checkpoints:
            if found.step in known:
                continue
            event_rows.add_checkpoint(conn, Checkpoint(
                id=new_id("ftckpt_"), job_id=job.id, created_at=found.created_at,
                fine_tuned_model_checkpoint=checkpoint_name(job.output_model, found.step), step_number=found.step,
                metrics={"step": found.step, **found.metrics}, remote_model=found.model,
            ), job.project)

    def _finish(self, job: Job, state: RemoteJob, remote: dict[str, Any]) -> None:
        """Move the job to where its provider's job ended; every move is guarded by this worker's lease."""
        live = [JobStatus.RUNNING, JobStatus.PAUSING]
        finished = now()
        results = []
        if state.status == "succeeded":
            # Built from the mirrored metrics events, as for a local job; stored before the move that lists it.
            with self.engine.connect() as conn:
                csv = metrics_csv(conn, job.id)
            results = [self.files.result_file(job.project, job.id, "step_metrics.csv", csv)]
        with self.engine.begin() as conn:
            moved = self._move(conn, job, state, live, finished, [r.id for r in results])
            if moved:
                job_rows.set_remote(conn, job.id, self.worker_id, remote, None)
                for result in results:
                    file_rows.insert_file(conn, result)
        if not moved:
            for result in results:
                self.blobs.delete(result.storage_key)

    def _move(self, conn: sa.Connection, job: Job, state: RemoteJob, live: list[JobStatus], finished: int,
              results: list[str]) -> bool:
        guard = {"source": live, "worker_id": self.worker_id}
        if state.status == "paused":
            moved = job_rows.move(conn, job.id, JobStatus.PAUSED, source=[JobStatus.PAUSING], worker_id=self.worker_id)
            if moved:
                event_rows.append(conn, job.id, finished, "Fine-tuning job paused")
            return moved
        if state.status == "succeeded":
            moved = job_rows.move(conn, job.id, JobStatus.SUCCEEDED, **guard, values={
                "fine_tuned_model": job.output_model, "finished_at": finished, "estimated_finish": None,
                "trained_tokens": state.trained_tokens, "result_files": results,
            })
            if moved:
                model_rows.add_model(conn, job.output_model, job.project, job.id, job.model, finished, None,
                                     provider=job.provider, remote_model=state.model)
                where = f" ({job.provider}: {state.model})" if state.model else ""
                event_rows.append(conn, job.id, finished, f"New fine-tuned model created: {job.output_model}{where}")
                event_rows.append(conn, job.id, finished, "The job has successfully completed")
            return moved
        if state.status == "failed":
            reason = state.error.message if state.error else "no reason given"
            error = JobError(state.error.code if state.error else "provider_failed", f"{job.provider}: {reason}", None)
            moved = job_rows.move(conn, job.id, JobStatus.FAILED, **guard,
                                  values={"error": error, "finished_at": finished, "estimated_finish": None})
            if moved:
                event_rows.append(conn, job.id, finished, error.message, level="error")
            return moved
        moved = job_rows.move(conn, job.id, JobStatus.CANCELLED, **guard,
                              values={"finished_at": finished, "estimated_finish": None})
        if moved:
            event_rows.append(conn, job.id, finished, f"Fine-tuning job cancelled at {job.provider}")
        return moved

    def _pass_on_cancel(self, job: Job, provider: HostedProvider, remote: dict[str, Any]) -> None:
        if not remote.get("id"):
            state = None
        elif remote.get("status") in ("succeeded", "failed", "cancelled"):
            state = None
        else:
            state = provider.cancel(remote["id"])
        with self.engine.begin() as conn:
            job_rows.set_remote(conn, job.id, self.worker_id, remote_state(state, remote) if state else remote, None)
            if state is not None:
                event_rows.append(conn, job.id, now(), f"Cancel passed on to {job.provider} ({state.provider_status})")

    def _unreachable(self, job: Job, error: ProviderError) -> None:
        remote = dict(job.remote or {})
        if error.status == 404 and job.status in (JobStatus.RUNNING, JobStatus.PAUSING):
            with self.engine.begin() as conn:
                message = f"{job.provider} no longer knows job {remote.get('id')}: {error.message}"
                if job_rows.move(conn, job.id, JobStatus.FAILED, source=[job.status], values={
                    "error": asdict(JobError("provider_lost_job", message, None)), "finished_at": now(), "poll_at": None,
                }):
                    event_rows.append(conn, job.id, now(), message, level="error")
            return
        interval = self.backoff.next(remote.get("interval"), changed=False)
        first = remote.get("last_error") != error.message
        remote.update(interval=interval, last_error=error.message)
        with self.engine.begin() as conn:
            if job_rows.set_remote(conn, job.id, self.worker_id, remote, time.time() + interval) and first:
                event_rows.append(conn, job.id, now(), f"{error.message}; polling again with back-off", level="warn")

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
