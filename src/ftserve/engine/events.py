"""The engine's protocol with its parent: the events it reports, one JSON line each, and the commands it obeys.

Both sides import these types: the engine emits them, the worker decodes and dispatches on them, so
an event added here that the worker does not handle fails its type check and its tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Command = Literal["cancel", "pause", "shutdown"]
"""A line on the engine's stdin. `pause` and `shutdown` save resumable state first; `shutdown` means the
worker is stopping, and the job continues on the next one."""

StopReason = Union[Command, Literal["lost"]]
"""Why training stopped early: a command, or `lost`, the worker's lease went to another worker (then the
engine is killed rather than asked, so `lost` is never a command)."""

COMMANDS: tuple[Command, ...] = get_args(Command)

Level = Literal["info", "warn", "error"]


class _Event(BaseModel):
    # NaN is a loss a diverging run can report; it must survive the line rather than turn into null.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class Started(_Event):
    """Training begins at `step` (0, or the step of the state it resumed from)."""

    event: Literal["started"] = "started"
    step: int
    total_steps: int
    hardware: str


class Metrics(_Event):
    event: Literal["metrics"] = "metrics"
    step: int
    total_steps: int
    metrics: dict[str, float]
    tokens_per_second: float | None = None


class Checkpoint(_Event):
    """A servable model saved at `step`, with the metrics of that step."""

    event: Literal["checkpoint"] = "checkpoint"
    step: int
    metrics: dict[str, float]
    path: Path


class Message(_Event):
    event: Literal["message"] = "message"
    text: str
    level: Level = "info"


class StateSaved(_Event):
    """Resumable state for `step` is on disk: an attempt that dies after this one made progress."""

    event: Literal["state_saved"] = "state_saved"
    step: int


class Finished(_Event):
    event: Literal["finished"] = "finished"
    step: int
    trained_tokens: int
    model_dir: Path
    evaluation: dict[str, Any] | None = None
    """The before/after comparison on the validation file, when the job has one."""


class Stopped(_Event):
    """Stopped early as a command asked; `pause` and `shutdown` saved state first."""

    event: Literal["stopped"] = "stopped"
    reason: Command
    step: int
    trained_tokens: int


class Failed(_Event):
    event: Literal["failed"] = "failed"
    message: str


Event = Annotated[
    Union[Started, Metrics, Checkpoint, Message, StateSaved, Finished, Stopped, Failed],
    Field(discriminator="event"),
]
EVENT_TYPES: tuple[type[_Event], ...] = get_args(get_args(Event)[0])

_events: TypeAdapter[Event] = TypeAdapter(Event)


class ProtocolError(ValueError):
    """A line from the engine that is not one of its events."""


def encode(event: Event) -> str:
    """One JSON line, without its newline."""
    return event.model_dump_json()


def decode(line: str) -> Event:
    try:
        return _events.validate_json(line)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in error.errors())
        raise ProtocolError(f"not an engine event ({problems}): {line.strip()[:200]}") from None


def read_command(line: str) -> Command | None:
    """The command a line of the engine's stdin asks for, or None for anything else."""
    word = line.strip()
    return next((command for command in COMMANDS if command == word), None)
