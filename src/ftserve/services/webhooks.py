"""Use cases of `/webhook_endpoints`, and delivering what the outbox holds."""

from __future__ import annotations

import asyncio
import builtins  # the service's own `list` method shadows the type inside its class
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpcore
import sqlalchemy as sa

from ftserve.domain.errors import InvalidRequest, NotFound, RateLimited
from ftserve.domain.ids import new_id
from ftserve.domain.webhook_targets import Allow
from ftserve.domain.webhooks import EVENT_TYPES, Delivery, Endpoint, Retry, event_body, new_secret, signature_header
from ftserve.services.clock import now
from ftserve.services.webhook_http import NETWORK_ERRORS, post
from ftserve.services.webhook_targets import Refused, check, resolve, target
from ftserve.store import webhooks as rows
from ftserve.store.columns import check_fits
from ftserve.store.pages import Page
from ftserve.store.tables import webhook_endpoints

log = logging.getLogger(__name__)

# A try ends by its deadline, whatever the receiver does: the deadline is enforced by cancelling the try, not
# by per-read timeouts a trickling receiver can keep resetting. The hold on a claimed delivery is that deadline
# plus this margin (for recording the result), so the hold never runs out while the try is still sending, and
# no other worker can send the same try meanwhile. A worker that dies holding one frees it when the hold ends.
HOLD_MARGIN_SECONDS = 60.0
ROTATION_GRACE_SECONDS = 24 * 3600

# What the delivery log says about a try that got no HTTP answer. Deliberately coarse: a refused connection,
# a reset and a name that does not resolve all read the same, so the log cannot be used to map a network.
NOT_DELIVERED = "could not deliver"
TIMED_OUT = "timed out"
NOT_ALLOWED = "address not allowed"


@dataclass(frozen=True)
class Sending:
    """How deliveries and tests are sent (FTSERVE_WEBHOOK_*)."""

    timeout: float = 10.0
    """The whole of one try: resolving, connecting, sending, and the receiver's status line and headers."""
    senders: int = 8
    """Tries one worker makes at once."""
    per_endpoint: int = 2
    """Tries in flight to one endpoint at once: deliveries, across workers; tests, in this process."""
    allow: Allow = field(default_factory=Allow)


@dataclass(frozen=True)
class Claim:
    delivery: Delivery
    endpoint: Endpoint
    holder: str


@dataclass(frozen=True)
class Outcome:
    status: int | None
    """The receiver's HTTP status; None when it gave none."""
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookService:
    def __init__(self, engine: sa.Engine, retry: Retry, sending: Sending = Sending()):
        self.engine = engine
        self.retry = retry
        self.sending = sending
        # Name lookups run here: one that hangs is abandoned at the deadline, and holds none of the threads
        # the API or the database calls need.
        self.resolver = ThreadPoolExecutor(max_workers=max(4, sending.senders), thread_name_prefix="ftserve-webhook-dns")
        self._testing: Counter[str] = Counter()
        self._testing_lock = threading.Lock()

    async def check_url(self, url: str) -> None:
        """Refuse (400, `url`) a URL webhooks may not call: its host as written, and the addresses it resolves
        to now. A try checks the addresses again, since a name can change where it points."""
        await check(url, self.sending.allow, self.resolver, self.sending.timeout)

    def create(self, project: str, name: str, url: str, event_types: list[str]) -> Endpoint:
        moment = now()
        endpoint = Endpoint(
            id=new_id("we_"), project=project, name=_text(name, "name"), url=_url(url, self.sending.allow),
            event_types=_event_types(event_types), secret=new_secret(), created_at=moment, updated_at=moment,
        )
        with self.engine.begin() as conn:
            rows.insert_endpoint(conn, endpoint)
        return endpoint

    def get(self, project: str, endpoint_id: str) -> Endpoint:
        with self.engine.connect() as conn:
            return self._get(conn, project, endpoint_id)

    def list(self, project: str, *, after: str | None, limit: int) -> Page[Endpoint]:
        with self.engine.connect() as conn:
            return rows.list_endpoints(conn, project, after=after, limit=limit)

    def update(self, project: str, endpoint_id: str, *, name: str | None, url: str | None,
               event_types: builtins.list[str] | None) -> Endpoint:
        changes: dict[str, object] = {}
        if name is not None:
            changes["name"] = _text(name, "name")
        if url is not None:
            changes["url"] = _url(url, self.sending.allow)
        if event_types is not None:
            changes["event_types"] = _event_types(event_types)
        with self.engine.begin() as conn:
            endpoint = self._get(conn, project, endpoint_id)
            if any(getattr(endpoint, key) != value for key, value in changes.items()):
                rows.update_endpoint(conn, endpoint_id, {**changes, "updated_at": now()})
            return self._get(conn, project, endpoint_id)

    def delete(self, project: str, endpoint_id: str) -> None:
        with self.engine.begin() as conn:
            self._get(conn, project, endpoint_id)
            rows.delete_endpoint(conn, endpoint_id)

    def rotate_secret(self, project: str, endpoint_id: str, *, keep_old: bool) -> Endpoint:
        moment = now()
        with self.engine.begin() as conn:
            endpoint = self._get(conn, project, endpoint_id)
            rows.update_endpoint(conn, endpoint_id, {
                "secret": new_secret(), "updated_at": moment,
                "previous_secret": endpoint.secret if keep_old else None,
                "previous_secret_until": moment + ROTATION_GRACE_SECONDS if keep_old else None,
            })
            return self._get(conn, project, endpoint_id)

    async def test(self, endpoint: Endpoint, event_type: str) -> bool:
        """Send one sample event of `event_type` to the endpoint now; whether it was delivered (a 2xx answer).
        Only that: what else the try met (a status, a refused connection, silence) would map the network."""
        if event_type not in EVENT_TYPES:
            raise InvalidRequest(f"Unknown event type '{event_type[:100]}'. Known: {', '.join(EVENT_TYPES)}.",
                                 param="event_type")
        event_id = new_id("evt_")
        with self._test_slot(endpoint.id):
            outcome = await self._send(endpoint, event_id, event_body(event_id, event_type, now(), {"id": "ftjob-test"}))
        return outcome.delivered

    @contextmanager
    def _test_slot(self, endpoint_id: str) -> Iterator[None]:
        with self._testing_lock:
            if self._testing[endpoint_id] >= self.sending.per_endpoint:
                raise RateLimited(f"{self.sending.per_endpoint} tests of this endpoint are already under way; try again "
                                  "when one has finished.", retry_after=self.sending.timeout)
            self._testing[endpoint_id] += 1
        try:
            yield
        finally:
            with self._testing_lock:
                self._testing[endpoint_id] -= 1
                if not self._testing[endpoint_id]:
                    del self._testing[endpoint_id]

    def deliveries(self, project: str, endpoint_id: str, *, after: str | None, limit: int) -> Page[Delivery]:
        with self.engine.connect() as conn:
            self._get(conn, project, endpoint_id)
            return rows.list_deliveries(conn, endpoint_id, after=after, limit=limit)

    def claim(self) -> Claim | None:
        """The delivery most overdue whose endpoint has room for another try, held for this caller."""
        holder, started = new_id("send_", 16), time.time()
        with self.engine.begin() as conn:
            claimed = rows.claim_due(conn, started, started + self.sending.timeout + HOLD_MARGIN_SECONDS, holder,
                                     self.sending.per_endpoint)
        return Claim(*claimed, holder) if claimed is not None else None

    async def attempt(self, claim: Claim) -> None:
        """Make the claimed try and record what it got."""
        delivery, endpoint = claim.delivery, claim.endpoint
        try:
            outcome = await self._send(endpoint, delivery.event_id, delivery.body)
        except Exception:  # recorded as a failed try, so it counts towards giving up
            log.exception("webhook %s to endpoint %s", delivery.event_id, endpoint.id)
            outcome = Outcome(None, NOT_DELIVERED)
        await asyncio.to_thread(self._record, claim, outcome, time.time())

    def _record(self, claim: Claim, outcome: Outcome, at: float) -> None:
        delivery, endpoint = claim.delivery, claim.endpoint
        following = None if outcome.delivered else self.retry.next_attempt(delivery.created_at, delivery.attempts + 1, at)
        if not outcome.delivered:
            log.warning("webhook %s to endpoint %s failed (try %d): %s%s", delivery.event_id, endpoint.id,
                        delivery.attempts + 1, outcome.error, "" if following else "; giving up")
        with self.engine.begin() as conn:
            if not rows.record_attempt(conn, delivery.id, claim.holder, at=at, status_code=outcome.status,
                                       error=outcome.error, delivered=outcome.delivered, next_attempt_at=following):
                log.warning("webhook %s: not recorded; its endpoint was deleted, or the try outlived its hold and "
                            "another worker owns it now", delivery.event_id)

    async def _send(self, endpoint: Endpoint, event_id: str, body: str) -> Outcome:
        """POST one signed event to the endpoint's checked addresses, all of it within the deadline. The answer's
        body is never read or kept: an endpoint's reply is not ftserve's to store or show."""
        timestamp = int(time.time())
        payload = body.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": "ftserve-webhooks",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(endpoint.secrets_in_use(timestamp), event_id, timestamp, payload),
        }
        allow = self.sending.allow
        try:
            async with asyncio.timeout(self.sending.timeout):
                found = target(endpoint.url, allow)  # again: the allowlist may have shrunk since it was registered
                status = await post(found, await resolve(found, allow, self.resolver), headers, payload,
                                    self.sending.timeout)
        except (TimeoutError, httpcore.TimeoutException):
            return Outcome(None, TIMED_OUT)
        except (InvalidRequest, Refused) as refused:
            log.warning("webhook %s to endpoint %s not sent: %s", event_id, endpoint.id, refused)
            return Outcome(None, NOT_ALLOWED)
        except NETWORK_ERRORS as error:
            log.info("webhook %s to endpoint %s: %s", event_id, endpoint.id, type(error).__name__)
            return Outcome(None, NOT_DELIVERED)
        return Outcome(status, None if 200 <= status < 300 else f"HTTP {status}")

    @staticmethod
    def _get(conn: sa.Connection, project: str, endpoint_id: str) -> Endpoint:
        endpoint = rows.get_endpoint(conn, endpoint_id, project)
        if endpoint is None:
            raise NotFound(f"No webhook endpoint with id '{endpoint_id[:100]}'.", param="webhook_endpoint_id")
        return endpoint


def _text(value: str, param: str) -> str:
    check_fits(webhook_endpoints.c[param], value, param)
    return value


def _url(url: str, allow: Allow) -> str:
    """The URL as given, once its host as written passes the address rules (`check_url` adds its addresses)."""
    target(_text(url, "url"), allow)
    return url


def _event_types(event_types: list[str]) -> list[str]:
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"Unknown event type '{unknown[0][:100]}'. Known: {', '.join(EVENT_TYPES)}.",
                             param="event_types")
    return list(dict.fromkeys(event_types))
