"""The worker's webhook sender: delivers what the outbox holds, beside the job loop, until told to stop."""

from __future__ import annotations

import logging
import threading

from ftserve.services.webhooks import WebhookService

log = logging.getLogger(__name__)


def deliver(webhooks: WebhookService, stop: threading.Event, poll_seconds: float) -> None:
    """Send due deliveries until `stop` is set; an idle sender looks again every `poll_seconds`.
    Every worker runs one: deliveries are claimed, so each try is made by one of them."""
    while not stop.is_set():
        try:
            tried = webhooks.deliver_due()
        except Exception:  # the sender must outlive a database hiccup
            log.exception("webhook delivery failed")
            tried = 0
        if not tried:
            stop.wait(poll_seconds)
