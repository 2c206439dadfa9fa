"""Who may set which hosted provider option: a tenant sets training knobs and names only its own jobs and models at
the provider; what reaches the shared account (repositories, keys, networks, code) is the operator's, set in the
provider's configuration. Planned through ProviderService, as the dry run and job creation do, on a real database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa

from ftserve.catalogue import load_catalogue
from ftserve.domain.errors import InvalidRequest
from ftserve.domain.jobs import Job, JobStatus
from ftserve.providers import registry
from ftserve.providers.contract import ProviderError
from ftserve.providers.local import LocalProvider
from ftserve.services.providers import ProviderService
from ftserve.store import jobs as job_rows
from ftserve.store import models as model_rows
from ftserve.store.database import create_engine, migrate
from tests.conftest import Databases
from tests.unit.provider_fakes import PlanningBlobs, PlanningFiles
from tests.unit.test_providers_contract import CONFIGS, MODELS

TOGETHER_API = "https://api.together.test"
CONFIGURED = {**CONFIGS, "together": {"api_key": "tg-test", "base_url": TOGETHER_API, "hf_api_token": "hf-operator"}}
# Each example of an option that reaches the shared account, as a tenant might send it.
OPERATORS = [
    ("together", {"hf_output_repo_name": "someone/their-repo"}, "hf_output_repo_name"),
    ("together", {"from_hf_model": "someone/private-model"}, "from_hf_model"),
    ("fireworks", {"region": "EU_ICELAND_2"}, "region"),
    ("bedrock", {"vpc_config": {"subnet_ids": ["subnet-1"], "security_group_ids": ["sg-1"]}}, "vpc_config"),
    ("bedrock", {"custom_model_kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/k"}, "custom_model_kms_key_id"),
    ("bedrock", {"job_tags": {"team": "admin"}}, "job_tags"),
    ("runpod", {"hub_model_id": "someone/their-repo"}, "hub_model_id"),
    ("runpod", {"axolotl": {"trust_remote_code": True}}, "axolotl.trust_remote_code"),
    ("runpod", {"axolotl": {"plugins": ["evil.plugin.Plugin"]}}, "axolotl.plugins"),
    ("runpod", {"axolotl": {"weight_decay": 0.1, "chat_template_jinja": "{{ x }}"}}, "axolotl.chat_template_jinja"),
]




@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[sa.Engine]:
    url = databases.new() or f"sqlite:///{tmp_path_factory.mktemp('db') / 'ftserve.db'}"
    made = create_engine(url)
    migrate(made)
    with made.begin() as conn:  # each project's work at the providers, as the worker records it
        for project, tenant in (("alpha", "a"), ("beta", "b")):
            job_rows.insert(conn, replace(stored_job(f"ftjob-{tenant}1", project, "together", {}),
                                          remote={"id": f"ft-{tenant}1", "model": f"acme/{tenant}-model"}),
                            request_hash=None, idempotency_key=None)
            job_rows.insert(conn, stored_job(f"ftjob-{tenant}2", project, "fireworks", {}),
                            request_hash=None, idempotency_key=None)
            model_rows.add_model(conn, f"ft:{tenant}", project, f"ftjob-{tenant}2", MODELS["fireworks"], 1, None,
                                 provider="fireworks", remote_model=f"accounts/acme/models/{tenant}-lora")
    yield made
    made.dispose()


def service(tmp_path: Path, engine: sa.Engine | None, configs: dict[str, dict[str, Any]] = CONFIGURED) -> ProviderService:
    catalogue = load_catalogue()
    (tmp_path / "files").mkdir(exist_ok=True)
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "files" / "file-train.jsonl").write_text((json.dumps(row) + "\n") * 8)
    hosted = {name: registry.build(name, config) for name, config in configs.items()}
    options = {name: registry.operator_options(name, config) for name, config in configs.items()}
    routes = registry.Providers(LocalProvider(catalogue, tmp_path / "models"), hosted, catalogue, options)
    return ProviderService(routes, PlanningFiles(), PlanningBlobs(tmp_path), engine)  # type: ignore[arg-type]  # the two calls job_request makes


def stored_job(job_id: str, project: str, provider: str, options: dict[str, Any], **ftserve: Any) -> Job:
    extensions = {**ftserve, "provider_options": {registry.kind_of(provider, CONFIGS[provider]): options}}
    return Job(
        id=job_id, project=project, created_at=1, model=f"{provider}/{MODELS[provider]}", training_file="file-train",
        validation_file=None, status=JobStatus.VALIDATING_FILES, method="supervised", hyperparameters={"n_epochs": 2},
        method_config={}, seed=3, suffix=None, metadata=None, integrations=None,
        extensions=extensions if options or ftserve else {}, output_model="ft:x", provider=provider,
    )


def planned(plans: ProviderService, job: Job) -> dict[str, Any]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False):  # a dry run of these asks no provider
        native: dict[str, Any] = plans.check(job, {"model", "training_file"}).resolved.native
    return native


@pytest.mark.parametrize(("provider", "options", "key"), OPERATORS, ids=[example[2] for example in OPERATORS])
def test_a_tenant_cannot_set_what_reaches_the_shared_account(
        provider: str, options: dict[str, Any], key: str, tmp_path: Path, engine: sa.Engine) -> None:
    plans = service(tmp_path, engine)
    job = stored_job("ftjob-new", "alpha", provider, options)
    for attempt in (plans.plan, lambda job: plans.check(job, {"model", "training_file"})):
        with pytest.raises(InvalidRequest) as refused:
            attempt(job)
        where = f"ftserve.provider_options.{provider}.{key}"
        assert refused.value.param == where and refused.value.status_code == 400
        assert refused.value.message.startswith(f"{where} is an operator setting")


@pytest.mark.parametrize(("provider", "key", "own", "others"), [
    ("together", "from_checkpoint", "ft-a1", "ft-b1"),
    ("together", "from_checkpoint", "ft-a1:10", "ft-b1:10"),
    ("together", "from_checkpoint", "acme/a-model", "acme/b-model"),
    ("fireworks", "warm_start_from", "accounts/acme/models/a-lora", "accounts/acme/models/b-lora"),
])
def test_a_tenant_names_only_its_own_jobs_and_models_at_the_provider(
        provider: str, key: str, own: str, others: str, tmp_path: Path, engine: sa.Engine) -> None:
    plans = service(tmp_path, engine)
    assert planned(plans, stored_job("ftjob-new", "alpha", provider, {key: own}))[key] == own

    messages = set()
    for value in (others, others.replace("b", "z")):  # beta's, and one nobody has: told apart by nothing
        with pytest.raises(InvalidRequest) as refused:
            plans.plan(stored_job("ftjob-new", "alpha", provider, {key: value}))
        assert refused.value.param == f"ftserve.provider_options.{provider}.{key}"
        messages.add(refused.value.message.replace(value, "<id>"))
    assert len(messages) == 1 and "this project made" in messages.pop()

    with pytest.raises(InvalidRequest):  # what alpha made is not beta's to name
        service(tmp_path, engine).plan(stored_job("ftjob-new", "beta", provider, {key: own}))


def test_without_a_database_no_option_may_name_a_resource(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="this project made"):
        service(tmp_path, None).plan(stored_job("ftjob-new", "alpha", "together", {"from_checkpoint": "ft-a1"}))


def test_training_knobs_stay_the_tenants(tmp_path: Path, engine: sa.Engine) -> None:
    plans = service(tmp_path, engine)
    together = planned(plans, stored_job("ftjob-new", "alpha", "together", {"n_checkpoints": 3, "weight_decay": 0.1}))
    assert (together["n_checkpoints"], together["weight_decay"]) == (3, 0.1)
    runpod = planned(plans, stored_job("ftjob-new", "alpha", "runpod", {
        "micro_batch_size": 2, "axolotl": {"weight_decay": 0.01, "gradient_checkpointing": True}}))
    args = runpod["input"]["args"]
    assert (args["micro_batch_size"], args["weight_decay"], args["gradient_checkpointing"]) == (2, 0.01, True)
    bedrock = planned(plans, stored_job("ftjob-new", "alpha", "bedrock", {"customization_type": "FINE_TUNING"}))
    assert bedrock["customizationType"] == "FINE_TUNING"


def test_the_operators_options_apply_to_every_job_under_the_tenants(tmp_path: Path, engine: sa.Engine) -> None:
    configs = {
        **CONFIGURED,
        "together": {**CONFIGURED["together"], "options": {"hf_output_repo_name": "acme/finetunes", "n_checkpoints": 2}},
        "runpod": {**CONFIGS["runpod"], "options": {"hub_model_id": "acme/runs",
                                                    "axolotl": {"trust_remote_code": True, "weight_decay": 0.0}}},
        "bedrock": {**CONFIGS["bedrock"], "options": {"custom_model_kms_key_id": "arn:aws:kms:us-east-1:1:key/k"}},
    }
    plans = service(tmp_path, engine, configs)
    together = planned(plans, stored_job("ftjob-new", "alpha", "together", {"n_checkpoints": 5}))
    assert (together["hf_output_repo_name"], together["n_checkpoints"]) == ("acme/finetunes", 5)
    args = planned(plans, stored_job("ftjob-new", "alpha", "runpod", {"axolotl": {"weight_decay": 0.1}}))["input"]["args"]
    assert (args["hub_model_id"], args["trust_remote_code"], args["weight_decay"]) == ("acme/runs", True, 0.1)
    bedrock = planned(plans, stored_job("ftjob-new", "alpha", "bedrock", {}))
    assert bedrock["customModelKmsKeyId"] == "arn:aws:kms:us-east-1:1:key/k"
    # The operator's choice is still not the tenant's to override.
    with pytest.raises(InvalidRequest, match="operator setting"):
        plans.plan(stored_job("ftjob-new", "alpha", "together", {"hf_output_repo_name": "someone/else"}))


def test_an_operator_option_that_is_not_one_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(registry.ProviderConfigError, match="provider 'together' .together.: options.hf_output_repo"):
        registry.operator_options("together", {"api_key": "k", "options": {"hf_output_repo": "typo"}})


def test_a_provider_answer_that_is_not_json_is_a_502_on_the_dry_run(tmp_path: Path, engine: sa.Engine) -> None:
    plans = service(tmp_path, engine)
    job = stored_job("ftjob-new", "alpha", "together", {}, lora_dropout=0.1)  # the plan asks the model's LoRA rank
    with respx.mock(base_url=TOGETHER_API, assert_all_mocked=True) as api:
        api.get(path__startswith="/v1/fine-tunes/models/limits").mock(return_value=httpx.Response(
            200, text="<html><body>502 Bad Gateway</body></html>", headers={"content-type": "text/html"}))
        with pytest.raises(ProviderError) as failed:
            plans.plan(job)
    assert failed.value.status_code == 502 and failed.value.message.startswith("together answered 200")
    assert "not a JSON object" in failed.value.message and "Bad Gateway" in failed.value.message
