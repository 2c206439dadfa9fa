"""Workers claim jobs from the database and run them."""

from __future__ import annotations

from ftserve.providers.registry import trainer_for
from ftserve.services.runtime import Runtime
from ftserve.worker.loop import Worker, WorkerConfig
from ftserve.worker.reconcile import Backoff


def worker_for(runtime: Runtime) -> Worker:
    settings = runtime.settings
    return Worker(
        runtime.engine,
        runtime.blobs,
        runtime.files,
        trainer_for(settings),
        WorkerConfig(
            poll_seconds=settings.worker_poll_seconds, lease_seconds=settings.lease_seconds,
            backoff=Backoff(settings.reconcile_min_seconds, settings.reconcile_max_seconds),
            max_attempts=settings.max_attempts, metrics_port=settings.worker_metrics_port,
        ),
        runtime.providers.providers,
        name=settings.worker_name,
        webhooks=runtime.webhooks,
        metrics=runtime.metrics,
    )
