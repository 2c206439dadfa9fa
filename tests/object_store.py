"""S3 endpoints for the tests. `s3_location` is a fresh bucket on moto's standalone server (a real HTTP server
speaking the S3 protocol, in a thread of the test process: no real S3 server installs from the registries here).
`real_s3_location` is a prefix of its own, deleted when the test ends, in a real S3-compatible store the
environment names (the test skips without it):

    FTSERVE_TEST_S3_BUCKET=my-bucket [FTSERVE_TEST_S3_ENDPOINT_URL=https://...] [FTSERVE_TEST_S3_REGION=...]
    [FTSERVE_TEST_S3_ACCESS_KEY_ID=... FTSERVE_TEST_S3_SECRET_ACCESS_KEY=...]  (unset: boto3's usual credentials)

Import the fixtures into a test module: `from tests.object_store import moto_s3, s3_location  # noqa: F401`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from ftserve.files.s3_store import S3Location

MOTO_REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    endpoint_url: str

    def new_bucket(self) -> S3Location:
        """A bucket of its own, under a prefix, as the `s3` store's settings name it (moto takes any keys)."""
        location = S3Location(bucket=f"ftserve-test-{uuid.uuid4().hex[:10]}", prefix="ftserve/",
                              endpoint_url=self.endpoint_url, region=MOTO_REGION,
                              access_key_id="testing", secret_access_key="testing-secret")
        client_of(location).create_bucket(Bucket=location.bucket)
        return location


def client_of(location: S3Location) -> Any:
    """A boto3 client of its own for the location, to look at the bucket past the store."""
    return boto3.client("s3", endpoint_url=location.endpoint_url, region_name=location.region,
                        aws_access_key_id=location.access_key_id, aws_secret_access_key=location.secret_access_key)


def objects(location: S3Location) -> list[str]:
    """The object names under the location's prefix."""
    pages = client_of(location).get_paginator("list_objects_v2").paginate(Bucket=location.bucket,
                                                                           Prefix=location.prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def pending_uploads(location: S3Location) -> list[dict[str, Any]]:
    """Multipart uploads begun and neither completed nor aborted under the location's prefix."""
    answer = client_of(location).list_multipart_uploads(Bucket=location.bucket, Prefix=location.prefix)
    return list(answer.get("Uploads", []))


def settings_of(location: S3Location) -> dict[str, object]:
    """The `s3` blob store's settings (for tests.conftest.settings_for) naming `location`."""
    return {"blob_store": "s3", "s3_bucket": location.bucket, "s3_prefix": location.prefix,
            "s3_endpoint_url": location.endpoint_url, "s3_region": location.region,
            "s3_access_key_id": location.access_key_id, "s3_secret_access_key": location.secret_access_key}


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoS3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


def _real() -> S3Location | None:
    bucket = os.environ.get("FTSERVE_TEST_S3_BUCKET")
    if not bucket:
        return None
    return S3Location(bucket=bucket, prefix=f"ftserve-test-{uuid.uuid4().hex[:10]}/",
                      endpoint_url=os.environ.get("FTSERVE_TEST_S3_ENDPOINT_URL") or None,
                      region=os.environ.get("FTSERVE_TEST_S3_REGION") or None,
                      access_key_id=os.environ.get("FTSERVE_TEST_S3_ACCESS_KEY_ID") or None,
                      secret_access_key=os.environ.get("FTSERVE_TEST_S3_SECRET_ACCESS_KEY") or None)


@pytest.fixture
def s3_location(moto_s3: MotoS3) -> S3Location:
    return moto_s3.new_bucket()


@pytest.fixture
def real_s3_location() -> Iterator[S3Location]:
    location = _real()
    if location is None:
        pytest.skip("no real S3 endpoint: set FTSERVE_TEST_S3_BUCKET (and _ENDPOINT_URL, _REGION, keys) to run")
    try:
        yield location
    finally:
        client = client_of(location)
        for upload in pending_uploads(location):
            client.abort_multipart_upload(Bucket=location.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for name in objects(location):
            client.delete_object(Bucket=location.bucket, Key=name)
