"""A fine-tuning file's `ftserve` field, read through the official SDK: the format its validation detected, its
example count and its estimated tokens, on create, retrieve, list and a completed upload. Other files have none."""

from __future__ import annotations

import io
import json

import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.helpers import preference_jsonl

# Twelve chat examples whose text is 38 characters each (a 28-character question, a 10-character answer):
# 456 characters, 114 tokens at the four characters a token a dry run prices.
EXAMPLES = 12
HAND_COUNT = EXAMPLES * (28 + 10) // 4


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def chat_file() -> bytes:
    lines = [{"messages": [{"role": "user", "content": f"Question number {i:02d}, please!!"},
                           {"role": "assistant", "content": f"Answer {i:02d}."}]} for i in range(EXAMPLES)]
    assert all(len(line["messages"][0]["content"]) == 28 and len(line["messages"][1]["content"]) == 10
               for line in lines)
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def extension(file: object) -> dict[str, object] | None:
    """The `ftserve` field as the SDK parsed it: an extra field, so a plain dict, or absent."""
    return getattr(file, "ftserve", None)


def test_a_chat_file_shows_its_format_examples_and_tokens(client: OpenAI) -> None:
    created = client.files.create(file=("chat.jsonl", io.BytesIO(chat_file())), purpose="fine-tune")
    expected = {"format": "chat", "examples": EXAMPLES, "estimated_tokens": HAND_COUNT}
    assert extension(created) == expected
    assert extension(client.files.retrieve(created.id)) == expected
    listed = {file.id: extension(file) for file in client.files.list(purpose="fine-tune")}
    assert listed[created.id] == expected
    # The count is the dry run's: a preview of a job on the file prices the same tokens an epoch.
    preview = client.post("/ftserve/fine_tuning/resolve", cast_to=object, body={
        "model": "SmolLM2-135M-Instruct", "training_file": created.id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}})
    assert preview["estimate"]["trained_tokens"] == HAND_COUNT  # type: ignore[index]


def test_a_preference_file_uploaded_in_parts_carries_it_too(client: OpenAI) -> None:
    data = preference_jsonl(6)
    upload = client.uploads.create(filename="prefs.jsonl", purpose="fine-tune", bytes=len(data),
                                   mime_type="application/jsonl")
    half = len(data) // 2
    parts = [client.uploads.parts.create(upload.id, data=piece).id for piece in (data[:half], data[half:])]
    done = client.uploads.complete(upload.id, part_ids=parts)
    assert done.file is not None
    info = extension(done.file)
    assert info is not None and info["format"] == "preference" and info["examples"] == 6
    assert isinstance(info["estimated_tokens"], int) and info["estimated_tokens"] > 0
    assert extension(client.files.retrieve(done.file.id)) == info


def test_a_file_that_is_not_for_fine_tuning_has_none(client: OpenAI) -> None:
    notes = client.files.create(file=("notes.jsonl", io.BytesIO(chat_file())), purpose="user_data")
    assert extension(notes) is None and extension(client.files.retrieve(notes.id)) is None
    assert "ftserve" not in client.files.with_raw_response.retrieve(notes.id).http_response.json()
