"""Jobs placed on a real Ray cluster (FTSERVE_EXECUTOR=ray): a head with no CPUs and a worker node, started on this
machine, so every job's engine runs on the worker node, never beside the API server's worker. Blobs live in an
S3-compatible store (moto's S3 server, tests/object_store.py): the node fetches the job's files and its saved state
from there into a scratch dir of its own and stores what the engine saves, sharing no directory with the server.

PostgreSQL stays the truth (the lease, heartbeats, cancel and pause), so these run in the PostgreSQL pass only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.cluster import TERMINAL, Cluster, attempts, events_of, last_step, resumed_at, wait_until
from ftserve.files.s3_store import S3Location
from tests.conftest import TINY_MODEL_ID, Databases
from tests.object_store import MotoS3, moto_s3, objects  # noqa: F401
from tests.ray_cluster import RayCluster
from tests.tasks import chat_examples, jsonl

pytestmark = [pytest.mark.acceptance, pytest.mark.database]

FAKE_STEP_SECONDS = 0.3
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 2}  # 12 examples: 12 steps
LOST = "The machine training the job went away"
RAN_ON = re.compile(r"^Running on Ray node ([0-9a-f]+) as (ftjob-[\w-]+)-(\d+)$")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[RayCluster]:
    if databases.server is None:
        pytest.skip("runs in the PostgreSQL pass")
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    cluster.start()
    try:
        cluster.add_node()
        yield cluster
    finally:
        cluster.stop()


def ftserve_on(ray: RayCluster, root: Path, databases: Databases, trainer: str, catalogue: Path,
               store: S3Location) -> Cluster:
    """An API server and one with a worker placing jobs on `ray`, both started, their blobs in `store`."""
    server = Cluster(root, True, databases.new(), trainer, {
        "FTSERVE_EXECUTOR": "ray", "FTSERVE_RAY_ADDRESS": ray.address, "FTSERVE_CATALOGUE_FILE": str(catalogue),
        "FTSERVE_FAKE_ENGINE_STEP_SECONDS": str(FAKE_STEP_SECONDS),
        "FTSERVE_BLOB_STORE": "s3", "FTSERVE_S3_BUCKET": store.bucket, "FTSERVE_S3_PREFIX": store.prefix,
        "FTSERVE_S3_ENDPOINT_URL": str(store.endpoint_url), "FTSERVE_S3_REGION": str(store.region),
        "FTSERVE_S3_ACCESS_KEY_ID": str(store.access_key_id), "FTSERVE_S3_SECRET_ACCESS_KEY": str(store.secret_access_key),
    })
    try:
        server.start_observer()
        server.start_target()
    except BaseException:
        server.stop_all()
        raise
    return server


def fake_engine_job(client: OpenAI, **extra: object) -> str:
    """A 12-step job on the fake engine (its steps take FAKE_STEP_SECONDS, so stops land mid-job)."""
    training = client.files.create(file=("train.jsonl", jsonl(chat_examples(12))), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training,
                                          hyperparameters=HYPERPARAMETERS, **extra).id  # type: ignore[arg-type]


def placements(events: list) -> list[tuple[str, str]]:
    """(node id, run id) of each attempt, from the worker's "Running on Ray node" events."""
    found = [RAN_ON.match(e.message) for e in events]
    return [(m.group(1), f"{m.group(2)}-{m.group(3)}") for m in found if m]


def test_a_job_trains_on_the_ray_node_and_its_model_answers(
        ray_cluster: RayCluster, tmp_path: Path, databases: Databases, tiny_catalogue: Path, moto_s3: MotoS3) -> None:
    node_ids = {n["NodeID"] for n in ray_cluster.alive_nodes() if n["Resources"].get("CPU")}  # type: ignore[union-attr]
    store = moto_s3.new_bucket()
    server = ftserve_on(ray_cluster, tmp_path, databases, "local", tiny_catalogue, store)
    client = server.client
    try:
        training = client.files.create(file=("train.jsonl", jsonl(chat_examples(8))), purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training,
                                             hyperparameters={"n_epochs": 1, "batch_size": 2})
        job = wait_until(client, job.id, lambda job, _: job.status in TERMINAL, "its end")
        assert job.status == "succeeded", job.error
        events = events_of(client, job.id)
        assert placements(events) == [(next(iter(node_ids)), f"{job.id}-1")]
        assert [e.data["step"] for e in events if e.type == "metrics"] == [1, 2, 3, 4]
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                               messages=[{"role": "user", "content": "Hello"}])
        assert reply.choices[0].message.content
        # Everything the job made is in the store, and nothing of it under the server's data dir: the node fetched
        # the training file and stored the model, the server fetched the model from the store to serve it.
        stored = objects(store)
        # The last epoch's checkpoint is the model.
        assert f"{store.prefix}artifacts/{job.id}/checkpoint-4/ftserve_model.json" in stored
        data = tmp_path / "data"
        assert [p for p in data.rglob("*") if job.id in str(p) and p.relative_to(data).parts[0] != "cache"] == []
    finally:
        server.stop_all()


def test_pause_resume_and_cancel_reach_the_engine_on_the_node(
        ray_cluster: RayCluster, tmp_path: Path, databases: Databases, tiny_catalogue: Path, moto_s3: MotoS3) -> None:
    server = ftserve_on(ray_cluster, tmp_path, databases, "fake-engine", tiny_catalogue, moto_s3.new_bucket())
    client = server.client
    try:
        job_id = fake_engine_job(client)
        wait_until(client, job_id, lambda _, events: last_step(events) >= 2, "step 2")
        client.fine_tuning.jobs.pause(job_id)
        job = wait_until(client, job_id, lambda job, _: job.status == "paused", "paused")
        paused_at = last_step(events_of(client, job_id))
        assert 2 <= paused_at < 12

        client.fine_tuning.jobs.resume(job_id)
        wait_until(client, job_id, lambda _, events: last_step(events) >= paused_at + 2, "two more steps")
        client.fine_tuning.jobs.cancel(job_id)
        job = wait_until(client, job_id, lambda job, _: job.status in TERMINAL, "its end")
        assert job.status == "cancelled"
        events = events_of(client, job_id)
        runs = attempts(events)
        assert len(runs) == 2 and resumed_at(runs[1]) == paused_at  # the node kept nothing: the state came back
        assert [run for _, run in placements(events)] == [f"{job_id}-1", f"{job_id}-2"]
        assert last_step(events) < 12
    finally:
        server.stop_all()


def test_a_node_lost_mid_job_requeues_it_and_it_resumes_from_its_saved_step(
        ray_cluster: RayCluster, tmp_path: Path, databases: Databases, tiny_catalogue: Path, moto_s3: MotoS3) -> None:
    server = ftserve_on(ray_cluster, tmp_path, databases, "fake-engine", tiny_catalogue, moto_s3.new_bucket())
    client = server.client
    try:
        job_id = fake_engine_job(client, extra_body={"ftserve": {"checkpoint_interval": 2}})
        wait_until(client, job_id, lambda _, events: last_step(events) >= 5, "step 5")  # past the state of step 4
        ray_cluster.kill_node(ray_cluster.nodes[-1])
        # Requeued, and at once claimed again: the next attempt waits (running, its lease held) for a node with a CPU.
        wait_until(client, job_id, lambda _, events: any(e.message.startswith(LOST) for e in events), "requeued")
        ray_cluster.add_node()

        job = wait_until(client, job_id, lambda job, _: job.status in TERMINAL, "its end")
        assert job.status == "succeeded", job.error
        events = events_of(client, job_id)
        messages = [e.message for e in events]
        lost = [m for m in messages if m.startswith(LOST)]
        assert len(lost) == 1 and "after saving its state at step" in lost[0]
        runs = attempts(events)
        assert len(runs) == 2 and resumed_at(runs[1]) >= 4  # from the saved state, not from step 0
        (first_node, first_run), (second_node, second_run) = placements(events)
        assert first_node != second_node and (first_run, second_run) == (f"{job_id}-1", f"{job_id}-2")
        assert messages.count("The job has successfully completed") == 1
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert sorted(set(steps)) == list(range(1, 13))
    finally:
        server.stop_all()
