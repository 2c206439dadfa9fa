"""ftserve as separate processes over one data dir and database, for tests that kill and restart them.

Waits in these tests are bounded by progress, not by the clock: a wait gives up only when the job has
shown no new step or status for a long while, so a loaded machine makes a test slower, never red.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import openai
from openai import OpenAI

from tests.conftest import MODEL_CACHE

TERMINAL = ("succeeded", "failed", "cancelled")
# How long a job may show no new step or status before a wait calls it stuck. The real engine's start
# (torch, the model) has taken 280 s on a loaded 2-core machine.
PATIENCE_SECONDS = 600


@dataclass
class Cluster:
    """An API server that is never killed (`observer`, which the test reads through), and the target,
    killed and restarted: a worker, or a second API server with its embedded worker.

    `trainer` is `local` (the real engine) or `fake-engine` (ftserve.testing_engine: the engine's
    protocol and files, a sleep per step); `env` adds to the processes' environment.
    """

    root: Path
    server_is_target: bool
    database_url: str | None
    trainer: str = "local"
    env: dict[str, str] = field(default_factory=dict)
    observer: subprocess.Popen[bytes] | None = None
    target: subprocess.Popen[bytes] | None = None
    ports: tuple[int, int] = (0, 0)
    starts: int = 0

    def __post_init__(self) -> None:
        self.ports = (_free_port(), _free_port())
        self.env = {
            **os.environ, "FTSERVE_DATA_DIR": str(self.root / "data"), "FTSERVE_TRAINER": self.trainer,
            "FTSERVE_MODELS_DIR": str(MODEL_CACHE), "FTSERVE_LEASE_SECONDS": "2", "FTSERVE_WORKER_POLL_SECONDS": "0.2",
            # As in conftest's settings: the subject here is what survives kills, and the tiny model (head size 16)
            # is one vLLM's CPU attention does not run.
            "FTSERVE_INFERENCE_ENGINE": "transformers",
            **self.env,
        }
        if self.database_url:
            self.env["FTSERVE_DATABASE_URL"] = self.database_url

    @property
    def client(self) -> OpenAI:
        return OpenAI(base_url=f"http://127.0.0.1:{self.ports[0]}/v1", api_key="unused", max_retries=0)

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        with (self.root / f"process-{self.starts}.log").open("ab") as log:
            return subprocess.Popen([sys.executable, "-m", "ftserve.cli.main", *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _serve(self, port: int, worker: bool) -> subprocess.Popen[bytes]:
        process = self._spawn("serve", "--host", "127.0.0.1", "--port", str(port), *([] if worker else ["--no-worker"]))
        deadline = time.time() + PATIENCE_SECONDS
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.1)

    def start_observer(self) -> None:
        self.observer = self._serve(self.ports[0], worker=False)

    def start_target(self) -> None:
        self.target = self._serve(self.ports[1], worker=True) if self.server_is_target else self._spawn("worker")

    def start_worker(self) -> None:
        self.target = self._spawn("worker")

    def kill_target(self) -> None:
        assert self.target is not None
        if self.server_is_target:
            self.target.kill()  # the server alone: its orphaned engine child must stop by itself
        else:
            os.killpg(self.target.pid, signal.SIGKILL)  # the worker and its engine, as an OOM kill of a container
        self.target.wait()

    def stop_all(self) -> None:
        for process in (self.target, self.observer):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def patiently(call: Callable[[], Any], seconds: float = 90) -> Any:
    """Call the API, waiting out a server that is restarting."""
    deadline = time.time() + seconds
    while True:
        try:
            return call()
        except (openai.APIConnectionError, openai.InternalServerError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def events_of(client: OpenAI, job_id: str) -> list[Any]:
    """A job's events, oldest first."""
    return list(reversed(patiently(lambda: client.fine_tuning.jobs.list_events(job_id, limit=10000)).data))


def last_step(events: list[Any]) -> int:
    return max((e.data["step"] for e in events if e.type == "metrics" and "step" in (e.data or {})), default=0)


def attempts(events: list[Any]) -> list[list[Any]]:
    """The events of each time the job was started, in order."""
    runs: list[list[Any]] = []
    for event in events:
        if event.message in ("Fine-tuning job started", "Fine-tuning job restarted"):
            runs.append([])
        if runs:
            runs[-1].append(event)
    return runs


def resumed_at(run: list[Any]) -> int | None:
    found = [int(e.message.removeprefix("Resuming from step ")) for e in run if e.message.startswith("Resuming from step ")]
    return found[0] if found else None


def wait_until(client: OpenAI, job_id: str, done: Callable[[Any, list[Any]], bool], what: str,
               patience: float = PATIENCE_SECONDS) -> Any:
    """Poll the job until `done(job, events)`; fail only after `patience` seconds without a new step,
    event or status. Returns the job."""
    seen: tuple[str, int] | None = None
    deadline = time.time() + patience
    while True:
        job = patiently(lambda: client.fine_tuning.jobs.retrieve(job_id))
        events = events_of(client, job_id)
        if done(job, events):
            return job
        now = (job.status, len(events))
        if now != seen:
            seen, deadline = now, time.time() + patience
        assert time.time() < deadline, f"{job_id} made no progress towards {what} in {patience:.0f} s ({job.status})"
        time.sleep(0.1)
