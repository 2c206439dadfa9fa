"""Rows of files, uploads and upload parts."""

from __future__ import annotations

from dataclasses import asdict

import sqlalchemy as sa

from ftserve.domain.files import StoredFile, Upload
from ftserve.store.database import storable
from ftserve.store.pages import Page, select_page
from ftserve.store.tables import files, upload_parts, uploads


def _file(row: sa.Row) -> StoredFile:
    return StoredFile(**{k: v for k, v in row._mapping.items() if k != "seq"})


def _upload(row: sa.Row) -> Upload:
    return Upload(**{k: v for k, v in row._mapping.items() if k != "seq"})


def insert_file(conn: sa.Connection, record: StoredFile) -> None:
    conn.execute(files.insert().values(**asdict(record)))


def get_file(conn: sa.Connection, project: str, file_id: str) -> StoredFile | None:
    if not storable(file_id):
        return None
    row = conn.execute(sa.select(files).where(files.c.id == file_id, files.c.project == project)).first()
    return _file(row) if row else None


def list_files(
    conn: sa.Connection, project: str, *, purpose: str | None, after: str | None, limit: int, newest_first: bool
) -> Page[StoredFile]:
    where = [files.c.project == project]
    if purpose is not None:
        where.append(files.c.purpose == purpose if storable(purpose) else sa.false())
    page = select_page(conn, files, where, after=after, limit=limit, newest_first=newest_first)
    return Page([_file(r) for r in page.items], page.has_more)


def delete_file(conn: sa.Connection, project: str, file_id: str) -> bool:
    return conn.execute(files.delete().where(files.c.id == file_id, files.c.project == project)).rowcount > 0


def expired_files(conn: sa.Connection, now: int) -> list[StoredFile]:
    rows = conn.execute(sa.select(files).where(files.c.expires_at.is_not(None), files.c.expires_at <= now)).all()
    return [_file(r) for r in rows]


def insert_upload(conn: sa.Connection, record: Upload) -> None:
    conn.execute(uploads.insert().values(**asdict(record)))


def get_upload(conn: sa.Connection, project: str, upload_id: str) -> Upload | None:
    if not storable(upload_id):
        return None
    row = conn.execute(sa.select(uploads).where(uploads.c.id == upload_id, uploads.c.project == project)).first()
    return _upload(row) if row else None


def set_upload_status(conn: sa.Connection, upload_id: str, status: str, *, expected: str, file_id: str | None = None) -> bool:
    """Move an upload from `expected` to `status`; False when another request moved it first."""
    result = conn.execute(
        uploads.update()
        .where(uploads.c.id == upload_id, uploads.c.status == expected)
        .values(status=status, file_id=file_id)
    )
    return result.rowcount > 0


def insert_part(conn: sa.Connection, part_id: str, upload_id: str, created_at: int, size: int, storage_key: str) -> None:
    conn.execute(
        upload_parts.insert().values(
            id=part_id, upload_id=upload_id, created_at=created_at, bytes=size, storage_key=storage_key
        )
    )


def parts_of(conn: sa.Connection, upload_id: str) -> dict[str, tuple[int, str]]:
    """Part id -> (bytes, storage key) for every part of an upload."""
    rows = conn.execute(
        sa.select(upload_parts.c.id, upload_parts.c.bytes, upload_parts.c.storage_key).where(
            upload_parts.c.upload_id == upload_id
        )
    ).all()
    return {r.id: (r.bytes, r.storage_key) for r in rows}


def delete_parts(conn: sa.Connection, upload_id: str) -> None:
    conn.execute(upload_parts.delete().where(upload_parts.c.upload_id == upload_id))


def uploaded_bytes(conn: sa.Connection, upload_id: str) -> int:
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(upload_parts.c.bytes), 0)).where(upload_parts.c.upload_id == upload_id)
    ).scalar_one()
    return int(total)
