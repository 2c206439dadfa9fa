"""Rows of job events and checkpoints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from ftserve.domain.ids import new_id
from ftserve.domain.jobs import Checkpoint, JobEvent
from ftserve.domain.webhooks import CHECKPOINT_CREATED
from ftserve.store import webhooks
from ftserve.store.pages import Page, select_page
from ftserve.store.tables import checkpoints, job_events


def append(
    conn: sa.Connection,
    job_id: str,
    created_at: int,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        job_events.insert().values(
            id=new_id("ftevent-"), job_id=job_id, created_at=created_at,
            level=level, message=message, type=type, data=data,
        )
    )


def list_events(conn: sa.Connection, job_id: str, *, after: str | None, limit: int) -> Page[JobEvent]:
    page = select_page(conn, job_events, [job_events.c.job_id == job_id], after=after, limit=limit)
    return Page(
        [JobEvent(**{k: v for k, v in r._mapping.items() if k != "seq"}) for r in page.items], page.has_more
    )


def add_checkpoint(conn: sa.Connection, checkpoint: Checkpoint, project: str) -> None:
    values = asdict(checkpoint)
    values["name"] = values.pop("fine_tuned_model_checkpoint")
    conn.execute(checkpoints.insert().values(**values, project=project))
    webhooks.enqueue(conn, project, CHECKPOINT_CREATED, {
        "id": checkpoint.job_id, "checkpoint_id": checkpoint.id, "step_number": checkpoint.step_number,
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
    }, checkpoint.created_at)


def _checkpoint(row: sa.Row) -> Checkpoint:
    return Checkpoint(
        id=row.id, job_id=row.job_id, created_at=row.created_at, fine_tuned_model_checkpoint=row.name,
        step_number=row.step_number, metrics=row.metrics, path=row.path, remote_model=row.remote_model,
    )


def list_checkpoints(conn: sa.Connection, job_id: str, *, after: str | None, limit: int) -> Page[Checkpoint]:
    page = select_page(conn, checkpoints, [checkpoints.c.job_id == job_id], after=after, limit=limit)
    return Page([_checkpoint(r) for r in page.items], page.has_more)


def last_metrics_step(conn: sa.Connection, job_id: str) -> int:
    """The last training step a job's metrics events reached (0 before its first)."""
    return max((data["step"] for data in metrics_of(conn, job_id) if "step" in data), default=0)


def has_message(conn: sa.Connection, job_id: str, message: str) -> bool:
    query = sa.select(job_events.c.seq).where(job_events.c.job_id == job_id, job_events.c.message == message).limit(1)
    return conn.execute(query).first() is not None


def count_messages(conn: sa.Connection, job_id: str, messages: tuple[str, ...]) -> int:
    query = sa.select(sa.func.count()).where(job_events.c.job_id == job_id, job_events.c.message.in_(messages))
    return int(conn.execute(query).scalar_one())


def checkpoint_steps(conn: sa.Connection, job_id: str) -> set[int]:
    return set(conn.execute(sa.select(checkpoints.c.step_number).where(checkpoints.c.job_id == job_id)).scalars())


def metrics_of(conn: sa.Connection, job_id: str) -> list[dict[str, Any]]:
    """The data of every metrics event of a job, oldest first."""
    return list(
        conn.execute(
            sa.select(job_events.c.data)
            .where(job_events.c.job_id == job_id, job_events.c.type == "metrics")
            .order_by(job_events.c.seq)
        ).scalars()
    )
