"""The RunPod adapter against recorded RunPod answers (respx) and a moto network volume."""

from __future__ import annotations

import ast
import functools
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import respx
from moto import mock_aws

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import (
    Change,
    Deployable,
    HasCheckpoints,
    HasEvents,
    HostedProvider,
    Listable,
    Pausable,
    JobRequest,
    ProviderError,
    ProviderUnsupported,
    Staged,
    lacking,
    map_status,
)
from ftserve.providers.runpod_api import STATUSES, RunpodConnection, RunpodProvider

RECORDINGS = Path(__file__).parent.parent / "recordings" / "runpod"
# The runpod SDK's wheel, read as text only (the SDK itself is never installed or imported).
# `make install` downloads it to .cache/wheels; FTSERVE_RUNPOD_WHEEL points elsewhere.
WHEEL = Path(os.environ.get(
    "FTSERVE_RUNPOD_WHEEL", Path(__file__).parents[2] / ".cache" / "wheels" / "runpod-1.12.0-py3-none-any.whl"))
# Statuses RunPod documents (docs.runpod.io/serverless/references/job-states) that the SDK's
# endpoint client never spells out, since it only tests for the final ones.
DOCUMENTED = {"IN_QUEUE", "IN_PROGRESS"}
# Fields RunPod's /status adds to the worker's JobOutput (delays in ms, the worker that ran it).
STATUS_EXTRAS = {"delayTime", "executionTime", "workerId"}

ENDPOINT = "https://api.runpod.ai/v2/ep-ft1"
BUCKET = "vol4xk2m9q"
REMOTE_ID = "c80ffee4-f315-4e25-a146-0f3d98cf024b-e1"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PREFERENCE = {"input": {"messages": [{"role": "user", "content": "q"}]},
              "preferred_output": [{"role": "assistant", "content": "a"}],
              "non_preferred_output": [{"role": "assistant", "content": "b"}]}


def recording(name: str) -> dict[str, Any]:
    payload = json.loads((RECORDINGS / f"{name}.json").read_text())
    if "status" in payload:
        _check_shape(payload)
    return payload


@functools.cache
def _sdk_source(path: str) -> ast.Module:
    if not WHEEL.exists():
        pytest.skip(f"the runpod wheel is not at {WHEEL} (set FTSERVE_RUNPOD_WHEEL)")
    with zipfile.ZipFile(WHEEL) as wheel:
        return ast.parse(wheel.read(path).decode())


def _check_shape(payload: dict[str, Any]) -> None:
    """A job answer fits the SDK's JobOutput dataclass (id, status, output, error) plus /status's timings."""
    if not WHEEL.exists():
        return
    tree = _sdk_source("runpod/serverless/modules/rp_fastapi.py")
    job_output = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "JobOutput")
    fields = {s.target.id: s.value is None for s in job_output.body if isinstance(s, ast.AnnAssign)}
    required = {name for name, no_default in fields.items() if no_default}
    assert required <= payload.keys(), f"{payload} lacks {required - payload.keys()}"
    assert payload.keys() <= fields.keys() | STATUS_EXTRAS, f"{payload.keys() - fields.keys() - STATUS_EXTRAS}"
    assert isinstance(payload["id"], str) and isinstance(payload["status"], str)


def connection(**changes: Any) -> RunpodConnection:
    settings = {
        "api_key": "rp_live_key", "endpoint_id": "ep-ft1", "hf_token": "hf_secret", "wandb_api_key": "wb_secret",
        "s3_endpoint_url": "https://s3.eu-west-1.amazonaws.com", "s3_region": "eu-west-1", "s3_bucket": BUCKET,
        "s3_access_key_id": "user_2abc", "s3_secret_access_key": "rps_secret",
    }
    return RunpodConnection.model_validate({**settings, **changes})


def request_for(tmp_path: Path, *, method: str = "supervised", rows: int = 3, validation: bool = False,
                **changes: Any) -> JobRequest:
    row = PREFERENCE if method == "dpo" else CHAT
    training = tmp_path / f"train-{method}.jsonl"
    training.write_text("".join(json.dumps(row) + "\n" for _ in range(rows)))
    validation_file = None
    if validation:
        validation_file = tmp_path / f"valid-{method}.jsonl"
        validation_file.write_text(json.dumps(row) + "\n")
    fields: dict[str, Any] = {
        "job_id": "ftjob-abc123", "model": "Qwen/Qwen2.5-0.5B-Instruct", "method": method,
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "training_file": training, "training_examples": rows, "validation_file": validation_file,
        "validation_examples": 1 if validation else 0,
    }
    return JobRequest(**{**fields, **changes})


def representative(tmp_path: Path, **changes: Any) -> JobRequest:
    return request_for(
        tmp_path, hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2, "batch_size": 8},
        seed=7, suffix="support-bot", options={"lora_rank": 8}, **changes,
    )


@pytest.fixture
def volume():
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield s3


@pytest.fixture
def api():
    with respx.mock(base_url=ENDPOINT, assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


class _NoVolume:
    """Stands in for the S3 client in tests that must not touch the volume."""

    def __getattr__(self, operation: str) -> Any:
        raise AssertionError(f"unexpected S3 call: {operation}")


@pytest.fixture
def provider() -> RunpodProvider:
    return RunpodProvider("runpod", connection(), s3=_NoVolume())


@pytest.fixture
def runpod(volume) -> RunpodProvider:
    return RunpodProvider("runpod", connection())


def _put_weights(volume, run_id: str = "ftjob-abc123") -> None:
    volume.put_object(Bucket=BUCKET, Key=f"fine-tuning/{run_id}/adapter_model.safetensors", Body=b"\0" * 8)
    volume.put_object(Bucket=BUCKET, Key=f"fine-tuning/{run_id}/checkpoint-3/adapter_model.safetensors", Body=b"")


def _changes(changes: list[Change]) -> dict[str, tuple[str | None, Any]]:
    return {c.field: (c.native, c.native_value) for c in changes}


# 1. The recorded lifecycle


def test_lifecycle_stages_submits_and_finishes_with_the_model_on_the_volume(runpod, volume, api, tmp_path):
    assert isinstance(runpod, HostedProvider)
    request = representative(tmp_path, validation=True)
    staged = runpod.stage_data(request)
    assert staged.training.startswith("/runpod-volume/ftserve/") and staged.training.endswith(".jsonl")
    key = staged.training.removeprefix("/runpod-volume/")
    assert volume.get_object(Bucket=BUCKET, Key=key)["Body"].read() == request.training_file.read_bytes()
    assert staged.validation is not None and staged.validation != staged.training

    run = api.post("/run").respond(200, json=recording("run"))
    api.get(f"/status/{REMOTE_ID}").mock(side_effect=[
        httpx.Response(200, json=recording("status_in_queue")),
        httpx.Response(200, json=recording("status_in_progress")),
        httpx.Response(200, json=recording("status_completed")),
    ])
    job = runpod.submit(request, staged)
    assert (job.id, job.status, job.provider_status) == (REMOTE_ID, "queued", "IN_QUEUE")
    assert run.calls.last.request.headers["Authorization"] == "Bearer rp_live_key"
    args = json.loads(run.calls.last.request.content)["input"]["args"]
    assert args["datasets"][0]["path"] == staged.training
    assert args["test_datasets"][0]["path"] == staged.validation

    assert runpod.get(REMOTE_ID).status == "queued"
    assert runpod.get(REMOTE_ID).status == "running"
    _put_weights(volume)
    done = runpod.get(REMOTE_ID)
    assert (done.status, done.provider_status) == ("succeeded", "COMPLETED")
    assert done.model == "/runpod-volume/fine-tuning/ftjob-abc123"
    assert done.serving == "external" and done.raw["executionTime"] == 2731450

    for protocol in (HasEvents, HasCheckpoints, Listable, Pausable, Deployable):
        assert not isinstance(runpod, protocol)
    assert "endpoint's logs" in lacking(runpod, "events").message
    capabilities = runpod.capabilities()
    assert not (capabilities.events or capabilities.checkpoints or capabilities.pause or capabilities.deploy)
    assert capabilities.serving == "external"


def test_a_hub_model_id_is_the_model_once_it_succeeds(runpod, volume, api, tmp_path):
    request = request_for(tmp_path, provider_options={"hub_model_id": "acme/support-bot"})
    api.post("/run").respond(200, json=recording("run"))
    api.get(f"/status/{REMOTE_ID}").respond(200, json=recording("status_completed"))
    runpod.submit(request, runpod.stage_data(request))
    _put_weights(volume)
    assert runpod.get(REMOTE_ID).model == "acme/support-bot"


def test_completed_without_weights_on_the_volume_is_failed(runpod, volume, api, tmp_path):
    # The worker reports COMPLETED even when Axolotl exits with an error (it never checks the exit status).
    request = request_for(tmp_path)
    api.post("/run").respond(200, json=recording("run"))
    api.get(f"/status/{REMOTE_ID}").respond(200, json=recording("status_completed"))
    runpod.submit(request, runpod.stage_data(request))
    volume.put_object(Bucket=BUCKET, Key="fine-tuning/ftjob-abc123/checkpoint-3/adapter_model.safetensors", Body=b"")
    job = runpod.get(REMOTE_ID)
    assert (job.status, job.provider_status, job.model) == ("failed", "COMPLETED", None)
    assert job.error is not None and "fine-tuning/ftjob-abc123/" in job.error.message


def test_staging_skips_a_file_the_volume_already_has(volume, tmp_path):
    s3 = boto3.client("s3", region_name="eu-west-1")
    puts: list[str] = []
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: puts.append(params["Key"]))
    provider = RunpodProvider("runpod", connection(), s3=s3)
    request = request_for(tmp_path)
    first, second = provider.stage_data(request), provider.stage_data(request)
    assert first == second and len(puts) == 1


def test_dpo_rows_are_staged_with_the_prompt_where_axolotl_reads_it(runpod, volume, tmp_path):
    staged = runpod.stage_data(request_for(tmp_path, method="dpo"))
    body = volume.get_object(Bucket=BUCKET, Key=staged.training.removeprefix("/runpod-volume/"))["Body"].read()
    row = json.loads(body.decode().splitlines()[0])
    assert row == {"messages": PREFERENCE["input"]["messages"], "preferred_output": PREFERENCE["preferred_output"],
                   "non_preferred_output": PREFERENCE["non_preferred_output"]}


# 2-4. Cancel, failure, a status nobody has seen


def test_failure_keeps_the_workers_message(provider, api):
    api.get(f"/status/{REMOTE_ID}").respond(200, json=recording("status_failed"))
    job = provider.get(REMOTE_ID)
    assert (job.status, job.provider_status) == ("failed", "FAILED")
    assert job.error is not None and job.error.code == "failed"
    assert job.error.message == "Enviornment variable WANDB_API_KEY not found. Please set it before running the script."
    assert "error_traceback" in job.raw["error"]


def test_timed_out_is_failed_with_a_reason(provider, api):
    api.get(f"/status/{REMOTE_ID}").respond(200, json=recording("status_timed_out"))
    job = provider.get(REMOTE_ID)
    assert (job.status, job.provider_status) == ("failed", "TIMED_OUT")
    assert job.error is not None and "timeout" in job.error.message


# 5. Every status the SDK declares


def _sdk_statuses() -> set[str]:
    tree = _sdk_source("runpod/endpoint/helpers.py")
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isupper()
            and node.value.replace("_", "").isalpha()}


def test_every_status_runpod_declares_lands_in_one_bucket():
    declared = _sdk_statuses()
    assert {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"} <= declared
    assert declared | DOCUMENTED == set(STATUSES)
    assert map_status(STATUSES, "CANCELLED") == "cancelled"
    assert {map_status(STATUSES, s) for s in declared | DOCUMENTED} <= {
        "queued", "running", "succeeded", "failed", "cancelled"}


# 6. resolve, and submit sending exactly what resolve shows


def test_resolve_a_representative_job(provider, tmp_path):
    resolved = provider.resolve(representative(tmp_path))
    native = resolved.native
    args = native["input"]["args"]
    assert native["input"]["run_id"] == "ftjob-abc123"
    assert native["input"]["credentials"] == {"wandb_api_key": "***", "hf_token": "***"}
    assert args["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert args["datasets"] == [{"path": "<training_file>", "ds_type": "json", "type": "chat_template",
                                 "field_messages": "messages"}]
    assert "test_datasets" not in args
    assert (args["num_epochs"], args["micro_batch_size"], args["gradient_accumulation_steps"]) == (3, 8, 1)
    assert args["learning_rate"] == pytest.approx(4e-4)
    assert (args["adapter"], args["lora_r"], args["lora_target_linear"], args["seed"]) == ("lora", 8, True, 7)
    assert args["output_dir"] == "/runpod-volume/fine-tuning/ftjob-abc123"
    assert native["policy"] == {"executionTimeout": 24 * 3_600_000, "ttl": 48 * 3_600_000}
    assert _changes(resolved.converted) == {
        "hyperparameters.n_epochs": ("input.args.num_epochs", 3),
        "hyperparameters.batch_size": ("input.args.micro_batch_size", 8),
        "hyperparameters.learning_rate_multiplier": ("input.args.learning_rate", pytest.approx(4e-4)),
        "ftserve.lora_rank": ("input.args.lora_r", 8),
    }
    assert _changes(resolved.dropped) == {"suffix": (None, None)}
    lr = next(c for c in resolved.converted if c.native == "input.args.learning_rate")
    assert "0.0002" in lr.reason


def test_resolve_a_dpo_job_with_validation(provider, tmp_path):
    request = request_for(tmp_path, method="dpo", validation=True,
                          hyperparameters={"n_epochs": "auto", "beta": 0.2}, options={"training_type": "full"})
    resolved = provider.resolve(request, Staged("/runpod-volume/ftserve/t.jsonl", "/runpod-volume/ftserve/v.jsonl"))
    args = resolved.native["input"]["args"]
    assert (args["rl"], args["rl_beta"], args["adapter"]) == ("dpo", 0.2, None)
    assert args["datasets"][0] == {"path": "/runpod-volume/ftserve/t.jsonl", "ds_type": "json",
                                   "type": "chat_template.default", "field_messages": "messages",
                                   "field_chosen": "preferred_output", "field_rejected": "non_preferred_output"}
    assert args["test_datasets"][0]["path"] == "/runpod-volume/ftserve/v.jsonl"
    assert args["test_datasets"][0]["split"] == "train"
    assert args["learning_rate"] == 1e-5 and "num_epochs" not in args and "lora_target_linear" not in args
    assert _changes(resolved.converted) == {"hyperparameters.beta": ("input.args.rl_beta", 0.2),
                                            "ftserve.training_type": ("input.args.adapter", None)}


def test_reinforcement_is_unsupported(provider, tmp_path):
    with pytest.raises(ProviderUnsupported):
        provider.resolve(request_for(tmp_path, method="reinforcement"))


def test_provider_options_go_in_and_wrong_ones_are_refused(provider, tmp_path):
    resolved = provider.resolve(request_for(tmp_path, provider_options={
        "gradient_accumulation_steps": 4, "load_in_4bit": True, "lora_target_modules": ["q_proj", "v_proj"],
        "execution_timeout_hours": 2, "axolotl": {"gradient_checkpointing": True},
    }, hyperparameters={"batch_size": 16}))
    args = resolved.native["input"]["args"]
    assert (args["micro_batch_size"], args["gradient_accumulation_steps"]) == (4, 4)
    assert (args["adapter"], args["load_in_4bit"], args["lora_target_modules"]) == ("qlora", True, ["q_proj", "v_proj"])
    assert "lora_target_linear" not in args and args["gradient_checkpointing"] is True
    assert resolved.native["policy"] == {"executionTimeout": 2 * 3_600_000, "ttl": 26 * 3_600_000}

    refused = [
        {"wandb": "x"},                                   # an unknown key
        {"axolotl": {"num_epochs": 5}},                   # a key hyperparameters.n_epochs owns
    ]
    for options in refused:
        with pytest.raises(InvalidRequest) as error:
            provider.resolve(request_for(tmp_path, provider_options=options))
        assert "provider_options.runpod" in error.value.message
    with pytest.raises(InvalidRequest, match="batch_size.*micro_batch_size"):
        provider.resolve(request_for(tmp_path, hyperparameters={"batch_size": 8},
                                     provider_options={"micro_batch_size": 2}))
    with pytest.raises(InvalidRequest, match="multiple"):
        provider.resolve(request_for(tmp_path, hyperparameters={"batch_size": 6},
                                     provider_options={"gradient_accumulation_steps": 4}))


def test_wandb_integration_maps_to_axolotl_and_tags_are_dropped(provider, tmp_path):
    integrations = [{"type": "wandb", "wandb": {"project": "ft", "name": "run-1", "tags": ["a"]}}]
    resolved = provider.resolve(request_for(tmp_path, integrations=integrations, metadata={"team": "x"}))
    args = resolved.native["input"]["args"]
    assert (args["wandb_project"], args["wandb_name"]) == ("ft", "run-1") and "wandb_entity" not in args
    assert set(_changes(resolved.dropped)) == {"integrations.wandb.tags", "metadata"}
    no_key = RunpodProvider("runpod", connection(wandb_api_key=None))
    with pytest.raises(InvalidRequest, match="wandb_api_key"):
        no_key.resolve(request_for(tmp_path, integrations=integrations))


def test_submit_sends_resolves_request_with_the_real_credentials(runpod, api, tmp_path):
    request = representative(tmp_path)
    staged = runpod.stage_data(request)
    run = api.post("/run").respond(200, json=recording("run"))
    runpod.submit(request, staged)
    sent = json.loads(run.calls.last.request.content)
    shown = runpod.resolve(request, staged).native
    assert sent["input"]["credentials"] == {"wandb_api_key": "wb_secret", "hf_token": "hf_secret"}
    assert {**sent, "input": {**sent["input"], "credentials": shown["input"]["credentials"]}} == shown
    assert "hf_secret" not in json.dumps(shown)


# 7. Idempotency


def test_submitting_twice_makes_one_remote_job(runpod, api, tmp_path):
    request = representative(tmp_path)
    staged = runpod.stage_data(request)
    run = api.post("/run").respond(200, json=recording("run"))
    api.get(f"/status/{REMOTE_ID}").respond(200, json=recording("status_in_progress"))
    first = runpod.submit(request, staged)
    again = RunpodProvider("runpod", connection()).submit(request, staged)  # e.g. after a worker restart
    assert run.call_count == 1
    assert (first.id, again.id, again.status) == (REMOTE_ID, REMOTE_ID, "running")


# 8. Errors


def test_a_job_runpod_forgot_is_a_404_that_says_why(provider, api):
    # The contract suite asks the 5xx, 429 and 400 refusals; a 404 is what the worker reads as a lost job.
    api.get(f"/status/{REMOTE_ID}").respond(404, json={"error": "request does not exist"})
    with pytest.raises(ProviderError) as error:
        provider.get(REMOTE_ID)
    assert (error.value.retryable, error.value.status) == (False, 404)
    assert "request does not exist" in error.value.message and "30 minutes" in error.value.message


def test_a_volume_refusal_is_a_provider_error(tmp_path):
    with mock_aws():  # no bucket: the volume id is wrong
        with pytest.raises(ProviderError) as error:
            RunpodProvider("runpod", connection()).stage_data(request_for(tmp_path))
    assert not error.value.retryable and "bucket does not exist" in error.value.message


# Estimate and connection


def test_estimate_counts_tokens_times_epochs_without_a_price(provider, tmp_path):
    explicit = provider.estimate(representative(tmp_path))
    default = provider.estimate(request_for(tmp_path))
    assert explicit.epochs == 3 and explicit.trained_tokens == 3 * default.trained_tokens
    assert default.epochs == 1 and "default" in default.basis
    assert explicit.cost_usd is None


def test_the_datacenter_comes_from_runpods_s3_url():
    assert connection(s3_endpoint_url="https://s3api-eur-is-1.runpod.io/", s3_region=None).region == "EUR-IS-1"
    with pytest.raises(ValueError, match="s3_region"):
        connection(s3_endpoint_url="https://storage.example.com", s3_region=None)
