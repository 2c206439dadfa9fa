"""Wire types of `/files` and `/uploads`, as OpenAI's spec 2.3.0 defines them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from ftserve.schemas.common import Omitted, Request, Wire

FilePurpose = Literal[
    "assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision", "user_data"
]
# What a caller may upload: the spec's list (and the SDK's FilePurpose) less `evals`, files for
# OpenAI's Evals API, which ftserve does not have and whose purpose the File object cannot carry back.
UploadPurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data"]


class FtserveFileInfo(Wire):
    """The `ftserve` field of a fine-tuning file: what its validation at upload found. Other files have none."""

    format: str = Field(description="chat, completion, preference or reinforcement")
    examples: int
    # Four characters of text a token, as a dry run estimates; null for a file stored before ftserve counted them.
    estimated_tokens: int | None


class OpenAIFile(Wire):
    """The `File` object, and ftserve's one extension field."""

    id: str
    bytes: int
    created_at: int
    expires_at: Omitted[int] = None
    filename: str
    object: Literal["file"] = "file"
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"]
    status_details: Omitted[str] = None
    ftserve: Omitted[FtserveFileInfo] = None


class ListFilesResponse(Wire):
    object: str = "list"
    data: list[OpenAIFile]
    first_id: str
    last_id: str
    has_more: bool


class FileExpirationAfter(Request):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2592000)


class CreateUploadRequest(Request):
    filename: str = Field(min_length=1)
    purpose: Literal["assistants", "batch", "fine-tune", "vision"]
    bytes: int = Field(ge=0)
    mime_type: str
    expires_after: FileExpirationAfter | SkipJsonSchema[None] = None


class CompleteUploadRequest(Request):
    part_ids: list[str]
    md5: str | SkipJsonSchema[None] = None


class Upload(Wire):
    id: str
    created_at: int
    filename: str
    bytes: int
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    expires_at: int
    object: Literal["upload"] = "upload"
    file: OpenAIFile | None = None


class UploadPart(Wire):
    id: str
    created_at: int
    upload_id: str
    object: Literal["upload.part"] = "upload.part"


class CreateFileRequest(Request):
    """The multipart body of `POST /files`; documented here, parsed by hand."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    purpose: Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]  # as the spec lists it
    expires_after: FileExpirationAfter | SkipJsonSchema[None] = None


class AddUploadPartRequest(Request):
    data: bytes = Field(json_schema_extra={"format": "binary"})


class DeleteFileResponse(Wire):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
