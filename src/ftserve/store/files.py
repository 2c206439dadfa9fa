"""Rows of files, uploads and upload parts."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import sqlalchemy as sa

from ftserve.domain.files import StoredFile, Upload
from ftserve.store.database import storable
from ftserve.store.jobs import live_use
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


def lock_file(conn: sa.Connection, project: str, file_id: str, *, shared: bool = False) -> StoredFile | None:
    """Read a file's row and hold it until the transaction ends: shared by a job being created on the file,
    exclusively by its deletion, so that neither misses the other. (On PostgreSQL; SQLite's write
    transactions take turns anyway.)"""
    if not storable(file_id):
        return None
    query = sa.select(files).where(files.c.id == file_id, files.c.project == project)
    row = conn.execute(query.with_for_update(read=shared)).first()
    return _file(row) if row else None


def delete_file(conn: sa.Connection, project: str, file_id: str) -> bool:
    return conn.execute(files.delete().where(files.c.id == file_id, files.c.project == project)).rowcount > 0


def expired_files(conn: sa.Connection, now: int) -> list[StoredFile]:
    """Files past their expiry, less those a live job still reads: they go when the job ends."""
    in_use = sa.exists().where(live_use(files.c.project, files.c.id))
    rows = conn.execute(
        sa.select(files).where(files.c.expires_at.is_not(None), files.c.expires_at <= now, ~in_use)
    ).all()
    return [_file(r) for r in rows]


def lock_storage(conn: sa.Connection, project: str) -> None:
    """Make the project's other uploads wait at their commit until this transaction ends, so that each
    sees the bytes the one before stored. PostgreSQL takes a lock named after the project; SQLite's
    write transactions begin IMMEDIATE and take turns already."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.blake2b(f"ftserve-storage:{project}".encode(), digest_size=8).digest(), "big",
                             signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def storage_used(conn: sa.Connection, project: str) -> int:
    """Bytes the project keeps: its files (job results included) and the parts of its pending uploads."""
    in_files = sa.select(sa.func.coalesce(sa.func.sum(files.c.bytes), 0)).where(files.c.project == project)
    in_parts = (
        sa.select(sa.func.coalesce(sa.func.sum(upload_parts.c.bytes), 0))
        .join(uploads, uploads.c.id == upload_parts.c.upload_id)
        .where(uploads.c.project == project, uploads.c.status == "pending")
    )
    return int(conn.execute(sa.select(in_files.scalar_subquery() + in_parts.scalar_subquery())).scalar_one())


def insert_upload(conn: sa.Connection, record: Upload) -> None:
    conn.execute(uploads.insert().values(**asdict(record)))


def get_upload(conn: sa.Connection, project: str, upload_id: str) -> Upload | None:
    if not storable(upload_id):
        return None
    row = conn.execute(sa.select(uploads).where(uploads.c.id == upload_id, uploads.c.project == project)).first()
    return _upload(row) if row else None


def lock_upload(conn: sa.Connection, upload_id: str) -> Upload | None:
    """Read an upload and hold it until the transaction ends, so that a part is not added to an upload that
    is being completed, cancelled or expired meanwhile."""
    row = conn.execute(sa.select(uploads).where(uploads.c.id == upload_id).with_for_update()).first()
    return _upload(row) if row else None


def expired_uploads(conn: sa.Connection, now: int) -> list[Upload]:
    rows = conn.execute(sa.select(uploads).where(uploads.c.status == "pending", uploads.c.expires_at <= now)).all()
    return [_upload(r) for r in rows]


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
