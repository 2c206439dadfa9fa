"""Where a recipe reports: events out as JSON lines on stdout, commands in on stdin (the protocol is in `events`)."""

from __future__ import annotations

import sys
import threading
from typing import IO, Protocol, TypeVar

from ftserve.engine.events import Checkpoint, Command, Event, Metrics, decode, encode, read_command

E = TypeVar("E", bound=Event)


class Sink(Protocol):
    """Where a recipe reports. The worker's side turns each event into job rows."""

    def emit(self, event: Event) -> None: ...
    def requested_stop(self) -> Command | None: ...


class JsonLinesSink:
    """Writes one event per line; a `pause`, `cancel` or `shutdown` line on the input asks the engine to stop.

    The input closing means the parent is gone, which counts as cancel: an orphaned engine must not
    keep a GPU busy.
    """

    def __init__(self, out: IO[str] | None = None, commands: IO[str] | None = None):
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._stop: Command | None = None
        if commands is not None:
            threading.Thread(target=self._listen, args=(commands,), daemon=True).start()

    def emit(self, event: Event) -> None:
        line = encode(event)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def requested_stop(self) -> Command | None:
        return self._stop

    def _listen(self, commands: IO[str]) -> None:
        for line in commands:
            command = read_command(line)
            if command is not None and self._stop != "cancel":  # a cancel is final: a later pause must not save its state
                self._stop = command
        if self._stop is None:
            self._stop = "cancel"


class MemorySink:
    """Keeps events in a list; for running a recipe in-process (tests, benchmarks)."""

    def __init__(self, stop_after_step: int | None = None, stop: Command = "pause"):
        self.events: list[Event] = []
        self.stop_after_step = stop_after_step
        self.stop = stop

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def requested_stop(self) -> Command | None:
        steps = [e.step for e in self.of(Metrics)]
        if self.stop_after_step is not None and steps and steps[-1] >= self.stop_after_step:
            return self.stop
        return None

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


class Journal:
    """The metrics and checkpoint events a run has reported, kept with each state it saves.

    A worker killed between the engine's report and its own write loses the report, while the state saved
    after it survives. A run resumed from that state reports them again first (`replay`), and the worker
    records those the job lacks.
    """

    def __init__(self, sink: Sink, lines: list[str] | None = None):
        self.sink = sink
        self.lines: list[str] = list(lines or [])
        """What `state` files keep: one protocol line per event."""

    def replay(self) -> None:
        for line in self.lines:
            self.sink.emit(decode(line))

    def report(self, event: Metrics | Checkpoint) -> None:
        self.sink.emit(event)
        # Kept without a throughput: that is this attempt's, not the one a replay would come from.
        kept = event.model_copy(update={"tokens_per_second": None}) if isinstance(event, Metrics) else event
        self.lines.append(encode(kept))
