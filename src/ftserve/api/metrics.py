"""What the API adds to the process's metrics: request latency by route template, an access-log line per
request, and `GET /metrics`, which also reads the job counts from the database when scraped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftserve.metrics import JobCounts, Metrics

access = logging.getLogger("ftserve.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404 for an unknown path, or one refused before routing)."""


def route_template(scope: Scope, root_path: str) -> str:
    """The template of the route that answered, such as `/v1/fine_tuning/jobs/{fine_tuning_job_id}`, read from
    the scope once the app has handled it; `root_path` is the scope's root path from before.

    The router leaves the route it matched in the scope. Recent FastAPI leaves the route as its router declared
    it, without the prefix the router was included under (`/v1`); that prefix is literal text, the part of the
    path before where the route's own pattern matches. A mount (the dashboard's files) leaves no route, but
    adds its path to the root path.
    """
    route = scope.get("route")
    if route is None:
        mounted = scope.get("root_path", "")[len(root_path):]
        return f"{mounted}/{{path}}" if mounted else UNMATCHED
    template, pattern, path = route.path, getattr(route, "path_regex", None), scope["path"]
    if pattern is not None:
        for start in (i for i, char in enumerate(path) if char == "/"):
            if pattern.match(path[start:]):
                return path[:start] + template
    return template


class Observed:
    """Times each HTTP request into a latency histogram and writes one access-log line for it.

    Labels use the route template (`/v1/fine_tuning/jobs/{fine_tuning_job_id}`), never the raw path: raw
    paths hold ids, and every distinct label set is a series Prometheus keeps. Sits inside RequestId, so
    the log line carries the request id.
    """

    def __init__(self, app: ASGIApp, seconds: Histogram):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, root_path = time.perf_counter(), scope.get("root_path", "")
        status = 500  # what the client gets when the app raises before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(scope, root_path)
            self.seconds.labels(method, route, str(status)).observe(elapsed)
            access.info(
                "%s %s %d %.1f ms", method, scope["path"], status, elapsed * 1000,
                extra={"method": method, "route": route, "path": scope["path"], "status": status,
                       "duration_ms": round(elapsed * 1000, 1)},
            )


def expose(app: FastAPI, metrics: Metrics, engine: sa.Engine, guard: Callable[[Request], None] | None) -> None:
    """`GET /metrics` in Prometheus' text format, behind `guard` when there is one: on a server with API keys,
    the job counts cover every project, so only the operator's metrics key reads them (docs/observability.md)."""
    counts = CollectorRegistry()
    counts.register(JobCounts(engine))

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(guard)] if guard else [])
    def scrape() -> Response:  # a plain def: FastAPI runs it in a thread, off the event loop, for the query
        return Response(generate_latest(metrics.registry) + generate_latest(counts), media_type=CONTENT_TYPE_LATEST)
