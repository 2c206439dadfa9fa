"""Use cases of `/files` and `/uploads`: store bytes, validate fine-tuning data, assemble uploads."""

from __future__ import annotations

import builtins  # the service's own `list` method shadows the type inside its class
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO, Iterator

import sqlalchemy as sa

from ftserve.domain.errors import InUse, InvalidFileFormat, InvalidRequest, NotFound, PayloadTooLarge
from ftserve.domain.files import MAX_PART_BYTES, MAX_UPLOAD_BYTES, UPLOAD_TTL_SECONDS, StoredFile, Upload
from ftserve.domain.ids import new_id
from ftserve.files.jsonl import DatasetSummary, JsonlValidator
from ftserve.files.storage import BlobStore, iter_blob
from ftserve.services.clock import now
from ftserve.store import files as rows
from ftserve.store import jobs as job_rows
from ftserve.store.columns import check_fits
from ftserve.store.pages import Page
from ftserve.store.tables import files as file_table
from ftserve.store.tables import uploads as upload_table

FINE_TUNE = "fine-tune"
# Uploads that may buffer and parse a long line at once (files/jsonl.py): parsing holds the GIL, so more
# would not be faster, and each holds up to max_line_bytes (several times that while it parses).
LONG_LINE_SLOTS = 2
# Uploads are copied in pieces this small: an upload waiting for a long-line slot holds one piece beside
# its short buffer, and many may wait at once.
PIECE_BYTES = 64 * 1024
MAX_FILENAME = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FileService:
    """Files belong to one project; another project's file is a 404, never a 403.

    `max_file_bytes` bounds a file sent whole (`POST /files`); uploads in parts have their own, larger bound.
    `max_line_bytes` bounds a line of a fine-tuning file. `storage_quota` bounds the bytes a project keeps in
    files and in the parts of its pending uploads (0: no bound); it is checked as bytes arrive, and again
    at the commit, with the project's other uploads waiting their turn (`rows.lock_storage`), so uploads that
    race cannot together pass it. Result files ftserve writes count towards it, but are never refused.
    """

    def __init__(self, engine: sa.Engine, blobs: BlobStore, max_file_bytes: int, *,
                 max_line_bytes: int = 4 * 1024**2, storage_quota: int = 0):
        self.engine = engine
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes
        self.max_line_bytes = max_line_bytes
        self.storage_quota = storage_quota
        self._long_lines = threading.BoundedSemaphore(LONG_LINE_SLOTS)

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
        counted: Callable[[sa.Connection, str], None] | None = None,
    ) -> StoredFile:
        """Copy `chunks` into a new file. `counted`, for an upload's assembly, runs in the transaction that
        inserts the file (given its id): it gives up the upload's parts, whose bytes the quota already counts."""
        file_id = new_id("file-")
        key = f"files/{file_id}"
        validator = JsonlValidator(self.max_line_bytes, self._long_lines) if purpose == FINE_TUNE else None
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        summary: DatasetSummary | None = None
        used = self._used(project) if counted is None else None
        try:
            with self.blobs.writer(key) as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"File is larger than {limit} bytes.", param="file")
                    if used is not None and used + size > self.storage_quota:
                        raise self._over_quota(project, used, size, "file", more=True)
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
        finally:
            if validator:  # a file refused midway lets go of its long-line slot
                validator.close()
        created = now()
        record = StoredFile(
            id=file_id, project=project, filename=filename, purpose=purpose, bytes=size, created_at=created,
            expires_at=created + expires_after if expires_after else None, status="processed", storage_key=key,
            format=summary.format if summary else None, examples=summary.examples if summary else None,
            item_fields=sorted(summary.item_fields) if summary else None,
            estimated_tokens=summary.estimated_tokens if summary else None,
        )
        try:
            with self.engine.begin() as conn:
                if counted is None:
                    self._charge(conn, project, size, "file")
                else:
                    counted(conn, file_id)
                rows.insert_file(conn, record)
        except BaseException:
            self.blobs.delete(key)
            raise
        return record

    # The storage quota

    def _used(self, project: str) -> int | None:
        """Bytes the project keeps (None: there is no quota), read without waiting, for the early check
        while bytes arrive: an upload past the quota stops there, not after it was all written."""
        if not self.storage_quota:
            return None
        with self.engine.connect() as conn:
            return rows.storage_used(conn, project)

    def _charge(self, conn: sa.Connection, project: str, size: int, param: str) -> None:
        """The check at the commit: `size` more bytes fit the project's quota. Waits for the project's
        other uploads to commit first, so the rows this transaction inserts are within the quota."""
        if not self.storage_quota:
            return
        rows.lock_storage(conn, project)
        used = rows.storage_used(conn, project)
        if used + size > self.storage_quota:
            raise self._over_quota(project, used, size, param)

    def _over_quota(self, project: str, used: int, size: int, param: str, *, more: bool = False) -> PayloadTooLarge:
        adds = f"adds {size} bytes or more" if more else f"adds {size} bytes"
        return PayloadTooLarge(
            f"Storage quota exceeded: project {project} may keep {self.storage_quota} bytes of files and unfinished "
            f"uploads, holds {used} bytes, and this upload {adds}. Delete files or cancel uploads to make room.",
            param=param, code="storage_quota_exceeded",
        )

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
        """Delete a file no live job reads. A job that trains on or validates with it (from validating_files
        to paused) makes this a 409 naming the job: the job would otherwise fail later, its file gone."""
        with self.engine.begin() as conn:
            record = rows.lock_file(conn, project, file_id)
            if record is None:
                raise NotFound(f"No such File object: {file_id}", param="id")
            users = job_rows.using_file(conn, project, file_id)
            if users:
                job = users[0]
                role = "training" if job.training_file == file_id else "validation"
                others = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
                raise InUse(
                    f"File {file_id} is the {role} file of fine-tuning job {job.id}{others}, which is "
                    f"{job.status.value}; cancel the job or wait for it to end, then delete the file.",
                    param="file_id", code="file_in_use",
                )
            rows.delete_file(conn, project, file_id)
        self.blobs.delete(record.storage_key)

    def content(self, project: str, file_id: str) -> Iterator[bytes]:
        return iter_blob(self.blobs, self.get(project, file_id).storage_key)

    def delete_expired(self) -> int:
        """Delete files past their expiry (a file a live job reads stays until the job ends), and expire
        pending uploads past theirs, deleting their parts. Returns how many files and uploads went."""
        with self.engine.begin() as conn:
            expired = rows.expired_files(conn, now())
            for record in expired:
                rows.delete_file(conn, record.project, record.id)
            stale = [upload for upload in rows.expired_uploads(conn, now())
                     if rows.set_upload_status(conn, upload.id, "expired", expected="pending")]
            for upload in stale:
                rows.delete_parts(conn, upload.id)
        for record in expired:
            self.blobs.delete(record.storage_key)
        for upload in stale:
            self.blobs.delete(f"uploads/{upload.id}")
        return len(expired) + len(stale)

    # Uploads: a large file sent in parts of up to 64 MB, assembled in the order `complete` names.

    def create_upload(
        self, project: str, filename: str, purpose: str, size: int, mime_type: str, expires_after: int | None
    ) -> Upload:
        filename = _clean_filename(filename, purpose, param="filename")
        check_fits(upload_table.c.mime_type, mime_type, "mime_type")
        if size > MAX_UPLOAD_BYTES:
            raise InvalidRequest(f"An upload can hold at most {MAX_UPLOAD_BYTES} bytes.", param="bytes")
        created = now()
        upload = Upload(
            id=new_id("upload_"), project=project, filename=filename, purpose=purpose, bytes=size,
            mime_type=mime_type, created_at=created, expires_at=created + UPLOAD_TTL_SECONDS,
            status="pending", file_expires_after=expires_after,
        )
        with self.engine.begin() as conn:
            self._charge(conn, project, size, "bytes")  # its parts will count; nothing is stored yet
            rows.insert_upload(conn, upload)
        return upload

    def _pending(self, project: str, upload_id: str) -> Upload:
        with self.engine.connect() as conn:
            upload = rows.get_upload(conn, project, upload_id)
        if upload is None:
            raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
        return _still_pending(upload)

    def add_part(self, project: str, upload_id: str, source: BinaryIO) -> tuple[str, int]:
        upload = self._pending(project, upload_id)
        part_id = new_id("part_")
        key = f"uploads/{upload.id}/{part_id}"
        size = 0
        used = self._used(project)
        try:
            with self.blobs.writer(key) as out:
                for chunk in _chunks(source):
                    size += len(chunk)
                    if size > MAX_PART_BYTES:
                        raise PayloadTooLarge(f"A part can hold at most {MAX_PART_BYTES} bytes.", param="data")
                    if used is not None and used + size > self.storage_quota:
                        raise self._over_quota(project, used, size, "data", more=True)
                    out.write(chunk)
            created = now()
            with self.engine.begin() as conn:
                # Held until the part is in, so a cancel, completion or expiry meanwhile takes it along or refuses it.
                current = rows.lock_upload(conn, upload.id)
                _still_pending(current or upload)
                if rows.uploaded_bytes(conn, upload.id) + size > upload.bytes:
                    raise InvalidRequest(
                        f"The parts would hold more than the {upload.bytes} bytes the upload was created with.",
                        param="data",
                    )
                self._charge(conn, project, size, "data")
                rows.insert_part(conn, part_id, upload.id, created, size, key)
        except BaseException:
            self.blobs.delete(key)
            raise
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
                try:
                    handle = self.blobs.open(parts[part_id][1])
                except FileNotFoundError:  # a cancel, or the expiry sweep, took the parts while we read them
                    with self.engine.connect() as conn:
                        taken = getattr(rows.get_upload(conn, project, upload.id), "status", "deleted")
                    raise InvalidRequest(
                        f"Upload {upload_id} was {taken} while it was being completed.", param="upload_id",
                        code="upload_expired" if taken == "expired" else "invalid_state",
                    ) from None
                with handle:
                    while piece := handle.read(PIECE_BYTES):
                        yield piece

        def give_up_parts(conn: sa.Connection, file_id: str) -> None:
            # In the transaction that inserts the file: the parts' bytes become the file's, counted once.
            if not rows.set_upload_status(conn, upload.id, "completed", expected="pending", file_id=file_id):
                raise InvalidRequest(f"Upload {upload_id} was completed, cancelled or expired meanwhile.",
                                     param="upload_id")
            rows.delete_parts(conn, upload.id)

        try:
            record = self._store(
                project, upload.filename, upload.purpose, assembled(), limit=MAX_UPLOAD_BYTES,
                expires_after=upload.file_expires_after, md5=md5, counted=give_up_parts,
            )
        except InvalidFileFormat as error:
            # The upload stays pending: the caller may complete it again with other parts.
            raise InvalidFileFormat(error.reason, line=error.line, param="part_ids") from None
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


def _still_pending(upload: Upload) -> Upload:
    """The upload, if parts may still be added to it and it may be completed or cancelled."""
    if upload.status == "expired" or (upload.status == "pending" and upload.expires_at <= now()):
        raise InvalidRequest(f"Upload {upload.id} has expired.", param="upload_id", code="upload_expired")
    if upload.status != "pending":
        raise InvalidRequest(f"Upload {upload.id} is already {upload.status}.", param="upload_id", code="invalid_state")
    return upload


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(PIECE_BYTES):
        yield chunk


def _clean_filename(filename: str, purpose: str, param: str = "file") -> str:
    """The name kept and shown for a file: its last path component, as OpenAI keeps it, without control
    characters. Names never reach the file system (blobs are stored by id); this is only what users see."""
    name = _CONTROL.sub("", re.split(r"[/\\]", filename)[-1]).strip()
    if name in ("", ".", ".."):
        raise InvalidRequest("The file needs a filename.", param=param)
    if len(name) > MAX_FILENAME:
        raise InvalidRequest(f"The filename is longer than {MAX_FILENAME} characters.", param=param)
    check_fits(file_table.c.filename, name, param)
    if purpose == FINE_TUNE and not name.lower().endswith(".jsonl"):
        raise InvalidRequest(
            f"Files for fine-tuning must be JSONL with a .jsonl name; got '{name}'.", param=param,
            code="invalid_file_format",
        )
    return name
