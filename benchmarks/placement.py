"""What placing a job on Ray costs: the time from creating a job to its first training step, with the engine in a
child process of the worker (`FTSERVE_EXECUTOR=local`) against an actor on a Ray cluster (`ray`), with the worker's
data dir shared and with the job's files staged through an S3 store (moto's server in this process).

    python -m benchmarks.placement [--repeats N]

The Ray cluster is a head with no CPUs and one worker node, started here (tests/ray_cluster.py); the job is the
default model (LoRA) on a small chat file, cancelled after its first step. Each executor runs its jobs on one server
started for it; the rows alternate so that a noisy machine weighs on each alike. The markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

from tests.object_store import MotoS3
from tests.ray_cluster import RayCluster
from tests.tasks import chat_examples, jsonl

MODEL = "SmolLM2-135M-Instruct"
# Shared by the servers (and the tests), so the default model is converted from its GGUF file once, before timing.
MODELS_DIR = Path(__file__).resolve().parent.parent / ".cache" / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, root: Path, env: dict[str, str]):
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftserve.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, "FTSERVE_DATA_DIR": str(root / "data"), "FTSERVE_MODELS_DIR": str(MODELS_DIR), "FTSERVE_INFERENCE_ENGINE": "transformers",
                 "FTSERVE_WORKER_POLL_SECONDS": "0.2", **env},
            stdout=(root / "server.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None and time.time() < deadline, f"the server did not start; see {root}"
            time.sleep(0.2)
        self.client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0)
        self.training = self.client.files.create(file=("train.jsonl", jsonl(chat_examples(16))),
                                                 purpose="fine-tune").id

    def first_step_seconds(self) -> float:
        """Seconds from creating a job to its first metrics event; the job is cancelled then."""
        started = time.monotonic()
        job = self.client.fine_tuning.jobs.create(model=MODEL, training_file=self.training,
                                                  hyperparameters={"n_epochs": 1, "batch_size": 2})
        while True:
            events = self.client.fine_tuning.jobs.list_events(job.id, limit=100).data
            if any(e.type == "metrics" for e in events):
                took = time.monotonic() - started
                break
            status = self.client.fine_tuning.jobs.retrieve(job.id).status
            assert status not in ("failed", "cancelled", "succeeded"), f"{job.id} ended {status} before a step"
            time.sleep(0.05)
        self.client.fine_tuning.jobs.cancel(job.id)
        while self.client.fine_tuning.jobs.retrieve(job.id).status != "cancelled":
            time.sleep(0.1)
        return took

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    root = Path(tempfile.mkdtemp(prefix="ftserve-bench-placement-"))
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    store = MotoS3(f"http://127.0.0.1:{moto_port}").new_bucket()
    ray = RayCluster(root / "ray")
    ray.start()
    servers: dict[str, Server] = {}
    try:
        ray.add_node()
        on_ray = {"FTSERVE_EXECUTOR": "ray", "FTSERVE_RAY_ADDRESS": ray.address}
        s3 = {"FTSERVE_BLOB_STORE": "s3", "FTSERVE_S3_BUCKET": store.bucket, "FTSERVE_S3_PREFIX": store.prefix,
              "FTSERVE_S3_ENDPOINT_URL": str(store.endpoint_url), "FTSERVE_S3_REGION": str(store.region),
              "FTSERVE_S3_ACCESS_KEY_ID": "testing", "FTSERVE_S3_SECRET_ACCESS_KEY": "testing-secret"}
        rows = {"local child process": {}, "Ray actor, shared data dir": on_ray, "Ray actor, S3 store (moto)": on_ray | s3}
        for name, env in rows.items():
            servers[name] = Server(root / name.split(",")[0].replace(" ", "-") / str(len(servers)), env)
        servers["local child process"].first_step_seconds()  # converts the model once; not counted
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, server in servers.items():
                times[name].append(server.first_step_seconds())
    finally:
        for server in servers.values():
            server.stop()
        ray.stop()
        moto.stop()

    local = statistics.median(times["local child process"])
    print(f"Create to first step, {MODEL} (LoRA), median of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores\n")
    print("| executor | median (s) | runs (s) | overhead against local |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{median - local:+.1f} s ({median / local:.2f}x) |")


if __name__ == "__main__":
    main()
