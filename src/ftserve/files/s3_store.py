"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph, R2, ...) through boto3.

The store's keys are ftserve's blob keys under an optional prefix. What must be a local path is kept in a cache
directory on this machine:

- `blobs/<key>`: copies that `local` fetched (or that `put(..., move=True)` handed over). Keys are written once
  (a file's bytes, a model, an export), so a copy stays valid; deleting any of it at any time only costs a fetch.
- `work/<key>`: what is made here before it is stored (`workdir`): a job's engine log and W&B run, an export.

An `S3BlobStore` is built from plain values and pickles without its client, so a process on another machine (a
Ray node) can use the same store. This module needs boto3 (the `cluster` extra); nothing imports it unless the
settings name the `s3` store.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ftserve.files.storage import inside, relative_key, replace_path

log = logging.getLogger(__name__)

# S3 takes parts of 5 MiB and more (but the last); 10,000 parts of 8 MiB hold an 80 GB object.
PART_BYTES = 8 * 1024 * 1024
DELETE_BATCH = 1000
MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class S3Location:
    """Which bucket and prefix, at which endpoint, with which credentials (None: boto3's usual chain, from the
    environment, shared config files or an instance role)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)


class S3BlobStore:
    def __init__(self, location: S3Location, cache_dir: Path, part_bytes: int = PART_BYTES):
        self.location = location
        self.cache_dir = cache_dir
        self.part_bytes = part_bytes
        self._prefix = location.prefix.strip("/") + "/" if location.prefix.strip("/") else ""
        self._lock = threading.Lock()
        self._client_: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "cache_dir": self.cache_dir, "part_bytes": self.part_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["cache_dir"], state["part_bytes"])  # type: ignore[misc]

    @property
    def _client(self) -> Any:
        with self._lock:
            if self._client_ is None:
                where = self.location
                # A custom endpoint (MinIO, a test server) is addressed by path: its buckets have no DNS names.
                config = Config(s3={"addressing_style": "path"} if where.endpoint_url else {},
                                retries={"mode": "standard"})
                self._client_ = boto3.client(
                    "s3", endpoint_url=where.endpoint_url, region_name=where.region,
                    aws_access_key_id=where.access_key_id, aws_secret_access_key=where.secret_access_key,
                    config=config,
                )
            return self._client_

    def _name(self, key: str) -> str:
        return self._prefix + key.strip("/")

    def _cached(self, key: str) -> Path:
        return inside(self.cache_dir / "blobs", key)

    # Blobs

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        upload = _Upload(self._client, self.location.bucket, self._name(key), self.part_bytes)
        try:
            yield cast(BinaryIO, upload)
            upload.finish()
        except BaseException:
            _abort(upload)
            raise
        _remove(self._cached(key))

    def open(self, key: str) -> BinaryIO:
        try:
            answer = self._client.get_object(Bucket=self.location.bucket, Key=self._name(key))
        except ClientError as error:
            raise _missing_or(error, key) from None
        return cast(BinaryIO, answer["Body"])

    def size(self, key: str) -> int:
        try:
            return int(self._client.head_object(Bucket=self.location.bucket, Key=self._name(key))["ContentLength"])
        except ClientError as error:
            raise _missing_or(error, key) from None

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.location.bucket, Key=self._name(key))
            return True
        except ClientError as error:
            if not isinstance(_missing_or(error, key), FileNotFoundError):
                raise
        answer = self._client.list_objects_v2(Bucket=self.location.bucket, Prefix=self._name(key) + "/", MaxKeys=1)
        return bool(answer.get("KeyCount"))

    def children(self, key: str) -> list[str]:
        prefix = self._name(key) + "/"
        names: set[str] = set()
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        return sorted(names)

    def delete(self, key: str) -> None:
        bucket = self.location.bucket
        self._client.delete_object(Bucket=bucket, Key=self._name(key))
        names = [name for name, _ in self._under(key)]
        for start in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": name} for name in names[start:start + DELETE_BATCH]]
            self._client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        _remove(self._cached(key))
        _remove(self.workdir(key))

    # Local paths

    def local(self, key: str) -> Path:
        cached = self._cached(key)
        if cached.exists():
            return cached
        fetched = self._fetch(key, cached.parent)
        try:
            os.rename(fetched, cached)  # a directory fetched meanwhile by another thread stays; ours goes
        except OSError:
            if not cached.exists():
                raise
        finally:
            shutil.rmtree(fetched.parent, ignore_errors=True)
        return cached

    def workdir(self, key: str) -> Path:
        return inside(self.cache_dir / "work", key)

    def key_of(self, path: Path) -> str:
        for root in (self.cache_dir / "blobs", self.cache_dir / "work"):
            key = relative_key(root, path)
            if key is not None:
                return key
        raise ValueError(f"{path} is not a local copy or work directory of the blob store")

    def put(self, path: Path, key: str, *, move: bool = False) -> None:
        # Files past one part go up in parts, several at once; none is read whole into memory.
        transfer = TransferConfig(multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes)
        files = [(path, key)] if path.is_file() else [
            (p, f"{key}/{p.relative_to(path).as_posix()}") for p in sorted(path.rglob("*")) if p.is_file()]
        for source, name in files:
            self._client.upload_file(str(source), self.location.bucket, self._name(name), Config=transfer)
        cached = self._cached(key)
        if move and path.resolve() != cached:
            replace_path(path, cached)  # what was made here is the store's local copy now
        elif not move:
            _remove(cached)

    def get(self, key: str, path: Path) -> None:
        fetched = self._fetch(key, path.parent)
        try:
            replace_path(fetched, path)
        finally:
            shutil.rmtree(fetched.parent, ignore_errors=True)

    def _fetch(self, key: str, near: Path) -> Path:
        """Blob or prefix `key`, downloaded whole under a temporary name in `near` (to be renamed into place)."""
        near.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(dir=near, prefix=".partial-")) / "copy"
        try:
            try:
                self._client.download_file(self.location.bucket, self._name(key), str(target))
                return target
            except ClientError as error:
                if not isinstance(_missing_or(error, key), FileNotFoundError):
                    raise
            found = False
            for name, relative in self._under(key):
                found = True
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                self._client.download_file(self.location.bucket, name, str(destination))
            if not found:
                raise FileNotFoundError(f"no blob {key!r}")
            return target
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise

    def _under(self, key: str) -> Iterator[tuple[str, str]]:
        """Each object under prefix `key`: its name in the bucket, and its path relative to the prefix."""
        prefix = self._name(key) + "/"
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], item["Key"][len(prefix):]


class _Upload:
    """A blob written a part at a time: one PUT when it is smaller than a part, else a multipart upload that
    holds one part in memory. Until it is finished nothing is visible; aborted, S3 drops the parts sent."""

    def __init__(self, client: Any, bucket: str, name: str, part_bytes: int):
        self.client, self.bucket, self.name, self.part_bytes = client, bucket, name, part_bytes
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= self.part_bytes:
            with memoryview(self.buffer) as view:
                part = bytes(view[:self.part_bytes])
            del self.buffer[:self.part_bytes]
            self._send(part)
        return len(data)

    def _send(self, part: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.name)["UploadId"]
        number = len(self.parts) + 1
        answer = self.client.upload_part(Bucket=self.bucket, Key=self.name, UploadId=self.upload_id,
                                         PartNumber=number, Body=part)
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def finish(self) -> None:
        if self.upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.name, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._send(bytes(self.buffer))
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.name, UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is not None:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.name, UploadId=self.upload_id)


def _abort(upload: _Upload) -> None:
    """Drops the upload's parts; if the store cannot be told, the error that ended the upload is the one raised
    (a bucket lifecycle rule for incomplete uploads clears what is left)."""
    try:
        upload.abort()
    except (BotoCoreError, ClientError):
        log.warning("could not abort the multipart upload of %s", upload.name, exc_info=True)


def _missing_or(error: ClientError, key: str) -> Exception:
    """`FileNotFoundError` for an answer that says the object is not there, the error itself otherwise."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    return FileNotFoundError(f"no blob {key!r}") if code in MISSING else error


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
