"""What an operator scraping `/metrics` sees while the official SDK drives ftserve: job counts, queue depth,
step times, throughput, and request latencies by route template."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from ftserve.api.app import create_app
from ftserve.engine.spec import JobSpec
from ftserve.providers.base import Placement, Reporter, TrainingOutcome
from ftserve.schemas.fine_tuning import CreateFineTuningJobRequest
from ftserve.services.jobs import CreateContext
from ftserve.services.runtime import build
from ftserve.worker.loop import Worker, WorkerConfig
from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition) for s in family.samples
    }


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    response.raise_for_status()
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    """A server of this module's own, so the step-time histogram counts only this module's jobs."""
    with serving(settings_for(tmp_path_factory.mktemp("metrics"), databases.new())) as live:
        yield live


def test_a_finished_job_shows_in_the_counts_the_step_times_and_the_latencies(server: LiveServer) -> None:
    client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    before = scrape(server.url)
    training = upload(client, chat_jsonl(10))
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training,
                                         hyperparameters={"n_epochs": 2, "batch_size": 2})
    assert wait_for(client, job.id).status == "succeeded"
    steps = max(e.data["total_steps"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
                if e.type == "metrics" and isinstance(e.data, dict) and "total_steps" in e.data)
    after = scrape(server.url)

    assert value(after, "ftserve_jobs", status="succeeded") == (value(before, "ftserve_jobs", status="succeeded") or 0) + 1
    assert value(after, "ftserve_jobs", status="running") == 0
    assert value(after, "ftserve_queue_depth") == 0  # nothing waits: the embedded worker took the job
    assert steps == 10
    assert value(after, "ftserve_training_step_seconds_count") == steps
    assert 0 < value(after, "ftserve_training_step_seconds_sum") < 30  # type: ignore[operator]

    created = value(after, "ftserve_http_request_seconds_count", method="POST", route="/v1/fine_tuning/jobs", status="200")
    assert created == 1
    polled = value(after, "ftserve_http_request_seconds_count", method="GET",
                   route="/v1/fine_tuning/jobs/{fine_tuning_job_id}", status="200")
    assert polled and polled >= 1
    labels = {v for (_, pairs) in after for _, v in pairs}
    assert not any(job.id in label or training in label for label in labels), "a raw path became a label"


def test_the_queue_depth_counts_jobs_no_worker_has_taken(tmp_path: Path, database_url: str | None) -> None:
    with serving(settings_for(tmp_path, database_url), with_worker=False) as live:
        client = OpenAI(base_url=live.base_url, api_key="none", max_retries=0)
        training = upload(client, chat_jsonl(4))
        for _ in range(2):
            client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training)
        samples = scrape(live.url)
        assert value(samples, "ftserve_queue_depth") == 2
        assert value(samples, "ftserve_jobs", status="validating_files") == 2


METRICS_KEY = "metrics-scraper-key-0001"


def test_on_a_server_with_keys_only_the_metrics_key_reads_metrics(tmp_path: Path, database_url: str | None) -> None:
    keyed = build(settings_for(tmp_path / "on", database_url, api_keys="sk-a-0000000000000=a", metrics_key=METRICS_KEY))
    with TestClient(create_app(keyed)) as http:
        assert http.get("/v1/files").status_code == 401
        for refused in ({}, {"authorization": "Bearer sk-a-0000000000000"}, {"authorization": "Bearer wrong"}):
            answer = http.get("/metrics", headers=refused)
            assert answer.status_code == 401 and "FTSERVE_METRICS_KEY" in answer.json()["error"]["message"]
            assert "ftserve_jobs" not in answer.text
        scraped = http.get("/metrics", headers={"authorization": f"Bearer {METRICS_KEY}"})
        assert scraped.status_code == 200 and "ftserve_jobs" in scraped.text
        assert "/metrics" not in http.get("/openapi.json", headers={"authorization": "Bearer sk-a-0000000000000"}).json()["paths"]
    keyed.engine.dispose()
    unset = build(settings_for(tmp_path / "unset", database_url, api_keys="sk-a-0000000000000=a",
                               auth_failures_per_minute=3))
    with TestClient(create_app(unset)) as http:  # keys but no metrics key: nobody reads the cross-project counts
        for _ in range(3):
            answer = http.get("/metrics", headers={"authorization": "Bearer sk-a-0000000000000"})
            assert answer.status_code == 401 and "has none set" in answer.json()["error"]["message"]
        # Guessing the metrics key spends the same allowance as guessing a project key.
        throttled = http.get("/v1/files", headers={"authorization": "Bearer sk-a-0000000000000"})
        assert throttled.status_code == 429 and "retry-after" in throttled.headers
    unset.engine.dispose()


def test_an_open_server_serves_metrics_without_a_key_and_they_can_be_turned_off(
    tmp_path: Path, database_url: str | None,
) -> None:
    open_server = build(settings_for(tmp_path / "open", database_url))
    with TestClient(create_app(open_server), base_url="http://127.0.0.1:8000") as http:
        assert "ftserve_jobs" in http.get("/metrics").text
    open_server.engine.dispose()
    off = build(settings_for(tmp_path / "off", database_url, metrics=False))
    with TestClient(create_app(off), base_url="http://127.0.0.1:8000") as http:
        assert http.get("/metrics").status_code == 404
    off.engine.dispose()


class Throughput:
    """Reports as the engine does: every step, with the tokens per second so far; notes what /metrics showed."""

    def __init__(self, samples: Callable[[], Samples]):
        self.samples = samples
        self.worker = ""
        self.shown: list[float | None] = []

    def train(self, spec: JobSpec, reporter: Reporter, placement: Placement) -> TrainingOutcome:
        for step in (1, 2):
            reporter.metrics(step, 2, {"train_loss": 1.0}, tokens_per_second=100.0 * step)
            shown = {dict(labels).get("worker"): v for (name, labels), v in self.samples().items()
                     if name == "ftserve_training_tokens_per_second"}
            self.shown.append(shown.get(self.worker))
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        return TrainingOutcome(None, trained_tokens=20, model_dir=spec.output_dir, step=2)


def test_throughput_shows_while_a_job_trains_and_goes_when_it_ends(tmp_path: Path, database_url: str | None) -> None:
    runtime = build(settings_for(tmp_path, database_url))
    with TestClient(create_app(runtime), base_url="http://127.0.0.1:8000") as http:  # no embedded worker: the one below takes the job
        def samples() -> Samples:
            return parse(http.get("/metrics").text)

        trainer = Throughput(samples)
        worker = Worker(runtime.engine, runtime.blobs, runtime.files, trainer, WorkerConfig(0.05, 3.0),
                        metrics=runtime.metrics)
        trainer.worker = worker.id
        training = runtime.files.create("default", "t.jsonl", "fine-tune", io.BytesIO(chat_jsonl(4)))
        job = runtime.jobs.create("default", CreateFineTuningJobRequest(
            model="SmolLM2-135M-Instruct", training_file=training.id), CreateContext())
        worker.run_once()  # validates the file
        worker.run_once()  # trains
        assert runtime.jobs.get("default", job.id).status == "succeeded"
        assert trainer.shown == [100.0, 200.0]
        exposition = http.get("/metrics").text
        assert "ftserve_training_tokens_per_second{" not in exposition  # the series went with the run
        assert job.id not in exposition and training.id not in exposition  # no tenant's ids, at any point
        assert value(samples(), "ftserve_training_step_seconds_count") == 2
    runtime.engine.dispose()
