"""The Bedrock adapter against recorded responses: Bedrock through botocore's Stubber, S3 through moto.

Every recording is checked against the operation's output shape in botocore's own service model and
parsed by botocore's rest-json parser (timestamps become datetimes, as a live client returns them),
so a recording that drifts from the SDK's shape fails here.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.parsers import create_parser
from botocore.stub import Stubber
from moto import mock_aws

from tests.unit.provider_fakes import BEDROCK as SERVICE
from tests.unit.provider_fakes import bedrock_answer as recorded
from tests.unit.provider_fakes import output_shape as _output_shape

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.bedrock_api import STATUSES, BedrockConnection, BedrockProvider
from ftserve.providers.bedrock_families import FAMILIES
from ftserve.providers.contract import (
    Change,
    HostedProvider,
    JobRequest,
    ProviderUnsupported,
    RemoteStatus,
    Resumable,
    Staged,
    lacking,
)

RECORDINGS = Path(__file__).parent.parent / "recordings" / "bedrock"
BUCKET = "ftserve-test-bucket"
ROLE = "arn:aws:iam::123456789012:role/BedrockFineTuning"
JOB_ID = "ftjob-abc123"
JOB_NAME = "ftserve-ftjob-abc123"
JOB_ARN = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/amazon.nova-micro-v1:0:128k/q7m2x9k4p1za"
MODEL_ARN = "arn:aws:bedrock:us-east-1:123456789012:custom-model/amazon.nova-micro-v1:0:128k/h3v8c1n6t0wd"
NOVA = "amazon.nova-micro-v1:0:128k"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@dataclass
class Aws:
    bedrock: Any
    stub: Stubber
    s3: Any

    def respond(self, method: str, name: str, **expected: Any) -> None:
        self.stub.add_response(method, recorded(self.bedrock, method, name), expected or None)

    def fail(self, method: str, name: str, **expected: Any) -> None:
        """A recorded error response, parsed from the wire as botocore parses it."""
        wire = json.loads((RECORDINGS / f"{name}.json").read_text())
        parsed = create_parser("rest-json").parse({
            "status_code": wire["status_code"],
            "headers": {key.lower(): value for key, value in wire["headers"].items()},
            "body": json.dumps(wire["body"]).encode(),
        }, _output_shape(self.bedrock, method))
        self.stub.add_client_error(method, service_error_code=parsed["Error"]["Code"],
                                   service_message=parsed["Error"]["Message"],
                                   http_status_code=wire["status_code"], expected_params=expected or None)


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """One moto S3 for the module: staged keys are content hashes, so tests cannot disturb each other."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def aws(s3: Any) -> Iterator[Aws]:
    bedrock = boto3.client("bedrock", region_name="us-east-1")
    with Stubber(bedrock) as stub:
        yield Aws(bedrock, stub, s3)
        stub.assert_no_pending_responses()


@pytest.fixture
def provider(aws: Aws) -> BedrockProvider:
    connection = BedrockConnection(region="us-east-1", role_arn=ROLE, s3_bucket=BUCKET)
    return BedrockProvider("bedrock", connection, client=aws.bedrock, s3=aws.s3)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def job(tmp_path: Path, **fields: Any) -> JobRequest:
    values: dict[str, Any] = {
        "job_id": JOB_ID, "model": NOVA, "method": "supervised",
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "training_examples": 2, **fields,
    }
    values.setdefault("training_file", _jsonl(tmp_path / "chat.jsonl", [CHAT, CHAT]))
    return JobRequest(**values)


def representative(tmp_path: Path, **fields: Any) -> JobRequest:
    return job(tmp_path, hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2, "batch_size": 8},
               seed=7, suffix="support-bot", options={"lora_rank": 8}, **fields)


def _s3_body(aws: Aws, uri: str) -> str:
    key = uri.removeprefix(f"s3://{BUCKET}/")
    return aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


# -- the recorded lifecycle ---------------------------------------------------------------------


def test_lifecycle_stages_converse_data_submits_the_resolved_request_and_reports_the_model(
        provider: BedrockProvider, aws: Aws, tmp_path: Path) -> None:
    assert isinstance(provider, HostedProvider)
    system_chat = {"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                {"role": "assistant", "content": "hello"}]}
    request = job(tmp_path, training_file=_jsonl(tmp_path / "train.jsonl", [system_chat]), training_examples=1,
                  validation_file=_jsonl(tmp_path / "valid.jsonl", [CHAT]), validation_examples=1)
    puts: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        puts.append(params["Key"])

    aws.s3.meta.events.register("before-parameter-build.s3.PutObject", count, unique_id="count-puts")
    try:
        staged = provider.stage_data(request)
        assert provider.stage_data(request) == staged  # content-addressed: the second staging uploads nothing
    finally:
        aws.s3.meta.events.unregister("before-parameter-build.s3.PutObject", unique_id="count-puts")
    assert len(puts) == 2  # the training and the validation file, once each

    body = _s3_body(aws, staged.training)
    assert json.loads(body) == {
        "schemaVersion": "bedrock-conversation-2024", "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "hi"}]},
                     {"role": "assistant", "content": [{"text": "hello"}]}],
    }
    assert staged.training == f"s3://{BUCKET}/ftserve/{hashlib.sha256(body.encode()).hexdigest()}.jsonl"
    assert staged.validation is not None and staged.validation.startswith(f"s3://{BUCKET}/ftserve/")

    native = provider.resolve(request, staged).native
    assert native["trainingDataConfig"] == {"s3Uri": staged.training}
    assert native["validationDataConfig"] == {"validators": [{"s3Uri": staged.validation}]}
    aws.fail("get_model_customization_job", "error_not_found", jobIdentifier=JOB_NAME)
    aws.respond("create_model_customization_job", "create_model_customization_job", **native)
    aws.respond("get_model_customization_job", "get_job_validating", jobIdentifier=JOB_ARN)
    submitted = provider.submit(request, staged)
    assert (submitted.id, submitted.status, submitted.provider_status) == (JOB_ARN, "validating_files", "InProgress")

    aws.respond("get_model_customization_job", "get_job_in_progress", jobIdentifier=JOB_ARN)
    running = provider.get(JOB_ARN)
    assert (running.status, running.model) == ("running", None)

    aws.respond("get_model_customization_job", "get_job_completed", jobIdentifier=JOB_ARN)
    done = provider.get(JOB_ARN)
    assert (done.status, done.provider_status, done.model, done.serving) == (
        "succeeded", "Completed", MODEL_ARN, "needs_deployment")
    assert done.raw["trainingMetrics"] == {"trainingLoss": 0.4183}
    assert done.raw["endTime"] == "2026-11-21T11:05:00+00:00"
    json.dumps(done.raw)  # storable as it is

    assert not provider.capabilities().cost_estimate
    assert not isinstance(provider, Resumable)
    for operation in ("events", "checkpoints", "pause"):
        assert lacking(provider, operation).message.startswith("Bedrock has no")


def test_deploy_is_an_on_demand_custom_model_deployment(provider: BedrockProvider, aws: Aws) -> None:
    aws.respond("create_custom_model_deployment", "create_custom_model_deployment",
                modelDeploymentName="ftserve-h3v8c1n6t0wd", modelArn=MODEL_ARN, clientRequestToken="ftserve-h3v8c1n6t0wd")
    deployment_arn = "arn:aws:bedrock:us-east-1:123456789012:custom-model-deployment/r4t9y2u7i1o3"
    aws.respond("get_custom_model_deployment", "get_custom_model_deployment",
                customModelDeploymentIdentifier=deployment_arn)
    deployment = provider.deploy(MODEL_ARN)
    assert (deployment.id, deployment.model, deployment.status) == (deployment_arn, deployment_arn, "Creating")


def test_list_and_base_models(provider: BedrockProvider, aws: Aws) -> None:
    aws.respond("list_model_customization_jobs", "list_model_customization_jobs",
                maxResults=5, sortBy="CreationTime", sortOrder="Descending")
    jobs = provider.list(limit=5)
    assert [(j.status, j.model) for j in jobs] == [("succeeded", MODEL_ARN), ("cancelled", None)]

    aws.respond("list_foundation_models", "list_foundation_models", byCustomizationType="FINE_TUNING")
    models = [m.id for m in provider.list_base_models()]
    # The embeddings model is fine-tunable on Bedrock, but not from chat data.
    assert models == [NOVA, "anthropic.claude-3-haiku-20240307-v1:0:200k", "meta.llama3-1-8b-instruct-v1:0:128k"]


# -- cancel, failure, unknown statuses ------------------------------------------------------------


def test_every_status_botocore_declares_maps_to_exactly_one_normalised_status() -> None:
    declared = SERVICE.shape_for("ModelCustomizationJobStatus").enum
    assert sorted(STATUSES) == sorted(declared)
    assert sorted(SERVICE.shape_for("FineTuningJobStatus").enum) == sorted(declared)  # the list filter's enum
    assert set(STATUSES.values()) <= set(typing.get_args(RemoteStatus))
    assert STATUSES["Stopped"] == "cancelled" and STATUSES["Stopping"] == "cancelling"


# -- resolve ----------------------------------------------------------------------------------


def test_resolve_a_representative_nova_job(provider: BedrockProvider, tmp_path: Path) -> None:
    request = representative(tmp_path)
    resolved = provider.resolve(request)
    assert resolved.provider == "bedrock"
    assert resolved.native == {
        "jobName": JOB_NAME,
        "customModelName": "support-bot-ftjob-abc123",
        "roleArn": ROLE,
        "clientRequestToken": JOB_NAME,
        "baseModelIdentifier": NOVA,
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": "<training_file>"},
        "outputDataConfig": {"s3Uri": f"s3://{BUCKET}/ftserve/output/{JOB_ID}/"},
        "hyperParameters": {"epochCount": "3", "learningRate": "2e-05"},
    }
    assert [(c.field, c.native, c.native_value) for c in resolved.converted] == [
        ("training_file", "trainingDataConfig.s3Uri", "<training_file>"),
        ("hyperparameters.n_epochs", "hyperParameters.epochCount", "3"),
        ("hyperparameters.learning_rate_multiplier", "hyperParameters.learningRate", "2e-05"),
        ("suffix", "customModelName", "support-bot-ftjob-abc123"),
    ]
    assert "default 1e-05" in resolved.converted[2].reason
    assert [(c.field, c.value, c.native) for c in resolved.dropped] == [
        ("hyperparameters.batch_size", 8, None), ("ftserve.lora_rank", 8, None), ("seed", 7, None)]


def test_resolve_claude_takes_the_multiplier_and_a_batch_size(provider: BedrockProvider, tmp_path: Path) -> None:
    request = representative(tmp_path, model="anthropic.claude-3-haiku-20240307-v1:0:200k",
                             metadata={"team": "support"}, provider_options={"early_stopping_patience": 3})
    resolved = provider.resolve(request)
    assert resolved.native["hyperParameters"] == {
        "epochCount": "3", "batchSize": "8", "learningRateMultiplier": "2", "earlyStoppingPatience": "3"}
    assert resolved.native["jobTags"] == [{"key": "team", "value": "support"}]
    assert Change("metadata", {"team": "support"}, "jobTags", [{"key": "team", "value": "support"}],
                  "Bedrock keeps a job's metadata as tags") in resolved.converted
    assert [c.field for c in resolved.dropped] == ["ftserve.lora_rank", "seed"]


def test_resolve_converts_warmup_ratio_to_steps_where_the_batch_is_known(provider: BedrockProvider,
                                                                          tmp_path: Path) -> None:
    request = job(tmp_path, model="amazon.titan-text-express-v1:0:8k", training_examples=100,
                  hyperparameters={"n_epochs": 2, "batch_size": 4}, options={"warmup_ratio": 0.1})
    resolved = provider.resolve(request)
    # 100 examples / batch 4 = 25 steps an epoch, x 2 epochs = 50 steps; a tenth of them warms up.
    assert resolved.native["hyperParameters"]["learningRateWarmupSteps"] == "5"
    nova = provider.resolve(job(tmp_path, options={"warmup_ratio": 0.1}))
    assert "hyperParameters" not in nova.native
    assert [c.field for c in nova.dropped] == ["ftserve.warmup_ratio"]
    assert "learning_rate_warmup_steps" in nova.dropped[0].reason


def test_resolve_refuses_what_bedrock_cannot_run(provider: BedrockProvider, tmp_path: Path) -> None:
    with pytest.raises(ProviderUnsupported, match="DPO"):
        provider.resolve(job(tmp_path, method="dpo"))
    with pytest.raises(ProviderUnsupported, match="Lambda"):
        provider.resolve(job(tmp_path, method="reinforcement"))
    with pytest.raises(InvalidRequest, match="amazon.nova-") as unknown:
        provider.resolve(job(tmp_path, model="mistral.mistral-7b-instruct-v0:2"))
    assert unknown.value.param == "model"
    with pytest.raises(InvalidRequest, match="packing") as options:
        provider.resolve(job(tmp_path, provider_options={"packing": True}))
    assert options.value.param == "ftserve.provider_options.bedrock.packing"
    with pytest.raises(InvalidRequest, match="takes no earlyStoppingPatience"):
        provider.resolve(job(tmp_path, provider_options={"early_stopping_patience": 2}))
    with pytest.raises(InvalidRequest, match="warmup_ratio and provider_options.bedrock.learning_rate_warmup_steps"):
        provider.resolve(job(tmp_path, options={"warmup_ratio": 0.1},
                             provider_options={"learning_rate_warmup_steps": 5}))
    with pytest.raises(InvalidRequest, match="team"):
        provider.resolve(job(tmp_path, metadata={"team": "a"}, provider_options={"job_tags": {"team": "b"}}))


def test_prompt_completion_models_get_the_last_assistant_turn_as_completion(
        provider: BedrockProvider, aws: Aws, tmp_path: Path) -> None:
    two_turns = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"},
                              {"role": "assistant", "content": "hello again"}]}
    request = job(tmp_path, model="meta.llama3-1-8b-instruct-v1:0:128k",
                  training_file=_jsonl(tmp_path / "train.jsonl", [CHAT, two_turns]))
    rows = [json.loads(line) for line in _s3_body(aws, provider.stage_data(request).training).splitlines()]
    assert rows == [
        {"prompt": "hi", "completion": "hello"},
        {"prompt": "System: Be brief.\n\nUser: hi\n\nAssistant: hello\n\nUser: again", "completion": "hello again"},
    ]
    assert "rendered into the prompt" in provider.resolve(request).converted[0].reason


def test_continued_pre_training_sends_the_text_of_each_row(provider: BedrockProvider, aws: Aws,
                                                           tmp_path: Path) -> None:
    request = job(tmp_path, model="amazon.titan-text-express-v1:0:8k",
                  provider_options={"customization_type": "CONTINUED_PRE_TRAINING"})
    assert provider.resolve(request).native["customizationType"] == "CONTINUED_PRE_TRAINING"
    rows = [json.loads(line) for line in _s3_body(aws, provider.stage_data(request).training).splitlines()]
    assert rows == [{"input": "User: hi\n\nAssistant: hello"}] * 2


def test_estimate_uses_bedrocks_default_epochs_and_gives_no_cost(provider: BedrockProvider, tmp_path: Path) -> None:
    estimate = provider.estimate(job(tmp_path))
    assert estimate.epochs == FAMILIES["amazon.nova-"].epochs == 2
    assert estimate.cost_usd is None
    assert estimate.trained_tokens == 2 * provider.estimate(job(tmp_path, hyperparameters={"n_epochs": 1})).trained_tokens


# -- idempotency and errors -----------------------------------------------------------------------


def test_submitting_the_same_job_twice_makes_one_bedrock_job(provider: BedrockProvider, aws: Aws,
                                                            tmp_path: Path) -> None:
    request = representative(tmp_path)
    staged = Staged(training=f"s3://{BUCKET}/ftserve/abc.jsonl")
    aws.fail("get_model_customization_job", "error_not_found", jobIdentifier=JOB_NAME)
    aws.respond("create_model_customization_job", "create_model_customization_job",
                **provider.resolve(request, staged).native)
    aws.respond("get_model_customization_job", "get_job_validating", jobIdentifier=JOB_ARN)
    aws.respond("get_model_customization_job", "get_job_in_progress", jobIdentifier=JOB_NAME)
    first = provider.submit(request, staged)
    second = provider.submit(request, staged)  # a second create would find no stubbed response and fail
    assert first.id == second.id == JOB_ARN

