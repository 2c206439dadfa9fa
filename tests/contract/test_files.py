"""Files and uploads through the official SDK: create, list (paged both ways), retrieve, content,
delete, expiry, validation errors with line numbers, and chunked uploads with md5."""

from __future__ import annotations

import hashlib
import io
import json

import openai
import pytest
from openai import OpenAI

from tests.helpers import chat_jsonl, upload


@pytest.fixture
def client(live) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def test_upload_retrieve_download_delete(client: OpenAI) -> None:
    data = chat_jsonl(12)
    created = client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert created.object == "file" and created.bytes == len(data) and created.filename == "train.jsonl"
    assert created.id.startswith("file-") and created._request_id
    assert client.files.wait_for_processing(created.id).status == "processed"
    assert client.files.content(created.id).read() == data
    assert client.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError) as error:
        client.files.retrieve(created.id)
    assert error.value.body["param"] == "id"  # type: ignore[index]


def test_bad_line_is_rejected_with_its_number_and_nothing_is_stored(client: OpenAI, live) -> None:  # type: ignore[no-untyped-def]
    before = {f.id for f in client.files.list()}
    lines = chat_jsonl(3).decode().splitlines()
    lines.insert(2, json.dumps({"messages": [{"role": "bot", "content": "x"}]}))
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("bad.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="fine-tune")
    assert "line 3" in error.value.message and "role" in error.value.message
    assert error.value.code == "invalid_file_format"
    assert {f.id for f in client.files.list()} == before
    leftovers = [p for p in (live.runtime.settings.data_dir / "blobs").rglob("*") if p.name.startswith(".partial-")]
    assert leftovers == []


def test_fine_tune_files_must_be_jsonl(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="JSONL"):
        client.files.create(file=("train.csv", io.BytesIO(b"a,b\n")), purpose="fine-tune")


def test_other_purposes_are_stored_as_is_with_expiry(client: OpenAI) -> None:
    created = client.files.create(
        file=("notes.txt", io.BytesIO(b"not json")), purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(
            file=("notes.txt", io.BytesIO(b"x")), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 5}
        )
    assert error.value.param == "expires_after"


@pytest.mark.database
def test_list_pages_with_after_in_both_orders(client: OpenAI) -> None:
    ids = [upload(client, b"x", name=f"f{i}.txt", purpose="batch") for i in range(5)]
    newest_first = [f.id for f in client.files.list(purpose="batch", limit=2) if f.id in ids]
    assert newest_first == list(reversed(ids))
    page = client.files.list(purpose="batch", limit=2, order="asc")
    assert page.has_more is True and len(page.data) == 2
    oldest_first = [f.id for f in client.files.list(purpose="batch", limit=2, order="asc") if f.id in ids]
    assert oldest_first == ids


def test_chunked_upload_assembles_parts_in_order_and_checks_md5(client: OpenAI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = chat_jsonl(200)
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    done = client.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=1000)
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == data

    created = client.uploads.create(bytes=len(data), filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    half = len(data) // 2
    first = client.uploads.parts.create(created.id, data=data[:half])
    second = client.uploads.parts.create(created.id, data=data[half:])
    with pytest.raises(openai.BadRequestError, match="md5"):
        client.uploads.complete(created.id, part_ids=[first.id, second.id], md5="0" * 32)
    with pytest.raises(openai.BadRequestError):
        # Parts in the wrong order make invalid JSONL at the seam.
        client.uploads.complete(created.id, part_ids=[second.id, first.id])
    finished = client.uploads.complete(
        created.id, part_ids=[first.id, second.id], md5=hashlib.md5(data).hexdigest()
    )
    assert finished.status == "completed" and client.files.content(finished.file.id).read() == data  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match="completed"):
        client.uploads.parts.create(created.id, data=b"more")


def test_upload_byte_count_must_match_and_cancel_stops_it(client: OpenAI) -> None:
    created = client.uploads.create(bytes=10, filename="x.txt", mime_type="text/plain", purpose="batch")
    part = client.uploads.parts.create(created.id, data=b"12345")
    with pytest.raises(openai.BadRequestError, match="bytes=10"):
        client.uploads.complete(created.id, part_ids=[part.id])
    assert client.uploads.cancel(created.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(created.id, part_ids=[part.id])


async def test_async_client_files(live) -> None:  # type: ignore[no-untyped-def]
    client = openai.AsyncOpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    created = await client.files.create(file=("a.jsonl", chat_jsonl(3)), purpose="fine-tune")
    assert (await client.files.retrieve(created.id)).id == created.id
    assert await (await client.files.content(created.id)).aread() == chat_jsonl(3)
    await client.close()
