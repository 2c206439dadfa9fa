"""One run of the training engine, wherever it runs: its events become reporter calls, and the reporter's stop
requests become commands on its stdin.

The engine's protocol is the same everywhere (engine/events.py); what differs is the pipe. A `Channel` is that pipe:
a child process of the worker (providers/local.py), or an actor on a Ray node (providers/ray_executor.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Protocol, assert_never

from ftserve.domain.errors import TrainingFailed
from ftserve.engine import events
from ftserve.providers.base import Reporter, TrainingOutcome

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# How long an engine that was asked to cancel may take to stop before it is killed.
CANCEL_GRACE_SECONDS = 30.0


class ChannelLost(Exception):
    """The engine's channel broke without the engine saying how it ended: its machine (a Ray node) went away.
    The job is not at fault; it runs again from its last saved state."""


class Channel(Protocol):
    def lines(self) -> Iterator[str]:
        """The engine's stdout, a line at a time, until it closes. Raises `ChannelLost` if the pipe breaks."""
        ...
    def send(self, word: events.Command) -> None:
        """A line on the engine's stdin; nothing happens when the engine has already gone."""
        ...
    def kill(self) -> None: ...
    def wait(self, timeout: float) -> int | None:
        """The engine's exit status, waiting up to `timeout` seconds; None while it still runs."""
        ...
    def log_tail(self) -> str:
        """The last lines the engine wrote to its log, for a failure's message."""
        ...


class Session:
    def __init__(self, channel: Channel, reporter: Reporter):
        self.channel = channel
        self.reporter = reporter
        self.inbox: queue.Queue[events.Event | None | ChannelLost] = queue.Queue()
        self.sent: events.Command | None = None
        threading.Thread(target=self._read, daemon=True, name="ftserve-engine-events").start()

    def run(self) -> TrainingOutcome:
        """Relay until the engine ends. Raises `TrainingFailed` when it fails, `ChannelLost` when its pipe broke."""
        try:
            while True:
                try:
                    event = self.inbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    pass
                else:
                    if event is None:  # the engine closed stdout: it is exiting
                        break
                    if isinstance(event, ChannelLost):
                        raise event
                    outcome = self._handle(event)
                    if outcome is not None:
                        return outcome
                lost = self._relay_stop()
                if lost is not None:
                    return lost
        finally:
            self._reap()
        status = self.channel.wait(5.0)
        raise TrainingFailed(f"The training engine exited with status {status}. {self.channel.log_tail()}")

    def _handle(self, event: events.Event) -> TrainingOutcome | None:
        match event:
            case events.Started():
                self.reporter.started(event.step, event.total_steps)
            case events.Metrics():
                self.reporter.metrics(event.step, event.total_steps, event.metrics, event.tokens_per_second)
            case events.Checkpoint():
                self.reporter.checkpoint(event.step, event.metrics, event.path)
            case events.Message():
                self.reporter.message(event.text, event.level)
            case events.StateSaved():
                self.reporter.state_saved(event.step)
            case events.Finished():
                return TrainingOutcome(None, event.trained_tokens, event.model_dir, event.step, event.evaluation)
            case events.Stopped():
                return TrainingOutcome(event.reason, event.trained_tokens, None, event.step)
            case events.Failed():
                raise TrainingFailed(event.message)
            case _:  # the type check fails here when an event is added without its case
                assert_never(event)
        return None

    def _relay_stop(self) -> TrainingOutcome | None:
        stop = self.reporter.should_stop()
        if stop == "lost":  # another worker owns the job now: stop writing at once
            self.channel.kill()
            return TrainingOutcome("lost")
        if stop is not None and self.sent is None:
            self.channel.send(stop)
            self.sent = stop
        return None

    def _reap(self) -> None:
        if self.channel.wait(CANCEL_GRACE_SECONDS if self.sent == "cancel" else 5.0) is None:
            self.channel.kill()

    def _read(self) -> None:
        try:
            for line in self.channel.lines():
                try:
                    self.inbox.put(events.decode(line))
                except events.ProtocolError as error:  # an engine of another version, or a bug: the job goes on
                    log.warning("The training engine wrote a line the worker cannot read, ignored: %s", error)
        except ChannelLost as lost:
            self.inbox.put(lost)
            return
        self.inbox.put(None)
