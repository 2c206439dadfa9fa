"""Sending webhooks, on the service and the worker's sender: a try connects only to an address that was checked
after DNS (a name that turns to loopback is not called, not even between the check and the connection), ends by
its deadline however slowly the receiver trickles, and two workers racing over one outbox send each try once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from ftserve.domain.errors import InvalidRequest
from ftserve.services import webhook_targets
from ftserve.services.runtime import Runtime, build
from ftserve.store import webhooks as rows
from ftserve.worker.webhooks import deliver
from tests.conftest import settings_for
from tests.webhook_receiver import Receiver

EVENT = "fine_tuning.job.succeeded"
PUBLIC = "93.184.216.34"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(trickle_seconds=0.2)
    yield receiver
    receiver.close()


class Names:
    """A resolver for the tests' made-up names (there is no DNS here), counting its lookups. A name's answers are
    taken in turn, the last one repeating, so a name can change where it points between two lookups."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.answers: dict[str, list[str]] = {}
        self.lookups: Counter[str] = Counter()
        monkeypatch.setattr(webhook_targets, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host: str, port: int, *args: Any) -> list[Any]:
        if host not in self.answers:
            return socket.getaddrinfo(host, port, *args)
        turn = self.answers[host]
        address = turn[min(self.lookups[host], len(turn) - 1)]
        self.lookups[host] += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    return Names(monkeypatch)


def runtime_for(tmp_path: Path, database_url: str | None, **overrides: object) -> Runtime:
    return build(settings_for(tmp_path, database_url, webhook_timeout_seconds=1.0, **overrides))


@pytest.fixture
def open_runtime(tmp_path: Path) -> Iterator[Runtime]:
    """No allowlist: loopback is off limits."""
    runtime = runtime_for(tmp_path, None)
    yield runtime
    runtime.engine.dispose()


def test_a_name_that_resolves_to_loopback_is_refused_when_registered(open_runtime: Runtime, names: Names) -> None:
    names.answers["inside.example"] = ["127.0.0.1"]
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(open_runtime.webhooks.check_url("http://inside.example/hook"))
    assert refused.value.param == "url" and "resolves to a loopback address" in refused.value.message


def test_a_name_that_turns_to_loopback_after_registration_is_not_called(
    open_runtime: Runtime, names: Names, receiver: Receiver,
) -> None:
    webhooks = open_runtime.webhooks
    url = receiver.url("rebound", host="rebinds.example")
    names.answers["rebinds.example"] = [PUBLIC, "127.0.0.1"]
    asyncio.run(webhooks.check_url(url))  # public when registered
    endpoint = webhooks.create("p", "rebinding", url, [EVENT])
    assert asyncio.run(webhooks.test(endpoint, EVENT)) is False  # loopback when sent
    with open_runtime.engine.begin() as conn:
        rows.enqueue(conn, "p", EVENT, {"id": "ftjob-1"}, int(time.time()))
    claim = webhooks.claim()
    assert claim is not None
    asyncio.run(webhooks.attempt(claim))
    [delivery] = webhooks.deliveries("p", endpoint.id, after=None, limit=10).items
    assert (delivery.error, delivery.response_status_code, delivery.attempts) == ("address not allowed", None, 1)
    assert receiver.hits("rebound") == []


def test_a_try_connects_to_the_address_it_checked_and_looks_up_nothing_after(
    open_runtime: Runtime, names: Names, receiver: Receiver,
) -> None:
    """Public at the check, loopback at a second lookup: there is no second lookup, so the try goes (nowhere) to
    the public address, and the receiver on loopback never hears of it."""
    webhooks = open_runtime.webhooks
    url = receiver.url("flip", host="flips.example")
    names.answers["flips.example"] = [PUBLIC, "127.0.0.1"]
    endpoint = webhooks.create("p", "flipping", url, [EVENT])
    names.lookups.clear()
    started = time.time()
    assert asyncio.run(webhooks.test(endpoint, EVENT)) is False
    assert names.lookups["flips.example"] == 1 and time.time() - started < 2.0
    assert receiver.hits("flip") == []


def test_an_allowed_name_is_reached_at_its_checked_address_with_its_own_host_header(
    tmp_path: Path, names: Names, receiver: Receiver,
) -> None:
    runtime = runtime_for(tmp_path, None, webhook_allow="127.0.0.1")
    try:
        names.answers["hooks.internal"] = ["127.0.0.1"]
        url = receiver.url("pinned", host="hooks.internal")
        asyncio.run(runtime.webhooks.check_url(url))
        endpoint = runtime.webhooks.create("p", "pinned", url, [EVENT])
        assert asyncio.run(runtime.webhooks.test(endpoint, EVENT)) is True
        [hit] = receiver.hits("pinned")
        assert hit.host == f"hooks.internal:{receiver.port}"
        assert names.lookups["hooks.internal"] == 2  # one at the check, one for the try
    finally:
        runtime.engine.dispose()


def test_a_receiver_that_trickles_forever_is_cut_off_at_the_deadline(tmp_path: Path, receiver: Receiver) -> None:
    runtime = runtime_for(tmp_path, None, webhook_allow="127.0.0.1")
    try:
        webhooks = runtime.webhooks
        endpoint = webhooks.create("p", "trickle", receiver.url("trickle-test"), [EVENT])
        started = time.time()
        assert asyncio.run(webhooks.test(endpoint, EVENT)) is False
        assert 1.0 <= time.time() - started < 1.5
        with runtime.engine.begin() as conn:
            rows.enqueue(conn, "p", EVENT, {"id": "ftjob-1"}, int(time.time()))
        claim = webhooks.claim()
        assert claim is not None
        started = time.time()
        asyncio.run(webhooks.attempt(claim))
        assert time.time() - started < 1.5
        [delivery] = webhooks.deliveries("p", endpoint.id, after=None, limit=10).items
        assert (delivery.status, delivery.error, delivery.attempts) == ("pending", "timed out", 1)
        assert len(receiver.hits("trickle-test")) == 2
        deadline = time.time() + 1
        while receiver.trickling("trickle-test"):  # the sender hung up on both
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        runtime.engine.dispose()


@pytest.mark.database
def test_two_workers_racing_over_a_slow_receiver_send_each_try_once(
    tmp_path: Path, database_url: str | None, receiver: Receiver,
) -> None:
    """Two senders (two services, as in two worker processes) share one outbox whose endpoint never finishes
    answering. Every try the log counts reached the receiver exactly once, never two of one event at once, and
    the endpoint never had more than its share of tries in flight."""
    settings = dict(webhook_allow="127.0.0.1", webhook_retry_seconds=0.1, webhook_endpoint_concurrency=2)
    runtimes = [runtime_for(tmp_path, database_url, **settings) for _ in range(2)]
    assert runtimes[0].webhooks is not runtimes[1].webhooks
    stop = threading.Event()
    try:
        endpoint = runtimes[0].webhooks.create("p", "slow", receiver.url("trickle-race"), [EVENT])
        with runtimes[0].engine.begin() as conn:
            for n in range(4):
                rows.enqueue(conn, "p", EVENT, {"id": f"ftjob-{n}"}, int(time.time()))
        senders = [threading.Thread(target=deliver, args=(r.webhooks, stop, 0.02)) for r in runtimes]
        for sender in senders:
            sender.start()
        time.sleep(4.5)
        stop.set()
        for sender in senders:
            sender.join(timeout=5)
            assert not sender.is_alive()
        log = runtimes[1].webhooks.deliveries("p", endpoint.id, after=None, limit=10).items
        posts = Counter(hit.webhook_id for hit in receiver.hits("trickle-race"))
        assert {d.event_id: d.attempts for d in log} == dict(posts) and sum(posts.values()) >= 6
        for event_id in posts:  # each try of an event began after the one before it was cut off
            times = sorted(hit.at for hit in receiver.hits("trickle-race") if hit.webhook_id == event_id)
            assert all(later - earlier >= 0.95 for earlier, later in zip(times, times[1:])), times
        assert receiver.peak["/trickle-race"] <= 2
        assert all(d.error == "timed out" for d in log)
    finally:
        stop.set()
        for runtime in runtimes:
            runtime.engine.dispose()
