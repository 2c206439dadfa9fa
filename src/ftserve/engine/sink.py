"""How the engine talks to its parent: events out as JSON lines on stdout, commands in on stdin."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import IO, Any, Literal, Protocol

Command = Literal["pause", "cancel", "shutdown"]


class Sink(Protocol):
    """Where a recipe reports. The worker's side turns each event into job rows."""

    def event(self, kind: str, **data: Any) -> None: ...
    def requested_stop(self) -> Command | None: ...


class JsonLinesSink:
    """Writes one JSON object per line; a `pause`, `cancel` or `shutdown` line on the input asks the engine to stop
    (`pause` and `shutdown` save resumable state first).

    The input closing means the parent is gone, which counts as cancel: an orphaned engine must not
    keep a GPU busy.
    """

    def __init__(self, out: IO[str] | None = None, commands: IO[str] | None = None):
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._stop: Command | None = None
        if commands is not None:
            threading.Thread(target=self._listen, args=(commands,), daemon=True).start()

    def event(self, kind: str, **data: Any) -> None:
        line = json.dumps({"event": kind, **data}, default=_plain)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def requested_stop(self) -> Command | None:
        return self._stop

    def _listen(self, commands: IO[str]) -> None:
        for line in commands:
            word = line.strip()
            if word in ("pause", "cancel", "shutdown") and self._stop != "cancel":
                self._stop = word  # type: ignore[assignment]  # narrowed by the check above
        if self._stop is None:
            self._stop = "cancel"


class MemorySink:
    """Keeps events in a list; for running a recipe in-process (tests, benchmarks)."""

    def __init__(self, stop_after_step: int | None = None, stop: Command = "pause"):
        self.events: list[dict[str, Any]] = []
        self.stop_after_step = stop_after_step
        self.stop = stop

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"event": kind, **data})

    def requested_stop(self) -> Command | None:
        steps = [e["step"] for e in self.events if e["event"] == "metrics"]
        if self.stop_after_step is not None and steps and steps[-1] >= self.stop_after_step:
            return self.stop
        return None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot report {type(value).__name__}")
