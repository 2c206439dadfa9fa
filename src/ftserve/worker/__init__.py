"""Workers claim jobs from the database and run them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ftserve.services.runtime import Runtime, trainer_for
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


@contextmanager
def in_thread(runtime: Runtime) -> Iterator[Worker]:
    """A worker in a thread beside the caller (the API server) for the block's length.

    Leaving the block tells it to stop: a job in training saves its state and goes back to the queue.
    """
    worker = worker_for(runtime)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="ftserve-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=runtime.settings.shutdown_grace_seconds)
