"""`/models`. Model names contain `:` and, for hub-style bases, `/`, so the path parameter is a path."""


from typing import Annotated, Callable

from fastapi import APIRouter, Depends

from ftserve.schemas import models as wire
from ftserve.services.models import ModelInfo, ModelService


def _model(info: ModelInfo) -> wire.Model:
    return wire.Model(id=info.id, created=info.created, owned_by=info.owned_by)


def router(models: ModelService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(tags=["Models"])
    Project = Annotated[str, Depends(project)]

    @api.get("/models", response_model=wire.ListModelsResponse)
    def list_models(owner: Project) -> wire.ListModelsResponse:
        return wire.ListModelsResponse(data=[_model(m) for m in models.list(owner)])

    @api.get("/models/{model:path}", response_model=wire.Model)
    def retrieve_model(model: str, owner: Project) -> wire.Model:
        return _model(models.get(owner, model))

    @api.delete("/models/{model:path}", response_model=wire.DeleteModelResponse)
    def delete_model(model: str, owner: Project) -> wire.DeleteModelResponse:
        models.delete(owner, model)
        return wire.DeleteModelResponse(id=model, deleted=True)

    return api
