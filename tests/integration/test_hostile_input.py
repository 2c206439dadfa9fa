"""Hostile input through the official SDK and raw HTTP: a corpus of bad training files (tests/hostile.py),
bad multipart bodies, oversized uploads, path-traversal filenames, unknown and malformed ids, and
malformed metadata filters. Every bad file gets a 400 naming the line and the reason, or a failed job
that does; odd but valid files are taken and train; nothing is half-stored; the server keeps serving
and never answers 5xx."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import openai
import pytest
from openai import OpenAI

from ftserve.config import Settings
from tests.conftest import TINY_MODEL_ID, Databases, LiveServer, settings_for, start_server
from tests.helpers import upload, wait_for
from tests.hostile import ACCEPTED, CHAT, COMPLETION, LONG, REFUSED, TINY_LINE, lines
from tests.tasks import chat_examples, jsonl

MODEL = "SmolLM2-135M-Instruct"
SMALL_LIMIT = 64 * 1024
AT_UPLOAD = [name for name, bad in REFUSED.items() if bad.stage == "upload"]
AT_JOB = [name for name, bad in REFUSED.items() if bad.stage == "job"]
# Every status the tests' clients received, checked for 5xx after each test.
STATUSES: list[tuple[str, str, int]] = []


def _record(response: httpx.Response) -> None:
    STATUSES.append((response.request.method, response.request.url.path[:80], response.status_code))


def recording(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=120, event_hooks={"response": [_record]})


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    start = len(STATUSES)
    yield
    errors = [s for s in STATUSES[start:] if s[2] >= 500]
    assert not errors, f"the server answered 5xx: {errors}"


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with recording(live.url) as client:
        yield client


@pytest.fixture(scope="module")
def client(live: LiveServer, http: httpx.Client) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, http_client=http)


def file_ids(client: OpenAI) -> set[str]:
    # Uploads only: a job of another test may add its result files meanwhile.
    return {f.id for f in client.files.list(purpose="fine-tune")}


def leftovers(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.name.startswith(".partial-")]


def envelope(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


# The corpus


@pytest.mark.parametrize("name", AT_UPLOAD)
def test_a_bad_file_is_refused_at_upload_naming_the_line_and_the_reason(
    name: str, client: OpenAI, live: LiveServer, tmp_path: Path
) -> None:
    bad = REFUSED[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(bad.build())
    before = file_ids(client)
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=path, purpose="fine-tune")
    error = caught.value.body
    assert isinstance(error, dict) and (error["code"], error["param"]) == ("invalid_file_format", "file")
    where = f"line {bad.line}: " if bad.line is not None else ""
    assert error["message"].startswith(f"Invalid file format: {where}"), error["message"]
    assert bad.reason in error["message"]
    assert file_ids(client) == before and leftovers(live.runtime.settings.data_dir) == []


@pytest.mark.parametrize("name", AT_JOB)
def test_valid_jsonl_the_method_cannot_train_fails_the_job_naming_the_line(name: str, client: OpenAI) -> None:
    bad = REFUSED[name]
    training = upload(client, bad.build())
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, method={"type": bad.method})  # type: ignore[typeddict-item]
    job = wait_for(client, job.id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.param) == ("invalid_training_file", "training_file")
    assert job.error.message == f"Training file {training}: line {bad.line}: {bad.reason}."


def test_the_corpus_holds_at_least_60_refused_files() -> None:
    assert len(AT_UPLOAD) + len(AT_JOB) >= 60


@pytest.mark.parametrize("name", ACCEPTED)
def test_an_odd_but_valid_file_is_accepted_and_its_job_succeeds(name: str, client: OpenAI) -> None:
    data = ACCEPTED[name]()
    created = client.files.create(file=("odd.jsonl", data), purpose="fine-tune")
    assert created.status == "processed" and created.bytes == len(data)
    assert client.files.content(created.id).read() == data
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=created.id, hyperparameters={"n_epochs": 1})
    assert wait_for(client, job.id).status == "succeeded"


def test_a_million_tiny_lines_are_accepted_in_seconds(client: OpenAI) -> None:
    data = TINY_LINE * 10**6
    started = time.monotonic()
    created = client.files.create(file=("million.jsonl", data), purpose="fine-tune")
    elapsed = time.monotonic() - started
    assert created.status == "processed" and created.bytes == len(data)
    # About 5 s on two busy cores; a guard against a hang (tests/unit/test_jsonl.py compares the validator's CPU time with json.loads).
    assert elapsed < 60, f"uploading and validating 10^6 lines took {elapsed:.1f}s"


@pytest.mark.parametrize("purpose", ["batch", "assistants", "user_data"])
def test_a_file_of_another_purpose_cannot_train(purpose: str, client: OpenAI) -> None:
    other = upload(client, lines(CHAT, CHAT), purpose=purpose)
    good = upload(client, lines(CHAT, CHAT))
    for training, validation, param in [(other, None, "training_file"), (good, other, "validation_file")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model=MODEL, training_file=training, validation_file=validation)
        assert caught.value.param == param
        assert f"has purpose '{purpose}'; fine-tuning needs purpose 'fine-tune'" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize("filename", ["train.json", "train.csv", "train.txt", "train", "train.jsonl.gz"])
def test_a_fine_tuning_file_needs_a_jsonl_name(filename: str, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=(filename, lines(CHAT)), purpose="fine-tune")
    assert caught.value.code == "invalid_file_format" and f"got '{filename}'" in caught.value.body["message"]  # type: ignore[index]


# Transport: multipart bodies

BOUNDARY = "hostile"
PURPOSE_PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'.encode()
FILE_HEAD = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'.encode()
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
GOOD = lines(CHAT)

BAD_BODIES: dict[str, tuple[str, bytes, str]] = {
    "no boundary": ("multipart/form-data", PURPOSE_PART + FILE_HEAD + GOOD, "Missing boundary"),
    "not multipart at all": (MULTIPART, b"garbage", "Invalid multipart data"),
    "JSON instead of multipart": ("application/json", json.dumps({"purpose": "fine-tune", "file": "x"}).encode(), "'file'"),
    "empty body": (MULTIPART, b"", "'file'"),
    "cut before the closing boundary": (MULTIPART, PURPOSE_PART + FILE_HEAD + GOOD, "'file'"),
    "part headers never end": (MULTIPART, PURPOSE_PART + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"'.encode(), "'file'"),
    "part without Content-Disposition": (
        MULTIPART, PURPOSE_PART + f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n".encode() + GOOD + f"\r\n--{BOUNDARY}--\r\n".encode(),
        'The Content-Disposition header field "name" must be provided',
    ),
    "file sent as a text field": (
        MULTIPART, PURPOSE_PART + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\n\r\n'.encode() + GOOD
        + f"\r\n--{BOUNDARY}--\r\n".encode(), "'file' (a file part)",
    ),
    "two files": (MULTIPART, PURPOSE_PART + (FILE_HEAD + GOOD + b"\r\n") * 2 + f"--{BOUNDARY}--\r\n".encode(), "Too many files"),
    "seventeen fields": (
        MULTIPART, b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode() for i in range(17))
        + FILE_HEAD + GOOD + f"\r\n--{BOUNDARY}--\r\n".encode(), "Too many fields",
    ),
    "no purpose": (MULTIPART, FILE_HEAD + GOOD + f"\r\n--{BOUNDARY}--\r\n".encode(), "'purpose'"),
    "unknown purpose": (
        MULTIPART, PURPOSE_PART.replace(b"fine-tune", b"../../etc") + FILE_HEAD + GOOD + f"\r\n--{BOUNDARY}--\r\n".encode(),
        "Invalid value for 'purpose'",
    ),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_a_bad_multipart_body_is_a_400(name: str, http: httpx.Client, client: OpenAI) -> None:
    content_type, body, words = BAD_BODIES[name]
    before = file_ids(client)
    response = http.post("/v1/files", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert words in envelope(response)["message"]
    assert file_ids(client) == before


def test_a_bad_multipart_body_for_an_upload_part_is_a_400(http: httpx.Client, client: OpenAI) -> None:
    pending = client.uploads.create(bytes=10, filename="p.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    for content_type, body, _ in BAD_BODIES.values():
        response = http.post(f"/v1/uploads/{pending.id}/parts", content=body, headers={"content-type": content_type})
        assert response.status_code == 400, response.text
        envelope(response)
    assert client.uploads.cancel(pending.id).status == "cancelled"


# Transport: size limits and filenames, on a server of its own with a 64 KiB limit


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("small")
    live, server, thread = start_server(settings_for(root / "data", databases.new(), max_file_bytes=SMALL_LIMIT))
    yield live
    server.should_exit = True
    thread.join(timeout=30)
    live.runtime.engine.dispose()


@pytest.fixture(scope="module")
def small_http(small: LiveServer) -> Iterator[httpx.Client]:
    with recording(small.url) as client:
        yield client


@pytest.fixture(scope="module")
def small_client(small: LiveServer, small_http: httpx.Client) -> OpenAI:
    return OpenAI(base_url=small.base_url, api_key="unused", max_retries=0, http_client=small_http)


def blobs(live: LiveServer) -> set[str]:
    root = live.runtime.settings.data_dir / "blobs"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def sized(size: int) -> bytes:
    """A valid JSONL file of exactly `size` bytes."""
    head = lines(COMPLETION) * ((size - 100) // len(lines(COMPLETION)))
    pad = size - len(head) - len(b'{"prompt": "", "completion": "x"}\n')
    return head + b'{"prompt": "' + b" " * pad + b'", "completion": "x"}\n'


def test_the_file_size_limit_is_a_setting_of_512_mb_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_file_bytes == 512 * 1024**2 == 536_870_912
    monkeypatch.setenv("FTSERVE_MAX_FILE_BYTES", "1234")
    assert Settings().max_file_bytes == 1234


@pytest.mark.parametrize("size", [SMALL_LIMIT + 1, 4 * 1024 * 1024])
def test_an_upload_over_the_limit_is_a_413_and_nothing_is_stored(size: int, small: LiveServer, small_client: OpenAI) -> None:
    before, stored = file_ids(small_client), blobs(small)
    with pytest.raises(openai.APIStatusError) as caught:
        small_client.files.create(file=("big.jsonl", sized(size)), purpose="fine-tune")
    assert caught.value.status_code == 413
    error = caught.value.body
    assert isinstance(error, dict) and (error["type"], error["code"]) == ("invalid_request_error", "payload_too_large")
    assert str(SMALL_LIMIT) in error["message"] or str(SMALL_LIMIT + 1024 * 1024) in error["message"]
    assert file_ids(small_client) == before and blobs(small) == stored
    assert small_client.files.list().data is not None  # still serving


def test_a_file_at_the_limit_is_accepted_and_uploads_in_parts_may_be_larger(small_client: OpenAI, tmp_path: Path) -> None:
    at_limit = sized(SMALL_LIMIT)
    assert small_client.files.create(file=("edge.jsonl", at_limit), purpose="fine-tune").bytes == SMALL_LIMIT
    path = tmp_path / "parts.jsonl"
    path.write_bytes(sized(3 * SMALL_LIMIT))
    done = small_client.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=SMALL_LIMIT)
    assert done.status == "completed" and done.file is not None and done.file.bytes == 3 * SMALL_LIMIT


def attachment_name(disposition: str) -> str:
    """The filename a browser saves a download as (RFC 6266: `filename*` wins)."""
    if match := re.search(r"filename\*=utf-8''(\S+)", disposition, re.IGNORECASE):
        return unquote(match.group(1))
    match = re.search(r'filename="([^"]*)"', disposition)
    assert match, disposition
    return match.group(1)


TRAVERSALS = {
    "../../etc/passwd.jsonl": "passwd.jsonl",
    "..\\..\\windows\\win.jsonl": "win.jsonl",
    "/etc/cron.d/evil.jsonl": "evil.jsonl",
    "C:\\Users\\me\\train.jsonl": "train.jsonl",
    "./././here.jsonl": "here.jsonl",
    "データ.jsonl": "データ.jsonl",
    "it's; 50% done.jsonl": "it's; 50% done.jsonl",
}


def test_path_traversal_filenames_keep_their_last_part_and_write_nothing_outside_the_data_dir(
    small: LiveServer, small_client: OpenAI, small_http: httpx.Client
) -> None:
    data_dir = small.runtime.settings.data_dir
    for sent, kept in TRAVERSALS.items():
        created = small_client.files.create(file=(sent, GOOD), purpose="fine-tune")
        assert small_client.files.retrieve(created.id).filename == kept
        download = small_http.get(f"/v1/files/{created.id}/content")
        assert download.status_code == 200 and download.content == GOOD
        assert attachment_name(download.headers["content-disposition"]) == kept
    upload_ = small_client.uploads.create(bytes=len(GOOD), filename="../../up.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert upload_.filename == "up.jsonl"
    part = small_client.uploads.parts.create(upload_.id, data=GOOD)
    done = small_client.uploads.complete(upload_.id, part_ids=[part.id], md5=hashlib.md5(GOOD).hexdigest())
    assert done.file is not None and done.file.filename == "up.jsonl"
    # Raw bytes the SDK would escape: NUL and control characters in the name.
    body = (PURPOSE_PART + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '.encode()
            + b'filename="../../a\x00b\x07.jsonl"\r\n\r\n' + GOOD + f"\r\n--{BOUNDARY}--\r\n".encode())
    response = small_http.post("/v1/files", content=body, headers={"content-type": MULTIPART})
    assert response.status_code == 200 and response.json()["filename"] == "ab.jsonl"
    for nameless in ["../", "..", "/", "\\"]:
        with pytest.raises(openai.BadRequestError, match="needs a filename"):
            small_client.uploads.create(bytes=1, filename=nameless, mime_type="text/plain", purpose="batch")
    with pytest.raises(openai.BadRequestError, match="longer than 255 characters"):
        small_client.files.create(file=("x" * 300 + ".jsonl", GOOD), purpose="fine-tune")
    root = data_dir.parent
    assert [p.name for p in root.iterdir()] == [data_dir.name]
    kept_names = set(TRAVERSALS.values()) | {"up.jsonl", "ab.jsonl"}
    assert not [p for p in root.rglob("*") if p.name in kept_names]
    assert {key.split("/")[0] for key in blobs(small)} <= {"files"}
    assert all(key.removeprefix("files/").startswith("file-") for key in blobs(small))


# Unknown and malformed ids

IDS = ["file-nope", "ftjob-nope", "upload_nope", "x" * 5000, "%2e%2e", "..%5C..%5Cetc", "a%00b", "%F0%9F%92%A5", "%ED%A0%80",
       "a%20b", "%3Cscript%3E", "%22%27%60", "a%2Fb", ".."]
ROUTES = [
    ("GET", "/v1/files/{}"), ("DELETE", "/v1/files/{}"), ("GET", "/v1/files/{}/content"),
    ("POST", "/v1/uploads/{}/parts"), ("POST", "/v1/uploads/{}/complete"), ("POST", "/v1/uploads/{}/cancel"),
    ("GET", "/v1/fine_tuning/jobs/{}"), ("POST", "/v1/fine_tuning/jobs/{}/cancel"), ("POST", "/v1/fine_tuning/jobs/{}/pause"),
    ("POST", "/v1/fine_tuning/jobs/{}/resume"), ("GET", "/v1/fine_tuning/jobs/{}/events"),
    ("GET", "/v1/fine_tuning/jobs/{}/checkpoints"),
]


@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_an_unknown_or_malformed_id_is_a_404(method: str, route: str, http: httpx.Client) -> None:
    for object_id in IDS:
        kwargs: dict[str, Any] = {}
        if route.endswith("/parts"):
            kwargs["files"] = {"data": ("d", b"x")}
        elif route.endswith("/complete"):
            kwargs["json"] = {"part_ids": []}
        response = http.request(method, route.format(object_id), **kwargs)
        assert response.status_code == 404, (object_id, response.text)
        assert envelope(response)["type"] == "invalid_request_error"


def test_unknown_ids_through_the_sdk(client: OpenAI, http: httpx.Client) -> None:
    for call in [lambda: client.files.retrieve("file-nope"), lambda: client.files.delete("file-nope"),
                 lambda: client.uploads.cancel("upload_nope"), lambda: client.fine_tuning.jobs.retrieve("ftjob-nope"),
                 lambda: client.fine_tuning.jobs.list_events("ftjob-nope")]:
        with pytest.raises(openai.NotFoundError):
            call()
    for cursor in ["file-nope", "a%00b"]:
        response = http.get(f"/v1/files?after={cursor}")
        assert response.status_code == 404 and envelope(response)["param"] == "after"
    for training_file in ["file-nope", "a\x00b", "\ud800", "x" * 5000]:
        body = json.dumps({"model": MODEL, "training_file": training_file})
        response = http.post("/v1/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and envelope(response)["param"] == "training_file", response.text


def test_text_no_database_can_store_is_a_400_naming_the_field(client: OpenAI) -> None:
    training = upload(client, lines(CHAT, CHAT))
    for fields, param in [({"suffix": "a\x00b"}, "suffix"), ({"metadata": {"k": "v\x00"}}, "metadata.k"),
                          ({"metadata": {"k\x00": "v"}}, "metadata.k\x00")]:
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model=MODEL, training_file=training, **fields)  # type: ignore[arg-type]
        assert refused.value.param == param and "cannot be stored" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.uploads.create(filename="t.jsonl", purpose="fine-tune", bytes=10, mime_type="text/jsonl\x00")
    assert refused.value.param == "mime_type"


# Malformed metadata filters


def test_malformed_metadata_filters_are_400s_naming_the_param(http: httpx.Client) -> None:
    for query in ["metadata[", "metadata[]=x", "metadata[k][x]=1", "metadata[k]x=1", "metadata[[k]]=1", "metadata=1",
                  "metadata[k]=1&metadata[k]=2", "metadata[k]=v&metadata=null", "metadata%5Bk=1"]:
        response = http.get(f"/v1/fine_tuning/jobs?{query}")
        assert response.status_code == 400, (query, response.text)
        assert envelope(response)["param"] == "metadata"


def test_odd_but_well_formed_metadata_filters_match_exactly(client: OpenAI, http: httpx.Client) -> None:
    training = upload(client, lines(CHAT, CHAT))
    tag = f"t-{training[-8:]}"
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, metadata={"tag": tag, 'q"uote': "1", "$.x": "y"}).id
    for query, found in [
        (f"metadata[tag]={tag}", True), (f'metadata[q"uote]=1&metadata[tag]={tag}', True), (f"metadata[$.x]=y&metadata[tag]={tag}", True),
        (f"metadata[tag]={tag}&metadata[{'k' * 5000}]=v", False), (f"metadata[tag]={'v' * 5000}", False),
        (f"metadata[tag]={tag}%00", False), (f"metadata[%00]=1&metadata[tag]={tag}", False), ("metadata[%ED%A0%80]=1", False),
        (f"metadata[tag]={tag}&metadata[x]=%27%20OR%201=1%20--", False),
    ]:
        response = http.get(f"/v1/fine_tuning/jobs?{query}&limit=100")
        assert response.status_code == 200, (query, response.text)
        assert (job in {j["id"] for j in response.json()["data"]}) is found, query


def test_the_server_kept_serving(http: httpx.Client, client: OpenAI) -> None:
    # Whatever ran before it in this module (each test's 5xx are checked by `no_server_errors`), the server
    # still stores, lists and trains.
    assert http.get("/health").json() == {"status": "ok"}
    file_id = client.files.create(file=("after.jsonl", jsonl(chat_examples(2))), purpose="fine-tune").id
    assert file_id in file_ids(client)
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=file_id)
    assert job.id in {j.id for j in client.fine_tuning.jobs.list(limit=100)}


# The local engine: examples longer than the context, and odd files that really train


@pytest.fixture(scope="module")
def engine_client(tmp_path_factory: pytest.TempPathFactory, databases: Databases, tiny_catalogue: Path) -> Iterator[OpenAI]:
    # The real engine on the tiny stand-in for the default model (same tokenizer and context): the subject is
    # how the engine reads odd files, not what it learns from them.
    settings = settings_for(tmp_path_factory.mktemp("hostile-local"), databases.new(), trainer="local", lease_seconds=10.0,
                            catalogue_file=tiny_catalogue)
    live, server, thread = start_server(settings)
    with recording(live.url) as http:
        yield OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, http_client=http)
    server.should_exit = True
    thread.join(timeout=60)
    live.runtime.engine.dispose()


def test_examples_longer_than_the_context_fail_the_job_naming_the_line(engine_client: OpenAI) -> None:
    training = upload(engine_client, b"\n" + lines(LONG, LONG))
    job = engine_client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training)
    job = wait_for(engine_client, job.id, timeout=300)
    assert job.status == "failed" and job.error is not None
    assert job.error.message.startswith(
        "training file, line 2: the example is longer than max_seq_length=2048 tokens, and its assistant tokens all lie beyond it"
    ), job.error.message
    assert "(lines 2, 3)" in job.error.message


def test_odd_but_valid_files_train_on_the_local_engine(engine_client: OpenAI) -> None:
    # A BOM, CRLF, blank lines, an example longer than the context (line 4), and a last line with no
    # newline whose JSON whitespace is carriage returns, holding an emoji as an escaped surrogate pair.
    data = (b"\xef\xbb\xbf" + lines(CHAT).replace(b"\n", b"\r\n") + b"\r\n \t\r\n" + lines(LONG)
            + b'{"messages":\r[{"role": "user", "content": "Rocket?"},\r{"role": "assistant", "content": "\\ud83d\\ude80"}]}')
    training = upload(engine_client, data)
    job = engine_client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID, training_file=training, hyperparameters={"n_epochs": 1, "batch_size": 1}
    )
    job = wait_for(engine_client, job.id, timeout=600)
    assert job.status == "succeeded", job.error
    warnings = [e.message for e in engine_client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.level == "warn"]
    assert any("skipped 1 example(s)" in w and "(lines 4)" in w and "max_seq_length=2048" in w for w in warnings), warnings
