"""Wire types of `/models`."""

from __future__ import annotations

from typing import Literal

from ftserve.schemas.common import Wire


class Model(Wire):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str
    shutdown_date: str | None = None


class ListModelsResponse(Wire):
    object: Literal["list"] = "list"
    data: list[Model]


class DeleteModelResponse(Wire):
    id: str
    deleted: bool
    object: str = "model"
