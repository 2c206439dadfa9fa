"""The S3 blob store against moto's S3 server, and a real endpoint when the environment names one
(tests/object_store.py): uploads go up in parts as they are written and appear whole or not at all; prefixes are
stored, fetched, listed and deleted; local copies are cached."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ftserve.files.s3_store import S3BlobStore, S3Location
from tests.object_store import client_of, moto_s3, objects, pending_uploads, real_s3_location, s3_location  # noqa: F401

PART = 5 * 1024 * 1024  # S3's smallest part


def a_blob_larger_than_a_part_streams_up_in_parts_and_appears_at_the_end(
        store: S3BlobStore, location: S3Location, tmp: Path) -> None:
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with store.writer("files/file-big") as out:
        for _ in range(12):
            out.write(chunk)
            digest.update(chunk)
        # Two parts are up already, and nothing is visible yet.
        assert len(pending_uploads(location)) == 1
        assert objects(location) == []
    assert objects(location) == [location.prefix + "files/file-big"]
    head = client_of(location).head_object(Bucket=location.bucket, Key=location.prefix + "files/file-big")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of 5 + 5 + 2 MiB
    assert store.size("files/file-big") == 12 * 1024 * 1024
    with store.open("files/file-big") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest.hexdigest()
    assert pending_uploads(location) == []


def a_refused_upload_leaves_nothing(store: S3BlobStore, location: S3Location, tmp: Path) -> None:
    class Refused(Exception):
        pass

    with pytest.raises(Refused):
        with store.writer("files/file-refused") as out:
            for _ in range(7):  # one part sent before the refusal
                out.write(os.urandom(1024 * 1024))
            raise Refused
    with pytest.raises(Refused):
        with store.writer("files/file-small") as out:
            out.write(b"a few bytes")
            raise Refused
    assert objects(location) == []
    assert pending_uploads(location) == []
    assert not store.exists("files/file-refused")
    with pytest.raises(FileNotFoundError):
        store.open("files/file-refused")
    with pytest.raises(FileNotFoundError):
        store.size("files/file-small")


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def a_directory_is_stored_listed_fetched_and_deleted_as_a_prefix(
        store: S3BlobStore, location: S3Location, tmp: Path) -> None:
    tree = make_tree(tmp / "made" / "checkpoint-2")
    store.put(tree, "artifacts/ftjob-a/checkpoint-2")
    store.put(tree, "artifacts/ftjob-a/checkpoint-4")
    with store.writer("artifacts/ftjob-ab/model") as out:  # a neighbour whose key starts alike
        out.write(b"x")

    assert store.exists("artifacts/ftjob-a") and store.exists("artifacts/ftjob-a/checkpoint-2")
    assert not store.exists("artifacts/ftjob-a/checkpoint-3")
    assert store.children("artifacts/ftjob-a") == ["checkpoint-2", "checkpoint-4"]
    assert store.children("artifacts/ftjob-a/checkpoint-2") == ["adapter_config.json", "sub"]
    assert store.children("artifacts/ftjob-none") == []

    store.get("artifacts/ftjob-a/checkpoint-2", tmp / "fetched")
    assert files_of(tmp / "fetched") == files_of(tree)
    with pytest.raises(FileNotFoundError):
        store.get("artifacts/ftjob-none", tmp / "none")

    copy = store.local("artifacts/ftjob-a/checkpoint-4")
    store.delete("artifacts/ftjob-a")
    assert not store.exists("artifacts/ftjob-a") and store.children("artifacts/ftjob-a") == []
    assert not copy.exists()  # the local copy went with it
    assert store.exists("artifacts/ftjob-ab/model")


def local_copies_are_fetched_once_and_again_after_the_cache_is_gone(
        store: S3BlobStore, location: S3Location, tmp: Path) -> None:
    with store.writer("files/file-a") as out:
        out.write(b'{"messages": []}\n')
    store.put(make_tree(tmp / "model"), "artifacts/ftjob-b/model")

    blob, model = store.local("files/file-a"), store.local("artifacts/ftjob-b/model")
    assert blob.read_bytes() == b'{"messages": []}\n'
    assert files_of(model) == files_of(tmp / "model")
    assert store.key_of(blob) == "files/file-a" and store.key_of(model) == "artifacts/ftjob-b/model"

    # The copy is used as it is: the store is not asked again.
    client_of(location).delete_object(Bucket=location.bucket, Key=location.prefix + "files/file-a")
    assert store.local("files/file-a") == blob and blob.exists()

    shutil.rmtree(tmp / "cache")
    assert files_of(store.local("artifacts/ftjob-b/model")) == files_of(tmp / "model")
    with pytest.raises(FileNotFoundError):
        store.local("files/file-a")
    with pytest.raises(ValueError):
        store.key_of(tmp / "model")


def what_is_made_in_a_workdir_and_moved_in_becomes_the_local_copy(
        store: S3BlobStore, location: S3Location, tmp: Path) -> None:
    made = store.workdir("exports/abc/model.f16.gguf")
    made.parent.mkdir(parents=True)
    made.write_bytes(b"GGUF")
    store.put(made, "exports/abc/model.f16.gguf", move=True)
    assert not made.exists()
    assert store.local("exports/abc/model.f16.gguf").read_bytes() == b"GGUF"
    with store.open("exports/abc/model.f16.gguf") as handle:
        assert handle.read() == b"GGUF"


def the_store_travels_to_another_process_without_its_connection(
        store: S3BlobStore, location: S3Location, tmp: Path) -> None:
    with store.writer("files/file-c") as out:
        out.write(b"payload")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.location == store.location and copy.cache_dir == store.cache_dir
    with copy.open("files/file-c") as handle:
        assert handle.read() == b"payload"
    assert "s3cr3t" not in repr(replace(location, secret_access_key="s3cr3t"))  # logs never show the secret


Check = Callable[[S3BlobStore, S3Location, Path], None]
CHECKS: list[Check] = [
    a_blob_larger_than_a_part_streams_up_in_parts_and_appears_at_the_end,
    a_refused_upload_leaves_nothing,
    a_directory_is_stored_listed_fetched_and_deleted_as_a_prefix,
    local_copies_are_fetched_once_and_again_after_the_cache_is_gone,
    what_is_made_in_a_workdir_and_moved_in_becomes_the_local_copy,
    the_store_travels_to_another_process_without_its_connection,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_on_moto(check: Check, s3_location: S3Location, tmp_path: Path) -> None:
    check(S3BlobStore(s3_location, tmp_path / "cache", part_bytes=PART), s3_location, tmp_path)


def test_on_the_real_endpoint_the_environment_names(real_s3_location: S3Location, tmp_path: Path) -> None:
    for number, check in enumerate(CHECKS):
        location = replace(real_s3_location, prefix=f"{real_s3_location.prefix}{number}/")
        tmp = tmp_path / str(number)
        tmp.mkdir()
        check(S3BlobStore(location, tmp / "cache", part_bytes=PART), location, tmp)
