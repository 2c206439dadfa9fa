"""The trainer boundary: what a worker hands a trainer, and how the trainer reports back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# Defined with the engine's commands, which it extends; trainers name it from here.
from ftserve.engine.events import StopReason as StopReason
from ftserve.engine.spec import JobSpec


@dataclass(frozen=True)
class TrainingOutcome:
    """How training ended. `stopped` is set when the trainer stopped early because it was asked to."""

    stopped: StopReason | None
    trained_tokens: int = 0
    model_dir: Path | None = None
    step: int = 0
    evaluation: dict[str, Any] | None = None
    """The before/after comparison on the validation file, when the trainer made one."""


@dataclass(frozen=True)
class Placement:
    """Where and as what one attempt of a job runs: its run id (the job id and its run number, the same on every
    ask, so an executor can make submission idempotent) and what it needs of a machine. The local executor runs
    on the worker's own machine and uses none of it; the Ray executor asks the cluster for it."""

    run_id: str
    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int | None = None


class Reporter(Protocol):
    """Where a trainer sends what it does; the worker turns each call into rows."""

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float],
                tokens_per_second: float | None = None) -> None: ...
    def checkpoint(self, step: int, metrics: dict[str, float], path: Path | None) -> None: ...
    def message(self, text: str, level: Literal["info", "warn", "error"] = "info") -> None: ...
    def started(self, step: int, total_steps: int) -> None:
        """Training began at `step`: 0, or the step of the saved state it resumed from."""
        ...
    def state_saved(self, step: int) -> None:
        """Resumable state for `step` is saved: an attempt that dies after this made progress."""
        ...
    def should_stop(self) -> StopReason | None:
        """Polled between steps: cancel, pause, shutdown, or the worker lost its lease."""
        ...


class Trainer(Protocol):
    def train(self, spec: JobSpec, reporter: Reporter, placement: Placement) -> TrainingOutcome:
        """Train, reporting as it goes. Raises `TrainingFailed` (or anything) when training fails, and
        `ChannelLost` when the machine it ran on went away (the job runs again from its saved state)."""
        ...
