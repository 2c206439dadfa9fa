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
    def train(self, spec: JobSpec, reporter: Reporter) -> TrainingOutcome:
        """Train, reporting as it goes. Raises `TrainingFailed` (or anything) when training fails."""
        ...
