"""The reporter a worker hands its trainer: each report becomes rows, written only while the job is still this worker's,
and observations in the process's metrics."""

from __future__ import annotations

import base64
import csv
import io
import threading
import time
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from ftserve.domain.ids import new_id
from ftserve.domain.jobs import Checkpoint, Job, JobStatus
from ftserve.domain.naming import checkpoint_name
from ftserve.files.storage import BlobStore
from ftserve.metrics import Metrics
from ftserve.providers.base import StopReason
from ftserve.services.clock import now
from ftserve.services.lifecycle import Lifecycle
from ftserve.services.wandb_runs import WandbRun
from ftserve.store import events as event_rows

CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# A reinforcement job's file leads with its rewards, then its sub-graders' (in name order), then these.
REWARD_COLUMNS = ("step", "train_reward_mean", "valid_reward_mean", "train_loss")
REWARD_TAIL = ("grader_errors", "completion_tokens_mean", "sample_seconds", "grade_seconds", "train_seconds")
# Reinforcement metrics that OpenAI reports under `data.scores` of a metrics event.
SCORES = ("train_reward_mean", "train_reward_std", "valid_reward_mean")
SCORE_PREFIXES = ("sub_rewards.", "valid_sub_rewards.")


def event_data(total_steps: int, metrics: dict[str, float]) -> dict[str, Any]:
    """A metrics event's `data`: the metrics as reported, except that rewards go under `scores`, as OpenAI shows
    a reinforcement step."""
    scores = {k: v for k, v in metrics.items() if k in SCORES or k.startswith(SCORE_PREFIXES)}
    rest = {k: v for k, v in metrics.items() if k not in scores}
    return {"total_steps": total_steps, **rest, **({"scores": scores} if scores else {})}


def metrics_csv(conn: sa.Connection, job_id: str) -> bytes:
    """OpenAI's `step_metrics.csv`, built from the job's metrics events, served base64-encoded as OpenAI does."""
    rows = event_rows.metrics_of(conn, job_id)
    # A resumed job repeats the steps after its last checkpoint; the later report of a step wins.
    by_step = {data["step"]: {**data, **data.get("scores", {})} for data in rows if "step" in data}  # the evaluation event has no step
    columns: tuple[str, ...] = CSV_COLUMNS
    if any("train_reward_mean" in data for data in by_step.values()):
        subs = sorted({k for data in by_step.values() for k in data if k.startswith(SCORE_PREFIXES)})
        columns = REWARD_COLUMNS + tuple(subs) + REWARD_TAIL
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for _, data in sorted(by_step.items()):
        data = {**data, "train_accuracy": data.get("train_mean_token_accuracy")}
        writer.writerow([data.get(column, "") if data.get(column) is not None else "" for column in columns])
    return base64.b64encode(out.getvalue().encode())


def metrics_message(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"reward={metrics['train_reward_mean']:.4f}"] if "train_reward_mean" in metrics else []
    if "valid_reward_mean" in metrics:
        parts.append(f"validation reward={metrics['valid_reward_mean']:.4f}")
    if "train_loss" in metrics:
        parts.append(f"training loss={metrics['train_loss']:.4f}")
    if "valid_loss" in metrics:
        parts.append(f"validation loss={metrics['valid_loss']:.4f}")
    if "full_valid_loss" in metrics:
        parts.append(f"full validation loss={metrics['full_valid_loss']:.4f}")
    return f"Step {step}/{total}: " + ", ".join(parts)


class JobReporter:
    """A job resumed after a crash repeats the steps since its last saved state. Each step's metrics and
    each checkpoint are recorded once: the repeats are not reported again."""

    def __init__(self, lifecycle: Lifecycle, blobs: BlobStore, job: Job, worker_id: str, started_at: float,
                 prometheus: Metrics, shutdown: threading.Event | None = None, reported_step: int = 0,
                 wandb: WandbRun | None = None):
        self.lifecycle = lifecycle
        self.wandb = wandb
        self.prometheus = prometheus
        self.blobs = blobs
        self.job = job
        self.worker_id = worker_id
        self.started_at = started_at
        self.shutdown = shutdown or threading.Event()
        self._status: JobStatus | None = JobStatus.RUNNING
        self._lock = threading.Lock()
        self._reported_step = reported_step  # the last step already recorded, read by the worker when it started the job
        # The first step is timed from here, so it includes the trainer's start (loading the model).
        self._reported_at = time.monotonic()
        self._throughput_shown = False
        self._resumed_from = 0
        with lifecycle.engine.connect() as conn:
            self._checkpointed = event_rows.checkpoint_steps(conn, job.id)

    def observe(self, status: JobStatus | None) -> None:
        """Called by the heartbeat with the job's status in the database (None: lease lost)."""
        with self._lock:
            self._status = status

    def should_stop(self) -> StopReason | None:
        with self._lock:
            status = self._status
        if status is None:
            return "lost"
        if status == JobStatus.PAUSING:
            return "pause"
        if status != JobStatus.RUNNING:
            return "cancel"
        if self.shutdown.is_set():
            return "shutdown"
        return None

    def started(self, step: int, total_steps: int) -> None:
        """The trainer is ready and starts at `step`: the finish is estimated from the steps this attempt does."""
        self._resumed_from = step

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float],
                tokens_per_second: float | None = None) -> None:
        if tokens_per_second is not None:
            self.prometheus.tokens_per_second.labels(self.worker_id).set(tokens_per_second)
            self._throughput_shown = True
        # A repeated step (after a resume) is not timed again, but it is when the clock for the next one starts.
        reported_at, self._reported_at = self._reported_at, time.monotonic()
        if step <= self._reported_step:
            return
        steps, self._reported_step = step - self._reported_step, step
        for _ in range(steps):  # a trainer that reports every few steps: each took an equal share
            self.prometheus.step_seconds.observe((self._reported_at - reported_at) / steps)
        # Steps replayed after a resume were done by an earlier attempt; this attempt's pace is its own steps.
        done = step - self._resumed_from
        elapsed = max(1e-6, now() - self.started_at)
        estimate = int(self.started_at + elapsed / done * (total_steps - self._resumed_from)) if done > 0 else None
        if self.wandb is not None:
            self.wandb.log(step, metrics)
        self.lifecycle.record_metrics(self.job, self.worker_id, step, metrics_message(step, total_steps, metrics),
                                      event_data(total_steps, metrics), estimate)

    def checkpoint(self, step: int, metrics: dict[str, float], path: Path | None) -> None:
        if step in self._checkpointed:
            return
        self._checkpointed.add(step)
        checkpoint = Checkpoint(
            id=new_id("ftckpt_"), job_id=self.job.id, created_at=now(),
            fine_tuned_model_checkpoint=checkpoint_name(self.job.output_model, step),
            step_number=step, metrics=metrics, path=self.blobs.key_of(path) if path else None,
        )
        self.lifecycle.record_checkpoint(self.job, self.worker_id, checkpoint, f"Checkpoint created at step {step}")

    def message(self, text: str, level: Literal["info", "warn", "error"] = "info") -> None:
        self.lifecycle.note(self.job, text, level=level, worker_id=self.worker_id)

    def state_saved(self, step: int) -> None:
        self.lifecycle.record_state(self.job, self.worker_id, step)

    def close(self, failed: bool = False) -> None:
        """The run ended: its throughput series goes, so a finished job is not shown training; its W&B run ends."""
        if self._throughput_shown:
            self.prometheus.tokens_per_second.remove(self.worker_id)
        if self.wandb is not None:
            self.wandb.finish(failed)
