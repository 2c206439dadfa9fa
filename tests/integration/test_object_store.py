"""ftserve on an S3-compatible object store (FTSERVE_BLOB_STORE=s3), through the official SDK: against moto's S3
server (tests/object_store.py), and against a real endpoint when the environment names one.

A file uploaded, a job trained on it by the engine's child process (the fake engine: its protocol, files and
adapter, no training) and its model served and exported leave nothing on the server's disk but the database and
the cache; with the cache deleted, listing, serving and downloads still work, fetching what they need again. A
paused job resumes from the state it stored in the bucket."""

from __future__ import annotations

import base64
import io
import shutil
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from ftserve.files.s3_store import S3Location
from tests.conftest import TINY_MODEL_ID, Databases, serving, settings_for
from tests.helpers import TERMINAL, upload, wait_for
from tests.object_store import moto_s3, objects, real_s3_location, s3_location, settings_of  # noqa: F401
from tests.tasks import chat_examples, jsonl


def files_on_disk(data_dir: Path) -> list[str]:
    """What the server keeps under its data dir, but the database and the cache."""
    return sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")
                  if p.is_file() and not p.name.startswith("ftserve.db") and "cache" not in p.relative_to(data_dir).parts)


def a_job_keeps_its_files_in_the_store(location: S3Location, data_dir: Path, database_url: str | None,
                                       catalogue: Path) -> None:
    settings = settings_for(data_dir, database_url, trainer="fake-engine", catalogue_file=catalogue,
                            **settings_of(location))
    with serving(settings) as live:
        client = OpenAI(base_url=live.base_url, api_key="unused")
        training = upload(client, jsonl(chat_examples(4)))
        job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training,
                                             hyperparameters={"n_epochs": 1, "batch_size": 2})
        job = wait_for(client, job.id, timeout=90)
        assert job.status == "succeeded", job.error
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [2]

        stored = objects(location)
        prefix = location.prefix
        assert f"{prefix}files/{training}" in stored
        assert any(name.startswith(f"{prefix}artifacts/{job.id}/checkpoint-2/") for name in stored)
        assert any(name.startswith(f"{prefix}results/{job.id}/") for name in stored)
        # The saved state goes once the job succeeded: it is of no more use.
        deadline = time.monotonic() + 10
        while any(name.startswith(f"{prefix}artifacts/{job.id}/state/") for name in objects(location)):
            assert time.monotonic() < deadline, "the job's saved state stayed in the store"
            time.sleep(0.1)
        assert files_on_disk(data_dir) == []

        shutil.rmtree(data_dir / "cache")
        assert job.fine_tuned_model in [m.id for m in client.models.list()]
        assert base64.b64decode(client.files.content(job.result_files[0]).read()).startswith(b"step,")  # as OpenAI
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                               messages=[{"role": "user", "content": "Hello"}])
        assert reply.choices[0].message.content
        export = httpx.get(f"{live.base_url}/ftserve/export", params={"model": job.fine_tuned_model,
                                                                      "format": "adapter"}, timeout=60)
        assert export.status_code == 200, export.text
        with tarfile.open(fileobj=io.BytesIO(export.content)) as tar:
            assert "adapter/adapter_config.json" in tar.getnames()
        assert any(name.startswith(f"{prefix}exports/") for name in objects(location))
        assert files_on_disk(data_dir) == []

        client.models.delete(job.fine_tuned_model)
        client.files.delete(training)
        left = objects(location)
        assert not any(f"artifacts/{job.id}/checkpoint-2/" in name or "/exports/" in f"/{name}" for name in left), left
        assert f"{prefix}files/{training}" not in left


def test_a_paused_job_resumes_from_its_state_in_the_store(
        s3_location: S3Location, tmp_path: Path, databases: Databases, tiny_catalogue: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Each run of the engine works in a scratch dir of its own, gone when it stops: what the resumed run starts
    # from can only have come from the bucket.
    monkeypatch.setenv("FTSERVE_FAKE_ENGINE_STEP_SECONDS", "0.3")
    data_dir = tmp_path / "data"
    settings = settings_for(data_dir, databases.new(), trainer="fake-engine", catalogue_file=tiny_catalogue,
                            **settings_of(s3_location))
    with serving(settings) as live:
        client = OpenAI(base_url=live.base_url, api_key="unused")
        job = client.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=upload(client, jsonl(chat_examples(8))),
            hyperparameters={"n_epochs": 2, "batch_size": 2}, extra_body={"ftserve": {"checkpoint_interval": 2}})
        wait_for(client, job.id, ("running",))
        deadline = time.monotonic() + 30
        while not [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"
                   and e.data and e.data.get("step", 0) >= 3]:
            assert time.monotonic() < deadline, "the job never reached step 3"
            time.sleep(0.1)
        client.fine_tuning.jobs.pause(job.id)
        paused = wait_for(client, job.id, ("paused",) + TERMINAL)
        assert paused.status == "paused"
        saved = [name for name in objects(s3_location) if f"/artifacts/{job.id}/state/" in f"/{name}"]
        steps = {int(name.split("/state/step-")[1].split("/")[0]) for name in saved}
        assert steps and min(steps) >= 2, saved
        assert not any((data_dir / "cache" / "runs").iterdir())  # no run's scratch is left on this machine

        client.fine_tuning.jobs.resume(job.id)
        done = wait_for(client, job.id, timeout=60)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert f"Resuming from step {max(steps)}" in messages


def test_on_moto(s3_location: S3Location, tmp_path: Path, databases: Databases, tiny_catalogue: Path) -> None:
    a_job_keeps_its_files_in_the_store(s3_location, tmp_path / "data", databases.new(), tiny_catalogue)


def test_on_the_real_endpoint_the_environment_names(
        real_s3_location: S3Location, tmp_path: Path, databases: Databases, tiny_catalogue: Path) -> None:
    a_job_keeps_its_files_in_the_store(real_s3_location, tmp_path / "data", databases.new(), tiny_catalogue)
