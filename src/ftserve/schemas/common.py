"""Wire types shared by every resource: the error envelope and list pages."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

T = TypeVar("T")

# A query parameter that may be left out but is never null on the wire.
OptionalQuery = str | SkipJsonSchema[None]

# A field that may be unset and is then left out of the JSON, never sent as null: the spec types
# these non-nullable, so `null` would break clients that trust it.
Omitted = Annotated[T | SkipJsonSchema[None], Field(exclude_if=lambda v: v is None)]


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


