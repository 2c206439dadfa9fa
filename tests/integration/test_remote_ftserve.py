"""A job sent to one ftserve runs on a second one through the `openai_compatible` provider.

Both servers are real: the API, a worker each, the database, and the official SDK as the client.
The far one trains with the fake trainer; the near one only submits, polls and mirrors.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.conftest import Databases, LiveServer, settings_for, start_server
from tests.helpers import chat_jsonl, upload, wait_for

REMOTE_KEY = "sk-lab-000000000000"
BASE = "SmolLM2-135M-Instruct"


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens once the socket is closed


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[tuple[LiveServer, LiveServer]]:
    remote, remote_server, remote_thread = start_server(settings_for(
        tmp_path_factory.mktemp("remote"), databases.new(), api_keys=f"{REMOTE_KEY}=lab", fake_step_seconds=0.05,
    ))
    providers = {
        "remote-b": {"base_url": remote.base_url, "api_key": REMOTE_KEY, "dialect": "ftserve"},
        "remote-plain": {"kind": "openai_compatible", "base_url": remote.base_url, "api_key": REMOTE_KEY},
        "remote-down": {"base_url": _dead_url(), "timeout_seconds": 2},
    }
    near, near_server, near_thread = start_server(settings_for(
        tmp_path_factory.mktemp("near"), databases.new(), providers=providers,
        reconcile_min_seconds=0.1, reconcile_max_seconds=0.4,
    ))
    yield near, remote
    for server, thread, live in ((near_server, near_thread, near), (remote_server, remote_thread, remote)):
        server.should_exit = True
        thread.join(timeout=30)
        live.runtime.engine.dispose()


@pytest.fixture(scope="module")
def near(servers: tuple[LiveServer, LiveServer]) -> OpenAI:
    return OpenAI(base_url=servers[0].base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def far(servers: tuple[LiveServer, LiveServer]) -> OpenAI:
    return OpenAI(base_url=servers[1].base_url, api_key=REMOTE_KEY, max_retries=0)


def _provider(job: object) -> dict:
    return job.model_extra["ftserve"]["provider"] if job.model_extra else {}  # type: ignore[attr-defined]


def test_a_remote_job_runs_on_the_second_server_and_its_lifecycle_comes_back(near: OpenAI, far: OpenAI) -> None:
    training = upload(near, chat_jsonl(12))
    validation = upload(near, chat_jsonl(4), name="valid.jsonl")
    job = near.fine_tuning.jobs.create(
        model=f"remote-b/{BASE}", training_file=training, validation_file=validation, suffix="remote", seed=7,
        metadata={"team": "search"}, method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}},
        extra_body={"ftserve": {"lora_rank": 8}},
    )
    assert job.model == f"remote-b/{BASE}"
    done = wait_for(near, job.id, timeout=90)
    assert done.status == "succeeded", done.error

    provider = _provider(done)
    assert provider["name"] == "remote-b" and provider["status"] == "succeeded"
    remote = far.fine_tuning.jobs.retrieve(provider["job_id"])
    # The far server trained exactly the job the near one was asked for.
    assert remote.status == "succeeded" and remote.model == BASE
    assert (remote.seed, remote.user_provided_suffix) == (7, "remote")
    assert remote.method.supervised.hyperparameters.n_epochs == 2
    assert remote.method.supervised.hyperparameters.learning_rate_multiplier == 0.5
    assert remote.model_extra["ftserve"]["lora_rank"] == 8
    assert remote.metadata == {"team": "search", "ftserve_job": job.id}
    assert far.files.content(remote.training_file).read() == chat_jsonl(12)
    assert far.files.content(remote.validation_file).read() == chat_jsonl(4)

    # Its result model is registered here, pointing at the far server's model.
    assert done.fine_tuned_model.startswith(f"ft:remote-b/{BASE}:default:remote:")
    assert provider["fine_tuned_model"] == remote.fine_tuned_model
    assert done.fine_tuned_model in {m.id for m in near.models.list()}
    assert done.trained_tokens == remote.trained_tokens

    # Every event of the far job is mirrored, in order, with its data.
    far_events = [e for e in reversed(far.fine_tuning.jobs.list_events(remote.id, limit=100).data)]
    near_events = list(reversed(near.fine_tuning.jobs.list_events(job.id, limit=200).data))
    far_seen = [(e.message, e.type, e.data) for e in far_events]
    near_seen = iter((e.message, e.type, e.data) for e in near_events)
    assert all(event in near_seen for event in far_seen)  # a subsequence: the same events, in the same order
    far_metrics = [e.data["step"] for e in far_events if e.type == "metrics"]
    near_metrics = [e.data["step"] for e in near_events if e.type == "metrics"]
    assert near_metrics == far_metrics and len(far_metrics) == 6  # 12 examples / 4 per batch x 2 epochs
    messages = [e.message for e in near_events]
    assert any(m.startswith(f"Submitted to remote-b as job {remote.id}") for m in messages)
    assert messages[-1] == "The job has successfully completed"

    # Checkpoints come back under this server's names, with the far server's metrics.
    far_ckpts = sorted(far.fine_tuning.jobs.checkpoints.list(remote.id).data, key=lambda c: c.step_number)
    near_ckpts = sorted(near.fine_tuning.jobs.checkpoints.list(job.id).data, key=lambda c: c.step_number)
    assert [c.step_number for c in near_ckpts] == [c.step_number for c in far_ckpts] == [3, 6]
    assert [c.metrics.train_loss for c in near_ckpts] == [c.metrics.train_loss for c in far_ckpts]
    assert near_ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-3"

    # step_metrics.csv is rebuilt from the mirrored metrics.
    csv = base64.b64decode(near.files.content(done.result_files[0]).read()).decode().splitlines()
    assert [line.split(",")[0] for line in csv[1:]] == [str(s) for s in far_metrics]

    # The model is not served here; the answer says where it lives.
    with pytest.raises(openai.BadRequestError, match="remote-b") as refused:
        near.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_servable"


def test_mirrored_events_are_not_repeated(near: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model=f"remote-b/{BASE}", training_file=upload(near, chat_jsonl(8)),
                                       hyperparameters={"n_epochs": 1, "batch_size": 2})
    done = wait_for(near, job.id, timeout=60)
    assert done.status == "succeeded"
    ids = [e.id for e in near.fine_tuning.jobs.list_events(job.id, limit=200).data]
    metrics = [e.data["step"] for e in near.fine_tuning.jobs.list_events(job.id, limit=200).data if e.type == "metrics"]
    assert len(ids) == len(set(ids)) and sorted(metrics) == [1, 2, 3, 4]


def test_cancel_here_cancels_there(near: OpenAI, far: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model=f"remote-b/{BASE}", training_file=upload(near, chat_jsonl(40)),
                                       hyperparameters={"n_epochs": 3, "batch_size": 1})  # 120 steps of 50 ms
    running = _wait_provider(near, job.id, "running")
    cancelled = near.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    remote_id = _provider(running)["job_id"]
    deadline = time.time() + 20
    while far.fine_tuning.jobs.retrieve(remote_id).status != "cancelled":
        assert time.time() < deadline, "the far job was never cancelled"
        time.sleep(0.1)
    assert near.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_a_job_cancelled_at_the_provider_is_cancelled_here_not_failed(near: OpenAI, far: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model=f"remote-b/{BASE}", training_file=upload(near, chat_jsonl(40)),
                                       hyperparameters={"n_epochs": 3, "batch_size": 1})
    running = _wait_provider(near, job.id, "running")
    far.fine_tuning.jobs.cancel(_provider(running)["job_id"])
    done = wait_for(near, job.id, timeout=30)
    assert done.status == "cancelled" and done.error is None
    assert any("cancelled at remote-b" in e.message for e in near.fine_tuning.jobs.list_events(job.id).data)


def test_pause_and_resume_pass_through(near: OpenAI, far: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model=f"remote-b/{BASE}", training_file=upload(near, chat_jsonl(40)),
                                       hyperparameters={"n_epochs": 2, "batch_size": 1})
    running = _wait_provider(near, job.id, "running")
    near.fine_tuning.jobs.pause(job.id)
    paused = wait_for(near, job.id, ("paused",), timeout=30)
    remote_id = _provider(running)["job_id"]
    assert far.fine_tuning.jobs.retrieve(remote_id).status == "paused" and _provider(paused)["status"] == "paused"
    near.fine_tuning.jobs.resume(job.id)
    done = wait_for(near, job.id, timeout=60)
    assert done.status == "succeeded" and far.fine_tuning.jobs.retrieve(remote_id).status == "succeeded"
    assert _provider(done)["job_id"] == remote_id  # resumed, not submitted again


def test_cancelling_a_paused_remote_job_cancels_it_there(near: OpenAI, far: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model=f"remote-b/{BASE}", training_file=upload(near, chat_jsonl(40)),
                                       hyperparameters={"n_epochs": 2, "batch_size": 1})
    remote_id = _provider(_wait_provider(near, job.id, "running"))["job_id"]
    near.fine_tuning.jobs.pause(job.id)
    wait_for(near, job.id, ("paused",), timeout=30)
    assert near.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.time() + 20
    while far.fine_tuning.jobs.retrieve(remote_id).status != "cancelled":
        assert time.time() < deadline, "the paused far job was never cancelled"
        time.sleep(0.1)


def test_the_provider_refusing_the_job_fails_it_with_the_providers_message(near: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model="remote-b/no-such-model", training_file=upload(near, chat_jsonl(4)))
    done = wait_for(near, job.id, timeout=30)
    assert done.status == "failed"
    assert "remote-b answered 400" in done.error.message and "no-such-model" in done.error.message


def test_an_unreachable_provider_backs_off_instead_of_failing(near: OpenAI) -> None:
    job = near.fine_tuning.jobs.create(model=f"remote-down/{BASE}", training_file=upload(near, chat_jsonl(4)))
    deadline = time.time() + 30
    while not any("could not be reached" in e.message for e in near.fine_tuning.jobs.list_events(job.id).data):
        assert time.time() < deadline, "no back-off event"
        time.sleep(0.1)
    assert near.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert near.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def test_an_openai_only_provider_refuses_ftserve_options_it_would_drop(near: OpenAI) -> None:
    training = upload(near, chat_jsonl(4))
    with pytest.raises(openai.BadRequestError, match="remote-plain cannot honour ftserve.lora_rank") as refused:
        near.fine_tuning.jobs.create(model=f"remote-plain/{BASE}", training_file=training,
                                     extra_body={"ftserve": {"lora_rank": 8}})
    assert refused.value.body["param"] == "ftserve.lora_rank"


def test_routing_names_the_configured_providers(near: OpenAI) -> None:
    training = upload(near, chat_jsonl(4))
    with pytest.raises(openai.BadRequestError, match="remote-b, remote-down, remote-plain") as refused:
        near.fine_tuning.jobs.create(model="remote-x/whatever", training_file=training)
    assert refused.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="hosted providers") as local:
        near.fine_tuning.jobs.create(model=BASE, training_file=training,
                                     extra_body={"ftserve": {"provider_options": {"together": {"n_evals": 2}}}})
    assert local.value.body["param"] == "ftserve.provider_options"
    with pytest.raises(openai.BadRequestError, match="no provider kind 'togther'"):
        near.fine_tuning.jobs.create(model=f"remote-b/{BASE}", training_file=training,
                                     extra_body={"ftserve": {"provider_options": {"togther": {}}}})


def test_resolve_shows_the_native_request_without_creating_anything(servers: tuple[LiveServer, LiveServer], near: OpenAI) -> None:
    training = upload(near, chat_jsonl(4))
    before = len(near.fine_tuning.jobs.list(limit=100).data)
    body = {"model": f"remote-plain/{BASE}", "training_file": training, "seed": 3,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    plan = near.post("/ftserve/fine_tuning/resolve", body=body, cast_to=object)
    assert plan["provider"] == "remote-plain" and plan["kind"] == "openai_compatible" and plan["model"] == BASE
    assert plan["native"]["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
    assert plan["native"]["training_file"] == "<training_file>" and plan["native"]["seed"] == 3
    assert [c["native"] for c in plan["converted"]] == ["metadata.ftserve_job"] and plan["dropped"] == []
    assert plan["estimate"]["epochs"] == 2 and plan["estimate"]["trained_tokens"] > 0
    local = near.post("/ftserve/fine_tuning/resolve", body={**body, "model": BASE}, cast_to=object)
    assert local["provider"] == "local" and local["native"]["n_epochs"] == 2 and local["native"]["seed"] == 3
    assert len(near.fine_tuning.jobs.list(limit=100).data) == before


def test_providers_are_listed_with_what_they_can_do(near: OpenAI) -> None:
    listed = {p["name"]: p for p in near.get("/ftserve/providers", cast_to=object)["data"]}
    assert set(listed) == {"local", "remote-b", "remote-plain", "remote-down"}
    assert listed["remote-b"]["kind"] == "openai_compatible" and listed["remote-b"]["capabilities"]["pause"] is True
    assert listed["remote-plain"]["capabilities"]["training_types"] == ["lora"]
    models = near.get("/ftserve/providers/remote-b/models", cast_to=object)["data"]
    assert BASE in {m["id"] for m in models}  # what the far server lists, its fine-tuned models left out
    assert not any(m["id"].startswith("ft:") for m in models)
    with pytest.raises(openai.BadRequestError, match="'remote-x' is not configured"):
        near.get("/ftserve/providers/remote-x/models", cast_to=object)


def _wait_provider(client: OpenAI, job_id: str, status: str, timeout: float = 30) -> object:
    deadline = time.time() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.model_extra and (job.model_extra.get("ftserve") or {}).get("provider", {}).get("status") == status:
            return job
        assert time.time() < deadline, f"the provider never reported {status}; job is {job.status}"
        time.sleep(0.05)
