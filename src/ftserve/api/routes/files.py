"""`/files` and `/uploads`. Multipart bodies are read by hand: FastAPI does not parse the
bracketed fields (`expires_after[anchor]`) the SDK sends."""


from typing import Annotated, Any, Callable, Literal, get_args
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from ftserve.api import render
from ftserve.domain.errors import InvalidRequest
from ftserve.schemas import files as wire
from ftserve.schemas.common import OptionalQuery
from ftserve.services.files import FileService


def _multipart(schema: type[BaseModel]) -> dict[str, Any]:
    body = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    body.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


async def _form(request: Request) -> FormData:
    """The form of a multipart body; the app's BodyLimit has already refused one too large for the route."""
    try:
        return await request.form(max_files=1, max_fields=16)
    except HTTPException:  # the body limit, raised while the body streams in
        raise
    except Exception as error:  # python-multipart raises several unrelated types for a malformed body
        raise InvalidRequest(f"Could not read the multipart/form-data body: {error}") from None


def _attachment(filename: str) -> str:
    # Header values are latin-1 and a quote would end the name: anything else goes as RFC 5987's filename*.
    quoted = quote(filename)
    return f'attachment; filename="{filename}"' if quoted == filename else f"attachment; filename*=utf-8''{quoted}"


def _upload_field(form: FormData, name: str) -> UploadFile:
    value = form.get(name)
    if not isinstance(value, UploadFile):
        raise InvalidRequest(f"Missing required parameter: '{name}' (a file part).", param=name)
    return value


def _expires_after(form: FormData) -> int | None:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        policy = wire.FileExpirationAfter.model_validate({"anchor": anchor, "seconds": seconds})
    except ValueError:
        raise InvalidRequest(
            "expires_after needs anchor=created_at and seconds between 3600 and 2592000.", param="expires_after"
        ) from None
    return policy.seconds


def router(files: FileService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(tags=["Files"])
    Project = Annotated[str, Depends(project)]

    @api.post("/files", response_model=wire.OpenAIFile, openapi_extra=_multipart(wire.CreateFileRequest))
    async def create_file(request: Request, owner: Project) -> wire.OpenAIFile:
        form = await _form(request)
        upload = _upload_field(form, "file")
        purpose = form.get("purpose")
        allowed = get_args(wire.UploadPurpose)
        if purpose not in allowed:
            raise InvalidRequest(f"Invalid value for 'purpose': must be one of {', '.join(allowed)}.", param="purpose")
        expires = _expires_after(form)
        record = await run_in_threadpool(
            files.create, owner, upload.filename or "", str(purpose), upload.file, expires_after=expires
        )
        return render.file(record)

    @api.get("/files", response_model=wire.ListFilesResponse)
    def list_files(
        owner: Project,
        purpose: OptionalQuery = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        order: Literal["asc", "desc"] = "desc",
        after: OptionalQuery = None,
    ) -> wire.ListFilesResponse:
        page = files.list(owner, purpose=purpose, after=after, limit=limit, order=order)
        data = [render.file(f) for f in page.items]
        # The spec makes first_id/last_id required strings, so an empty page carries "".
        return wire.ListFilesResponse(
            data=data, first_id=data[0].id if data else "", last_id=data[-1].id if data else "", has_more=page.has_more
        )

    @api.get("/files/{file_id}", response_model=wire.OpenAIFile)
    def retrieve_file(file_id: str, owner: Project) -> wire.OpenAIFile:
        return render.file(files.get(owner, file_id))

    @api.delete("/files/{file_id}", response_model=wire.DeleteFileResponse)
    def delete_file(file_id: str, owner: Project) -> wire.DeleteFileResponse:
        files.delete(owner, file_id)
        return wire.DeleteFileResponse(id=file_id, deleted=True)

    @api.get(
        "/files/{file_id}/content",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    def download_file(file_id: str, owner: Project) -> StreamingResponse:
        record = files.get(owner, file_id)
        return StreamingResponse(
            files.content(owner, file_id),
            media_type="application/octet-stream",
            headers={"content-length": str(record.bytes), "content-disposition": _attachment(record.filename)},
        )

    uploads = APIRouter(tags=["Uploads"])

    @uploads.post("/uploads", response_model=wire.Upload)
    def create_upload(body: wire.CreateUploadRequest, owner: Project) -> wire.Upload:
        seconds = body.expires_after.seconds if body.expires_after else None
        return render.upload(files.create_upload(owner, body.filename, body.purpose, body.bytes, body.mime_type, seconds))

    @uploads.post("/uploads/{upload_id}/parts", response_model=wire.UploadPart, openapi_extra=_multipart(wire.AddUploadPartRequest))
    async def add_upload_part(upload_id: str, request: Request, owner: Project) -> wire.UploadPart:
        form = await _form(request)
        data = _upload_field(form, "data")
        part_id, created = await run_in_threadpool(files.add_part, owner, upload_id, data.file)
        return wire.UploadPart(id=part_id, created_at=created, upload_id=upload_id)

    @uploads.post("/uploads/{upload_id}/complete", response_model=wire.Upload)
    def complete_upload(upload_id: str, body: wire.CompleteUploadRequest, owner: Project) -> wire.Upload:
        upload = files.complete(owner, upload_id, body.part_ids, body.md5)
        return render.upload(upload, files.get(owner, upload.file_id or ""))

    @uploads.post("/uploads/{upload_id}/cancel", response_model=wire.Upload)
    def cancel_upload(upload_id: str, owner: Project) -> wire.Upload:
        return render.upload(files.cancel_upload(owner, upload_id))

    api.include_router(uploads)
    return api
