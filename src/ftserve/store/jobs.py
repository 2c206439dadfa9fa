"""Rows of fine-tuning jobs: insert, read, page, move between statuses, and the worker's lease."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Iterable

import sqlalchemy as sa

from ftserve.domain.jobs import ACTIVE, LIVE, Job, JobError, JobStatus, can_move
from ftserve.domain.webhooks import JOB_EVENTS
from ftserve.store import webhooks
from ftserve.store.database import storable
from ftserve.store.pages import Page, select_page
from ftserve.store.tables import jobs

CLAIMABLE = (JobStatus.VALIDATING_FILES.value, JobStatus.QUEUED.value)


def _job(row: sa.Row) -> Job:
    data = dict(row._mapping)
    for internal in ("seq", "lease_expires_at", "request_hash", "idempotency_key", "poll_at"):
        data.pop(internal)
    data["status"] = JobStatus(data["status"])
    data["error"] = JobError(**data["error"]) if data["error"] else None
    return Job(**data)


def insert(conn: sa.Connection, job: Job, *, request_hash: str | None, idempotency_key: str | None) -> None:
    values = asdict(job)
    values["status"] = job.status.value
    values["error"] = None
    conn.execute(jobs.insert().values(**values, request_hash=request_hash, idempotency_key=idempotency_key))


def get(conn: sa.Connection, job_id: str, project: str | None = None) -> Job | None:
    if not storable(job_id):
        return None
    query = sa.select(jobs).where(jobs.c.id == job_id)
    if project is not None:
        query = query.where(jobs.c.project == project)
    row = conn.execute(query).first()
    return _job(row) if row else None


def find_by_idempotency_key(conn: sa.Connection, project: str, key: str) -> tuple[Job, str | None] | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.project == project, jobs.c.idempotency_key == key)).first()
    return (_job(row), row.request_hash) if row else None


def find_recent_by_hash(conn: sa.Connection, project: str, request_hash: str, since: int) -> Job | None:
    row = conn.execute(
        sa.select(jobs)
        .where(jobs.c.project == project, jobs.c.request_hash == request_hash, jobs.c.created_at >= since)
        .order_by(jobs.c.seq.desc())
        .limit(1)
    ).first()
    return _job(row) if row else None


def list_page(
    conn: sa.Connection,
    project: str,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    metadata_is_null: bool,
) -> Page[Job]:
    where: list[sa.ColumnElement[bool]] = [jobs.c.project == project]
    if metadata_is_null:
        where.append(jobs.c.metadata.is_(None))
    for key, value in (metadata or {}).items():
        where.append(_metadata_is(conn, key, value) if storable(key) and storable(value) else sa.false())
    page = select_page(conn, jobs, where, after=after, limit=limit)
    return Page([_job(r) for r in page.items], page.has_more)


def _metadata_is(conn: sa.Connection, key: str, value: str) -> sa.ColumnElement[bool]:
    if conn.dialect.name == "sqlite":
        # SQLite's JSON paths cannot quote a key that holds '"'; json_each compares keys as plain strings.
        pairs = sa.func.json_each(jobs.c.metadata).table_valued("key", "value")
        return sa.exists().where(pairs.c.key == key, pairs.c.value == value)
    return jobs.c.metadata[key].as_string() == value


def move(
    conn: sa.Connection,
    job_id: str,
    target: JobStatus,
    *,
    source: Iterable[JobStatus],
    worker_id: str | None = None,
    release: bool = False,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move a job to `target` if it is still in one of `source` (and, given `worker_id`, still
    leased to that worker). Returns False when someone else moved it first: the caller lost the race.
    Every source -> target move must be one the domain's transition table allows. A move to a terminal
    status records its webhook event in the same transaction."""
    source = tuple(source)
    illegal = [s.value for s in source if not can_move(s, target)]
    if illegal:
        raise ValueError(f"the job state machine has no move from {illegal} to {target.value}")
    query = jobs.update().where(jobs.c.id == job_id, jobs.c.status.in_([s.value for s in source]))
    if worker_id is not None:
        query = query.where(jobs.c.worker_id == worker_id)
    update: dict[str, Any] = {"status": target.value, **(values or {})}
    if "error" in update and isinstance(update["error"], JobError):
        update["error"] = asdict(update["error"])
    if release:
        update.update(worker_id=None, lease_expires_at=None)
    moved = conn.execute(query.values(**update).returning(jobs.c.project)).first()
    if moved and target in JOB_EVENTS:
        webhooks.enqueue(conn, moved.project, JOB_EVENTS[target], {"id": job_id}, int(time.time()))
    return moved is not None


def update_running(conn: sa.Connection, job_id: str, worker_id: str, values: dict[str, Any]) -> bool:
    """Write progress fields of a job this worker holds, unless it left `running`/`pausing`."""
    result = conn.execute(
        jobs.update()
        .where(
            jobs.c.id == job_id,
            jobs.c.worker_id == worker_id,
            jobs.c.status.in_([JobStatus.RUNNING.value, JobStatus.PAUSING.value]),
        )
        # With nothing to change, rewriting worker_id still tells whether the row matched.
        .values(**(values or {"worker_id": worker_id}))
    )
    return result.rowcount > 0


def active(conn: sa.Connection, project: str) -> tuple[int, int | None]:
    """How many of a project's jobs are active, and the soonest any of them expects to finish."""
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.min(jobs.c.estimated_finish))
        .where(jobs.c.project == project, jobs.c.status.in_([s.value for s in ACTIVE]))
    ).one()
    return int(row[0]), row[1]


def live_use(project: sa.ColumnElement[str] | str, file_id: sa.ColumnElement[str] | str) -> sa.ColumnElement[bool]:
    """A live job of `project` trains on or validates with `file_id`: such a file is kept until the job ends."""
    return sa.and_(
        jobs.c.project == project, jobs.c.status.in_([s.value for s in LIVE]),
        sa.or_(jobs.c.training_file == file_id, jobs.c.validation_file == file_id),
    )


def using_file(conn: sa.Connection, project: str, file_id: str) -> list[Job]:
    """The live jobs that read `file_id`, oldest first."""
    rows = conn.execute(sa.select(jobs).where(live_use(project, file_id)).order_by(jobs.c.seq)).all()
    return [_job(r) for r in rows]


def status_counts(conn: sa.Connection) -> dict[JobStatus, tuple[int, int]]:
    """How many jobs are in each status, and how many of those no worker holds: one GROUP BY, for /metrics."""
    held = sa.func.count(jobs.c.worker_id)  # COUNT(column) skips NULLs
    rows = conn.execute(sa.select(jobs.c.status, sa.func.count(), held).group_by(jobs.c.status)).all()
    return {JobStatus(status): (total, total - holding) for status, total, holding in rows}


def claim(conn: sa.Connection, worker_id: str, lease_until: float, now: float | None = None) -> Job | None:
    """Lease the oldest job that waits for a worker.
    A hosted job whose provider could not be reached waits out its back-off (`poll_at`) first."""
    now = time.time() if now is None else now
    return _lease_first(
        conn, worker_id, lease_until,
        [jobs.c.status.in_(CLAIMABLE), sa.or_(jobs.c.poll_at.is_(None), jobs.c.poll_at <= now)], jobs.c.seq,
        # Only training counts as an attempt; checking files does not.
        attempts=jobs.c.attempts + sa.case((jobs.c.status == JobStatus.QUEUED.value, 1), else_=0),
    )


def _poll_due(now: float) -> list[sa.ColumnElement[bool]]:
    return [jobs.c.poll_at <= now, jobs.c.provider.is_not(None), jobs.c.status.not_in(CLAIMABLE)]


def poll_due(conn: sa.Connection, now: float) -> bool:
    """Whether a submitted hosted job is due for a poll: a read, so an idle worker takes no write lock to learn it."""
    query = sa.select(jobs.c.seq).where(*_poll_due(now), jobs.c.worker_id.is_(None)).limit(1)
    return conn.execute(query).first() is not None


def claim_remote(conn: sa.Connection, worker_id: str, lease_until: float, now: float) -> Job | None:
    """Lease the submitted hosted job whose next poll is most overdue, so one worker at a time talks to its provider."""
    return _lease_first(conn, worker_id, lease_until, _poll_due(now), jobs.c.poll_at)


def _lease_first(
    conn: sa.Connection, worker_id: str, lease_until: float, where: list[sa.ColumnElement[bool]],
    order: sa.ColumnElement[Any], **values: Any,
) -> Job | None:
    """Lease the first unleased job matching `where`. One statement, so two workers never get the same job:
    PostgreSQL skips rows another transaction holds; SQLite runs the statement under its write lock."""
    candidate = sa.select(jobs.c.seq).where(*where, jobs.c.worker_id.is_(None)).order_by(order).limit(1)
    if conn.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    row = conn.execute(
        jobs.update()
        .where(jobs.c.seq == candidate.scalar_subquery())
        .values(worker_id=worker_id, lease_expires_at=lease_until, **values)
        .returning(*jobs.c)
    ).first()
    return _job(row) if row else None


def set_remote(
    conn: sa.Connection, job_id: str, worker_id: str, remote: dict[str, Any] | None, poll_at: float | None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Record what the provider reported and when to ask again (None: never), while this worker holds the job."""
    result = conn.execute(
        jobs.update().where(jobs.c.id == job_id, jobs.c.worker_id == worker_id)
        .values(remote=remote, poll_at=poll_at, **(values or {}))
    )
    return result.rowcount > 0


def heartbeat(conn: sa.Connection, job_id: str, worker_id: str, lease_until: float) -> JobStatus | None:
    """Extend the lease; returns the job's status now, or None if this worker no longer holds it."""
    row = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id)
        .values(lease_expires_at=lease_until)
        .returning(jobs.c.status)
    ).first()
    return JobStatus(row.status) if row else None


def release(conn: sa.Connection, job_id: str, worker_id: str) -> None:
    conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id)
        .values(worker_id=None, lease_expires_at=None)
    )


def stalled(conn: sa.Connection, now: float) -> list[Job]:
    """Jobs whose worker stopped renewing its lease."""
    rows = conn.execute(
        sa.select(jobs).where(jobs.c.worker_id.is_not(None), jobs.c.lease_expires_at < now)
    ).all()
    return [_job(r) for r in rows]
