"""Hostile uploads: many huge lines at once, a project that would fill the disk, uploads left to expire,
files deleted from under a job, and text longer than the database's columns. Each is refused with a
clear 4xx, stores nothing, and the server keeps its memory and keeps serving."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from openai import OpenAI

from ftserve.store import files as file_rows
from ftserve.worker import worker_for
from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload
from tests.hostile import LINE_LIMIT

MODEL = "SmolLM2-135M-Instruct"
# Every status the tests' clients received, checked for 5xx after each test.
STATUSES: list[tuple[str, str, int]] = []


def _record(response: httpx.Response) -> None:
    STATUSES.append((response.request.method, response.request.url.path[:80], response.status_code))


def recording(base_url: str, **options: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=120, event_hooks={"response": [_record]}, **options)


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    start = len(STATUSES)
    yield
    errors = [s for s in STATUSES[start:] if s[2] >= 500]
    assert not errors, f"the server answered 5xx: {errors}"


def sdk(live: LiveServer, http: httpx.Client) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, http_client=http)


def blobs(live: LiveServer) -> set[str]:
    root = live.runtime.settings.data_dir / "blobs"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def envelope(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


# Huge lines, many at once


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRss:
    """The largest resident size this process reaches while the block runs, sampled every 5 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


HUGE_LINE = 62 * 1000 * 1000
UPLOADS_AT_ONCE = 40


def multipart(boundary: str, filename: str, content: bytes) -> tuple[list[bytes], int]:
    """A multipart/form-data body of `purpose=fine-tune` and one file, in pieces that share `content`'s memory."""
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return [head, content, tail], len(head) + len(content) + len(tail)


def test_many_huge_lines_at_once_are_refused_naming_the_line_and_memory_stays_flat(live: LiveServer) -> None:
    # One 62 MB line, shared by every request: the client (in this process, so its memory counts too) holds
    # it once, and streams it 64 KiB at a time.
    line = b'{"prompt": "' + b"a" * (HUGE_LINE - 32) + b'", "completion": "x"}\n'
    boundary = uuid.uuid4().hex
    pieces, length = multipart(boundary, "huge.jsonl", line)

    def body() -> Iterator[bytes]:
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(view), 1 << 16):
                yield bytes(view[start : start + (1 << 16)])

    headers = {"content-type": f"multipart/form-data; boundary={boundary}", "content-length": str(length)}
    before_files, before_blobs = {f.id for f in OpenAI(base_url=live.base_url, api_key="unused").files.list()}, blobs(live)
    limits = httpx.Limits(max_connections=UPLOADS_AT_ONCE, max_keepalive_connections=UPLOADS_AT_ONCE)
    with recording(live.url, limits=limits) as http, ThreadPoolExecutor(UPLOADS_AT_ONCE) as pool:
        http.get("/health")
        baseline, started = rss_bytes(), time.monotonic()
        with PeakRss() as peak:
            answers = list(pool.map(lambda _: http.post("/v1/files", content=body(), headers=headers),
                                    range(UPLOADS_AT_ONCE)))
        seconds = time.monotonic() - started
    growth = peak.peak - baseline
    print(f"\n{UPLOADS_AT_ONCE} uploads of a {len(line) / 1e6:.0f} MB line at once: {seconds:.1f} s, "
          f"peak RSS growth {growth / 2**20:.0f} MiB")
    for answer in answers:
        assert answer.status_code == 400, answer.text
        error = envelope(answer)
        assert (error["code"], error["param"]) == ("invalid_file_format", "file")
        assert error["message"] == f"Invalid file format: line 1: line is longer than {LINE_LIMIT} bytes"
    assert growth < 200 * 2**20, f"the server's memory grew by {growth / 2**20:.0f} MiB"
    assert {f.id for f in OpenAI(base_url=live.base_url, api_key="unused").files.list()} == before_files
    assert blobs(live) == before_blobs


# A server of its own: a small storage quota, and no worker, so jobs stay where a test puts them


QUOTA = 256 * 1024
PROJECT = "default"  # an open server's one project


@pytest.fixture(scope="module")
def quota(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    settings = settings_for(tmp_path_factory.mktemp("quota"), databases.new(), project_storage_bytes=QUOTA)
    with serving(settings, with_worker=False) as live:
        yield live


@pytest.fixture(scope="module")
def quota_http(quota: LiveServer) -> Iterator[httpx.Client]:
    with recording(quota.url) as client:
        yield client


@pytest.fixture(scope="module")
def quota_client(quota: LiveServer, quota_http: httpx.Client) -> OpenAI:
    return sdk(quota, quota_http)


def used(live: LiveServer) -> int:
    with live.runtime.engine.connect() as conn:
        return file_rows.storage_used(conn, PROJECT)


def jsonl_of(size: int) -> bytes:
    """A valid fine-tuning file of exactly `size` bytes (at least 64)."""
    frame = b'{"prompt": "", "completion": "x"}\n'
    return frame[:12] + b" " * (size - len(frame)) + frame[12:]


def refused_for_quota(error: openai.APIStatusError, param: str, holding: int) -> None:
    assert error.status_code == 413
    body = error.body
    assert isinstance(body, dict) and (body["code"], body["param"]) == ("storage_quota_exceeded", param), body
    assert f"may keep {QUOTA} bytes" in body["message"] and f"holds {holding} bytes" in body["message"], body


def test_a_file_past_the_storage_quota_is_a_413_and_nothing_is_stored(quota: LiveServer, quota_client: OpenAI) -> None:
    room = QUOTA - used(quota)
    kept = upload(quota_client, jsonl_of(room - 1000))
    holding, listed, stored = used(quota), {f.id for f in quota_client.files.list()}, blobs(quota)
    for purpose, name in [("fine-tune", "more.jsonl"), ("batch", "more.txt")]:
        with pytest.raises(openai.APIStatusError) as refused:
            upload(quota_client, jsonl_of(2000), name=name, purpose=purpose)
        refused_for_quota(refused.value, "file", holding)
    assert used(quota) == holding and {f.id for f in quota_client.files.list()} == listed and blobs(quota) == stored
    quota_client.files.delete(kept)  # deleting makes room again
    quota_client.files.delete(upload(quota_client, jsonl_of(2000)))


def test_an_upload_past_the_quota_is_refused_at_create_and_at_each_part(quota: LiveServer, quota_client: OpenAI) -> None:
    holding = used(quota)
    with pytest.raises(openai.APIStatusError) as refused:
        quota_client.uploads.create(bytes=QUOTA - holding + 1, filename="big.jsonl", mime_type="text/jsonl",
                                    purpose="fine-tune")
    refused_for_quota(refused.value, "bytes", holding)

    pending = quota_client.uploads.create(bytes=QUOTA - holding, filename="big.jsonl", mime_type="text/jsonl",
                                          purpose="fine-tune")
    quota_client.uploads.parts.create(pending.id, data=b"x" * 1000)
    # Meanwhile a file takes most of the room the upload was created with: its next part no longer fits.
    filler = upload(quota_client, jsonl_of(QUOTA - used(quota) - 5000))
    holding, stored = used(quota), blobs(quota)
    with pytest.raises(openai.APIStatusError) as refused:
        quota_client.uploads.parts.create(pending.id, data=b"x" * 10_000)
    refused_for_quota(refused.value, "data", holding)
    assert used(quota) == holding and blobs(quota) == stored
    assert quota_client.uploads.cancel(pending.id).status == "cancelled"
    assert used(quota) == holding - 1000 and not any(b.startswith(f"uploads/{pending.id}") for b in blobs(quota))
    quota_client.files.delete(filler)


def test_uploads_racing_for_the_last_room_do_not_pass_the_quota_together(quota: LiveServer, quota_http: httpx.Client) -> None:
    size = (QUOTA - used(quota)) // 3 + 1  # two fit, three do not
    data = jsonl_of(size)

    def send(i: int) -> httpx.Response:
        return quota_http.post("/v1/files", files={"file": (f"race{i}.jsonl", data)}, data={"purpose": "fine-tune"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 2 + [413] * 6, [a.text for a in answers]
    assert used(quota) <= QUOTA
    for answer in answers:
        if answer.status_code == 200:
            quota_http.delete(f"/v1/files/{answer.json()['id']}")


def test_the_quota_is_a_setting_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftserve.config import Settings

    assert Settings().project_storage_bytes == 0 and Settings().max_line_bytes == LINE_LIMIT == 4 * 1024 * 1024
    monkeypatch.setenv("FTSERVE_PROJECT_STORAGE_BYTES", "1000")
    assert Settings().project_storage_bytes == 1000


# Files a live job reads


def test_a_file_a_live_job_reads_cannot_be_deleted(quota: LiveServer, quota_client: OpenAI) -> None:
    training, validation = upload(quota_client, chat_jsonl(4)), upload(quota_client, chat_jsonl(2), name="v.jsonl")
    job = quota_client.fine_tuning.jobs.create(model=MODEL, training_file=training, validation_file=validation)
    for status in ["validating_files", "queued", "paused"]:
        if status == "queued":
            assert worker_for(quota.runtime).run_once()  # one step of a worker: the files are valid
        elif status == "paused":
            quota_client.fine_tuning.jobs.pause(job.id)
        assert quota_client.fine_tuning.jobs.retrieve(job.id).status == status
        for file_id, role in [(training, "training"), (validation, "validation")]:
            with pytest.raises(openai.ConflictError) as refused:
                quota_client.files.delete(file_id)
            assert (refused.value.code, refused.value.param) == ("file_in_use", "file_id")
            assert f"the {role} file of fine-tuning job {job.id}" in refused.value.message
            assert f"which is {status}" in refused.value.message
            assert quota_client.files.retrieve(file_id).id == file_id
    quota_client.fine_tuning.jobs.cancel(job.id)
    for file_id in (training, validation):
        assert quota_client.files.delete(file_id).deleted is True
        with pytest.raises(openai.NotFoundError):
            quota_client.files.retrieve(file_id)


def test_an_expired_file_a_live_job_reads_is_kept_until_the_job_ends(
    quota: LiveServer, quota_client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = quota_client.files.create(file=("t.jsonl", chat_jsonl(4)), purpose="fine-tune",
                                        expires_after={"anchor": "created_at", "seconds": 3600})
    job = quota_client.fine_tuning.jobs.create(model=MODEL, training_file=created.id)
    later = time.time() + 7200
    monkeypatch.setattr("ftserve.services.files.now", lambda: int(later))
    quota.runtime.files.delete_expired()
    assert quota_client.files.retrieve(created.id).id == created.id
    quota_client.fine_tuning.jobs.cancel(job.id)
    quota.runtime.files.delete_expired()
    with pytest.raises(openai.NotFoundError):
        quota_client.files.retrieve(created.id)


# Uploads left to expire


def test_an_expired_upload_is_swept_by_the_worker(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ftserve.services.files.UPLOAD_TTL_SECONDS", 2)
    with recording(live.url) as http:
        client = sdk(live, http)
        pending = client.uploads.create(bytes=100, filename="late.jsonl", mime_type="text/jsonl", purpose="fine-tune")
        part = client.uploads.parts.create(pending.id, data=b"x" * 50)
        parts_dir = live.runtime.settings.data_dir / "blobs" / "uploads" / pending.id
        assert [p.name for p in parts_dir.iterdir()] == [part.id]

        deadline = time.time() + 20
        while True:
            with live.runtime.engine.connect() as conn:
                swept = file_rows.get_upload(conn, PROJECT, pending.id)
            if swept is not None and swept.status == "expired":
                break
            assert time.time() < deadline, "the worker never swept the expired upload"
            time.sleep(0.1)
        assert not parts_dir.exists()
        with live.runtime.engine.connect() as conn:
            assert file_rows.parts_of(conn, pending.id) == {}
        for attempt in [lambda: client.uploads.cancel(pending.id),
                        lambda: client.uploads.parts.create(pending.id, data=b"x"),
                        lambda: client.uploads.complete(pending.id, part_ids=[part.id])]:
            with pytest.raises(openai.BadRequestError) as refused:
                attempt()
            assert refused.value.code == "upload_expired" and f"Upload {pending.id} has expired." in refused.value.message


# Text longer than its column: PostgreSQL refuses it at the insert, which was a 500


def test_text_longer_than_its_column_is_a_400_naming_the_field(quota_client: OpenAI, quota_http: httpx.Client) -> None:
    training = upload(quota_client, chat_jsonl(4))
    created = quota_client.fine_tuning.jobs.create(model=MODEL, training_file=training,
                                                   extra_headers={"Idempotency-Key": "k" * 256})
    quota_client.fine_tuning.jobs.cancel(created.id)
    refusals: list[tuple[Any, str, int]] = [
        (lambda: quota_client.fine_tuning.jobs.create(model=MODEL, training_file=training,
                                                      extra_headers={"Idempotency-Key": "k" * 257}),
         "Idempotency-Key", 256),
        (lambda: quota_client.fine_tuning.jobs.create(model="together/" + "m" * 600, training_file=training), "model", 512),
        (lambda: quota_client.fine_tuning.jobs.create(model="remote-lab/" + "m" * 600, training_file=training),
         "model", 512),
        (lambda: quota_client.uploads.create(bytes=10, filename="t.jsonl", mime_type="text/" + "x" * 300,
                                             purpose="fine-tune"), "mime_type", 256),
    ]
    for call, param, limit in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert refused.value.param == param and f"at most {limit} are allowed" in refused.value.message
    # Half a surrogate pair in a name: JSON may send it, no database stores it.
    answer = quota_http.post("/v1/uploads", content=b'{"bytes": 10, "filename": "t\\ud800.jsonl", '
                             b'"mime_type": "text/jsonl", "purpose": "fine-tune"}',
                             headers={"content-type": "application/json"})
    assert answer.status_code == 400 and envelope(answer)["param"] == "filename", answer.text


def test_a_permission_for_a_project_id_longer_than_its_column_is_a_400(live: LiveServer) -> None:
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, chat_jsonl(4)))
    deadline = time.time() + 60
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status != "succeeded":
        assert time.time() < deadline and job.status not in ("failed", "cancelled"), job.status
        time.sleep(0.1)
    assert job.fine_tuned_model is not None
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.checkpoints.permissions.create(job.fine_tuned_model, project_ids=["proj_ok", "p" * 129])
    assert refused.value.param == "project_ids[1]" and "at most 128 are allowed" in refused.value.message
    assert list(client.fine_tuning.checkpoints.permissions.list(job.fine_tuned_model)) == []


def test_an_upload_cancelled_while_it_is_completed_is_a_400_not_a_500(
    quota: LiveServer, quota_client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = quota_client.uploads.create(bytes=68, filename="two.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    first = quota_client.uploads.parts.create(pending.id, data=jsonl_of(64)[:34])
    second = quota_client.uploads.parts.create(pending.id, data=jsonl_of(64)[34:] + b"\n\n\n\n")
    store, opened = quota.runtime.files.blobs, quota.runtime.files.blobs.open
    listed, stored = {f.id for f in quota_client.files.list()}, blobs(quota)

    def open_then_cancel(key: str) -> Any:
        # The second part is about to be read when another request cancels the upload, taking its parts.
        if key.endswith(second.id):
            quota.runtime.files.cancel_upload(PROJECT, pending.id)
        return opened(key)

    monkeypatch.setattr(store, "open", open_then_cancel)
    with pytest.raises(openai.BadRequestError) as refused:
        quota_client.uploads.complete(pending.id, part_ids=[first.id, second.id])
    assert refused.value.param == "upload_id"
    assert f"Upload {pending.id} was cancelled while it was being completed." in refused.value.message
    assert {f.id for f in quota_client.files.list()} == listed
    assert blobs(quota) == {b for b in stored if not b.startswith(f"uploads/{pending.id}/")}
