"""Use cases of `/webhook_endpoints`, and delivering what the outbox holds."""

from __future__ import annotations

import builtins  # the service's own `list` method shadows the type inside its class
import logging
import time
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from ftserve.domain.errors import InvalidRequest, NotFound
from ftserve.domain.ids import new_id
from ftserve.domain.webhooks import EVENT_TYPES, Delivery, Endpoint, Retry, event_body, new_secret, signature_header
from ftserve.services.clock import now
from ftserve.store import webhooks as rows
from ftserve.store.database import storable
from ftserve.store.pages import Page

log = logging.getLogger(__name__)

# How long one try waits for an endpoint to connect, and again to answer. Receivers should answer at once
# and work afterwards.
SEND_TIMEOUT_SECONDS = 10.0
# How long a worker holds the delivery it is trying, well past a try's longest wait; a worker that dies
# holding one frees it after this.
HOLD_SECONDS = 60.0
ROTATION_GRACE_SECONDS = 24 * 3600


class WebhookService:
    def __init__(self, engine: sa.Engine, retry: Retry):
        self.engine = engine
        self.retry = retry
        self.http = httpx.Client(timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False)

    def create(self, project: str, name: str, url: str, event_types: list[str]) -> Endpoint:
        moment = now()
        endpoint = Endpoint(
            id=new_id("we_"), project=project, name=_text(name, "name"), url=_url(url),
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
            changes["url"] = _url(url)
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

    def test(self, project: str, endpoint_id: str, event_type: str) -> int:
        """Send one sample event of `event_type` now; what the endpoint answered (0: unreachable)."""
        endpoint = self.get(project, endpoint_id)
        if event_type not in EVENT_TYPES:
            raise InvalidRequest(f"Unknown event type '{event_type[:100]}'. Known: {', '.join(EVENT_TYPES)}.",
                                 param="event_type")
        event_id = new_id("evt_")
        body = event_body(event_id, event_type, now(), {"id": "ftjob-test"})
        status, _ = self._send(endpoint, event_id, body)
        return status or 0

    def deliveries(self, project: str, endpoint_id: str, *, after: str | None, limit: int) -> Page[Delivery]:
        with self.engine.connect() as conn:
            self._get(conn, project, endpoint_id)
            return rows.list_deliveries(conn, endpoint_id, after=after, limit=limit)

    def deliver_due(self, most: int = 20) -> int:
        """Try deliveries that are due, one at a time, up to `most`; how many were tried."""
        holder = new_id("send_", 16)
        tried = 0
        while tried < most:
            started = time.time()
            with self.engine.begin() as conn:
                claimed = rows.claim_due(conn, started, started + HOLD_SECONDS, holder)
            if claimed is None:
                break
            tried += 1
            self._try(*claimed, holder)
        return tried

    def _try(self, delivery: Delivery, endpoint: Endpoint, holder: str) -> None:
        try:
            status, error = self._send(endpoint, delivery.event_id, delivery.body)
        except Exception as unexpected:  # recorded as a failed try, so it counts towards giving up
            log.exception("webhook %s to endpoint %s", delivery.event_id, endpoint.id)
            status, error = None, f"{type(unexpected).__name__} while sending"
        at = time.time()
        delivered = status is not None and 200 <= status < 300
        following = None if delivered else self.retry.next_attempt(delivery.created_at, delivery.attempts + 1, at)
        if not delivered:
            log.warning("webhook %s to endpoint %s failed (try %d): %s%s", delivery.event_id, endpoint.id,
                        delivery.attempts + 1, error, "" if following else "; giving up")
        with self.engine.begin() as conn:
            if not rows.record_attempt(conn, delivery.id, holder, at=at, status_code=status, error=error,
                                       delivered=delivered, next_attempt_at=following):
                log.warning("webhook %s: the try outlived its hold; another worker owns it now", delivery.event_id)

    def _send(self, endpoint: Endpoint, event_id: str, body: str) -> tuple[int | None, str | None]:
        """POST one signed event; what the endpoint answered, and what went wrong, if anything. The answer's
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
        try:
            with self.http.stream("POST", endpoint.url, content=payload, headers=headers) as response:
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as error:
            return None, type(error).__name__ + (": timed out" if isinstance(error, httpx.TimeoutException) else "")
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    @staticmethod
    def _get(conn: sa.Connection, project: str, endpoint_id: str) -> Endpoint:
        endpoint = rows.get_endpoint(conn, endpoint_id, project)
        if endpoint is None:
            raise NotFound(f"No webhook endpoint with id '{endpoint_id[:100]}'.", param="webhook_endpoint_id")
        return endpoint


def _text(value: str, param: str) -> str:
    if not storable(value):
        raise InvalidRequest(f"{param} holds a NUL character or half a surrogate pair.", param=param)
    return value


def _url(url: str) -> str:
    try:
        parts = urlsplit(_text(url, "url"))
        host = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket, say
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"url must be an http:// or https:// URL with a host, not '{url[:200]}'.", param="url")
    return url


def _event_types(event_types: list[str]) -> list[str]:
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"Unknown event type '{unknown[0][:100]}'. Known: {', '.join(EVENT_TYPES)}.",
                             param="event_types")
    return list(dict.fromkeys(event_types))
