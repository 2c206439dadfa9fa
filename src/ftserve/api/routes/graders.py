"""`/fine_tuning/alpha/graders/run` and `/fine_tuning/alpha/graders/validate`.

Both are plain `def`: FastAPI runs them in its thread pool, since a model grader waits for its judge's answer.
"""

from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from ftserve.schemas import graders as wire
from ftserve.services.graders import GraderService


def router(graders: GraderService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(tags=["Fine-tuning"])
    Project = Annotated[str, Depends(project)]

    @api.post("/fine_tuning/alpha/graders/run", response_model=wire.RunGraderResponse)
    def run_grader(body: wire.RunGraderRequest, owner: Project) -> dict[str, Any]:
        return graders.run(owner, _as_sent(body.grader), body.model_sample, body.item or {})

    @api.post("/fine_tuning/alpha/graders/validate", response_model=wire.ValidateGraderResponse)
    def validate_grader(body: wire.ValidateGraderRequest, owner: Project) -> dict[str, Any]:
        return {"grader": graders.validate(owner, _as_sent(body.grader))}

    return api


def _as_sent(grader: BaseModel) -> dict[str, Any]:
    # The dict the graders read, in the shape a job stores its grader: set fields and defaults, never null.
    return grader.model_dump(mode="json", exclude_none=True)
