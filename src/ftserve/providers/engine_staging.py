"""A job's files on the machine that runs its engine, when that machine does not share the blob store's directory
(an object store): the `Staging` a trainer calls around the engine. files/workspace.py implements it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ftserve.engine import events
from ftserve.engine.spec import JobSpec
from ftserve.providers.engine_session import Channel, ChannelLost


class Staging(Protocol):
    """`prepare` rewrites a spec's paths to this machine's (fetching the inputs and the newest saved state into
    `scratch`); `publish` makes what an event names durable, and rewrites its paths back, before the worker hears
    of it. One job at a time: prepare it, then publish its events."""

    def prepare(self, spec: JobSpec, scratch: Path) -> JobSpec: ...
    def publish(self, event: events.Event) -> events.Event: ...


class StagedChannel:
    """A channel whose events are published before the session reads them."""

    def __init__(self, channel: Channel, staging: Staging):
        self.channel = channel
        self.staging = staging

    def lines(self) -> Iterator[str]:
        for line in self.channel.lines():
            try:
                event = events.decode(line)
            except events.ProtocolError:
                yield line  # the session logs it and goes on
                continue
            try:
                published = self.staging.publish(event)
            except Exception as error:
                # The store refused or could not be reached (boto3's errors share no base with ours). The job is
                # not at fault: it runs again from the last state that was stored.
                raise ChannelLost(f"what the engine saved could not be stored ({type(error).__name__}: {error})") \
                    from error
            yield events.encode(published) + "\n"

    def send(self, word: events.Command) -> None:
        self.channel.send(word)

    def kill(self) -> None:
        self.channel.kill()

    def wait(self, timeout: float) -> int | None:
        return self.channel.wait(timeout)

    def log_tail(self) -> str:
        return self.channel.log_tail()
