"""Use cases of `/files` and `/uploads`: store bytes, validate fine-tuning data, assemble uploads."""

from __future__ import annotations

import builtins  # the service's own `list` method shadows the type inside its class
import hashlib
import re
from dataclasses import replace
from typing import BinaryIO, Iterator

import sqlalchemy as sa

from ftserve.domain.errors import InvalidFileFormat, InvalidRequest, NotFound, PayloadTooLarge
from ftserve.domain.files import MAX_PART_BYTES, MAX_UPLOAD_BYTES, UPLOAD_TTL_SECONDS, StoredFile, Upload
from ftserve.domain.ids import new_id
from ftserve.files.jsonl import DatasetSummary, JsonlValidator
from ftserve.files.storage import CHUNK, BlobStore, iter_blob
from ftserve.services.clock import now
from ftserve.store import files as rows
from ftserve.store.database import storable
from ftserve.store.pages import Page

FINE_TUNE = "fine-tune"
MAX_FILENAME = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FileService:
    """Files belong to one project; another project's file is a 404, never a 403.

    `max_file_bytes` bounds a file sent whole (`POST /files`); uploads in parts have their own, larger bound.
    """

    def __init__(self, engine: sa.Engine, blobs: BlobStore, max_file_bytes: int):
        self.engine = engine
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes

    def create(
        self, project: str, filename: str, purpose: str, source: BinaryIO, *, expires_after: int | None = None
    ) -> StoredFile:
        """Store a file; a fine-tuning file is validated line by line while it is copied, and kept only if valid."""
        filename = _clean_filename(filename, purpose)
        return self._store(
            project, filename, purpose, _chunks(source), limit=self.max_file_bytes, expires_after=expires_after
        )

    def _store(
        self,
        project: str,
        filename: str,
        purpose: str,
        chunks: Iterator[bytes],
        *,
        limit: int,
        expires_after: int | None,
        md5: str | None = None,
    ) -> StoredFile:
        file_id = new_id("file-")
        key = f"files/{file_id}"
        validator = JsonlValidator() if purpose == FINE_TUNE else None
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        summary: DatasetSummary | None = None
        with self.blobs.writer(key) as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"File is larger than {limit} bytes.", param="file")
                digest.update(chunk)
                if validator:
                    validator.feed(chunk)
                out.write(chunk)
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise InvalidRequest(
                    f"The md5 checksum {md5} does not match the uploaded bytes ({digest.hexdigest()}).", param="md5"
                )
            if validator:
                summary = validator.finish()
        created = now()
        record = StoredFile(
            id=file_id, project=project, filename=filename, purpose=purpose, bytes=size, created_at=created,
            expires_at=created + expires_after if expires_after else None, status="processed", storage_key=key,
            format=summary.format if summary else None, examples=summary.examples if summary else None,
            item_fields=sorted(summary.item_fields) if summary else None,
        )
        try:
            with self.engine.begin() as conn:
                rows.insert_file(conn, record)
        except BaseException:
            self.blobs.delete(key)
            raise
        return record

    def result_file(self, project: str, job_id: str, filename: str, data: bytes) -> StoredFile:
        """A `fine-tune-results` file ftserve writes itself. Its bytes are stored here; its row is the
        caller's to insert, in the same transaction that finishes the job, so a crash in between leaves
        no file listed. The blob's key is fixed per job, so a job finished again overwrites it."""
        key = f"results/{job_id}/{filename}"
        with self.blobs.writer(key) as out:
            out.write(data)
        return StoredFile(
            id=new_id("file-"), project=project, filename=filename, purpose="fine-tune-results", bytes=len(data),
            created_at=now(), expires_at=None, status="processed", storage_key=key, format=None, examples=None,
        )

    def get(self, project: str, file_id: str) -> StoredFile:
        with self.engine.connect() as conn:
            record = rows.get_file(conn, project, file_id)
        if record is None:
            raise NotFound(f"No such File object: {file_id}", param="id")
        return record

    def list(self, project: str, *, purpose: str | None, after: str | None, limit: int, order: str) -> Page[StoredFile]:
        with self.engine.connect() as conn:
            return rows.list_files(conn, project, purpose=purpose, after=after, limit=limit, newest_first=order == "desc")

    def delete(self, project: str, file_id: str) -> None:
        record = self.get(project, file_id)
        with self.engine.begin() as conn:
            rows.delete_file(conn, project, file_id)
        self.blobs.delete(record.storage_key)

    def content(self, project: str, file_id: str) -> Iterator[bytes]:
        return iter_blob(self.blobs, self.get(project, file_id).storage_key)

    def delete_expired(self) -> int:
        with self.engine.begin() as conn:
            expired = rows.expired_files(conn, now())
            for record in expired:
                rows.delete_file(conn, record.project, record.id)
        for record in expired:
            self.blobs.delete(record.storage_key)
        return len(expired)

    # Uploads: a large file sent in parts of up to 64 MB, assembled in the order `complete` names.

    def create_upload(
        self, project: str, filename: str, purpose: str, size: int, mime_type: str, expires_after: int | None
    ) -> Upload:
        filename = _clean_filename(filename, purpose, param="filename")
        if not storable(mime_type):
            raise InvalidRequest("mime_type holds a NUL character or half a surrogate pair.", param="mime_type")
        if size > MAX_UPLOAD_BYTES:
            raise InvalidRequest(f"An upload can hold at most {MAX_UPLOAD_BYTES} bytes.", param="bytes")
        created = now()
        upload = Upload(
            id=new_id("upload_"), project=project, filename=filename, purpose=purpose, bytes=size,
            mime_type=mime_type, created_at=created, expires_at=created + UPLOAD_TTL_SECONDS,
            status="pending", file_expires_after=expires_after,
        )
        with self.engine.begin() as conn:
            rows.insert_upload(conn, upload)
        return upload

    def _pending(self, project: str, upload_id: str) -> Upload:
        with self.engine.connect() as conn:
            upload = rows.get_upload(conn, project, upload_id)
        if upload is None:
            raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
        if upload.status == "pending" and upload.expires_at <= now():
            raise InvalidRequest(f"Upload {upload_id} has expired.", param="upload_id", code="upload_expired")
        if upload.status != "pending":
            raise InvalidRequest(f"Upload {upload_id} is already {upload.status}.", param="upload_id", code="invalid_state")
        return upload

    def add_part(self, project: str, upload_id: str, source: BinaryIO) -> tuple[str, int]:
        upload = self._pending(project, upload_id)
        part_id = new_id("part_")
        key = f"uploads/{upload.id}/{part_id}"
        size = 0
        with self.blobs.writer(key) as out:
            for chunk in _chunks(source):
                size += len(chunk)
                if size > MAX_PART_BYTES:
                    raise PayloadTooLarge(f"A part can hold at most {MAX_PART_BYTES} bytes.", param="data")
                out.write(chunk)
        created = now()
        with self.engine.begin() as conn:
            if rows.uploaded_bytes(conn, upload.id) + size > upload.bytes:
                self.blobs.delete(key)
                raise InvalidRequest(
                    f"The parts would hold more than the {upload.bytes} bytes the upload was created with.",
                    param="data",
                )
            rows.insert_part(conn, part_id, upload.id, created, size, key)
        return part_id, created

    def complete(self, project: str, upload_id: str, part_ids: builtins.list[str], md5: str | None) -> Upload:
        upload = self._pending(project, upload_id)
        with self.engine.connect() as conn:
            parts = rows.parts_of(conn, upload.id)
        for index, part_id in enumerate(part_ids):
            if part_id not in parts:
                raise InvalidRequest(f"Part {part_id} does not belong to upload {upload_id}.", param=f"part_ids[{index}]")
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequest("part_ids names a part more than once.", param="part_ids")
        total = sum(parts[p][0] for p in part_ids)
        if total != upload.bytes:
            raise InvalidRequest(
                f"The parts hold {total} bytes, but the upload was created with bytes={upload.bytes}.", param="part_ids"
            )

        def assembled() -> Iterator[bytes]:
            for part_id in part_ids:
                yield from iter_blob(self.blobs, parts[part_id][1])

        try:
            record = self._store(
                project, upload.filename, upload.purpose, assembled(), limit=MAX_UPLOAD_BYTES,
                expires_after=upload.file_expires_after, md5=md5,
            )
        except InvalidFileFormat as error:
            # The upload stays pending: the caller may complete it again with other parts.
            raise InvalidFileFormat(error.reason, line=error.line, param="part_ids") from None
        with self.engine.begin() as conn:
            if not rows.set_upload_status(conn, upload.id, "completed", expected="pending", file_id=record.id):
                rows.delete_file(conn, project, record.id)
                self.blobs.delete(record.storage_key)
                raise InvalidRequest(f"Upload {upload_id} was completed or cancelled meanwhile.", param="upload_id")
            rows.delete_parts(conn, upload.id)
        self.blobs.delete(f"uploads/{upload.id}")
        return replace(upload, status="completed", file_id=record.id)

    def cancel_upload(self, project: str, upload_id: str) -> Upload:
        upload = self._pending(project, upload_id)
        with self.engine.begin() as conn:
            if not rows.set_upload_status(conn, upload.id, "cancelled", expected="pending"):
                raise InvalidRequest(f"Upload {upload_id} was completed or cancelled meanwhile.", param="upload_id")
            rows.delete_parts(conn, upload.id)
        self.blobs.delete(f"uploads/{upload.id}")
        return replace(upload, status="cancelled")


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


def _clean_filename(filename: str, purpose: str, param: str = "file") -> str:
    """The name kept and shown for a file: its last path component, as OpenAI keeps it, without control
    characters. Names never reach the file system (blobs are stored by id); this is only what users see."""
    name = _CONTROL.sub("", re.split(r"[/\\]", filename)[-1]).strip()
    if name in ("", ".", ".."):
        raise InvalidRequest("The file needs a filename.", param=param)
    if len(name) > MAX_FILENAME:
        raise InvalidRequest(f"The filename is longer than {MAX_FILENAME} characters.", param=param)
    if purpose == FINE_TUNE and not name.lower().endswith(".jsonl"):
        raise InvalidRequest(
            f"Files for fine-tuning must be JSONL with a .jsonl name; got '{name}'.", param=param,
            code="invalid_file_format",
        )
    return name
