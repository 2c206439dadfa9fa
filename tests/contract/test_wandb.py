"""A local job that asks for W&B reporting gets it, through the `wandb` package in offline mode, or is refused at
create naming `integrations` when this server cannot report there, instead of being accepted and ignored."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.helpers import chat_jsonl, upload, wait_for

WANDB = [{"type": "wandb", "wandb": {"project": "ftserve-tests", "name": "mascot", "tags": ["ci"]}}]


def test_metrics_reach_a_wandb_run(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(client, chat_jsonl(8)),
                                         hyperparameters={"n_epochs": 2, "batch_size": 4},
                                         integrations=WANDB)  # type: ignore[arg-type]  # the SDK's TypedDict
    assert wait_for(client, job.id).status == "succeeded"
    runs = list((live.runtime.blobs.path(f"artifacts/{job.id}") / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = _records(runs[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    assert [h["_step"] for h in history] == [1, 2, 3, 4]  # 8 examples in batches of 4, twice
    assert all("train_loss" in h for h in history)
    run = next(r.run for r in records if r.HasField("run"))
    assert run.display_name == "mascot" and list(run.tags) == ["ci"]
    assert any(i.key == "model" and "SmolLM2-135M-Instruct" in i.value_json for i in run.config.update)


def _records(path: Path) -> list[Any]:
    """The records of an offline run's log: a 7-byte file header, then 32 KiB blocks of chunks, each with a
    checksum, a length and a type (whole, first, middle or last piece of a record)."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, block, pieces, records = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            pos += left
            continue
        pieces += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def test_a_server_not_set_up_for_wandb_refuses_the_job(live: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    training = upload(client, chat_jsonl(4))
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training,
                                       integrations=WANDB)  # type: ignore[arg-type]  # the SDK's TypedDict
    assert refused.value.body["param"] == "integrations"  # type: ignore[index]  # the error envelope's body
    assert "wandb login" in refused.value.body["message"]  # type: ignore[index]  # as above
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before
