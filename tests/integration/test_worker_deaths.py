"""A worker's death counts against FTSERVE_MAX_ATTEMPTS (3 by default) only when its attempt saved no newer
state: a job that keeps moving survives any number of deaths, one that makes no progress fails after three.

On the fake engine (ftserve.testing_engine), which writes real state files; each death is a SIGKILL of the
worker's process group, as an out-of-memory kill of its container.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster import PATIENCE_SECONDS, TERMINAL, Cluster, attempts, events_of, last_step, patiently, resumed_at, wait_until
from tests.conftest import Databases
from tests.tasks import chat_examples, jsonl

pytestmark = [
    pytest.mark.database, pytest.mark.acceptance,
    # Worker processes sharing one database, as the kill-worker harness: the PostgreSQL pass runs them. The
    # lifecycle's own test (test_lifecycle.py) checks the same counting in both passes.
    pytest.mark.skipif(not os.environ.get("FTSERVE_TEST_DATABASE_URL"), reason="runs in the PostgreSQL pass"),
]


def saved_steps(cluster: Cluster, job_id: str) -> list[int]:
    """The steps of the job's complete saved states on disk."""
    root = cluster.root / "data" / "blobs" / "artifacts" / job_id / "state"
    return sorted(int(p.name.removeprefix("step-")) for p in root.glob("step-*") if (p / "state.json").exists())


def start_job(cluster: Cluster) -> str:
    client = cluster.client
    training = patiently(lambda: client.files.create(file=("train.jsonl", jsonl(chat_examples(12))), purpose="fine-tune")).id
    return patiently(lambda: client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=training, hyperparameters={"n_epochs": 2, "batch_size": 2},
        extra_body={"ftserve": {"checkpoint_interval": 2}},  # 12 steps, state saved every 2
    )).id


def test_a_job_that_saves_newer_state_before_each_of_four_worker_kills_succeeds(
        tmp_path: Path, databases: Databases, default_model_dir: Path) -> None:
    cluster = Cluster(tmp_path, False, databases.new(), "fake-engine", {"FTSERVE_FAKE_ENGINE_STEP_SECONDS": "0.5"})
    client = cluster.client
    cluster.start_observer()
    try:
        job_id = start_job(cluster)
        saved_before_kill: list[int] = []
        for _ in range(4):
            newest = saved_before_kill[-1] if saved_before_kill else 0
            cluster.start_worker()
            # A newer state on disk, and its step recorded: only then may the next attempt resume from it.
            job = wait_until(client, job_id, lambda job, events: job.status in TERMINAL or any(
                s > newest and last_step(events) >= s for s in saved_steps(cluster, job_id)), "a newer saved state")
            assert job.status not in TERMINAL, (job.status, job.error)  # killed after progress: never given up on
            saved_before_kill.append(max(s for s in saved_steps(cluster, job_id) if s <= last_step(events_of(client, job_id))))
            cluster.kill_target()
        cluster.start_worker()
        job = wait_until(client, job_id, lambda job, _: job.status in TERMINAL, "its end")
        assert job.status == "succeeded", job.error

        events = events_of(client, job_id)
        runs = attempts(events)
        assert len(runs) == 5
        # Each restart resumed from the state its killed attempt saved (or a newer one it saved in the last moment).
        for run, saved in zip(runs[1:], saved_before_kill):
            assert resumed_at(run) is not None and resumed_at(run) >= saved, (saved, [e.message for e in run])
        steps = [e.data["step"] for e in events if e.type == "metrics" and "step" in (e.data or {})]
        assert steps == list(range(1, 13))
    finally:
        cluster.stop_all()


def test_a_job_whose_worker_dies_three_times_without_progress_fails_worker_lost(
        tmp_path: Path, databases: Databases, default_model_dir: Path) -> None:
    # The engine hangs before its first step, so no attempt saves any state.
    cluster = Cluster(tmp_path, False, databases.new(), "fake-engine", {"FTSERVE_FAKE_ENGINE_STALL_AT": "1"})
    client = cluster.client
    cluster.start_observer()
    try:
        job_id = start_job(cluster)
        deaths = 0
        while deaths < 4:
            started = len(attempts(events_of(client, job_id)))
            cluster.start_worker()
            job = wait_until(client, job_id, lambda job, events: job.status in TERMINAL or (
                len(attempts(events)) > started and job.status == "running"), "a new attempt or its end")
            if job.status in TERMINAL:
                break
            cluster.kill_target()
            deaths += 1
        assert job.status == "failed" and job.error.code == "worker_lost", (job.status, job.error)
        assert deaths == 3
        assert saved_steps(cluster, job_id) == []
    finally:
        cluster.stop_all()


def test_reports_a_stalled_then_killed_worker_never_wrote_are_recorded_when_the_job_resumes(
        tmp_path: Path, databases: Databases, default_model_dir: Path) -> None:
    # The worker stops (a long pause, a swapped-out page) while its engine trains on: the engine's reports wait in
    # the pipe, and it saves state past them, a checkpoint included. Then the worker is killed with its unread
    # reports. The next attempt resumes from that state: the steps and the checkpoint in between are still recorded.
    cluster = Cluster(tmp_path, False, databases.new(), "fake-engine", {"FTSERVE_FAKE_ENGINE_STEP_SECONDS": "0.3"})
    client = cluster.client
    cluster.start_observer()
    try:
        job_id = start_job(cluster)  # checkpoints at 6 and 12
        cluster.start_worker()
        wait_until(client, job_id, lambda job, events: job.status in TERMINAL or last_step(events) >= 2, "step 2")
        assert cluster.target is not None
        cluster.target.send_signal(signal.SIGSTOP)  # the worker alone; its engine goes on
        recorded = last_step(events_of(client, job_id))
        deadline = time.time() + PATIENCE_SECONDS
        while max(saved_steps(cluster, job_id), default=0) < 8:
            assert time.time() < deadline, "the engine saved no state past its checkpoint at step 6"
            time.sleep(0.1)
        assert last_step(events_of(client, job_id)) == recorded < 6  # nothing recorded while the worker stood still
        cluster.kill_target()
        cluster.start_worker()
        job = wait_until(client, job_id, lambda job, _: job.status in TERMINAL, "its end")
        assert job.status == "succeeded", job.error

        events = events_of(client, job_id)
        assert (resumed_at(attempts(events)[-1]) or 0) >= 8  # the new attempt did not redo the steps it lacked
        steps = [e.data["step"] for e in events if e.type == "metrics" and "step" in (e.data or {})]
        assert steps == list(range(1, 13))
        assert [e.message for e in events].count("Checkpoint created at step 6") == 1
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
        assert sorted(c.step_number for c in checkpoints) == [6, 12]
    finally:
        cluster.stop_all()
