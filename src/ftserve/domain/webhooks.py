"""Webhooks: the events ftserve sends, how a delivery is signed (Standard Webhooks), and when a failed one is retried."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from ftserve.domain.jobs import JobStatus

# OpenAI's three fine-tuning events, then ftserve's own.
JOB_EVENTS: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
}
CHECKPOINT_CREATED = "fine_tuning.job.checkpoint.created"
EVENT_TYPES: tuple[str, ...] = (*JOB_EVENTS.values(), CHECKPOINT_CREATED)

DeliveryStatus = Literal["pending", "delivered", "failed"]

SECRET_PREFIX = "whsec_"


def event_body(event_id: str, event_type: str, created_at: int, data: dict[str, Any]) -> str:
    """The JSON of an event, in OpenAI's envelope; the exact bytes every try of its delivery sends."""
    return json.dumps({"id": event_id, "object": "event", "type": event_type, "created_at": created_at, "data": data},
                      separators=(",", ":"))


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_hint(secret: str) -> str:
    return f"{SECRET_PREFIX}****{secret[-4:]}"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under the secret's key."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_in_use: list[str], message_id: str, timestamp: int, body: bytes) -> str:
    """One signature per secret in use (two for a day after a rotation that keeps the old one), space-separated."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_in_use)


@dataclass(frozen=True)
class Retry:
    """When a failed delivery is tried again: after `first` seconds, doubling up to `cap`, and not once
    `give_up` seconds have passed since the event. A delivery is tried at least once."""

    first: float = 10.0
    cap: float = 3 * 3600.0
    give_up: float = 24 * 3600.0

    def next_attempt(self, created_at: float, attempts: int, now: float) -> float | None:
        """The time of the next try after `attempts` failed ones, or None to give up."""
        when = now + min(self.first * 2 ** min(attempts - 1, 40), self.cap)  # the exponent capped: no float overflow
        return when if when <= created_at + self.give_up else None


@dataclass(frozen=True)
class Endpoint:
    id: str
    project: str
    name: str
    url: str
    event_types: list[str]
    secret: str
    created_at: int
    updated_at: int
    # After a rotation that keeps the old secret, deliveries are signed with both until this time.
    previous_secret: str | None = None
    previous_secret_until: int | None = None

    def secrets_in_use(self, now: float) -> list[str]:
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            return [self.secret, self.previous_secret]
        return [self.secret]


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    project: str
    event_id: str
    event_type: str
    body: str  # the exact JSON sent, so every retry carries the same bytes
    status: DeliveryStatus
    attempts: int
    created_at: int
    next_attempt_at: float | None
    last_attempt_at: int | None
    response_status_code: int | None
    error: str | None
