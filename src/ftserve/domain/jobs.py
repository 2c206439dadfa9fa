"""Job statuses, the transitions between them, and the records the rest of the service passes around."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

MethodType = Literal["supervised", "dpo", "reinforcement"]


class JobStatus(str, enum.Enum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
LIVE = tuple(s for s in JobStatus if s not in TERMINAL)
# Jobs that hold, or wait for, a worker: what a project's quota of active jobs counts.
ACTIVE = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSING)

# Every move a job can make. Moves into a terminal status are allowed from every live status:
# a job can be cancelled, or fail, wherever it is.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.PAUSED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.PAUSED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.PAUSING, JobStatus.QUEUED}),
    JobStatus.PAUSING: frozenset({JobStatus.PAUSED, JobStatus.SUCCEEDED}),
    # Back to validation when the job was paused before its files were checked.
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.VALIDATING_FILES}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_move(source: JobStatus, target: JobStatus) -> bool:
    """Whether a job in `source` may move to `target`."""
    if source.terminal:
        return False
    if target in (JobStatus.FAILED, JobStatus.CANCELLED):
        return True
    return target in TRANSITIONS[source]


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Job:
    """A fine-tuning job as the store holds it."""

    id: str
    project: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    status: JobStatus
    method: MethodType
    hyperparameters: dict[str, Any]
    method_config: dict[str, Any]
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] | None
    extensions: dict[str, Any]
    output_model: str
    """The name the fine-tuned model gets; `fine_tuned_model` shows it once the job succeeds."""
    finished_at: int | None = None
    estimated_finish: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    error: JobError | None = None
    attempts: int = 0
    worker_id: str | None = None
    provider: str | None = None
    """The configured hosted provider that runs the job; None: the local worker trains it."""
    remote: dict[str, Any] | None = None
    """A hosted job's state at its provider (`store.jobs.Remote`'s fields), once submitted."""
    files_validated: bool = False
    started_at: int | None = None
    """When training first started; a later start is a restart."""
    saved_step: int = 0
    """The newest resumable state the engine reported saving."""
    attempt_saved_step: int = 0
    """`saved_step` when the current attempt started: a worker death after it made no progress if they are equal."""


@dataclass(frozen=True)
class JobEvent:
    id: str
    job_id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class Checkpoint:
    id: str
    job_id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, float]
    path: str | None = None
    remote_model: str | None = None
