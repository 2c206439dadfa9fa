"""The worker's webhook sender: delivers what the outbox holds, beside the job loop, until told to stop.

Tries run concurrently on one event loop, up to `senders` at once. Each ends by its deadline, and the claim
passes over endpoints that already have their share of tries in flight, so a receiver that answers slowly,
or never, holds at most that share of this worker's senders and delays no one else's deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from ftserve.services.webhooks import WebhookService

log = logging.getLogger(__name__)


def deliver(webhooks: WebhookService, stop: threading.Event, poll_seconds: float) -> None:
    """Send due deliveries until `stop` is set; an idle sender looks again every `poll_seconds`.
    Every worker runs one: deliveries are claimed, so each try is made by one of them."""
    asyncio.run(_deliver(webhooks, stop, poll_seconds))


async def _deliver(webhooks: WebhookService, stop: threading.Event, poll_seconds: float) -> None:
    sending: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        claim = None
        if len(sending) < webhooks.sending.senders:
            try:
                claim = await asyncio.to_thread(webhooks.claim)
            except Exception:  # the sender must outlive a database hiccup
                log.exception("claiming a webhook delivery failed")
        if claim is not None:
            task = asyncio.create_task(webhooks.attempt(claim))
            sending.add(task)
            task.add_done_callback(_ended(sending))
            continue
        # All senders busy, or nothing due that has room: wait for a try to end (its endpoint may have more
        # waiting) or for the next look.
        if sending:
            await asyncio.wait(sending, timeout=poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(poll_seconds)
    if sending:  # each ends by its deadline; cut short, it would only be sent again once its hold ran out
        await asyncio.wait(sending)


def _ended(sending: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def ended(task: asyncio.Task[None]) -> None:
        sending.discard(task)
        if not task.cancelled() and task.exception() is not None:  # recording the result failed: the hold ends it
            log.error("recording a webhook try failed", exc_info=task.exception())
    return ended
