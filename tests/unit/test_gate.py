"""The gate in front of the model: one request at a time, the project served least recently first, each
project's requests in order; limits that answer 429; a caller that gives up while waiting frees its place."""

from __future__ import annotations

import threading
import time

import pytest

from ftserve.domain.errors import RateLimited
from ftserve.inference.gate import Cancelled, FairGate


def queued(gate: FairGate, project: str, count: int) -> None:
    """Wait until `project` has `count` requests waiting or running."""
    deadline = time.monotonic() + 10
    while gate.waiting().get(project, 0) < count:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_project_that_sends_many_requests_does_not_keep_another_waiting_behind_them() -> None:
    gate, order, release = FairGate(per_project=10, queue=10), [], threading.Event()

    def request(name: str, hold: bool = False) -> None:
        with gate.turn(name.split("-")[0]):
            order.append(name)
            if hold:
                release.wait(10)

    threads = [threading.Thread(target=request, args=("alpha-1", True))]
    threads[0].start()
    queued(gate, "alpha", 1)
    for name in ("alpha-2", "alpha-3", "alpha-4"):
        threads.append(threading.Thread(target=request, args=(name,)))
        threads[-1].start()
        queued(gate, "alpha", int(name[-1]))
    threads.append(threading.Thread(target=request, args=("beta-1",)))
    threads[-1].start()
    queued(gate, "beta", 1)
    release.set()
    for thread in threads:
        thread.join(10)
    # beta came last, but alpha had just been served: beta goes next, then alpha's in the order they came.
    assert order == ["alpha-1", "beta-1", "alpha-2", "alpha-3", "alpha-4"]
    assert gate.waiting() == {}


def test_over_the_project_or_queue_limit_is_a_429_with_retry_after() -> None:
    gate, release = FairGate(per_project=2, queue=3), threading.Event()

    def hold(project: str) -> None:
        with gate.turn(project):
            release.wait(10)

    holders = [threading.Thread(target=hold, args=(p,)) for p in ("alpha", "alpha", "beta", "gamma")]
    for thread in holders[:2]:
        thread.start()
    queued(gate, "alpha", 2)
    with pytest.raises(RateLimited) as refused:
        gate.check("alpha")  # its third
    assert refused.value.code == "engine_busy" and refused.value.retry_after > 0
    for thread in holders[2:]:
        thread.start()
    queued(gate, "gamma", 1)  # alpha-2, beta and gamma wait: the queue of 3 is full
    with pytest.raises(RateLimited):
        with gate.turn("delta"):
            pass
    release.set()
    for thread in holders:
        thread.join(10)
    with gate.turn("delta"):  # all done: room again
        pass


def test_a_caller_that_gives_up_while_waiting_leaves_the_queue() -> None:
    gate, release, gone = FairGate(per_project=4, queue=4), threading.Event(), threading.Event()

    def hold() -> None:
        with gate.turn("alpha"):
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    queued(gate, "alpha", 1)
    outcome: list[str] = []

    def wait_then_give_up() -> None:
        try:
            with gate.turn("beta", cancelled=gone.is_set):
                outcome.append("ran")
        except Cancelled:
            outcome.append("cancelled")

    waiter = threading.Thread(target=wait_then_give_up)
    waiter.start()
    queued(gate, "beta", 1)
    gone.set()
    waiter.join(5)
    assert outcome == ["cancelled"] and "beta" not in gate.waiting()
    release.set()
    holder.join(5)
    assert gate.waiting() == {}


def test_an_engine_that_batches_runs_as_many_requests_at_once_as_it_has_slots() -> None:
    gate, release = FairGate(per_project=10, queue=10, slots=2), threading.Event()
    running: list[str] = []

    def request(name: str) -> None:
        with gate.turn(name.split("-")[0]):
            running.append(name)
            release.wait(10)

    threads = [threading.Thread(target=request, args=(name,)) for name in ("alpha-1", "alpha-2", "beta-1")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    queued(gate, "beta", 1)
    time.sleep(0.2)
    assert running == ["alpha-1", "alpha-2"]  # the third waits for a slot
    release.set()
    for thread in threads:
        thread.join()
    assert running[-1] == "beta-1"
