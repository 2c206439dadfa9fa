"""Whose request goes to the engine next: the project served least recently first, each project's requests
in the order they came, as many at once as the engine takes; and how many may wait.

The transformers loop generates one request at a time and vLLM a bounded batch. Without this, a project
that sends many requests fills the engine while another project's one short request waits behind them
all. With a per-project cap below the engine's batch, another project's request goes in at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ftserve.domain.errors import RateLimited


class Cancelled(Exception):
    """The caller gave up while its request waited for its turn."""


class FairGate:
    """`turn(project)` holds one of the engine's `slots` for one request. A project may have `per_project` requests
    waiting or running; all projects together, `queue` waiting. One more is refused with 429 and a Retry-After
    that estimates when a turn frees."""

    def __init__(self, per_project: int, queue: int, slots: int = 1):
        self.per_project = per_project
        self.queue = queue
        self.slots = slots
        self._cond = threading.Condition()
        self._waiting: dict[str, deque[int]] = {}
        self._in: dict[str, int] = {}  # waiting or running, by project
        self._last_served: dict[str, int] = {}
        self._tickets = itertools.count()
        self._served = itertools.count(1)
        self._running = 0
        self._turn_seconds = 1.0  # a moving average of how long a turn takes

    @contextmanager
    def turn(self, project: str, cancelled: Callable[[], bool] = lambda: False) -> Iterator[None]:
        ticket = self._enter(project)
        try:
            self._wait(project, ticket, cancelled)
        except BaseException:
            self._leave(project, ticket, held=False)
            raise
        started = time.monotonic()
        try:
            yield
        finally:
            self._leave(project, ticket, held=True, seconds=time.monotonic() - started)

    def check(self, project: str) -> None:
        """Refuse now, with the 429 `turn` would give, a request that would not be let in; before a stream starts."""
        with self._cond:
            self._refuse_if_full(project)

    def waiting(self) -> dict[str, int]:
        """Requests waiting or running, by project."""
        with self._cond:
            return dict(self._in)

    def _refuse_if_full(self, project: str) -> None:
        waiting = sum(map(len, self._waiting.values()))
        if self._in.get(project, 0) >= self.per_project:
            raise RateLimited(
                f"Project {project} already has {self.per_project} requests waiting for or running on a model; "
                "try again when one has finished.", retry_after=self._turn_seconds, code="engine_busy")
        if waiting >= self.queue:
            raise RateLimited(f"{waiting} requests are waiting for a model; try again shortly.",
                              retry_after=self._turn_seconds * (1 + waiting), code="engine_busy")

    def _enter(self, project: str) -> int:
        with self._cond:
            self._refuse_if_full(project)
            ticket = next(self._tickets)
            self._waiting.setdefault(project, deque()).append(ticket)
            self._in[project] = self._in.get(project, 0) + 1
            self._cond.notify_all()
            return ticket

    def _wait(self, project: str, ticket: int, cancelled: Callable[[], bool]) -> None:
        with self._cond:
            while not (self._running < self.slots and self._next() == ticket):
                if cancelled():
                    raise Cancelled
                self._cond.wait(timeout=0.25)
            self._running += 1
            self._waiting[project].popleft()
            if not self._waiting[project]:
                del self._waiting[project]
            self._last_served[project] = next(self._served)

    def _next(self) -> int | None:
        """The first ticket of the waiting project served least recently (never served: first of all)."""
        if not self._waiting:
            return None
        project = min(self._waiting, key=lambda p: (self._last_served.get(p, 0), self._waiting[p][0]))
        return self._waiting[project][0]

    def _leave(self, project: str, ticket: int, *, held: bool, seconds: float = 0.0) -> None:
        with self._cond:
            if held:
                self._running -= 1
                self._turn_seconds = 0.8 * self._turn_seconds + 0.2 * seconds / self.slots
            else:
                queue = self._waiting.get(project)
                if queue is not None and ticket in queue:
                    queue.remove(ticket)
                    if not queue:
                        del self._waiting[project]
            self._in[project] -= 1
            if not self._in[project]:
                del self._in[project]
            self._cond.notify_all()
