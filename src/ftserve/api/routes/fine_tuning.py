"""`/fine_tuning/jobs` and `/fine_tuning/checkpoints/{name}/permissions`."""


import re
from collections.abc import Sequence
from typing import Annotated, Callable, Literal

from fastapi import APIRouter, Depends, Query, Request

from ftserve.api import render
from ftserve.domain.errors import InvalidRequest
from ftserve.schemas import fine_tuning as wire
from ftserve.schemas.common import OptionalQuery
from ftserve.services.jobs import CreateContext, JobService
from ftserve.services.models import ModelService, Permission

_METADATA_KEY = re.compile(r"metadata\[([^\[\]]+)\]")
# The spec's `metadata` parameter is a deepObject (`metadata[k]=v`), which FastAPI cannot parse;
# the route reads it from the raw query string and documents it here.
_METADATA_PARAMETER = {
    "parameters": [
        {
            "in": "query",
            "name": "metadata",
            "required": False,
            "style": "deepObject",
            "explode": True,
            "schema": {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "null"}]},
            "description": "Filter with `metadata[k]=v`; `metadata=null` selects jobs without metadata.",
        }
    ]
}


def _metadata_filter(request: Request) -> tuple[dict[str, str] | None, bool]:
    """`metadata[k]=v` filters (all must hold) or `metadata=null`. A malformed one is a 400, never ignored:
    a filter dropped in silence would list every job."""
    pairs: dict[str, str] = {}
    is_null = False
    for key, value in request.query_params.multi_items():
        if key == "metadata":
            if value != "null":
                raise InvalidRequest("Filter with metadata[key]=value, or metadata=null for jobs without metadata.", param="metadata")
            is_null = True
        elif key.startswith("metadata["):
            match = _METADATA_KEY.fullmatch(key)
            shown = key if len(key) <= 80 else key[:77] + "..."
            if match is None:
                raise InvalidRequest(
                    f"Malformed metadata filter '{shown}': filter with metadata[key]=value, "
                    "where the key is not empty and holds no brackets.", param="metadata",
                )
            if match.group(1) in pairs:
                raise InvalidRequest(f"The metadata filter '{shown}' is given more than once.", param="metadata")
            pairs[match.group(1)] = value
    if is_null and pairs:
        raise InvalidRequest("metadata=null cannot be combined with metadata[key]=value filters.", param="metadata")
    return pairs or None, is_null


def _retry_count(request: Request) -> int:
    value = request.headers.get("x-stainless-retry-count", "0")
    return int(value) if value.isdigit() else 0


def router(jobs: JobService, models: ModelService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(tags=["Fine-tuning"])
    Project = Annotated[str, Depends(project)]

    @api.post("/fine_tuning/jobs", response_model=wire.FineTuningJob)
    def create_job(body: wire.CreateFineTuningJobRequest, request: Request, owner: Project) -> wire.FineTuningJob:
        context = CreateContext(
            idempotency_key=request.headers.get("idempotency-key"), retry_count=_retry_count(request)
        )
        return render.job(jobs.create(owner, body, context))

    @api.get("/fine_tuning/jobs", response_model=wire.ListPaginatedFineTuningJobsResponse, openapi_extra=_METADATA_PARAMETER)
    def list_jobs(
        request: Request, owner: Project, after: OptionalQuery = None, limit: Annotated[int, Query(ge=1, le=10000)] = 20
    ) -> wire.ListPaginatedFineTuningJobsResponse:
        metadata, metadata_is_null = _metadata_filter(request)
        page = jobs.list(owner, after=after, limit=limit, metadata=metadata, metadata_is_null=metadata_is_null)
        return wire.ListPaginatedFineTuningJobsResponse(data=[render.job(j) for j in page.items], has_more=page.has_more)

    @api.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=wire.FineTuningJob)
    def retrieve_job(fine_tuning_job_id: str, owner: Project) -> wire.FineTuningJob:
        return render.job(jobs.get(owner, fine_tuning_job_id))

    @api.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=wire.FineTuningJob)
    def cancel_job(fine_tuning_job_id: str, owner: Project) -> wire.FineTuningJob:
        return render.job(jobs.cancel(owner, fine_tuning_job_id))

    @api.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=wire.FineTuningJob)
    def pause_job(fine_tuning_job_id: str, owner: Project) -> wire.FineTuningJob:
        return render.job(jobs.pause(owner, fine_tuning_job_id))

    @api.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=wire.FineTuningJob)
    def resume_job(fine_tuning_job_id: str, owner: Project) -> wire.FineTuningJob:
        return render.job(jobs.resume(owner, fine_tuning_job_id))

    @api.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=wire.ListFineTuningJobEventsResponse)
    def list_events(
        fine_tuning_job_id: str, owner: Project, after: OptionalQuery = None, limit: Annotated[int, Query(ge=1, le=10000)] = 20
    ) -> wire.ListFineTuningJobEventsResponse:
        page = jobs.events(owner, fine_tuning_job_id, after=after, limit=limit)
        return wire.ListFineTuningJobEventsResponse(data=[render.event(e) for e in page.items], has_more=page.has_more)

    @api.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", response_model=wire.ListFineTuningJobCheckpointsResponse)
    def list_checkpoints(
        fine_tuning_job_id: str, owner: Project, after: OptionalQuery = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10
    ) -> wire.ListFineTuningJobCheckpointsResponse:
        page = jobs.checkpoints(owner, fine_tuning_job_id, after=after, limit=limit)
        data = [render.checkpoint(c) for c in page.items]
        return wire.ListFineTuningJobCheckpointsResponse(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=page.has_more
        )

    @api.get(
        "/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions",
        response_model=wire.ListFineTuningCheckpointPermissionResponse,
    )
    def list_permissions(
        fine_tuned_model_checkpoint: str,
        owner: Project,
        project_id: OptionalQuery = None,
        after: OptionalQuery = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10,
        order: Literal["ascending", "descending"] = "descending",
    ) -> wire.ListFineTuningCheckpointPermissionResponse:
        page = models.permissions(
            owner, fine_tuned_model_checkpoint, project_id=project_id, after=after, limit=limit, order=order
        )
        return _permissions(page.items, page.has_more)

    @api.post(
        "/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions",
        response_model=wire.ListFineTuningCheckpointPermissionResponse,
    )
    def create_permission(
        fine_tuned_model_checkpoint: str, body: wire.CreateFineTuningCheckpointPermissionRequest, owner: Project
    ) -> wire.ListFineTuningCheckpointPermissionResponse:
        return _permissions(models.grant(owner, fine_tuned_model_checkpoint, body.project_ids), False)

    @api.delete(
        "/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}",
        response_model=wire.DeleteFineTuningCheckpointPermissionResponse,
    )
    def delete_permission(
        fine_tuned_model_checkpoint: str, permission_id: str, owner: Project
    ) -> wire.DeleteFineTuningCheckpointPermissionResponse:
        models.revoke(owner, fine_tuned_model_checkpoint, permission_id)
        return wire.DeleteFineTuningCheckpointPermissionResponse(id=permission_id, deleted=True)

    return api


def _permissions(items: Sequence[Permission], has_more: bool) -> wire.ListFineTuningCheckpointPermissionResponse:
    data = [
        wire.FineTuningCheckpointPermission(id=p.id, created_at=p.created_at, project_id=p.project_id) for p in items
    ]
    return wire.ListFineTuningCheckpointPermissionResponse(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )
