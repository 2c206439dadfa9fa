"""Hosted provider options through the official SDK: what a tenant may set on a shared provider account.

One keyed server (projects alpha and beta, no worker: nothing is submitted) configures Together, Fireworks,
Bedrock and RunPod. Together's API is a stand-in that answers every request with a gateway's HTML page, so the
one dry run that asks Together something shows what a non-JSON answer becomes. What each project made at a
provider is written into the server's database as the worker records it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from ftserve.domain.jobs import Job, JobStatus
from ftserve.store import jobs as job_rows
from ftserve.store import models as model_rows
from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload
from tests.unit.test_providers_contract import CONFIGS, MODELS

ALPHA_KEY, BETA_KEY = "sk-alpha-hosted-0000", "sk-beta-hosted-00000"
RESOLVE = "/ftserve/fine_tuning/resolve"


class _Gateway(BaseHTTPRequestHandler):
    """A proxy in front of a provider that is down: 200 and an HTML page, whatever was asked."""

    def _page(self) -> None:
        body = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    providers = {
        "together": {"api_key": "tg-test", "base_url": f"http://127.0.0.1:{gateway.server_port}", "timeout_seconds": 5},
        "fireworks": CONFIGS["fireworks"],
        "bedrock": {**CONFIGS["bedrock"], "options": {"custom_model_kms_key_id": "arn:aws:kms:us-east-1:1:key/ops"}},
        "runpod": CONFIGS["runpod"],
    }
    settings = settings_for(tmp_path_factory.mktemp("hosted"), databases.new(), providers=providers,
                            api_keys=f"{ALPHA_KEY}=alpha,{BETA_KEY}=beta")
    with serving(settings, with_worker=False) as live:
        with live.runtime.engine.begin() as conn:
            for project, tenant in (("alpha", "a"), ("beta", "b")):
                job_rows.insert(conn, replace(_hosted_job(f"ftjob-{tenant}1", project, "together"),
                                              remote={"id": f"ft-{tenant}1", "status": "succeeded"}),
                                request_hash=None, idempotency_key=None)
                job_rows.insert(conn, _hosted_job(f"ftjob-{tenant}2", project, "fireworks"),
                                request_hash=None, idempotency_key=None)
                model_rows.add_model(conn, f"ft:hosted-{tenant}", project, f"ftjob-{tenant}2", MODELS["fireworks"], 1,
                                     None, provider="fireworks", remote_model=f"accounts/acme/models/{tenant}-lora")
        yield live
    gateway.shutdown()


def _hosted_job(job_id: str, project: str, provider: str) -> Job:
    return Job(id=job_id, project=project, created_at=1, model=f"{provider}/{MODELS[provider]}",
               training_file="file-gone", validation_file=None, status=JobStatus.SUCCEEDED, method="supervised",
               hyperparameters={}, method_config={}, seed=1, suffix=None, metadata=None, integrations=None,
               extensions={}, output_model=f"ft:{job_id}", provider=provider)


@pytest.fixture(scope="module")
def alpha(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=ALPHA_KEY, max_retries=0)


@pytest.fixture(scope="module")
def training(alpha: OpenAI) -> str:
    return upload(alpha, chat_jsonl(4))


def _body(training: str, provider: str, options: dict[str, Any], **ftserve: Any) -> dict[str, Any]:
    return {"model": f"{provider}/{MODELS[provider]}", "training_file": training,
            "ftserve": {**ftserve, "provider_options": {provider: options}}}


@pytest.mark.parametrize(("provider", "options", "key"), [
    ("together", {"hf_output_repo_name": "someone/their-repo"}, "hf_output_repo_name"),
    ("bedrock", {"vpc_config": {"subnet_ids": ["subnet-1"], "security_group_ids": ["sg-1"]}}, "vpc_config"),
    ("bedrock", {"custom_model_kms_key_id": "arn:aws:kms:us-east-1:2:key/theirs"}, "custom_model_kms_key_id"),
    ("runpod", {"hub_model_id": "someone/their-repo"}, "hub_model_id"),
    ("runpod", {"axolotl": {"trust_remote_code": True}}, "axolotl.trust_remote_code"),
    ("runpod", {"axolotl": {"plugins": ["evil.Plugin"]}}, "axolotl.plugins"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_operator_settings_are_refused_on_create_and_dry_run(
        alpha: OpenAI, training: str, provider: str, options: dict[str, Any], key: str) -> None:
    body = _body(training, provider, options)
    where = f"ftserve.provider_options.{provider}.{key}"
    before = len(alpha.fine_tuning.jobs.list(limit=100).data)
    for attempt in (lambda: alpha.post(RESOLVE, body=body, cast_to=object),
                    lambda: alpha.fine_tuning.jobs.create(model=body["model"], training_file=training,
                                                          extra_body={"ftserve": body["ftserve"]})):
        with pytest.raises(openai.BadRequestError) as refused:
            attempt()
        error = refused.value.body
        assert isinstance(error, dict) and error["param"] == where
        assert error["message"].startswith(f"{where} is an operator setting")
    assert len(alpha.fine_tuning.jobs.list(limit=100).data) == before


@pytest.mark.parametrize(("provider", "key", "own", "others"), [
    ("together", "from_checkpoint", "ft-a1:20", "ft-b1:20"),
    ("fireworks", "warm_start_from", "accounts/acme/models/a-lora", "accounts/acme/models/b-lora"),
])
def test_another_projects_work_is_refused_as_if_it_did_not_exist(
        alpha: OpenAI, training: str, provider: str, key: str, own: str, others: str) -> None:
    answers = []
    for value in (others, others.replace("b", "q")):  # beta's, then an id nobody has
        with pytest.raises(openai.BadRequestError) as refused:
            alpha.post(RESOLVE, body=_body(training, provider, {key: value}), cast_to=object)
        error = refused.value.body
        assert isinstance(error, dict)
        answers.append({**error, "message": error["message"].replace(value, "<id>")})
    assert answers[0] == answers[1] and answers[0]["param"] == f"ftserve.provider_options.{provider}.{key}"

    plan = alpha.post(RESOLVE, body=_body(training, provider, {key: own}), cast_to=object)
    assert isinstance(plan, dict) and plan["native"][key] == own
    created = alpha.fine_tuning.jobs.create(model=f"{provider}/{MODELS[provider]}", training_file=training,
                                            extra_body={"ftserve": {"provider_options": {provider: {key: own}}}})
    assert created.status == "validating_files"
    alpha.fine_tuning.jobs.cancel(created.id)


def test_training_knobs_and_the_operators_defaults_reach_the_native_request(alpha: OpenAI, training: str) -> None:
    plan = alpha.post(RESOLVE, body=_body(training, "runpod", {"micro_batch_size": 2, "axolotl": {
        "weight_decay": 0.01, "gradient_checkpointing": True}}), cast_to=object)
    assert isinstance(plan, dict)
    args = plan["native"]["input"]["args"]
    assert (args["micro_batch_size"], args["weight_decay"], args["gradient_checkpointing"]) == (2, 0.01, True)
    bedrock = alpha.post(RESOLVE, body=_body(training, "bedrock", {"customization_type": "FINE_TUNING"}), cast_to=object)
    assert isinstance(bedrock, dict)
    assert bedrock["native"]["customModelKmsKeyId"] == "arn:aws:kms:us-east-1:1:key/ops"


def test_a_provider_answer_that_is_not_json_is_a_502_naming_it(alpha: OpenAI, training: str) -> None:
    # A LoRA knob without a rank makes the dry run ask Together for the model's default rank.
    with pytest.raises(openai.APIStatusError) as failed:
        alpha.post(RESOLVE, body=_body(training, "together", {}, lora_dropout=0.1), cast_to=object)
    assert failed.value.status_code == 502
    error = failed.value.body
    assert isinstance(error, dict) and error["type"] == "server_error"
    assert error["message"].startswith("together answered 200") and "not a JSON object" in error["message"]
    assert "Bad Gateway" in error["message"]


def test_an_axolotl_key_a_common_field_sets_names_that_field(alpha: OpenAI, training: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        alpha.post(RESOLVE, body=_body(training, "runpod", {"axolotl": {"learning_rate": 0.1}}), cast_to=object)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "ftserve.provider_options.runpod.axolotl.learning_rate"
    assert "hyperparameters.learning_rate_multiplier" in error["message"]
