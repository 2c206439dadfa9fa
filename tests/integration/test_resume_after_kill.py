"""A worker killed mid-run: another worker takes the job back when its lease runs out, and the engine
resumes from the last state it saved instead of starting again at step 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from openai import OpenAI

from tests.conftest import MODEL_CACHE, Databases, settings_for, start_server
from tests.helpers import upload, wait_for
from tests.tasks import chat_examples, jsonl


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ftserve.cli.main", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def metrics_steps(client: OpenAI, job_id: str) -> list[int]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return [e.data["step"] for e in reversed(events) if e.type == "metrics" and "step" in e.data]  # type: ignore[index, operator]


def test_a_killed_worker_s_job_resumes_from_its_last_state(tmp_path: Path, databases: Databases,
                                                           default_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "data", databases.new(), lease_seconds=3.0)
    live, server, thread = start_server(settings, with_worker=False)
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    env = {**os.environ, "FTSERVE_DATA_DIR": str(settings.data_dir), "FTSERVE_DATABASE_URL": settings.resolved_database_url,
           "FTSERVE_TRAINER": "local", "FTSERVE_MODELS_DIR": str(MODEL_CACHE), "FTSERVE_LEASE_SECONDS": "3",
           "FTSERVE_WORKER_POLL_SECONDS": "0.2"}
    try:
        job = client.fine_tuning.jobs.create(
            model="SmolLM2-135M-Instruct", training_file=upload(client, jsonl(chat_examples(16))),
            hyperparameters={"n_epochs": 2, "batch_size": 2},
            extra_body={"ftserve": {"checkpoint_interval": 2}},
        )
        first = start_worker(env, tmp_path / "worker-1.log")
        deadline = time.time() + 600
        while not metrics_steps(client, job.id) or metrics_steps(client, job.id)[-1] < 5:
            assert time.time() < deadline and first.poll() is None, "the first worker never reached step 5"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = metrics_steps(client, job.id)[-1]

        second = start_worker(env, tmp_path / "worker-2.log")
        try:
            job = wait_for(client, job.id, timeout=600)
        finally:
            second.send_signal(signal.SIGINT)
            second.wait(timeout=30)
        assert job.status == "succeeded", job.error

        messages = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data)]
        assert "The worker stopped responding; job requeued" in messages
        resumed = next(m for m in messages if m.startswith("Resuming from step "))
        resumed_at = int(resumed.removeprefix("Resuming from step "))
        assert 4 <= resumed_at <= killed_at and resumed_at % 2 == 0
        steps = metrics_steps(client, job.id)
        second_run = steps[steps.index(killed_at) + 1:]
        assert second_run[0] == resumed_at + 1 and second_run[-1] == 16
        assert len(client.fine_tuning.jobs.checkpoints.list(job.id).data) == 2
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        live.runtime.engine.dispose()
