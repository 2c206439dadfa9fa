"""Wire types shared by every resource: the error envelope and list pages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema

# A query parameter that may be left out but is never null on the wire.
OptionalQuery = str | SkipJsonSchema[None]


class Wire(BaseModel):
    """Base of every response type: unknown keys are a bug, so they are refused."""

    model_config = ConfigDict(extra="forbid")


class Request(BaseModel):
    """Base of every request body: an unknown argument is a 400 that names it, as at OpenAI."""

    model_config = ConfigDict(extra="forbid")


class Error(Wire):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Wire):
    error: Error


