"""The Together adapter against recorded API responses (tests/recordings/together), through respx.

Every recording is also parsed with the together SDK's own response type, so a change in the
SDK's shapes fails here rather than in a running job.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

together = pytest.importorskip("together")
respx = pytest.importorskip("respx")

from together.lib.resources.fine_tuning import create_finetune_request
from together.lib.types.fine_tuning import FinetuneJobStatus, FinetuneRequest
from together.resources.fine_tuning import FineTuningResource
from together.types import (
    Endpoint,
    EndpointDeployment,
    FileList,
    FileResponse,
    FinetuneModelLimits,
    FinetuneResponse,
    FineTuningCancelResponse,
    FineTuningListCheckpointsResponse,
    FineTuningListEventsResponse,
    FineTuningListResponse,
    SupportedModel,
)
from together.types.fine_tuning_estimate_price_response import (
    AvailableEstimate,
    UnavailableEstimate,
)

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import (
    JobRequest,
    Pausable,
    ProviderUnsupported,
    RemoteStatus,
    Staged,
    lacking,
)
from ftserve.providers.together_api import (
    SDK_DEFAULTS,
    STATUSES,
    TogetherConnection,
    TogetherProvider,
)

RECORDINGS = Path(__file__).parents[1] / "recordings" / "together"
API = "https://api.together.test"
UPLOAD = "https://uploads.together.test/put/5e3a1b9c?signature=abc"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
JOB_ID = "ftjob-TogetherTest000000000001"
REMOTE = "ft-3b2a7c1e-8d4f-4e1a-9c55-2f0b6d7e9a10"
FILE_ID = "file-5e3a1b9c-27d4-4f0e-8a61-d2c7b4e90f13"
OUTPUT = "acme/Meta-Llama-3.1-8B-Instruct-Reference-support-bot-85cff1eab5-6c0e2f4a"
TAG = "85cff1eab5"  # sha256 of JOB_ID, as the recorded jobs carry it in their suffix

SHAPES: dict[str, Any] = {
    "create.json": FineTuningCancelResponse,  # POST /fine-tunes answers the truncated job, as cancel does
    "cancel.json": FineTuningCancelResponse,
    "retrieve_running.json": FinetuneResponse,
    "retrieve_completed.json": FinetuneResponse,
    "retrieve_error.json": FinetuneResponse,
    "retrieve_cancelled.json": FinetuneResponse,
    "list.json": FineTuningListResponse,
    "events.json": FineTuningListEventsResponse,
    "checkpoints.json": FineTuningListCheckpointsResponse,
    "files.json": FileList,
    "file_uploaded.json": FileResponse,
    "estimate_price.json": AvailableEstimate,
    "estimate_price_unavailable.json": UnavailableEstimate,
    "model_limits.json": FinetuneModelLimits,
    "endpoint_created.json": Endpoint,
    "endpoint_routed.json": Endpoint,
    "deployment_created.json": EndpointDeployment,
}


def recording(name: str, **changes: Any) -> dict[str, Any]:
    return {**json.loads((RECORDINGS / name).read_text()), **changes}


def answer(name: str, http_status: int = 200, **changes: Any) -> httpx.Response:
    return httpx.Response(http_status, json=recording(name, **changes))


def _no_unknown_fields(model: Any, where: str) -> None:
    if isinstance(model, BaseModel):
        assert not model.model_extra, f"{where}: fields the SDK does not declare: {sorted(model.model_extra)}"
        for name in type(model).model_fields:
            _no_unknown_fields(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for index, item in enumerate(model):
            _no_unknown_fields(item, f"{where}[{index}]")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_recordings_are_shaped_as_the_sdk_declares(name: str) -> None:
    _no_unknown_fields(SHAPES[name].model_validate(recording(name)), name)


def test_the_supported_models_page_is_shaped_as_the_sdk_declares() -> None:
    page = recording("supported_models.json")
    assert set(page) == {"data", "next_cursor"}
    for entry in page["data"]:
        _no_unknown_fields(SupportedModel.model_validate(entry), "supported_models.json")


def test_every_recording_is_checked_against_an_sdk_type() -> None:
    recorded = {path.name for path in RECORDINGS.glob("*.json")}
    assert recorded - set(SHAPES) == {"supported_models.json", "error_400.json", "error_429.json", "error_500.json"}


# Fixtures and builders.


@pytest.fixture
def api() -> Any:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def provider() -> TogetherProvider:
    # No client is injected: the adapter builds the real SDK client from its connection.
    return TogetherProvider("together", TogetherConnection(
        api_key="test-key", base_url=API, project_id="prj_acme01", wandb_api_key="wandb-secret",
    ))


def chat_file(folder: Path, rows: int = 4, name: str = "train.jsonl") -> Path:
    path = folder / name
    lines = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
             for i in range(rows)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def preference_file(folder: Path) -> Path:
    path = folder / "dpo.jsonl"
    row = {"input": {"messages": [{"role": "user", "content": "q"}]},
           "preferred_output": [{"role": "assistant", "content": "a"}],
           "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    path.write_text((json.dumps(row) + "\n") * 3)
    return path


def job(folder: Path, **changes: Any) -> JobRequest:
    """The representative job: supervised, 3 epochs, multiplier 2, batch 8, seed 7, a suffix, LoRA rank 8."""
    request = JobRequest(
        job_id=JOB_ID, model=MODEL, method="supervised",
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2, "batch_size": 8},
        training_file=chat_file(folder), training_examples=4, seed=7, suffix="support-bot",
        options={"lora_rank": 8},
    )
    return replace(request, **changes)


def uploaded_name(path: Path) -> str:
    return f"ftserve-{hashlib.sha256(path.read_bytes()).hexdigest()}.jsonl"


def files_listing(path: Path) -> dict[str, Any]:
    listing = recording("files.json")
    listing["data"][1].update(filename=uploaded_name(path), bytes=path.stat().st_size)
    return listing


# resolve: the dry run.


def test_resolve_names_every_field_as_together_does(provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    resolved = provider.resolve(job(tmp_path))

    assert resolved.native == {
        "training_file": "<training_file>", "model": MODEL, "n_epochs": 3, "learning_rate": 2e-05, "batch_size": 8,
        "packing": True, "warmup_ratio": 0.0, "max_grad_norm": 1.0, "weight_decay": 0.0,
        "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.0, "num_cycles": 0.5}},
        "n_checkpoints": 1, "n_evals": 0, "early_stopping_enabled": False,
        "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                          "lora_trainable_modules": "all-linear"},
        "training_method": {"method": "sft", "train_on_inputs": "auto"},
        "suffix": f"support-bot-{TAG}", "random_seed": 7,
    }
    assert {c.field: (c.native, c.native_value) for c in resolved.converted} == {
        "hyperparameters.learning_rate_multiplier": ("learning_rate", 2e-05),
        "ftserve.lora_rank": ("training_type.lora_r", 8),
        "suffix": ("suffix", f"support-bot-{TAG}"),
        "seed": ("random_seed", 7),
    }
    assert "1e-05" in resolved.converted[0].reason
    assert resolved.dropped == []
    assert not api.calls  # a dry run of this job asks Together nothing


def test_native_is_the_body_the_sdk_itself_would_post(provider: TogetherProvider, tmp_path: Path) -> None:
    native = provider.resolve(job(tmp_path), Staged(FILE_ID)).native
    sdk, _, _ = create_finetune_request(
        model_limits=FinetuneModelLimits.model_validate(recording("model_limits.json")),
        training_file=FILE_ID, validation_file=None, model=MODEL, n_epochs=3, batch_size=8, learning_rate=2e-05,
        lora=True, lora_r=8, suffix=f"support-bot-{TAG}", random_seed=7,
    )
    assert native == sdk.model_dump(exclude_none=True)
    assert FinetuneRequest.model_validate(native).model_dump(exclude_none=True) == native


def test_auto_values_take_the_defaults_of_the_sdks_create() -> None:
    parameters = inspect.signature(FineTuningResource.create).parameters
    assert {key: parameters[key].default for key in SDK_DEFAULTS} == SDK_DEFAULTS


def test_resolve_dpo(provider: TogetherProvider, tmp_path: Path) -> None:
    request = job(tmp_path, method="dpo", training_file=preference_file(tmp_path), training_examples=3,
                  hyperparameters={"beta": 0.2, "n_epochs": "auto"}, seed=None, suffix=None, options={})
    resolved = provider.resolve(request, Staged(FILE_ID))

    assert resolved.native["training_method"] == {
        "method": "dpo", "dpo_beta": 0.2, "dpo_normalize_logratios_by_length": False, "dpo_reference_free": False,
    }
    assert "training_type" not in resolved.native  # Together's default, LoRA
    assert resolved.native["suffix"] == f"ftserve-{TAG}"
    assert [(c.field, c.native) for c in resolved.converted] == [("hyperparameters.beta", "training_method.dpo_beta")]
    sdk, _, _ = create_finetune_request(
        model_limits=FinetuneModelLimits.model_validate(recording("model_limits.json")), training_file=FILE_ID,
        validation_file=None, model=MODEL, training_method="dpo", dpo_beta=0.2, suffix=f"ftserve-{TAG}",
    )
    assert resolved.native == sdk.model_dump(exclude_none=True)


def test_a_method_together_lacks_is_refused(provider: TogetherProvider, tmp_path: Path) -> None:
    with pytest.raises(ProviderUnsupported, match="SFT and DPO"):
        provider.resolve(job(tmp_path, method="reinforcement"))


def test_unknown_provider_options_are_refused(provider: TogetherProvider, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="n_evalz"):
        provider.resolve(job(tmp_path, provider_options={"n_evalz": 3}))


def test_a_provider_option_that_repeats_a_common_one_is_refused(provider: TogetherProvider, tmp_path: Path) -> None:
    request = job(tmp_path, options={"eval_interval": 5}, provider_options={"n_evals": 2})
    with pytest.raises(InvalidRequest, match=r"ftserve\.eval_interval.*provider_options\.together\.n_evals"):
        provider.resolve(request)
    with pytest.raises(InvalidRequest, match="LoRA setting"):
        provider.resolve(job(tmp_path, options={"training_type": "full", "lora_rank": 8}))


def test_provider_options_go_into_the_request(provider: TogetherProvider, tmp_path: Path) -> None:
    request = job(tmp_path, options={"training_type": "full"}, provider_options={
        "lr_scheduler_type": "linear", "min_lr_ratio": 0.1, "n_checkpoints": 3, "hf_output_repo_name": "acme/bot",
    })
    resolved = provider.resolve(request)
    native = resolved.native

    assert native["training_type"] == {"type": "Full"}
    assert ("ftserve.training_type", "training_type.type", "Full") in [
        (c.field, c.native, c.native_value) for c in resolved.converted]
    assert native["lr_scheduler"] == {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.1}}
    assert (native["n_checkpoints"], native["hf_output_repo_name"]) == (3, "acme/bot")


def test_step_intervals_become_counts_per_run(provider: TogetherProvider, tmp_path: Path) -> None:
    request = job(tmp_path, training_examples=40, validation_file=chat_file(tmp_path, name="valid.jsonl"),
                  options={"eval_interval": 5, "checkpoint_interval": 4})
    resolved = provider.resolve(request)

    # ceil(40 / 8) x 3 epochs = 15 steps: an evaluation every 5 steps is 3 per run, a checkpoint every 4 is 3.
    assert (resolved.native["n_evals"], resolved.native["n_checkpoints"]) == (3, 3)
    assert resolved.native["validation_file"] == "<validation_file>"
    auto_batch = job(tmp_path, hyperparameters={"n_epochs": 3}, options={"checkpoint_interval": 4})
    assert [c.field for c in provider.resolve(auto_batch).dropped] == ["ftserve.checkpoint_interval"]


def test_lora_settings_without_a_rank_take_the_models_default_rank(
        provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    limits = api.get(f"{API}/v1/fine-tunes/models/limits").mock(return_value=answer("model_limits.json"))
    native = provider.resolve(job(tmp_path, options={"lora_dropout": 0.05})).native

    assert native["training_type"] == {"type": "Lora", "lora_r": 64, "lora_alpha": 128, "lora_dropout": 0.05,
                                       "lora_trainable_modules": "all-linear"}
    assert limits.calls.last.request.url.params["model_name"] == MODEL


def test_wandb_goes_in_by_name_and_its_key_never_shows(tmp_path: Path) -> None:
    wandb = [{"type": "wandb", "wandb": {"project": "bots", "name": "run-1", "tags": ["a"]}}]
    request = job(tmp_path, integrations=wandb, metadata={"team": "support"})
    keyed = TogetherProvider("together", TogetherConnection(api_key="k", wandb_api_key="wandb-secret"))
    resolved = keyed.resolve(request)

    assert (resolved.native["wandb_project_name"], resolved.native["wandb_name"]) == ("bots", "run-1")
    assert "wandb-secret" not in json.dumps(resolved.native)
    assert [c.field for c in resolved.dropped] == ["metadata", "integrations.wandb.tags"]
    keyless = TogetherProvider("together", TogetherConnection(api_key="k")).resolve(request)
    assert "wandb_project_name" not in keyless.native
    assert [c.field for c in keyless.dropped] == ["metadata", "integrations"]


# The lifecycle.


def test_recorded_lifecycle(provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    request = job(tmp_path, integrations=[{"type": "wandb", "wandb": {"project": "bots"}}])
    api.get(f"{API}/v1/files").mock(return_value=answer("files.json", data=[]))
    ask = api.post(f"{API}/v1/files").mock(return_value=httpx.Response(
        302, headers={"Location": UPLOAD, "X-Together-File-Id": FILE_ID}))
    put = api.put(UPLOAD).mock(return_value=httpx.Response(200))
    api.post(f"{API}/v1/files/{FILE_ID}/preprocess").mock(return_value=answer(
        "file_uploaded.json", filename=uploaded_name(request.training_file)))
    api.get(f"{API}/v1/fine-tunes").mock(return_value=httpx.Response(200, json={"data": []}))
    create = api.post(f"{API}/v1/fine-tunes").mock(return_value=answer("create.json"))
    retrieve = api.get(f"{API}/v1/fine-tunes/{REMOTE}").mock(side_effect=[
        answer("retrieve_running.json"), answer("retrieve_completed.json")])
    api.get(f"{API}/v1/fine-tunes/{REMOTE}/events").mock(return_value=answer("events.json"))
    api.get(f"{API}/v1/fine-tunes/{REMOTE}/checkpoints").mock(return_value=answer("checkpoints.json"))

    staged = provider.stage_data(request)
    assert staged == Staged(FILE_ID, None)
    assert uploaded_name(request.training_file).encode() in ask.calls.last.request.content
    assert put.calls.last.request.content == request.training_file.read_bytes()

    submitted = provider.submit(request, staged)
    sent = json.loads(create.calls.last.request.content)
    assert sent == {**provider.resolve(request, staged).native, "wandb_key": "wandb-secret"}
    assert (submitted.id, submitted.status, submitted.provider_status, submitted.model) == (REMOTE, "queued", "pending", None)

    running = provider.get(REMOTE)
    assert (running.status, running.model) == ("running", None)
    assert running.estimated_finish is not None and running.estimated_finish >= time.time() + 600

    done = provider.get(REMOTE)
    assert (done.status, done.model, done.serving, done.trained_tokens) == ("succeeded", OUTPUT, "ready", 95232)
    assert done.raw["model_object_id"] == "ml_01K4D2Q8V7Z3"
    assert retrieve.call_count == 2

    events = provider.events(REMOTE)
    assert [e.id for e in events] == ["0", "1", "2", "3", "4", "5"]
    assert events[0].created_at == 1788256800 and events[0].message == "Fine tune request created"
    assert events[3].data == {"together_type": "checkpoint_save", "step": 12, "total_steps": 36,
                              "checkpoint_path": "s3://together-dev/finetune/ft-3b2a/checkpoint-12"}
    assert events[5].level == "warn"
    assert [e.id for e in provider.events(REMOTE, after="3")] == ["4", "5"]

    checkpoints = provider.checkpoints(REMOTE)
    assert [(c.step, c.model) for c in checkpoints] == [(12, "acme/ft-3b2a7c1e-step-12-adapter"), (36, OUTPUT)]


def test_a_retried_stage_data_uploads_nothing(provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    request = job(tmp_path)
    api.get(f"{API}/v1/files").mock(return_value=httpx.Response(200, json=files_listing(request.training_file)))
    upload = api.post(f"{API}/v1/files")

    assert provider.stage_data(request) == Staged(FILE_ID, None)
    assert not upload.called


def test_submit_twice_gives_one_remote_job(provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    request = job(tmp_path)
    api.get(f"{API}/v1/fine-tunes").mock(side_effect=[
        httpx.Response(200, json={"data": []}), answer("list.json")])
    create = api.post(f"{API}/v1/fine-tunes").mock(return_value=answer("create.json"))

    first = provider.submit(request, Staged(FILE_ID))
    again = provider.submit(request, Staged(FILE_ID))

    assert first.id == again.id == REMOTE
    assert create.call_count == 1


def test_a_full_training_result_needs_a_deployment(provider: TogetherProvider, api: Any) -> None:
    api.get(f"{API}/v1/fine-tunes/{REMOTE}").mock(return_value=answer(
        "retrieve_completed.json", training_type={"type": "Full"}))

    assert provider.get(REMOTE).serving == "needs_deployment"


def test_every_status_the_sdk_declares_lands_in_one_bucket() -> None:
    declared = {member.value for member in FinetuneJobStatus}
    for shape in (FinetuneResponse, FineTuningCancelResponse):
        declared |= set(typing.get_args(shape.model_fields["status"].annotation))
    normalised = set(typing.get_args(RemoteStatus))

    assert set(STATUSES) == declared
    assert all(STATUSES[raw] in normalised for raw in declared)
    assert STATUSES["cancelled"] == "cancelled" and STATUSES["cancel_requested"] == "cancelling"


# Errors.


# Estimate, models, deploy, pause.


def test_estimate_asks_togethers_price_api_for_uploaded_data(
        provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    request = job(tmp_path)
    api.get(f"{API}/v1/files").mock(return_value=httpx.Response(200, json=files_listing(request.training_file)))
    price = api.post(f"{API}/v1/fine-tunes/estimate-price").mock(return_value=answer("estimate_price.json"))

    estimate = provider.estimate(request)
    assert (estimate.trained_tokens, estimate.epochs, estimate.cost_usd) == (95232, 3, 0.48)
    assert "estimate_price" in estimate.basis
    asked = json.loads(price.calls.last.request.content)
    assert (asked["training_file"], asked["n_epochs"], asked["training_method"]["method"]) == (FILE_ID, 3, "sft")
    assert asked["training_type"]["lora_r"] == 8


def test_estimate_before_upload_or_without_an_answer_is_local(
        provider: TogetherProvider, tmp_path: Path, api: Any) -> None:
    request = job(tmp_path)
    listing = api.get(f"{API}/v1/files").mock(return_value=httpx.Response(200, json={"data": []}))

    before = provider.estimate(request)
    assert (before.cost_usd, before.epochs) == (None, 3) and before.trained_tokens > 0
    assert "not uploaded yet" in before.basis

    listing.mock(return_value=httpx.Response(200, json=files_listing(request.training_file)))
    api.post(f"{API}/v1/fine-tunes/estimate-price").mock(return_value=answer("estimate_price_unavailable.json"))
    assert "train_file_not_validated" in provider.estimate(request).basis


def test_list_base_models(provider: TogetherProvider, api: Any) -> None:
    route = api.get(f"{API}/v2/supported-models").mock(return_value=answer("supported_models.json"))

    models = provider.list_base_models()
    assert [(m.id, m.context_length) for m in models] == [(MODEL, 131072), ("Qwen/Qwen3-8B", None)]
    assert route.calls.last.request.url.params["product"] == "PRODUCT_FINE_TUNING"


def test_deploy_makes_a_dedicated_endpoint_for_the_model(provider: TogetherProvider, api: Any) -> None:
    project = f"{API}/v2/projects/prj_acme01/endpoints"
    api.get(f"{API}/v1/fine-tunes").mock(return_value=answer("list.json"))
    api.get(f"{API}/v1/fine-tunes/{REMOTE}").mock(return_value=answer("retrieve_completed.json"))
    api.post(project).mock(return_value=answer("endpoint_created.json"))
    deploy = api.post(f"{project}/ep_01K4E0A1/deployments").mock(return_value=answer("deployment_created.json"))
    route = api.patch(f"{project}/ep_01K4E0A1").mock(return_value=answer("endpoint_routed.json"))

    deployment = provider.deploy(OUTPUT)

    assert deployment.model == recording("endpoint_routed.json")["name"]
    assert (deployment.id, deployment.status) == ("ep_01K4E0A1", "DEPLOYMENT_STATE_PROVISIONING")
    assert json.loads(deploy.calls.last.request.content) == {
        "name": "primary", "model": "projects/prj_acme01/models/ml_01K4D2Q8V7Z3",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1}, "inactiveTimeout": 60,
    }
    assert json.loads(route.calls.last.request.content)["trafficSplit"] == [
        {"deploymentId": "dep_01K4E0B2", "weight": 1}]


def test_no_pause_at_together_but_a_price_estimate(provider: TogetherProvider) -> None:
    assert provider.capabilities().cost_estimate
    assert not isinstance(provider, Pausable) and "from_checkpoint" in lacking(provider, "pause").message
