"""What one caller may ask of the server: requests per minute per project (and wrong keys per client
address, api/auth.py), and bytes per request body."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftserve.api import errors
from ftserve.domain.errors import PayloadTooLarge, RateLimited

# Buckets kept before the least recently used is forgotten, so many client addresses cannot grow the table
# without bound. A forgotten bucket starts full again, which a client with that many addresses gets anyway.
MAX_BUCKETS = 10_000
# Room for the multipart framing around the largest file a route accepts.
MULTIPART_FRAMING = 1024 * 1024


class RateLimiter:
    """A token bucket per key (a project, or a client address): `per_minute` in a burst, refilled evenly over a minute.

    The buckets live in this process; several API processes each allow the full rate.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_minute)
        self.refill = per_minute / 60.0
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, project: str) -> None:
        """Spend one request of `project`'s allowance, or raise `RateLimited` saying when one is back."""
        with self._lock:
            tokens, now = self._tokens(project)
            if tokens < 1.0:
                self._store(project, tokens, now)
                wait = (1.0 - tokens) / self.refill
                raise RateLimited(
                    f"Rate limit reached for requests: {int(self.capacity)} per minute for project {project}. "
                    f"Try again in {wait:.1f}s.",
                    retry_after=wait,
                )
            self._store(project, tokens - 1.0, now)

    def wait(self, key: str) -> float:
        """Seconds until `key` has one to spend again (0: it has one now); spends nothing."""
        with self._lock:
            tokens, _ = self._tokens(key)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.refill

    def spend(self, key: str) -> None:
        """Spend one of `key`'s allowance, going no lower than empty."""
        with self._lock:
            tokens, now = self._tokens(key)
            self._store(key, max(0.0, tokens - 1.0), now)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)

    def _tokens(self, key: str) -> tuple[float, float]:
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.refill), now


class BodyLimit:
    """Refuses request bodies over a size with 413, before the route reads them.

    A body that announces its length is refused at once; a chunked one is counted as it arrives
    and refused when it passes the limit. Routes matched by `overrides` (method, path pattern, size,
    message) get their own limit and say it in their own words, such as file uploads.
    """

    def __init__(self, app: ASGIApp, limit: int, overrides: list[tuple[str, str, int, str]] | None = None):
        self.app = app
        self.limit = limit
        self.overrides = [(method, re.compile(pattern), size, said) for method, pattern, size, said in overrides or []]

    def limit_for(self, method: str, path: str) -> tuple[int, str]:
        for wanted, pattern, size, said in self.overrides:
            if method == wanted and pattern.fullmatch(path):
                return size, said
        return self.limit, f"The request body is larger than the {self.limit} bytes allowed."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, said = self.limit_for(scope["method"], scope["path"])
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > limit:
            await _too_large(send, said)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException, because FastAPI turns anything else raised while reading a body into a 400.
                    raise HTTPException(413, said)
            return message

        await self.app(scope, counted, send)


async def _too_large(send: Send, message: str) -> None:
    body = errors.rendered(message, PayloadTooLarge.type, code=PayloadTooLarge.code).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
