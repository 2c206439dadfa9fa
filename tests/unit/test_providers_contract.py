"""One job, every provider: the contract each adapter keeps, and what switching providers changes."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import respx
from openai.types.fine_tuning import FineTuningJob

from ftserve.catalogue import CatalogueEntry, load_catalogue
from ftserve.domain.errors import InvalidRequest
from ftserve.providers import registry
from ftserve.providers.contract import (
    OPERATIONS,
    HostedProvider,
    JobRequest,
    Provider,
    ProviderError,
    RemoteStatus,
    lacking,
)
from ftserve.providers.local import LocalProvider
from ftserve.providers.openai_compatible_api import STATUSES as OPENAI_STATUSES
from tests.unit.provider_fakes import Fake, hosted  # noqa: F401  # hosted is the fixture the suite below uses

CONFIGS: dict[str, dict[str, Any]] = {
    "remote-lab": {"base_url": "https://lab.example/v1", "api_key": "sk-lab", "dialect": "ftserve"},
    "openai": {"kind": "openai_compatible", "base_url": "https://api.openai.com/v1", "api_key": "sk-test"},
    "together": {"api_key": "tg-test"},
    "fireworks": {"api_key": "fw-test", "account_id": "acme"},
    "bedrock": {"region": "us-east-1", "role_arn": "arn:aws:iam::123456789012:role/ft", "s3_bucket": "ft-data"},
    "runpod": {"api_key": "rp-test", "endpoint_id": "ep1", "hf_token": "hf-test", "s3_bucket": "vol1",
               "s3_endpoint_url": "https://s3api-eur-is-1.runpod.io", "s3_access_key_id": "a", "s3_secret_access_key": "b"},
}
# The one thing a caller changes to move the job: the model id, in each provider's own naming.
MODELS = {
    "local": "SmolLM2-135M-Instruct",
    "remote-lab": "SmolLM2-135M-Instruct",
    "openai": "gpt-4.1-mini-2025-04-14",
    "together": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
    "fireworks": "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "bedrock": "meta.llama3-1-8b-instruct-v1:0",
    "runpod": "meta-llama/Llama-3.1-8B-Instruct",
}
# Where each provider's native request carries the three epochs the job asks for.
EPOCHS = {
    "local": ("n_epochs", 3),
    "remote-lab": ("method.supervised.hyperparameters.n_epochs", 3),
    "openai": ("method.supervised.hyperparameters.n_epochs", 3),
    "together": ("n_epochs", 3),
    "fireworks": ("epochs", 3),
    "bedrock": ("hyperParameters.epochCount", "3"),
    "runpod": ("input.args.num_epochs", 3),
}


@pytest.fixture(scope="module")
def providers() -> dict[str, Provider]:
    built: dict[str, Provider] = {name: registry.build(name, config) for name, config in CONFIGS.items()}
    built["local"] = LocalProvider(load_catalogue(), Path("models"))
    return built


def job(tmp_path: Path, model: str) -> JobRequest:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
            for i in range(24)]
    training, validation = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    training.write_text("".join(json.dumps(row) + "\n" for row in rows))
    validation.write_text("".join(json.dumps(row) + "\n" for row in rows[:4]))
    return JobRequest(
        job_id="ftjob-abc123", model=model, method="supervised",
        hyperparameters={"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0},
        training_file=training, training_examples=24, validation_file=validation, validation_examples=4,
        seed=7, suffix="support-bot", options={"lora_rank": 8}, output_dir=tmp_path / "artifacts",
    )


def _at(native: dict[str, Any], dotted: str) -> Any:
    value: Any = native
    for part in dotted.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("name", list(MODELS))
def test_the_same_job_resolves_on_every_provider_without_a_network_call(
    name: str, providers: dict[str, Provider], tmp_path: Path,
) -> None:
    request = job(tmp_path, MODELS[name])
    with respx.mock(assert_all_mocked=True, assert_all_called=False):  # any HTTP request fails the test
        resolved = providers[name].resolve(request)
        estimate = providers[name].estimate(request)
    path, value = EPOCHS[name]
    assert _at(resolved.native, path) == value
    assert resolved.provider == name
    # Every parameter that did not go through as is, is accounted for, under the name the caller used.
    set_fields = {"hyperparameters.n_epochs", "hyperparameters.batch_size", "hyperparameters.learning_rate_multiplier",
                  "seed", "suffix", "ftserve.lora_rank", "metadata", "training_file", "validation_file"}
    for change in resolved.converted + resolved.dropped:
        assert change.field in set_fields, f"{name} reports a change to {change.field}, which the job did not set"
        assert change.reason, f"{name} gives no reason for {change.field}"
    dropped = {c.field for c in resolved.dropped}
    assert all(c.native for c in resolved.converted) and not any(c.native for c in resolved.dropped)
    assert ("seed" in dropped) == (name in ("fireworks", "bedrock")), f"{name} dropped {dropped}"
    assert estimate.epochs == 3 and estimate.trained_tokens > 0 and estimate.basis


@pytest.mark.parametrize("name", [name for name in MODELS if name != "local"])
def test_a_process_count_is_reported_dropped_where_the_provider_chooses_the_machines(
    name: str, providers: dict[str, Provider], tmp_path: Path,
) -> None:
    request = job(tmp_path, MODELS[name])
    request = dataclasses.replace(request, options={**request.options, "num_processes": 2})
    with respx.mock(assert_all_mocked=True, assert_all_called=False):
        resolved = providers[name].resolve(request)
    dropped = {c.field: c.reason for c in resolved.dropped}
    if name == "remote-lab":  # another ftserve: the option travels on, as the caller set it
        assert "ftserve.num_processes" not in dropped
    else:
        assert dropped.get("ftserve.num_processes"), f"{name} ignores ftserve.num_processes without saying so"


def test_resolve_shows_placeholders_for_files_until_they_are_staged(providers: dict[str, Provider], tmp_path: Path) -> None:
    for name in ("remote-lab", "together", "fireworks"):
        text = json.dumps(providers[name].resolve(job(tmp_path, MODELS[name])).native)
        assert "<training_file>" in text, name


def test_every_hosted_adapter_keeps_the_contract(providers: dict[str, Provider]) -> None:
    allowed = set(typing.get_args(RemoteStatus))
    for name, provider in providers.items():
        if name == "local":
            assert isinstance(provider, Provider) and not isinstance(provider, HostedProvider)
            continue
        assert isinstance(provider, HostedProvider), name
        module = __import__(type(provider).__module__, fromlist=["STATUSES"])
        assert set(module.STATUSES.values()) <= allowed, name
        for raw, status in module.STATUSES.items():
            # A cancelled or stopped job is never reported as failed.
            if "cancel" in raw.lower() or raw.lower() == "stopped":
                assert status in ("cancelled", "cancelling"), (name, raw, status)


def test_every_status_the_openai_sdk_declares_maps_to_itself() -> None:
    declared = typing.get_args(FineTuningJob.model_fields["status"].annotation)
    assert set(declared) <= set(OPENAI_STATUSES)
    assert all(OPENAI_STATUSES[status] == status for status in declared)


def test_provider_options_reject_unknown_keys(providers: dict[str, Provider], tmp_path: Path) -> None:
    for name in ("together", "fireworks", "bedrock", "runpod", "openai"):
        options = type(providers[name]).Options  # type: ignore[attr-defined]  # hosted adapters declare Options; the Provider protocol does not
        with pytest.raises(ValueError, match="no_such_option"):
            options.model_validate({"no_such_option": 1})


@pytest.mark.parametrize(("name", "config", "message"), [
    ("Together", {"api_key": "x"}, "lowercase"),
    ("acme", {"api_key": "x"}, "unknown kind 'acme'"),
    ("fireworks", {"api_key": "x"}, "provider 'fireworks' (fireworks): account_id: Field required"),
    ("remote-x", {"api_key": "x"}, "provider 'remote-x' (openai_compatible): base_url: Field required"),
    ("together", {"api_key": "x", "apikey": "y"}, "apikey: Extra inputs are not permitted"),
])
def test_a_bad_provider_configuration_fails_at_start_naming_the_setting(name: str, config: dict, message: str) -> None:
    with pytest.raises(registry.ProviderConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.build(name, config)


def test_the_model_id_picks_where_a_job_runs(providers: dict[str, Provider]) -> None:
    catalogue = load_catalogue()
    catalogue["llama-8b"] = CatalogueEntry(id="llama-8b", provider="together", provider_model=MODELS["together"])
    hosted = {name: p for name, p in providers.items() if name != "local"}
    routes = registry.Providers(LocalProvider(catalogue, Path("models")), hosted, catalogue)  # type: ignore[arg-type]  # a dict of Provider where the registry wants HostedProvider
    assert routes.route("SmolLM2-135M-Instruct").name is None
    assert routes.route("ft:SmolLM2-135M-Instruct:default::abc").name is None
    together = routes.route(f"together/{MODELS['together']}")
    assert (together.name, together.model) == ("together", MODELS["together"])
    assert (routes.route("llama-8b").name, routes.route("llama-8b").model) == ("together", MODELS["together"])
    assert routes.route("remote-lab/SmolLM2-135M-Instruct").model == "SmolLM2-135M-Instruct"
    with pytest.raises(InvalidRequest, match="'remote-gone', which this server does not configure"):
        routes.route("remote-gone/x")
    assert "llama-8b" not in {m.id for m in routes.local.list_base_models()}


# Every hosted adapter against its recorded provider: the same questions, the same answers.


def test_cancel_ends_cancelled_never_failed(hosted: Fake) -> None:
    hosted.cancels()
    assert hosted.provider.cancel(hosted.remote).status in ("cancelling", "cancelled")
    ended = hosted.provider.get(hosted.remote)
    assert (ended.status, ended.error) == ("cancelled", None)


def test_a_failure_keeps_the_providers_reason(hosted: Fake) -> None:
    hosted.answers("failed")
    failed = hosted.provider.get(hosted.remote)
    code, phrase = hosted.failure
    assert failed.status == "failed" and failed.model is None
    assert failed.error is not None and failed.error.code == code and phrase in failed.error.message


def test_a_status_nobody_has_seen_is_unknown_and_kept(hosted: Fake) -> None:
    hosted.answers("unknown")
    state = hosted.provider.get(hosted.remote)
    assert state.status == "unknown" and state.error is None
    assert state.provider_status not in ("", None) and state.provider_status in json.dumps(state.raw)


def test_a_running_job_is_running(hosted: Fake) -> None:
    hosted.answers("running")
    state = hosted.provider.get(hosted.remote)
    assert (state.status, state.model, state.error) == ("running", None, None)


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (429, True), (400, False)])
def test_a_refusal_is_a_provider_error_with_the_providers_message(hosted: Fake, status: int, retryable: bool) -> None:
    message = hosted.refuses(status)
    with pytest.raises(ProviderError) as raised:
        hosted.provider.get(hosted.remote)
    assert (raised.value.retryable, raised.value.status) == (retryable, status)
    assert message in raised.value.message and f"answered {status}" in raised.value.message
    assert hosted.requests() in (None, 1)  # the client's own retries are off: the worker backs off


def test_no_answer_is_worth_retrying(hosted: Fake) -> None:
    hosted.unreachable()
    with pytest.raises(ProviderError, match="could not be reached") as raised:
        hosted.provider.get(hosted.remote)
    assert raised.value.retryable and raised.value.status is None


def test_an_answer_that_is_not_json_is_a_provider_error_naming_the_provider(hosted: Fake) -> None:
    if not hosted.garbles():
        pytest.skip("botocore's Stubber answers parsed objects only")
    with pytest.raises(ProviderError, match="not JSON|not a JSON object") as raised:
        hosted.provider.get(hosted.remote)
    assert raised.value.status_code == 502 and raised.value.retryable
    assert hosted.provider.name in raised.value.message.lower() and "Bad Gateway" in raised.value.message


def test_capabilities_are_the_operations_the_adapter_has(hosted: Fake) -> None:
    capabilities = hosted.provider.capabilities()
    assert {flag: getattr(capabilities, flag) for flag in OPERATIONS} == hosted.operations
    for flag, protocol in OPERATIONS.items():
        assert isinstance(hosted.provider, protocol) == hosted.operations[flag]
        if not hosted.operations[flag]:  # what it lacks, it explains in its own words
            assert lacking(hosted.provider, flag).message != f"{hosted.name} has no {flag} operation."
