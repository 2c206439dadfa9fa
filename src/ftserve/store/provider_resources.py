"""Which of a hosted provider's jobs and models a project made: the proof a tenant owns what an option names."""

from __future__ import annotations

import sqlalchemy as sa

from ftserve.store.database import storable
from ftserve.store.tables import checkpoints, fine_tuned_models, jobs


def made_job(conn: sa.Connection, project: str, provider: str, remote_id: str) -> bool:
    """A job of `project` on `provider` whose provider-side job (or its output model) is `remote_id`."""
    # The remote id sits in the JSON `remote` column, read here rather than in SQL so that SQLite and
    # PostgreSQL agree; a project's hosted jobs on one provider are few.
    rows = conn.execute(
        sa.select(jobs.c.remote).where(jobs.c.project == project, jobs.c.provider == provider,
                                       jobs.c.remote.is_not(None))
    ).scalars()
    return any(isinstance(remote, dict) and remote_id in (remote.get("id"), remote.get("model")) for remote in rows)


def made_model(conn: sa.Connection, project: str, provider: str, remote_model: str) -> bool:
    """A fine-tuned or checkpoint model of `project` that lives at `provider` as `remote_model`."""
    if not storable(remote_model):
        return False
    final = conn.execute(
        sa.select(fine_tuned_models.c.name).where(
            fine_tuned_models.c.project == project, fine_tuned_models.c.provider == provider,
            fine_tuned_models.c.remote_model == remote_model)
    ).first()
    if final is not None:
        return True
    checkpoint = conn.execute(
        sa.select(checkpoints.c.name).join(jobs, jobs.c.id == checkpoints.c.job_id).where(
            checkpoints.c.project == project, jobs.c.provider == provider, checkpoints.c.remote_model == remote_model)
    ).first()
    return checkpoint is not None
