"""Reinforcement jobs on hosted providers: an OpenAI-compatible one gets the grader as sent; Together, Fireworks,
Bedrock and RunPod, which cannot run OpenAI graders, refuse the job in the dry run and at create, saying why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import respx

from ftserve.catalogue import load_catalogue
from ftserve.domain.errors import InvalidRequest
from ftserve.domain.jobs import Job, JobStatus
from ftserve.providers import registry
from ftserve.providers.contract import JobRequest, Provider, ProviderUnsupported, Staged
from ftserve.providers.local import LocalProvider
from ftserve.providers.openai_compatible_api import OpenAICompatibleConnection, OpenAICompatibleProvider
from ftserve.services.providers import ProviderService
from tests.unit.provider_fakes import PlanningBlobs, PlanningFiles
from tests.unit.test_providers_contract import CONFIGS, MODELS

GRADER = {
    "type": "multi", "name": "answer",
    "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "operation": "eq"},
        "close": {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"},
    },
    "calculate_output": "0.7 * exact + 0.3 * close",
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto", "reasoning_effort": "low",
                   "compute_multiplier": "auto", "eval_interval": 5, "eval_samples": 2}
REFUSING = {  # each provider that cannot run OpenAI graders, and the reason it gives
    "together": "SFT and DPO only",
    "fireworks": "evaluator resource of its own",
    "bedrock": "AWS Lambda function",
    "runpod": "Python functions installed in its image",
}


@pytest.fixture(scope="module")
def providers() -> dict[str, Provider]:
    return {name: registry.build(name, config) for name, config in CONFIGS.items()}


def rft_job(tmp_path: Path, model: str) -> JobRequest:
    rows = [{"messages": [{"role": "user", "content": f"Capital of country {i}?"}], "answer": f"City {i}"}
            for i in range(8)]
    training = tmp_path / "prompts.jsonl"
    training.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return JobRequest(
        job_id="ftjob-rft1", model=model, method="reinforcement", hyperparameters=dict(HYPERPARAMETERS),
        method_config={"grader": GRADER, "response_format": RESPONSE_FORMAT}, training_file=training,
        training_examples=len(rows), seed=3, suffix="capitals",
    )


@pytest.mark.parametrize("name", ["openai", "remote-lab"])
def test_an_openai_compatible_provider_gets_the_grader_and_hyperparameters_as_sent(
    name: str, providers: dict[str, Provider], tmp_path: Path,
) -> None:
    assert "reinforcement" in providers[name].capabilities().methods
    resolved = providers[name].resolve(rft_job(tmp_path, MODELS[name]))
    assert resolved.native["method"] == {"type": "reinforcement", "reinforcement": {
        "hyperparameters": HYPERPARAMETERS, "grader": GRADER, "response_format": RESPONSE_FORMAT}}
    assert resolved.dropped == []


def test_submit_sends_the_grader_in_the_create_request(tmp_path: Path) -> None:
    created = {"id": "ftjob-remote", "object": "fine_tuning.job", "status": "validating_files", "created_at": 1,
               "model": MODELS["openai"], "fine_tuned_model": None, "trained_tokens": None,
               "estimated_finish": None, "error": None}
    connection = OpenAICompatibleConnection(base_url="https://api.openai.com/v1", api_key="sk-test")
    # The SDK's own transport is not httpx's, which respx intercepts: hand it an httpx client.
    client = openai.OpenAI(base_url=connection.base_url, api_key=connection.api_key, max_retries=0,
                           http_client=httpx.Client())  # type: ignore[arg-type]  # httpx's, which respx patches
    provider = OpenAICompatibleProvider("openai", connection, client=client)
    with respx.mock(base_url="https://api.openai.com/v1", assert_all_mocked=True) as api:
        api.get("/fine_tuning/jobs").respond(json={"object": "list", "data": [], "has_more": False})
        create = api.post("/fine_tuning/jobs").respond(json=created)
        remote = provider.submit(rft_job(tmp_path, MODELS["openai"]), Staged("file-prompts"))
    assert remote.id == "ftjob-remote"
    sent = json.loads(create.calls.last.request.content)
    assert sent["method"] == {"type": "reinforcement", "reinforcement": {
        "hyperparameters": HYPERPARAMETERS, "grader": GRADER, "response_format": RESPONSE_FORMAT}}
    assert sent["training_file"] == "file-prompts" and sent["model"] == MODELS["openai"]


@pytest.mark.parametrize("name", list(REFUSING))
def test_providers_without_openai_graders_refuse_reinforcement_against_method_saying_why(
    name: str, providers: dict[str, Provider], tmp_path: Path,
) -> None:
    assert "reinforcement" not in providers[name].capabilities().methods
    with respx.mock(assert_all_mocked=True, assert_all_called=False):  # refused before any network call
        with pytest.raises(ProviderUnsupported) as refused:
            providers[name].resolve(rft_job(tmp_path, MODELS[name]))
    assert refused.value.param == "method"
    assert REFUSING[name] in refused.value.message
    assert "this server's engine, or an openai_compatible provider" in refused.value.message


# The dry run (POST /v1/ftserve/fine_tuning/resolve) and create both plan the job through ProviderService.




def service(providers: dict[str, Provider], tmp_path: Path) -> ProviderService:
    catalogue = load_catalogue()
    routes = registry.Providers(LocalProvider(catalogue, tmp_path / "models"), providers, catalogue)  # type: ignore[arg-type]  # the hosted ones, typed as Provider
    return ProviderService(routes, PlanningFiles(), PlanningBlobs(tmp_path))  # type: ignore[arg-type]  # the two calls job_request makes


def stored_job(tmp_path: Path, provider: str) -> Job:
    (tmp_path / "files").mkdir(exist_ok=True)
    rft_job(tmp_path, "x").training_file.rename(tmp_path / "files" / "file-prompts.jsonl")
    return Job(
        id="ftjob-rft1", project="default", created_at=1, model=f"{provider}/{MODELS[provider]}",
        training_file="file-prompts", validation_file=None, status=JobStatus.VALIDATING_FILES,
        method="reinforcement", hyperparameters=dict(HYPERPARAMETERS),
        method_config={"grader": GRADER, "response_format": RESPONSE_FORMAT}, seed=3, suffix=None, metadata=None,
        integrations=None, extensions={}, output_model="ft:x", provider=provider,
    )


@pytest.mark.parametrize("name", list(REFUSING))
def test_the_dry_run_and_create_refuse_reinforcement_naming_the_provider_and_why(
    name: str, providers: dict[str, Provider], tmp_path: Path,
) -> None:
    plans = service(providers, tmp_path)
    job = stored_job(tmp_path, name)
    for attempt in (plans.plan, lambda job: plans.check(job, {"model", "training_file", "method"})):
        with pytest.raises(InvalidRequest) as refused:
            attempt(job)
        assert (refused.value.param, refused.value.code) == ("method", "unsupported_by_provider")
        assert REFUSING[name] in refused.value.message


def test_the_dry_run_of_an_openai_compatible_job_shows_the_grader(providers: dict[str, Provider], tmp_path: Path) -> None:
    plans = service(providers, tmp_path)
    job = stored_job(tmp_path, "openai")
    plan = plans.check(job, {"model", "training_file", "method", "seed"})
    native: dict[str, Any] = plan.resolved.native
    assert native["method"]["reinforcement"]["grader"] == GRADER and plan.route.name == "openai"
    assert plans.plan(job).estimate is not None
