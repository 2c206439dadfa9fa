"""Use cases of `/models` and checkpoint permissions."""

from __future__ import annotations

import builtins  # the service's own `list` method shadows the type inside its class
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ftserve.catalogue import CatalogueEntry
from ftserve.domain.errors import InvalidRequest, NotFound
from ftserve.domain.ids import new_id
from ftserve.files.storage import BlobStore
from ftserve.services.clock import now
from ftserve.store import models as rows
from ftserve.store.columns import check_fits
from ftserve.store.models import ModelRow, Permission
from ftserve.store.pages import Page
from ftserve.store.tables import checkpoint_permissions


@dataclass(frozen=True)
class ModelInfo:
    id: str
    created: int
    owned_by: str


class ModelService:
    def __init__(self, engine: sa.Engine, blobs: BlobStore, catalogue: dict[str, CatalogueEntry]):
        self.engine = engine
        self.blobs = blobs
        self.catalogue = catalogue
        self.on_delete: list[Callable[[str], None]] = []
        """Called with a deleted model's name: whatever holds it in memory or on disk lets go."""

    def list(self, project: str) -> list[ModelInfo]:
        """Catalogue base models, then the project's fine-tuned and checkpoint models and those shared with it."""
        with self.engine.connect() as conn:
            own = rows.visible_models(conn, project)
        return [ModelInfo(m.id, m.created, m.owned_by) for m in self.catalogue.values()] + [
            ModelInfo(m.name, m.created_at, m.project) for m in own
        ]

    def get(self, project: str, name: str) -> ModelInfo:
        if name in self.catalogue:
            base = self.catalogue[name]
            return ModelInfo(base.id, base.created, base.owned_by)
        model = self._visible(project, name)
        return ModelInfo(model.name, model.created_at, model.project)

    def hosted(self, project: str, name: str) -> ModelRow:
        """A model the project owns that a hosted job made."""
        model = self._owned(project, name, "model")
        if model.provider is None:
            raise InvalidRequest(f"'{name}' was trained on this server; only hosted models are deployed.", param="model")
        return model

    def artifact(self, project: str, name: str) -> Path | None:
        """The directory of a fine-tuned model the project can see (None: it has no weights on disk)."""
        model = self._visible(project, name)
        if model.remote_model is not None:
            raise InvalidRequest(
                f"The model '{name}' lives at {model.provider or 'its provider'} as '{model.remote_model}'; call it there"
                + (" (POST /v1/ftserve/deployments first, where the provider needs a deployment)." if model.provider else "."),
                param="model", code="model_not_servable",
            )
        if not model.path:
            return None
        try:
            directory = self.blobs.local(model.path)  # with an object store, fetched into the cache once
        except FileNotFoundError:
            return None
        return directory if directory.is_dir() else None

    def _visible(self, project: str, name: str) -> ModelRow:
        with self.engine.connect() as conn:
            model = rows.find_model(conn, name)
            if model and (model.project == project or rows.is_shared_with(conn, name, project)):
                return model
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model", code="model_not_found")

    def _owned(self, project: str, name: str, param: str) -> ModelRow:
        if name in self.catalogue:
            raise InvalidRequest(f"'{name}' is a base model; only fine-tuned models can be changed.", param=param)
        with self.engine.connect() as conn:
            model = rows.find_model(conn, name)
        if model is None or model.project != project:
            # A model shared with this project is visible, but only its owner can change it.
            raise NotFound(f"The model '{name}' does not exist or you do not own it.", param=param, code="model_not_found")
        return model

    def delete(self, project: str, name: str) -> None:
        """A fine-tuned model goes with its job's checkpoint models; a checkpoint model can go alone. Their
        permissions and their weights on disk go with them, and the inference engines let go of them."""
        model = self._owned(project, name, "model")
        with self.engine.begin() as conn:
            gone = rows.delete_model(conn, model)
            # A job's last checkpoint and its final model are the same directory: it goes with the last of them.
            unused = {m.path for m in gone if m.path is not None and not rows.path_in_use(conn, m.path)}
        for path in unused:
            self.blobs.delete(path)
        for deleted in gone:
            for forget in self.on_delete:
                forget(deleted.name)

    def permissions(
        self, project: str, name: str, *, project_id: str | None, after: str | None, limit: int, order: str
    ) -> Page[Permission]:
        self._owned(project, name, "fine_tuned_model_checkpoint")
        with self.engine.connect() as conn:
            return rows.list_permissions(
                conn, name, project_id=project_id, after=after, limit=limit, newest_first=order == "descending"
            )

    def grant(self, project: str, name: str, project_ids: builtins.list[str]) -> builtins.list[Permission]:
        self._owned(project, name, "fine_tuned_model_checkpoint")
        granted = []
        with self.engine.begin() as conn:
            for index, project_id in enumerate(project_ids):
                if not project_id:
                    raise InvalidRequest("project_ids must not contain empty strings.", param="project_ids")
                check_fits(checkpoint_permissions.c.project_id, project_id, f"project_ids[{index}]")
                permission = Permission(new_id("cp_"), name, project_id, now())
                granted.append(rows.add_permission(conn, permission, project))
        return granted

    def revoke(self, project: str, name: str, permission_id: str) -> None:
        self._owned(project, name, "fine_tuned_model_checkpoint")
        with self.engine.begin() as conn:
            if not rows.delete_permission(conn, name, permission_id):
                raise NotFound(f"No such permission: {permission_id}", param="permission_id")
