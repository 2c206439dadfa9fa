"""The Prometheus metrics a process keeps: built once per Runtime, in a registry of its own, and handed to
the API and the worker. A test process builds many runtimes, so nothing goes in prometheus_client's global
registry. docs/observability.md says what each one means."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import HTTPServer

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from ftserve.domain.jobs import JobStatus
from ftserve.store import jobs as job_rows

# Requests run from milliseconds (reads) to minutes (large uploads, long completions).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A step takes milliseconds for the fake trainer and a small model on a GPU, minutes for a large one on a CPU.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class Metrics:
    """What this process observes. The database's job counts are not here: only the API's /metrics reads them
    (JobCounts), so that many workers on one database do not each export the same figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_seconds = Histogram(
            "ftserve_http_request_seconds", "Time to answer an HTTP request, by route template.",
            ["method", "route", "status"], buckets=HTTP_BUCKETS, registry=self.registry,
        )
        self.step_seconds = Histogram(
            "ftserve_training_step_seconds", "Wall time of each training step trained in this process.",
            buckets=STEP_BUCKETS, registry=self.registry,
        )
        # Labelled by worker, not by job: job ids are tenants' own, and whoever scrapes a worker's port sees every
        # series. A worker trains one job at a time, and its series goes when that run ends.
        self.tokens_per_second = Gauge(
            "ftserve_training_tokens_per_second", "Training throughput of the job each worker of this process trains now.",
            ["worker"], registry=self.registry,
        )

    def serve(self, port: int) -> HTTPServer:
        """Serve these metrics on their own port, for a worker process that has no HTTP server."""
        server, _ = start_http_server(port, registry=self.registry)
        return server


class JobCounts:
    """Jobs by status and the queue's depth, read from the database at scrape time in one query."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            counts = job_rows.status_counts(conn)
        jobs = GaugeMetricFamily("ftserve_jobs", "Fine-tuning jobs in each status.", labels=["status"])
        for status in JobStatus:  # every status, zeros included, so a series never vanishes
            jobs.add_metric([status.value], counts.get(status, (0, 0))[0])
        yield jobs
        waiting = sum(counts.get(JobStatus(s), (0, 0))[1] for s in job_rows.CLAIMABLE)
        yield GaugeMetricFamily(
            "ftserve_queue_depth", "Jobs waiting for a worker: validating_files or queued, held by no worker.",
            value=waiting,
        )
