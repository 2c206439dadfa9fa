"""The worker: claim a job with a lease, validate its files or train it, record what happened.

Any number of workers, in any number of processes and machines, share one database. A worker
holds a job only while it renews the job's lease; a job whose worker died is taken back by the
reaper of any worker and runs again from its last checkpoint.
"""

from __future__ import annotations

import contextvars
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ftserve import logs
from ftserve.domain.errors import FtserveError, InvalidFileFormat
from ftserve.domain.files import FORMATS
from ftserve.domain.jobs import Job, JobError, JobStatus
from ftserve.files.jsonl import JsonlValidator
from ftserve.files.storage import BlobStore, iter_blob
from ftserve.metrics import Metrics
from ftserve.catalogue import load_catalogue
from ftserve.providers.base import Trainer, TrainingOutcome
from ftserve.providers.engine_session import ChannelLost
from ftserve.providers.local import LocalProvider
from ftserve.providers.registry import Providers, Route
from ftserve.services import wandb_runs
from ftserve.services.files import FileService
from ftserve.services.lifecycle import Lifecycle, Result
from ftserve.services.lineage import parent_of
from ftserve.services.providers import job_request
from ftserve.services.webhooks import WebhookService
from ftserve.store import jobs as job_rows
from ftserve.worker.reconcile import Backoff, Reconciler
from ftserve.worker.reporter import JobReporter, metrics_csv
from ftserve.worker.webhooks import deliver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    poll_seconds: float
    lease_seconds: float
    backoff: Backoff = Backoff(5.0, 300.0)
    """How often hosted jobs are polled: from min_seconds, doubling while nothing changes."""
    max_attempts: int = 3
    """A job whose worker dies this many times without progress fails (`worker_lost`) instead of running again."""
    metrics_port: int | None = None
    """Where the worker serves its metrics itself, for a process with no API; None: it does not."""


class Worker:
    def __init__(
        self, engine: sa.Engine, blobs: BlobStore, files: FileService, trainer: Trainer | None, config: WorkerConfig,
        providers: Providers | None = None, name: str | None = None, webhooks: WebhookService | None = None,
        metrics: Metrics | None = None,
    ):
        self.engine = engine
        self.blobs = blobs
        self.files = files
        self.trainer = trainer
        self.config = config
        self.id = f"{name or socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.webhooks = webhooks
        self.metrics = metrics or Metrics()
        self.lifecycle = Lifecycle(engine, config.max_attempts)
        # What local jobs train as; a worker built without providers (tests) plans from the built-in catalogue.
        self.local = providers.local if providers is not None else LocalProvider(load_catalogue(), Path("models"))
        self.hosted = (
            Reconciler(engine, self.lifecycle, blobs, files, providers, self.id, config.lease_seconds, config.backoff)
            if providers is not None else None
        )

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set. A job in training when it is set saves its state, goes back to the
        queue and gives up its lease, so another worker continues it without waiting for the lease to expire."""
        log.info("worker %s started", self.id)
        self.stopping = stop
        exporter = None
        if self.config.metrics_port:
            try:
                exporter = self.metrics.serve(self.config.metrics_port)
                log.info("worker %s serves its metrics on port %d", self.id, self.config.metrics_port)
            except OSError as error:  # a port in use costs the metrics, not the jobs
                log.error("worker %s cannot serve metrics on port %d: %s", self.id, self.config.metrics_port, error)
        if self.webhooks is not None:
            threading.Thread(target=deliver, args=(self.webhooks, stop, self.config.poll_seconds),
                             name="ftserve-webhooks", daemon=True).start()
        while not stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the loop must outlive a database hiccup
                log.exception("worker %s: iteration failed", self.id)
                worked = False
            if not worked:
                stop.wait(self.config.poll_seconds)
        if exporter is not None:
            exporter.shutdown()

    def run_once(self) -> bool:
        """Reap, then take one job and do its next piece of work, or poll one hosted job that is due.
        False when there was nothing to do."""
        self.reap()
        self.files.delete_expired()
        with self.engine.begin() as conn:
            job = job_rows.claim(conn, self.id, time.time() + self.config.lease_seconds)
        if job is None:
            return self.hosted.poll_once() if self.hosted is not None else False
        with logs.bind(job_id=job.id, worker_id=self.id):
            log.info("claimed the job (%s)", job.status.value)
            try:
                if job.status == JobStatus.VALIDATING_FILES:
                    self._validate(job)
                else:
                    self._train(job)
            except Exception as error:  # the job boundary: whatever went wrong, the job fails with it
                log.exception("job %s failed", job.id)
                self._fail(job, JobError("training_failed" if not isinstance(error, FtserveError) else error.code or "error", f"{error}", None))
            finally:
                with self.engine.begin() as conn:
                    job_rows.release(conn, job.id, self.id)
        return True

    def reap(self) -> None:
        """Take back jobs whose worker stopped renewing its lease."""
        with self.engine.connect() as conn:
            stalled = job_rows.stalled(conn, time.time())
        for job in stalled:
            self.lifecycle.lost(job)

    # Validation: validating_files -> queued, or failed naming the file, line and reason.

    def _validate(self, job: Job) -> None:
        message = f"Validating training file: {job.training_file}"
        if job.validation_file:
            message += f" and validation file: {job.validation_file}"
        self.lifecycle.note(job, message)
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if file_id is None:
                continue
            problem = self._check_file(job, file_id)
            if problem:
                self._fail(job, JobError("invalid_" + param, f"{param.replace('_', ' ').capitalize()} {file_id}: {problem}", param))
                return
        self.lifecycle.validated(job, self.id)

    def _check_file(self, job: Job, file_id: str) -> str | None:
        try:
            record = self.files.get(job.project, file_id)
        except FtserveError:
            return "the file was deleted before the job started."
        validator = JsonlValidator()
        try:
            for chunk in iter_blob(self.blobs, record.storage_key):
                validator.feed(chunk)
            summary = validator.finish()
        except InvalidFileFormat as error:
            return error.message
        accepted = FORMATS[job.method]
        if summary.format not in accepted:
            # A `messages` example without an assistant message is a reinforcement prompt: say what it lacks.
            what = ("has no assistant message to train on (a reinforcement prompt)" if summary.format == "reinforcement"
                    else f"is a {summary.format} example")
            return f"line {summary.first_line}: {what}, but {job.method} jobs train on " + " or ".join(accepted) + " examples."
        return None

    # Training: queued -> running -> succeeded | failed | paused | cancelled.

    def _train(self, job: Job) -> None:
        if job.provider is not None:
            if self.hosted is None:
                raise FtserveError(f"This worker has no providers configured; {job.provider} jobs need FTSERVE_PROVIDERS.")
            self.hosted.submit(job)
            return
        if self.trainer is None:
            self._fail(job, JobError(
                "no_trainer",
                "No trainer is configured on this worker; set FTSERVE_TRAINER (for example FTSERVE_TRAINER=fake).",
                None,
            ))
            return
        request = job_request(job, Route(self.local, None, job.model), self.files, self.blobs,
                              parent_of(self.engine, self.blobs, job.project, job.model))
        hyperparameters = self.local.hyperparameters(request)
        started = time.time()
        reported = self.lifecycle.start(job, self.id, values={"hyperparameters": hyperparameters})
        if reported is None:
            return
        spec = self.local.spec(request)
        wandb, problem = wandb_runs.open_run(job.integrations, job.id, {**hyperparameters, "model": job.model,
                                             "method": job.method, "seed": job.seed}, spec.output_dir / "wandb")
        reporter = JobReporter(self.lifecycle, self.blobs, job, self.id, started, self.metrics, self.stopping, reported,
                               wandb)
        if problem:
            reporter.message(problem, "warn")
        done = threading.Event()
        # In a copy of this context, so what the heartbeat logs carries the job's ids too.
        beat = threading.Thread(target=contextvars.copy_context().run, args=(self._heartbeat, job, reporter, done),
                                daemon=True)
        beat.start()
        placement = self.local.placement(spec, f"{job.id}-{self.lifecycle.run_number(job)}")
        outcome = None
        try:
            outcome = self.trainer.train(spec, reporter, placement)
        except ChannelLost as error:
            log.warning("the job's engine was lost: %s", error)
            self._lost(job, f"The machine training the job went away ({error})")
            return
        finally:
            done.set()
            beat.join()
            reporter.close(failed=outcome is None)
        log.info("training ended at step %d (%s)", outcome.step, outcome.stopped or "finished")
        self._finish(job, outcome, spec.output_dir)

    def _lost(self, job: Job, why: str) -> None:
        """Hands the job back as the reaper does for a dead worker: requeued to resume from its last saved state."""
        with self.engine.connect() as conn:
            current = job_rows.get(conn, job.id)
        if current is not None and current.worker_id == self.id:
            self.lifecycle.lost(current, why)

    def _heartbeat(self, job: Job, reporter: JobReporter, done: threading.Event) -> None:
        # Renew often enough that two missed beats still leave the lease alive; the status it reads
        # back is how cancel and pause reach the trainer within a second.
        interval = min(1.0, self.config.lease_seconds / 3)
        while not done.wait(interval):
            try:
                with self.engine.begin() as conn:
                    status = job_rows.heartbeat(conn, job.id, self.id, time.time() + self.config.lease_seconds)
            except sa.exc.OperationalError:
                log.warning("heartbeat for %s failed; retrying", job.id)
                continue
            reporter.observe(status)

    def _finish(self, job: Job, outcome: TrainingOutcome, request_dir: Path) -> None:
        if outcome.stopped == "pause":
            self.lifecycle.paused(job, self.id, outcome.step)
            return
        if outcome.stopped == "shutdown":
            self.lifecycle.requeue(job, self.id, outcome.step)
            return
        if outcome.stopped is not None:
            return
        with self.engine.connect() as conn:
            csv_data = metrics_csv(conn, job.id)
        results = [self.files.result_file(job.project, job.id, "step_metrics.csv", csv_data)]
        if outcome.evaluation is not None:
            results.append(self.files.result_file(job.project, job.id, "evaluation.json",
                                                  json.dumps(outcome.evaluation, indent=2).encode()))
        model_path = self.blobs.key_of(outcome.model_dir) if outcome.model_dir else None
        if not self.lifecycle.succeed(job, self.id, Result(outcome.trained_tokens, model_path, None, outcome.evaluation,
                                                           results)):
            for result in results:
                self.blobs.delete(result.storage_key)
            return
        self.blobs.delete(self.blobs.key_of(request_dir / "state"))  # resumable state is dead weight now

    def _fail(self, job: Job, error: JobError) -> None:
        self.lifecycle.fail(job, error, self.id)
