"""Upload by content: a job's data goes up once under a name made from its sha256.

A retried `stage_data` (the worker died between upload and submit) or another job on the same file
finds the earlier upload by that name and sends nothing. Each adapter says how to find a name at
its provider and how to upload under it; `stage` does the rest for the training and validation file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftserve.providers.contract import JobRequest, ProviderError, Staged

Content = Path | bytes
"""A file as it is, or as the adapter converted it for its provider."""


def digest(data: Content) -> str:
    """The sha256 of the data, a file read a block at a time."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    sha = hashlib.sha256()
    with data.open("rb") as read:
        for block in iter(lambda: read.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def stage(request: JobRequest, upload: Callable[[Path, str], str], *, validation: bool = True) -> Staged:
    """Both files of a job through `upload(path, param)`; the validation file only when `validation`."""
    training = upload(request.training_file, "training_file")
    checked = None
    if validation and request.validation_file is not None:
        checked = upload(request.validation_file, "validation_file")
    return Staged(training, checked)


def once(name: str, find: Callable[[str], str | None], upload: Callable[[str], str]) -> str:
    """What the provider holds under `name`: the earlier upload, or a new one."""
    return find(name) or upload(name)


class Bucket:
    """An S3 bucket (AWS, or RunPod's volume API) holding staged files by hash and small JSON records.

    `call(operation, **params)` runs one S3 operation, raising `ProviderError` (with the status) on failure.
    """

    def __init__(self, name: str, call: Callable[..., Any]):
        self.name = name
        self.call = call

    def put_once(self, key: str, body: bytes, content_type: str = "application/jsonl") -> None:
        if self.read(key, head=True) is None:
            self.call("put_object", Bucket=self.name, Key=key, Body=body, ContentType=content_type)

    def read(self, key: str, *, head: bool = False) -> Any | None:
        """The object at `key` (its metadata only with `head`), or None where there is none."""
        try:
            return self.call("head_object" if head else "get_object", Bucket=self.name, Key=key)
        except ProviderError as error:
            if error.status == 404:
                return None
            raise

    def read_json(self, key: str) -> dict[str, Any] | None:
        found = self.read(key)
        return None if found is None else json.loads(found["Body"].read())

    def write_json(self, key: str, record: dict[str, Any]) -> None:
        self.call("put_object", Bucket=self.name, Key=key, Body=json.dumps(record).encode(),
                  ContentType="application/json")
