"""The engine's events cross a process boundary as JSON lines: each one reaches the worker intact and becomes
a reporter call or the outcome of training; a line the worker cannot read is logged, and the job goes on."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftserve.domain.errors import TrainingFailed
from ftserve.engine.events import (
    EVENT_TYPES,
    Checkpoint,
    Event,
    Failed,
    Finished,
    Message,
    Metrics,
    ProtocolError,
    Started,
    StateSaved,
    Stopped,
    decode,
    encode,
)
from ftserve.providers.base import StopReason, TrainingOutcome
from ftserve.providers.engine_session import Session
from ftserve.providers.local import ProcessChannel

FINISHED = Finished(step=8, trained_tokens=4096, model_dir=Path("/jobs/ftjob-1/model"),
                    evaluation={"examples": 4, "base": {"loss": 2.0}, "fine_tuned": {"loss": 0.5}})
AFTER_FINISHED = TrainingOutcome(None, 4096, Path("/jobs/ftjob-1/model"), 8, FINISHED.evaluation)

# Each event, and what the worker does with it: a reporter call, or how training ended.
CASES: list[tuple[Event, tuple[str, tuple[Any, ...]] | TrainingOutcome | TrainingFailed]] = [
    (Started(step=3, total_steps=8, hardware="cpu, 2 threads"), ("started", (3, 8))),
    (Metrics(step=4, total_steps=8, metrics={"train_loss": float("nan")}, tokens_per_second=812.5),
     ("metrics", (4, 8, {"train_loss": float("nan")}, 812.5))),
    (Checkpoint(step=4, metrics={"step": 4, "train_loss": 1.25}, path=Path("/jobs/ftjob-1/checkpoint-4")),
     ("checkpoint", (4, {"step": 4.0, "train_loss": 1.25}, Path("/jobs/ftjob-1/checkpoint-4")))),
    (Message(text="training file: skipped 1 example(s)", level="warn"),
     ("message", ("training file: skipped 1 example(s)", "warn"))),
    (StateSaved(step=6), ("state_saved", (6,))),
    (FINISHED, AFTER_FINISHED),
    (Stopped(reason="pause", step=5, trained_tokens=2560), TrainingOutcome("pause", 2560, None, 5)),
    (Failed(message="training file, line 3: not JSON"), TrainingFailed("training file, line 3: not JSON")),
]


class Recorder:
    """A reporter that notes each call and never asks the engine to stop."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def started(self, step: int, total_steps: int) -> None:
        self.calls.append(("started", (step, total_steps)))

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float],
                tokens_per_second: float | None = None) -> None:
        self.calls.append(("metrics", (step, total_steps, metrics, tokens_per_second)))

    def checkpoint(self, step: int, metrics: dict[str, float], path: Path | None) -> None:
        self.calls.append(("checkpoint", (step, metrics, path)))

    def message(self, text: str, level: str = "info") -> None:
        self.calls.append(("message", (text, level)))

    def state_saved(self, step: int) -> None:
        self.calls.append(("state_saved", (step,)))

    def should_stop(self) -> StopReason | None:
        return None


def session(tmp_path: Path, lines: list[str]) -> tuple[Session, Recorder]:
    """A worker's session with a child that writes `lines` on its stdout and exits, as an engine would."""
    child = subprocess.Popen(
        [sys.executable, "-I", "-c", "import sys; sys.stdout.write(sys.argv[1])", "".join(f"{line}\n" for line in lines)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    reporter = Recorder()
    return Session(ProcessChannel(child, tmp_path / "engine.log"), reporter), reporter


def same(a: object, b: object) -> bool:
    """Equality in which NaN equals NaN, as a diverged loss must arrive as NaN."""
    return repr(a) == repr(b)


def test_every_event_type_has_a_case_here() -> None:
    assert sorted(type(event).__name__ for event, _ in CASES) == sorted(t.__name__ for t in EVENT_TYPES)


@pytest.mark.parametrize(("event", "handled"), CASES, ids=[type(event).__name__ for event, _ in CASES])
def test_each_event_crosses_the_pipe_and_the_worker_acts_on_it(
        tmp_path: Path, event: Event, handled: tuple[str, tuple[Any, ...]] | TrainingOutcome | TrainingFailed) -> None:
    line = encode(event)
    assert "\n" not in line
    assert same(decode(line), event)

    if isinstance(handled, TrainingFailed):
        with pytest.raises(TrainingFailed, match=re.escape(handled.message)):
            session(tmp_path, [line])[0].run()
    elif isinstance(handled, TrainingOutcome):
        assert session(tmp_path, [line])[0].run() == handled
    else:  # a report along the way: the run then goes on to its end
        run, reporter = session(tmp_path, [line, encode(FINISHED)])
        assert run.run() == AFTER_FINISHED
        assert same(reporter.calls, [handled])


def test_a_line_that_is_not_an_event_is_logged_and_the_job_goes_on(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    run, reporter = session(tmp_path, ['{"event": "progress", "step": 2}', "Loading weights...",
                                       encode(StateSaved(step=2)), encode(FINISHED)])
    with caplog.at_level(logging.WARNING, logger="ftserve.providers.local"):
        assert run.run() == AFTER_FINISHED
    assert reporter.calls == [("state_saved", (2,))]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "'progress'" in warnings[0] and "'state_saved'" in warnings[0]  # what came, and what the worker knows
    assert "Loading weights..." in warnings[1]


def test_an_event_with_a_missing_or_wrong_field_is_refused_naming_the_field() -> None:
    with pytest.raises(ProtocolError, match=r"metrics\.step: Input should be a valid integer"):
        decode('{"event": "metrics", "step": "four", "total_steps": 8, "metrics": {}}')
    with pytest.raises(ProtocolError, match=r"stopped\.reason"):
        decode('{"event": "stopped", "reason": "lost", "step": 1, "trained_tokens": 0}')  # lost is never a command
