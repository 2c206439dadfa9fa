"""Rows of fine-tuned models and the permissions that share them with other projects."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from ftserve.store.database import storable
from ftserve.store.pages import Page, select_page
from ftserve.store.tables import checkpoint_permissions, checkpoints, fine_tuned_models


@dataclass(frozen=True)
class ModelRow:
    """A fine-tuned model or checkpoint model as `/models` shows it."""

    name: str
    project: str
    job_id: str
    created_at: int
    is_checkpoint: bool
    path: str | None
    provider: str | None = None
    remote_model: str | None = None
    """The model's id at its hosted provider, for a model a hosted job made."""


@dataclass(frozen=True)
class Permission:
    id: str
    model_name: str
    project_id: str
    created_at: int


def add_model(
    conn: sa.Connection, name: str, project: str, job_id: str, base_model: str, created_at: int, path: str | None,
    provider: str | None = None, remote_model: str | None = None,
) -> None:
    conn.execute(
        fine_tuned_models.insert().values(
            name=name, project=project, job_id=job_id, base_model=base_model, created_at=created_at, path=path,
            provider=provider, remote_model=remote_model,
        )
    )


def _shared_with(project: str) -> sa.Select:
    return sa.select(checkpoint_permissions.c.model_name).where(checkpoint_permissions.c.project_id == project)


def visible_models(conn: sa.Connection, project: str) -> list[ModelRow]:
    """The project's own fine-tuned and checkpoint models, and those other projects shared with it."""
    shared = _shared_with(project)
    finals = conn.execute(
        sa.select(fine_tuned_models).where(
            sa.or_(fine_tuned_models.c.project == project, fine_tuned_models.c.name.in_(shared))
        ).order_by(fine_tuned_models.c.seq)
    ).all()
    ckpts = conn.execute(
        sa.select(checkpoints).where(sa.or_(checkpoints.c.project == project, checkpoints.c.name.in_(shared)))
        .order_by(checkpoints.c.seq)
    ).all()
    return [_final(r) for r in finals] + [_checkpoint(r) for r in ckpts]


def _final(row: sa.Row) -> ModelRow:
    return ModelRow(row.name, row.project, row.job_id, row.created_at, False, row.path, row.provider, row.remote_model)


def _checkpoint(row: sa.Row) -> ModelRow:
    return ModelRow(row.name, row.project, row.job_id, row.created_at, True, row.path, None, row.remote_model)


def find_model(conn: sa.Connection, name: str) -> ModelRow | None:
    """A fine-tuned or checkpoint model by name, whoever owns it."""
    if not storable(name):
        return None
    row = conn.execute(sa.select(fine_tuned_models).where(fine_tuned_models.c.name == name)).first()
    if row:
        return _final(row)
    row = conn.execute(sa.select(checkpoints).where(checkpoints.c.name == name)).first()
    return _checkpoint(row) if row else None


def is_shared_with(conn: sa.Connection, name: str, project: str) -> bool:
    row = conn.execute(
        sa.select(checkpoint_permissions.c.id).where(
            checkpoint_permissions.c.model_name == name, checkpoint_permissions.c.project_id == project
        )
    ).first()
    return row is not None


def delete_model(conn: sa.Connection, model: ModelRow) -> list[ModelRow]:
    """Forget a model and every permission on it. A final model takes its job's checkpoint models with it, so
    nothing of a deleted model's job is left listed or served. Returns the models forgotten, the named one first."""
    permissions = checkpoint_permissions.delete()
    if model.is_checkpoint:
        conn.execute(permissions.where(checkpoint_permissions.c.model_name == model.name))
        conn.execute(checkpoints.delete().where(checkpoints.c.name == model.name))
        return [model]
    of_job = checkpoints.c.job_id == model.job_id
    gone = [model] + [_checkpoint(row) for row in conn.execute(sa.select(checkpoints).where(of_job)).all()]
    conn.execute(permissions.where(sa.or_(
        checkpoint_permissions.c.model_name == model.name,
        checkpoint_permissions.c.model_name.in_(sa.select(checkpoints.c.name).where(of_job)),
    )))
    conn.execute(checkpoints.delete().where(of_job))
    conn.execute(fine_tuned_models.delete().where(fine_tuned_models.c.name == model.name))
    return gone


def path_in_use(conn: sa.Connection, path: str) -> bool:
    """Whether any fine-tuned or checkpoint model still points at this artifact."""
    for table in (fine_tuned_models, checkpoints):
        if conn.execute(sa.select(table.c.path).where(table.c.path == path).limit(1)).first():
            return True
    return False


def add_permission(conn: sa.Connection, permission: Permission, owner_project: str) -> Permission:
    """Grant a project access to a model; granting twice returns the first grant."""
    existing = conn.execute(
        sa.select(checkpoint_permissions).where(
            checkpoint_permissions.c.model_name == permission.model_name,
            checkpoint_permissions.c.project_id == permission.project_id,
        )
    ).first()
    if existing:
        return Permission(existing.id, existing.model_name, existing.project_id, existing.created_at)
    conn.execute(
        checkpoint_permissions.insert().values(
            id=permission.id, model_name=permission.model_name, project_id=permission.project_id,
            created_at=permission.created_at, owner_project=owner_project,
        )
    )
    return permission


def list_permissions(
    conn: sa.Connection, name: str, *, project_id: str | None, after: str | None, limit: int, newest_first: bool
) -> Page[Permission]:
    where = [checkpoint_permissions.c.model_name == name]
    if project_id is not None:
        where.append(checkpoint_permissions.c.project_id == project_id)
    page = select_page(conn, checkpoint_permissions, where, after=after, limit=limit, newest_first=newest_first)
    return Page([Permission(r.id, r.model_name, r.project_id, r.created_at) for r in page.items], page.has_more)


def delete_permission(conn: sa.Connection, name: str, permission_id: str) -> bool:
    result = conn.execute(
        checkpoint_permissions.delete().where(
            checkpoint_permissions.c.model_name == name, checkpoint_permissions.c.id == permission_id
        )
    )
    return result.rowcount > 0
