"""Blob storage behind one interface; the local-disk store keeps blobs under the data dir.

A key names a blob (`files/file-abc`) or, as a prefix, everything under it (`artifacts/ftjob-abc/model`, a
directory of blobs). Whatever reads or writes a local path goes through `local` (a local copy) and `workdir` plus
`put` (made locally, then stored): on the local store those are the store's own paths and nothing is copied; on an
object store (files/s3_store.py) they are a cache on this machine.
"""

from __future__ import annotations

import errno
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

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A blob written a chunk at a time; it appears when the block ends, and not at all if the block raises."""
        ...
    def open(self, key: str) -> BinaryIO:
        """The blob's bytes. Raises `FileNotFoundError` when there is none."""
        ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool:
        """Whether `key` is a blob or a prefix with blobs under it."""
        ...
    def children(self, key: str) -> list[str]:
        """The names directly under prefix `key` (blobs and prefixes), sorted; empty when there are none."""
        ...
    def delete(self, key: str) -> None:
        """The blob `key` and everything under the prefix `key`, with any local copies; nothing there is no error."""
        ...
    def local(self, key: str) -> Path:
        """A local path holding blob `key` (a file) or prefix `key` (a directory). Raises `FileNotFoundError`
        when neither exists. Treat it as read-only: on an object store it is a cached copy."""
        ...
    def workdir(self, key: str) -> Path:
        """A local path to make what will be stored as `key`, before `put` stores it (neither made nor fetched)."""
        ...
    def put(self, path: Path, key: str, *, move: bool = False) -> None:
        """Stores the local file or directory `path` as blob or prefix `key` (adding to and replacing what is
        there). `move`: `path` is not needed any more, and may become the store's copy (`local(key)`)."""
        ...
    def get(self, key: str, path: Path) -> None:
        """Copies blob or prefix `key` to the local `path`. Raises `FileNotFoundError` when neither exists."""
        ...
    def key_of(self, path: Path) -> str:
        """The key a path that `local` or `workdir` gave out stands for (their inverse). Raises `ValueError`
        for any other path."""
        ...


def inside(root: Path, key: str) -> Path:
    """`root / key`, refusing a key that would lead out of `root`."""
    base = root.resolve()
    path = (base / key).resolve()
    if base not in path.parents:
        raise ValueError(f"blob key escapes the store: {key!r}")
    return path


def relative_key(root: Path, path: Path) -> str | None:
    """The key of `path` under `root`, None when it is not under it."""
    resolved, base = path.resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if base in resolved.parents else None


def replace_path(source: Path, target: Path) -> None:
    """Puts `source` (a file or directory) at `target`, replacing whatever was there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.move(source, target)  # another file system: copied, then removed


def copy_aside(source: Path, directory: Path) -> Path:
    """A copy of `source` (file or directory) under a temporary name in `directory`, to be renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".partial-"))
    copy = staging / "copy"
    if source.is_dir():
        shutil.copytree(source, copy)
    else:
        shutil.copyfile(source, copy)
    return copy


class LocalBlobStore:
    """Blobs as files under `root`. Writes go to a temporary file renamed into place on success,
    so a crash or a rejected upload never leaves a half-written blob behind."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return inside(self.root, key)

    def key_of(self, path: Path) -> str:
        key = relative_key(self.root, path)
        if key is None:
            raise ValueError(f"{path} is not inside the blob store")
        return key

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

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def children(self, key: str) -> list[str]:
        directory = self.path(key)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".partial-"))

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def local(self, key: str) -> Path:
        path = self.path(key)
        if not path.exists():
            raise FileNotFoundError(f"no blob {key!r}")
        return path

    def workdir(self, key: str) -> Path:
        return self.path(key)  # made here, it is stored

    def put(self, path: Path, key: str, *, move: bool = False) -> None:
        target = self.path(key)
        if path.resolve() == target:
            return
        if move:
            replace_path(path, target)
            return
        copy = copy_aside(path, target.parent)
        try:
            replace_path(copy, target)
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)

    def get(self, key: str, path: Path) -> None:
        source = self.local(key)
        copy = copy_aside(source, path.parent)
        try:
            replace_path(copy, path)
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)


def iter_blob(store: BlobStore, key: str, size: int = CHUNK) -> Iterator[bytes]:
    with store.open(key) as handle:
        while chunk := handle.read(size):
            yield chunk
