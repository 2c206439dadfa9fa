"""Rows of webhook endpoints and their deliveries: the outbox events are written to in the transaction that
causes them, and that workers deliver from."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from ftserve.domain.ids import new_id
from ftserve.domain.webhooks import Delivery, Endpoint, event_body
from ftserve.store.database import storable
from ftserve.store.pages import Page, select_page
from ftserve.store.tables import webhook_deliveries, webhook_endpoints


_CLAIM_LOCK = 7_104_218  # the advisory lock webhook claims take turns on (PostgreSQL)


def _endpoint(row: sa.Row) -> Endpoint:
    return Endpoint(**{k: v for k, v in row._mapping.items() if k != "seq"})


def _delivery(row: sa.Row) -> Delivery:
    return Delivery(**{k: v for k, v in row._mapping.items() if k not in ("seq", "claimed_by")})


def insert_endpoint(conn: sa.Connection, endpoint: Endpoint) -> None:
    conn.execute(webhook_endpoints.insert().values(**asdict(endpoint)))


def get_endpoint(conn: sa.Connection, endpoint_id: str, project: str) -> Endpoint | None:
    if not storable(endpoint_id):
        return None
    row = conn.execute(
        sa.select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.project == project)
    ).first()
    return _endpoint(row) if row else None


def list_endpoints(conn: sa.Connection, project: str, *, after: str | None, limit: int) -> Page[Endpoint]:
    page = select_page(conn, webhook_endpoints, [webhook_endpoints.c.project == project], after=after, limit=limit)
    return Page([_endpoint(r) for r in page.items], page.has_more)


def update_endpoint(conn: sa.Connection, endpoint_id: str, values: dict[str, Any]) -> None:
    conn.execute(webhook_endpoints.update().where(webhook_endpoints.c.id == endpoint_id).values(**values))


def delete_endpoint(conn: sa.Connection, endpoint_id: str) -> None:
    """The endpoint and its delivery log; events not yet delivered to it are dropped with it."""
    conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.endpoint_id == endpoint_id))
    conn.execute(webhook_endpoints.delete().where(webhook_endpoints.c.id == endpoint_id))


def enqueue(conn: sa.Connection, project: str, event_type: str, data: dict[str, Any], created_at: int) -> None:
    """Record an event for delivery to each of the project's endpoints that subscribe to its type.
    Called inside the transaction that makes the event happen, so an event is never lost or invented."""
    subscribed = [
        row.id for row in conn.execute(
            sa.select(webhook_endpoints.c.id, webhook_endpoints.c.event_types).where(webhook_endpoints.c.project == project)
        ) if event_type in row.event_types
    ]
    if not subscribed:
        return
    event_id = new_id("evt_")
    body = event_body(event_id, event_type, created_at, data)
    conn.execute(webhook_deliveries.insert(), [
        {"id": new_id("whdel_"), "endpoint_id": endpoint_id, "project": project, "event_id": event_id,
         "event_type": event_type, "body": body, "status": "pending", "attempts": 0, "created_at": created_at,
         "next_attempt_at": float(created_at)}
        for endpoint_id in subscribed
    ])


def claim_due(
    conn: sa.Connection, now: float, hold_until: float, holder: str, per_endpoint: int,
) -> tuple[Delivery, Endpoint] | None:
    """The delivery most overdue, with its endpoint, held by `holder` until `hold_until`: no other worker sends it
    meanwhile, and if this one dies, it is tried again once the hold runs out. Endpoints that already have
    `per_endpoint` tries held by any worker are passed over, so a slow receiver ties up no more senders than that."""
    if conn.dialect.name == "postgresql":
        # Claims take turns, so each counts the tries the ones before it hold and the limit is exact across
        # workers (SQLite's write transactions take turns already). A claim is one short statement.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK})
    candidate, held = webhook_deliveries.alias("candidate"), webhook_deliveries.alias("held")
    in_flight = (
        sa.select(sa.func.count()).select_from(held)
        .where(held.c.endpoint_id == candidate.c.endpoint_id, held.c.status == "pending",
               held.c.claimed_by.is_not(None), held.c.next_attempt_at > now)
        .correlate(candidate).scalar_subquery()
    )
    due = (
        sa.select(candidate.c.seq)
        .where(candidate.c.status == "pending", candidate.c.next_attempt_at <= now, in_flight < per_endpoint)
        .order_by(candidate.c.next_attempt_at).limit(1)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=candidate)
    row = conn.execute(
        webhook_deliveries.update().where(webhook_deliveries.c.seq == due.scalar_subquery())
        .values(next_attempt_at=hold_until, claimed_by=holder).returning(*webhook_deliveries.c)
    ).first()
    if row is None:
        return None
    endpoint = conn.execute(sa.select(webhook_endpoints).where(webhook_endpoints.c.id == row.endpoint_id)).first()
    return (_delivery(row), _endpoint(endpoint)) if endpoint else None


def record_attempt(
    conn: sa.Connection, delivery_id: str, holder: str, *, at: float, status_code: int | None, error: str | None,
    delivered: bool, next_attempt_at: float | None,
) -> bool:
    """What one try got: delivered, pending with the time of the next try, or failed for good (no next time).
    Only the worker that still holds the try records it; False when its hold ran out and another took over."""
    status = "delivered" if delivered else "pending" if next_attempt_at is not None else "failed"
    result = conn.execute(
        webhook_deliveries.update().where(
            webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.claimed_by == holder,
            webhook_deliveries.c.status == "pending",
        ).values(
            status=status, attempts=webhook_deliveries.c.attempts + 1, last_attempt_at=int(at),
            response_status_code=status_code, error=error, next_attempt_at=next_attempt_at, claimed_by=None,
        )
    )
    return result.rowcount > 0


def list_deliveries(conn: sa.Connection, endpoint_id: str, *, after: str | None, limit: int) -> Page[Delivery]:
    page = select_page(conn, webhook_deliveries, [webhook_deliveries.c.endpoint_id == endpoint_id],
                       after=after, limit=limit)
    return Page([_delivery(r) for r in page.items], page.has_more)
