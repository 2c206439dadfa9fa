"""File and upload records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FileStatus = Literal["uploaded", "processed", "error"]
UploadStatus = Literal["pending", "completed", "cancelled", "expired"]

MAX_UPLOAD_BYTES = 8 * 1024**3
MAX_PART_BYTES = 64 * 1024**2
UPLOAD_TTL_SECONDS = 3600

# Which dataset formats each fine-tuning method trains on.
FORMATS: dict[str, tuple[str, ...]] = {
    "supervised": ("chat", "completion"),
    "dpo": ("preference",),
    "reinforcement": ("reinforcement", "chat"),
}


@dataclass(frozen=True)
class StoredFile:
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    status: FileStatus
    storage_key: str
    status_details: str | None = None
    format: str | None = None
    examples: int | None = None
    item_fields: list[str] | None = None
    """The keys besides messages and tools that every example has (the fields a reinforcement grader's
    `{{item.<field>}}` may name); None: not a fine-tuning file, or one stored before ftserve recorded them."""
    estimated_tokens: int | None = None
    """Tokens of the examples' text, estimated at upload as a dry run estimates them (`ftserve.domain.tokens`);
    None: not a fine-tuning file, or one stored before ftserve counted them."""


@dataclass(frozen=True)
class Upload:
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str
    created_at: int
    expires_at: int
    status: UploadStatus
    file_expires_after: int | None = None
    file_id: str | None = None
