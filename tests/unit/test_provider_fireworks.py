"""The Fireworks adapter against recorded Fireworks responses, through the real `fireworks-ai` SDK and respx."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fireworks.types import (
    Dataset,
    DatasetUploadResponse,
    DpoJob,
    Model,
    SupervisedFineTuningJob,
)
from fireworks.types import Deployment as FireworksDeployment
from fireworks.types.shared import DeployedModel

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import (
    HasEvents,
    HostedProvider,
    JobRequest,
    Pausable,
    ProviderUnsupported,
    RemoteStatus,
    Resumable,
    Staged,
    lacking,
)
from ftserve.providers.fireworks_api import STATUSES, FireworksProvider

RECORDINGS = Path(__file__).parents[1] / "recordings" / "fireworks"
API = "https://api.fireworks.ai/v1/accounts/acct"
JOB_ID = "ftjob-Q7xLm2Rt9VbN4kPz8HcW3sYd"
FIREWORKS_JOB = "ftjob-q7xlm2rt9vbn4kpz8hcw3syd"
SFT = f"accounts/acct/supervisedFineTuningJobs/{FIREWORKS_JOB}"
DPO = f"accounts/acct/dpoJobs/{FIREWORKS_JOB}"
DATASET_ID = "ftserve-4898a34595bde8b32168f73f43e31855fab6e294"
BASE = "accounts/fireworks/models/qwen3-8b"
OUTPUT = f"accounts/acct/models/support-bot-{FIREWORKS_JOB}"

CHAT = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "How do I reset my password?"},
                  {"role": "assistant", "content": "Open Settings, then Security, then Reset password."}]},
    {"messages": [{"role": "user", "content": "Where is my invoice?"},
                  {"role": "assistant", "content": "Invoices are under Billing, one per month."}]},
]
PREFERENCE = {"input": {"messages": [{"role": "user", "content": "q"}]},
              "preferred_output": [{"role": "assistant", "content": "a"}],
              "non_preferred_output": [{"role": "assistant", "content": "b"}]}

# Each recording, with the SDK type that parses it; a list page names the key of its items.
SHAPES: dict[str, tuple[str | None, type]] = {
    "dataset_created.json": (None, Dataset),
    "dataset_ready.json": (None, Dataset),
    "dataset_uploaded.json": (None, DatasetUploadResponse),
    "sft_created.json": (None, SupervisedFineTuningJob),
    "sft_running.json": (None, SupervisedFineTuningJob),
    "sft_completed.json": (None, SupervisedFineTuningJob),
    "sft_cancelled.json": (None, SupervisedFineTuningJob),
    "sft_failed.json": (None, SupervisedFineTuningJob),
    "sft_list.json": ("supervisedFineTuningJobs", SupervisedFineTuningJob),
    "dpo_created.json": (None, DpoJob),
    "dpo_completed.json": (None, DpoJob),
    "dpo_list.json": ("dpoJobs", DpoJob),
    "models_page.json": ("models", Model),
    "model_lora.json": (None, Model),
    "deployment_created.json": (None, FireworksDeployment),
    "deployed_models_empty.json": ("deployedModels", DeployedModel),
    "deployed_model.json": (None, DeployedModel),
}


def recording(name: str) -> Any:
    return json.loads((RECORDINGS / name).read_text(encoding="utf-8"))


def reply(name: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=recording(name))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def job(tmp_path: Path, **fields: Any) -> JobRequest:
    values: dict[str, Any] = {
        "job_id": JOB_ID, "model": BASE, "method": "supervised",
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "training_file": write_jsonl(tmp_path / "train.jsonl", CHAT), "training_examples": 3,
    }
    values.update(fields)
    return JobRequest(**values)


def representative(tmp_path: Path, **fields: Any) -> JobRequest:
    return job(tmp_path, hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2, "batch_size": 8},
               seed=7, suffix="support-bot", options={"lora_rank": 8}, **fields)


def preference(tmp_path: Path, **fields: Any) -> JobRequest:
    return job(tmp_path, method="dpo", training_file=write_jsonl(tmp_path / "pairs.jsonl", [PREFERENCE] * 3),
               hyperparameters={"n_epochs": 2, "beta": 0.2, "batch_size": "auto", "learning_rate_multiplier": "auto"},
               **fields)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> FireworksProvider:
    monkeypatch.delenv("FIREWORKS_BASE_URL", raising=False)
    connection = FireworksProvider.Connection(api_key="fw-test", account_id="acct", wandb_api_key="wandb-secret")
    return FireworksProvider("fireworks", connection)


@pytest.fixture
def api() -> Any:
    with respx.mock(base_url=API, assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_recording_parses_as_the_sdk_type(name: str) -> None:
    items, shape = SHAPES[name]
    body = recording(name)
    for item in body[items] if items else [body]:
        shape.model_validate(item)  # a recording drifted from the SDK's types fails here


def test_the_adapter_is_a_hosted_provider(provider: FireworksProvider) -> None:
    assert isinstance(provider, HostedProvider)
    capabilities = provider.capabilities()
    assert (capabilities.data, capabilities.serving) == ("dataset", "needs_deployment")


def test_a_job_runs_from_upload_to_a_fine_tuned_model(provider: FireworksProvider, api: Any, tmp_path: Path) -> None:
    request = representative(tmp_path)
    api.get(f"/datasets/{DATASET_ID}").mock(return_value=reply("dataset_not_found.json", 404))
    created = api.post("/datasets").mock(return_value=reply("dataset_created.json"))
    uploaded = api.post(f"/datasets/{DATASET_ID}:upload").mock(return_value=reply("dataset_uploaded.json"))
    submitted = api.post("/supervisedFineTuningJobs").mock(return_value=reply("sft_created.json"))
    api.get(f"/supervisedFineTuningJobs/{FIREWORKS_JOB}").mock(
        side_effect=[reply("sft_running.json"), reply("sft_completed.json")])
    api.get(f"/supervisedFineTuningJobs/{FIREWORKS_JOB}/checkpoints").mock(return_value=reply("checkpoints.json"))

    staged = provider.stage_data(request)
    assert staged == Staged(f"accounts/acct/datasets/{DATASET_ID}")
    assert json.loads(created.calls.last.request.content) == {
        "datasetId": DATASET_ID, "dataset": {"userUploaded": {}, "exampleCount": "3", "displayName": "train.jsonl"},
    }
    assert b"then Reset password." in uploaded.calls.last.request.content  # the file itself went up

    started = provider.submit(request, staged)
    assert (started.id, started.status, started.model) == (SFT, "validating_files", None)
    sent = submitted.calls.last.request
    assert sent.url.params["supervisedFineTuningJobId"] == FIREWORKS_JOB
    assert json.loads(sent.content) == {  # exactly resolve's native request, in the SDK's wire names
        "dataset": f"accounts/acct/datasets/{DATASET_ID}", "displayName": f"support-bot ({JOB_ID})",
        "baseModel": BASE, "epochs": 3, "learningRate": 0.0002, "batchSize": 65536, "loraRank": 8, "outputModel": OUTPUT,
    }

    running = provider.get(started.id)
    assert (running.status, running.provider_status, running.trained_tokens, running.model) == (
        "running", "JOB_STATE_RUNNING", 1152, None)
    done = provider.get(started.id)
    assert (done.status, done.model, done.serving) == ("succeeded", OUTPUT, "needs_deployment")
    assert done.raw["estimatedCost"]["nanos"] == 1440000

    checkpoints = provider.checkpoints(started.id)
    assert [checkpoint.step for checkpoint in checkpoints] == [10, 20]  # oldest first; the step-less one left out
    assert checkpoints[0].created_at == 1789380842


def test_a_ready_dataset_is_not_uploaded_again(provider: FireworksProvider, api: Any, tmp_path: Path) -> None:
    api.get(f"/datasets/{DATASET_ID}").mock(return_value=reply("dataset_ready.json"))
    created = api.post("/datasets").mock(return_value=reply("dataset_created.json"))
    uploaded = api.post(f"/datasets/{DATASET_ID}:upload").mock(return_value=reply("dataset_uploaded.json"))

    assert provider.stage_data(job(tmp_path)).training == f"accounts/acct/datasets/{DATASET_ID}"
    assert (created.call_count, uploaded.call_count) == (0, 0)


@pytest.mark.parametrize("shape", [SupervisedFineTuningJob, DpoJob])
def test_every_state_the_sdk_declares_is_in_the_table(shape: type) -> None:
    (declared,) = [arg for arg in typing.get_args(shape.model_fields["state"].annotation) if arg is not type(None)]
    assert set(typing.get_args(declared)) == set(STATUSES)
    assert set(STATUSES.values()) <= set(typing.get_args(RemoteStatus))
    assert STATUSES["JOB_STATE_EARLY_STOPPED"] == "succeeded"


def test_resolve_names_every_conversion(provider: FireworksProvider, tmp_path: Path) -> None:
    resolved = provider.resolve(representative(tmp_path))

    assert resolved.native == {
        "supervised_fine_tuning_job_id": FIREWORKS_JOB, "dataset": "<training_file>",
        "display_name": f"support-bot ({JOB_ID})", "base_model": BASE, "epochs": 3, "learning_rate": 0.0002,
        "batch_size": 65536, "lora_rank": 8, "output_model": OUTPUT,
    }
    converted = {change.field: change for change in resolved.converted}
    assert sorted(converted) == ["hyperparameters.batch_size", "hyperparameters.learning_rate_multiplier",
                                 "hyperparameters.n_epochs", "suffix"]
    assert (converted["hyperparameters.learning_rate_multiplier"].native, converted["hyperparameters.learning_rate_multiplier"].native_value) == ("learning_rate", 0.0002)
    assert "0.0001" in converted["hyperparameters.learning_rate_multiplier"].reason
    assert "8 examples x 8192 tokens" in converted["hyperparameters.batch_size"].reason
    assert [(change.field, change.value, change.native) for change in resolved.dropped] == [("seed", 7, None)]


def test_warmup_becomes_steps_only_with_a_batch_size(provider: FireworksProvider, tmp_path: Path) -> None:
    counted = provider.resolve(job(tmp_path, training_examples=800, options={"warmup_ratio": 0.05},
                                   hyperparameters={"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": "auto"}))
    assert counted.native["learning_rate_warmup_steps"] == 15  # 0.05 x 100 steps x 3 epochs

    guessed = provider.resolve(job(tmp_path, options={"warmup_ratio": 0.05, "lora_alpha": 16}))
    assert "learning_rate_warmup_steps" not in guessed.native
    assert [change.field for change in guessed.dropped] == ["ftserve.warmup_ratio", "ftserve.lora_alpha"]


def test_a_dpo_job_goes_to_the_dpo_resource(provider: FireworksProvider, api: Any, tmp_path: Path) -> None:
    request = preference(tmp_path)
    resolved = provider.resolve(request, Staged("accounts/acct/datasets/pairs"))
    assert resolved.native == {
        "dpo_job_id": FIREWORKS_JOB, "dataset": "accounts/acct/datasets/pairs", "display_name": JOB_ID,
        "training_config": {"base_model": BASE, "epochs": 2}, "loss_config": {"method": "DPO", "dpo": {"beta": 0.2}},
    }
    assert [(change.field, change.native) for change in resolved.converted] == [
        ("hyperparameters.n_epochs", "training_config.epochs"), ("hyperparameters.beta", "loss_config.dpo.beta")]

    submitted = api.post("/dpoJobs").mock(return_value=reply("dpo_created.json"))
    api.get(f"/dpoJobs/{FIREWORKS_JOB}").mock(return_value=reply("dpo_completed.json"))
    started = provider.submit(request, Staged("accounts/acct/datasets/pairs"))
    assert submitted.calls.last.request.url.params["dpoJobId"] == FIREWORKS_JOB
    assert json.loads(submitted.calls.last.request.content) == {
        "dataset": "accounts/acct/datasets/pairs", "displayName": JOB_ID,
        "trainingConfig": {"baseModel": BASE, "epochs": 2}, "lossConfig": {"method": "DPO", "dpo": {"beta": 0.2}},
    }
    assert (started.id, started.status) == (DPO, "validating_files")
    finished = provider.get(DPO)  # early-stopped still succeeded; no output model named: Fireworks uses the job id
    assert (finished.status, finished.provider_status, finished.model) == (
        "succeeded", "JOB_STATE_EARLY_STOPPED", f"accounts/acct/models/{FIREWORKS_JOB}")


@pytest.mark.parametrize("options, message", [
    ({"turbo": True}, "ftserve.provider_options.fireworks.turbo"),
    ({"batch_size_samples": 16}, "provider_options.fireworks.batch_size_samples"),
])
def test_unknown_or_conflicting_options_are_refused(provider: FireworksProvider, tmp_path: Path,
                                                     options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        provider.resolve(representative(tmp_path, provider_options=options))


def test_what_fireworks_lacks_is_refused(provider: FireworksProvider, tmp_path: Path) -> None:
    with pytest.raises(ProviderUnsupported, match="reinforcement"):
        provider.resolve(job(tmp_path, method="reinforcement"))
    with pytest.raises(ProviderUnsupported, match="LoRA"):
        provider.resolve(job(tmp_path, options={"training_type": "full"}))
    with pytest.raises(ProviderUnsupported, match="supervised jobs"):
        provider.resolve(preference(tmp_path, provider_options={"is_turbo": True}))
    assert not isinstance(provider, HasEvents) and "no event list" in lacking(provider, "events").message
    assert not isinstance(provider, Pausable) and "no pause" in lacking(provider, "pause").message
    assert isinstance(provider, Resumable)  # a job Fireworks paused itself can be resumed


def test_the_wandb_key_is_sent_but_never_shown(provider: FireworksProvider, api: Any, tmp_path: Path) -> None:
    integrations = [{"type": "wandb", "wandb": {"project": "support", "name": "run-1"}}]
    request = job(tmp_path, integrations=integrations)
    resolved = provider.resolve(request, Staged("accounts/acct/datasets/d"))
    assert resolved.native["wandb_config"] == {"enabled": True, "project": "support"}
    assert "wandb-secret" not in json.dumps(resolved.native)
    assert "run's name" in resolved.converted[0].reason

    submitted = api.post("/supervisedFineTuningJobs").mock(return_value=reply("sft_created.json"))
    provider.submit(request, Staged("accounts/acct/datasets/d"))
    assert json.loads(submitted.calls.last.request.content)["wandbConfig"] == {
        "enabled": True, "project": "support", "apiKey": "wandb-secret"}


def test_submitting_twice_makes_one_job(provider: FireworksProvider, api: Any, tmp_path: Path) -> None:
    submitted = api.post("/supervisedFineTuningJobs").mock(
        side_effect=[reply("sft_created.json"), reply("already_exists.json", 409)])
    api.get(f"/supervisedFineTuningJobs/{FIREWORKS_JOB}").mock(return_value=reply("sft_running.json"))
    request = representative(tmp_path)

    first = provider.submit(request, Staged(f"accounts/acct/datasets/{DATASET_ID}"))
    second = provider.submit(request, Staged(f"accounts/acct/datasets/{DATASET_ID}"))
    assert first.id == second.id == SFT
    assert {call.request.url.params["supervisedFineTuningJobId"] for call in submitted.calls} == {FIREWORKS_JOB}


def test_deploy_loads_the_lora_onto_a_deployment_of_its_base(provider: FireworksProvider, api: Any) -> None:
    api.get(f"/models/support-bot-{FIREWORKS_JOB}").mock(return_value=reply("model_lora.json"))
    created = api.post("/deployments").mock(return_value=reply("deployment_created.json"))
    api.get("/deployedModels").mock(return_value=reply("deployed_models_empty.json"))
    loaded = api.post("/deployedModels").mock(return_value=reply("deployed_model.json"))

    deployment = provider.deploy(OUTPUT)
    assert created.calls.last.request.url.params["deploymentId"] == "ftserve-qwen3-8b"
    body = json.loads(created.calls.last.request.content)
    assert (body["baseModel"], body["enableAddons"], body["minReplicaCount"]) == (BASE, True, 0)
    assert json.loads(loaded.calls.last.request.content) == {
        "model": OUTPUT, "deployment": "accounts/acct/deployments/ftserve-qwen3-8b"}
    assert (deployment.id, deployment.status) == ("accounts/acct/deployments/ftserve-qwen3-8b", "DEPLOYING")
    assert deployment.model == f"{OUTPUT}#accounts/acct/deployments/ftserve-qwen3-8b"


def test_list_and_base_models(provider: FireworksProvider, api: Any) -> None:
    api.get("/supervisedFineTuningJobs").mock(return_value=reply("sft_list.json"))
    api.get("/dpoJobs").mock(return_value=reply("dpo_list.json"))
    api.get("https://api.fireworks.ai/v1/accounts/fireworks/models").mock(return_value=reply("models_page.json"))

    assert [(remote.id, remote.status) for remote in provider.list()] == [
        (DPO, "validating_files"), (SFT, "running")]  # newest first
    models = provider.list_base_models()
    assert [(model.id, model.context_length) for model in models] == [(BASE, 32768)]


def test_estimate_counts_tokens_times_epochs(provider: FireworksProvider, tmp_path: Path) -> None:
    once = provider.estimate(job(tmp_path))
    thrice = provider.estimate(representative(tmp_path))
    assert (once.epochs, thrice.epochs, thrice.trained_tokens) == (1, 3, 3 * once.trained_tokens)
    assert thrice.cost_usd is None and "no estimate API" in thrice.basis
