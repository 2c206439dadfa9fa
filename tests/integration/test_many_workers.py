"""Many workers on one PostgreSQL database: four worker processes take 200 jobs and run each exactly
once; a worker killed holding a job loses it when its lease runs out, and another worker finishes it."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from openai import OpenAI

from ftserve.store.tables import jobs as job_table
from tests.conftest import Databases, settings_for, start_server
from tests.helpers import chat_jsonl, upload

pytestmark = pytest.mark.database

JOBS = 200
WORKERS = 4


def test_four_workers_run_200_jobs_exactly_once(tmp_path: Path, databases: Databases) -> None:
    if databases.server is None:
        pytest.skip("workers in many processes share PostgreSQL; the PostgreSQL pass runs this")
    settings = settings_for(tmp_path / "data", databases.new())
    live, server, thread = start_server(settings, with_worker=False)
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=2)
    env = {**os.environ, "FTSERVE_DATA_DIR": str(settings.data_dir), "FTSERVE_DATABASE_URL": settings.resolved_database_url,
           "FTSERVE_TRAINER": "fake", "FTSERVE_FAKE_STEP_SECONDS": "0.02", "FTSERVE_LEASE_SECONDS": "2",
           "FTSERVE_WORKER_POLL_SECONDS": "0.05"}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        training = upload(client, chat_jsonl(3))
        created = [
            client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training,
                                           hyperparameters={"n_epochs": 2, "batch_size": 1}).id
            for _ in range(JOBS)
        ]
        started = time.monotonic()
        for n in range(1, WORKERS + 1):
            with (tmp_path / f"w{n}.log").open("ab") as log:
                workers[f"w{n}"] = subprocess.Popen(
                    [sys.executable, "-m", "ftserve.cli.main", "worker"], env={**env, "FTSERVE_WORKER_NAME": f"w{n}"},
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )

        # Kill w1 the moment it is training a job, as a crash would.
        deadline = time.time() + 120
        while True:
            with live.runtime.engine.connect() as conn:
                held = conn.execute(sa.select(job_table.c.id).where(
                    job_table.c.worker_id.like("w1-%"), job_table.c.status == "running")).scalars().first()
            if held is not None:
                os.killpg(workers["w1"].pid, signal.SIGKILL)
                workers["w1"].wait()
                break
            assert time.time() < deadline, "w1 never trained a job"
            time.sleep(0.01)

        deadline = time.time() + 300
        while True:
            statuses = collections.Counter(j.status for j in client.fine_tuning.jobs.list(limit=JOBS).data)
            if statuses["succeeded"] == JOBS or time.time() > deadline:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert statuses == {"succeeded": JOBS}, statuses

        ran_by: collections.Counter[str] = collections.Counter()
        finisher = ""
        for job_id in created:
            events = list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data))
            starts = [e for e in events if e.message in ("Fine-tuning job started", "Fine-tuning job restarted")]
            steps = [e.data["step"] for e in events if e.type == "metrics"]  # type: ignore[index]
            assert steps == list(range(1, 7)), (job_id, steps)
            if job_id == held:
                # Lost with w1, taken back when its lease ran out, and finished by another worker.
                messages = [e.message for e in events]
                assert "The worker stopped responding; job requeued" in messages
                assert [e.data["worker"].split("-")[0] for e in starts][0] == "w1"  # type: ignore[index]
                finisher = starts[-1].data["worker"]  # type: ignore[index]
                assert not finisher.startswith("w1-")
            else:
                assert len(starts) == 1, (job_id, [e.message for e in events])  # run exactly once
            ran_by[starts[-1].data["worker"].split("-")[0]] += 1  # type: ignore[index]
        assert set(ran_by) == {"w2", "w3", "w4"} and sum(ran_by.values()) == JOBS  # w1 died on its first job
        print(f"\n{JOBS} jobs on {WORKERS} workers in {elapsed:.1f}s; finished by {dict(ran_by)}; "
              f"{held} lost with w1 and finished by {finisher}")
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        server.should_exit = True
        thread.join(timeout=30)
        live.runtime.engine.dispose()
