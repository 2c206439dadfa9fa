"""Blob storage behind a small interface; the local-disk store keeps blobs under the data dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class BlobStore(Protocol):
    """Where file bytes live. A blob appears whole or not at all."""

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]: ...
    def open(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def path(self, key: str) -> Path: ...
    def key_of(self, path: Path) -> str:
        """The key of a path inside the store (the inverse of `path`)."""
        ...


class LocalBlobStore:
    """Blobs as files under `root`. Writes go to a temporary file renamed into place on success,
    so a crash or a rejected upload never leaves a half-written blob behind."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def key_of(self, path: Path) -> str:
        resolved = path.resolve()
        if self.root.resolve() not in resolved.parents:
            raise ValueError(f"{path} is not inside the blob store")
        return resolved.relative_to(self.root.resolve()).as_posix()

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def iter_blob(store: BlobStore, key: str, size: int = CHUNK) -> Iterator[bytes]:
    with store.open(key) as handle:
        while chunk := handle.read(size):
            yield chunk
