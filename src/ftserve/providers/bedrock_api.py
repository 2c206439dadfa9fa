"""Amazon Bedrock model customization, through boto3, with the job's data in S3.

Bedrock differs from OpenAI's shape in four ways this adapter translates:
- data is read from S3, in a format that depends on the base model: Amazon Nova and Claude 3 Haiku
  take Converse records (`bedrock-conversation-2024`); Llama, Titan Text and Cohere take
  `{"prompt", "completion"}`, so a chat row's last assistant message becomes the completion and the
  turns before it are rendered into the prompt as `User: ...` blocks;
- hyperparameters are a string-to-string map whose keys and defaults differ per model family
  (`FAMILIES`), and most families take an absolute learning rate where OpenAI sends a multiplier;
- there are no events, checkpoints or pause: a job is polled, and its metrics are in `raw`;
- the custom model is not callable until a deployment serves it (`deploy`, a separate billed step).

`submit` is idempotent on the job id twice over: the Bedrock job is named after it, and a job that
already has that name is returned instead of creating another; `clientRequestToken` is derived from
it too, which covers two submits racing past the name lookup.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from ftserve.domain.errors import InvalidRequest
from ftserve.providers import errors
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Change,
    Connection,
    Deployment,
    Estimate,
    JobRequest,
    Options,
    ProviderError,
    ProviderKind,
    ProviderUnsupported,
    RemoteError,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    map_status,
)
from ftserve.providers.plan import Mapped, Plan, dropped, epochs_of, options_of, text_estimate
from ftserve.providers.staging import Bucket, digest, stage

STATUSES: dict[str, RemoteStatus] = {
    "InProgress": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Stopping": "cancelling",
    "Stopped": "cancelled",
}
"""`ModelCustomizationJobStatus` of the botocore service model `bedrock` 2023-04-20."""

DataFormat = Literal["converse", "prompt_completion"]


@dataclass(frozen=True)
class Family:
    """One model family's hyperparameter keys and Bedrock's documented defaults for them
    (docs.aws.amazon.com/bedrock/latest/userguide/custom-models-hp.html)."""

    label: str
    data: DataFormat
    keys: frozenset[str]
    epochs: int
    learning_rate: float | None
    """The default absolute learning rate; None where the family takes `learningRateMultiplier`."""
    batch_size: int | None
    """The default batch size; None where Bedrock neither takes nor publishes one."""


def _keys(*names: str) -> frozenset[str]:
    return frozenset(("epochCount",) + names)


FAMILIES: dict[str, Family] = {
    "amazon.nova-": Family("Amazon Nova", "converse", _keys("learningRate", "learningRateWarmupSteps"),
                           epochs=2, learning_rate=1e-5, batch_size=None),
    "anthropic.claude-3-haiku": Family(
        "Claude 3 Haiku", "converse",
        _keys("batchSize", "learningRateMultiplier", "earlyStoppingThreshold", "earlyStoppingPatience"),
        epochs=2, learning_rate=None, batch_size=32),
    "meta.llama3": Family("Llama 3", "prompt_completion", _keys("batchSize", "learningRate"),
                          epochs=5, learning_rate=1e-4, batch_size=1),
    "meta.llama2": Family("Llama 2", "prompt_completion", _keys("batchSize", "learningRate"),
                          epochs=5, learning_rate=1e-4, batch_size=1),
    "amazon.titan-text-premier": Family(
        "Titan Text Premier", "prompt_completion", _keys("batchSize", "learningRate", "learningRateWarmupSteps"),
        epochs=2, learning_rate=1e-6, batch_size=1),
    "amazon.titan-text-": Family(
        "Titan Text", "prompt_completion", _keys("batchSize", "learningRate", "learningRateWarmupSteps"),
        epochs=5, learning_rate=1e-5, batch_size=1),
    "cohere.command": Family(
        "Cohere Command", "prompt_completion",
        _keys("batchSize", "learningRate", "earlyStoppingThreshold", "earlyStoppingPatience", "evalPercentage"),
        epochs=1, learning_rate=1e-5, batch_size=8),
}

_NO_LORA = "Bedrock exposes no LoRA settings"
# The caller's fields Bedrock has no knob for, and why; warmup_ratio becomes steps where it can.
UNSUPPORTED: dict[str, Mapped] = {
    "ftserve.training_type": dropped("Bedrock chooses the training technique itself"),
    "ftserve.lora_rank": dropped(_NO_LORA),
    "ftserve.lora_alpha": dropped(_NO_LORA),
    "ftserve.lora_dropout": dropped(_NO_LORA),
    "ftserve.max_seq_length": dropped(
        "the context length is fixed by the base model id (the :128k in amazon.nova-micro-v1:0:128k)"),
    "ftserve.eval_interval": dropped("Bedrock evaluates on its own schedule"),
    "ftserve.checkpoint_interval": dropped("Bedrock keeps no intermediate checkpoints"),
    "seed": dropped("Bedrock customization jobs take no seed"),
    "integrations": dropped("Bedrock has no Weights & Biases integration; its metrics land in the output S3 prefix"),
}

_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class BedrockConnection(Connection):
    region: str
    role_arn: str
    """The IAM role Bedrock assumes to read the training data and write the output in S3."""
    s3_bucket: str
    s3_prefix: str = "ftserve/"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    profile_name: str | None = None
    endpoint_url: str | None = None
    """An S3-compatible endpoint in place of AWS S3 (a test double); Bedrock itself is always AWS."""


class VpcConfig(Options):
    subnet_ids: list[str] = Field(min_length=1, max_length=16)
    security_group_ids: list[str] = Field(min_length=1, max_length=5)


class BedrockOptions(Options):
    customization_type: Literal["FINE_TUNING", "CONTINUED_PRE_TRAINING"] = "FINE_TUNING"
    vpc_config: VpcConfig | None = None
    custom_model_kms_key_id: str | None = None
    job_tags: dict[str, str] | None = None
    custom_model_tags: dict[str, str] | None = None
    learning_rate_warmup_steps: int | None = Field(None, ge=0)
    early_stopping_threshold: float | None = Field(None, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1)
    eval_percentage: float | None = Field(None, gt=0, lt=100)


# Options that become hyperParameters, by their Bedrock key.
_OPTION_KEYS = {
    "learning_rate_warmup_steps": "learningRateWarmupSteps",
    "early_stopping_threshold": "earlyStoppingThreshold",
    "early_stopping_patience": "earlyStoppingPatience",
    "eval_percentage": "evalPercentage",
}


class BedrockProvider:
    kind: ClassVar[ProviderKind] = "bedrock"
    Connection: ClassVar[type[BedrockConnection]] = BedrockConnection
    Options: ClassVar[type[BedrockOptions]] = BedrockOptions
    LACKS: ClassVar[dict[str, str]] = {
        "events": "Bedrock has no job events; poll the job, whose trainingMetrics and validationMetrics are in its "
                  "raw payload, or read EventBridge state changes.",
        "checkpoints": "Bedrock has no checkpoints; a job yields one custom model when it completes.",
        "pause": "Bedrock has no pause; a job can only be stopped (cancelled) for good.",
    }

    def __init__(self, name: str, connection: BedrockConnection, *, client: Any = None, s3: Any = None):
        self.name = name
        self.connection = connection
        self._bedrock = client
        self._s3 = s3
        self.bucket = Bucket(connection.s3_bucket, lambda operation, **params: self._call(self.s3, operation, **params))

    # -- what it can do ------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        # No training type to choose: Bedrock picks the technique, so neither lora nor full is offered.
        return capabilities_of(self, methods=("supervised",), training_types=(), data="s3",
                               serving="needs_deployment")

    def list_base_models(self) -> list[BaseModelInfo]:
        answer = self._call(self.bedrock, "list_foundation_models", byCustomizationType="FINE_TUNING")
        return [BaseModelInfo(id=summary["modelId"], methods=("supervised",))
                for summary in answer.get("modelSummaries", []) if _family_prefix(summary["modelId"])]

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        family = _family(request)
        options = options_of(request, BedrockOptions, self.kind)
        plan = Plan(request)
        training = staged.training if staged else "<training_file>"
        plan.put("jobName", _job_name(request.job_id))
        plan.put("customModelName", _model_name(request.suffix, request.job_id))
        plan.put("roleArn", self.connection.role_arn)
        plan.put("clientRequestToken", _job_name(request.job_id))
        plan.put("baseModelIdentifier", request.model)
        plan.put("customizationType", options.customization_type)
        plan.put("outputDataConfig", {"s3Uri": f"{self._s3_root()}output/{request.job_id}/"})
        layout = _layout_reason(family, options.customization_type)
        plan.put("trainingDataConfig", {"s3Uri": training})
        plan.converted.append(Change("training_file", str(request.training_file), "trainingDataConfig.s3Uri",
                                     training, layout))
        if request.validation_file is not None:
            validation = (staged.validation if staged else None) or "<validation_file>"
            plan.put("validationDataConfig", {"validators": [{"s3Uri": validation}]})
            plan.converted.append(Change("validation_file", str(request.validation_file),
                                         "validationDataConfig.validators.0.s3Uri", validation, layout))
        hyper = _hyperparameters(plan, family, options)
        if hyper:
            plan.put("hyperParameters", hyper)
        if request.suffix:
            plan.converted.append(Change("suffix", request.suffix, "customModelName", plan.native["customModelName"],
                                         "Bedrock names the custom model: the suffix leads the name, the job id "
                                         "keeps it unique"))
        tags = _job_tags(request.metadata, options.job_tags)
        if tags:
            plan.put("jobTags", tags)
        if request.metadata:
            plan.converted.append(Change("metadata", request.metadata, "jobTags", _tag_list(request.metadata),
                                         "Bedrock keeps a job's metadata as tags"))
        if options.custom_model_tags:
            plan.put("customModelTags", _tag_list(options.custom_model_tags))
        if options.custom_model_kms_key_id:
            plan.put("customModelKmsKeyId", options.custom_model_kms_key_id)
        if options.vpc_config:
            plan.put("vpcConfig", {"subnetIds": options.vpc_config.subnet_ids,
                                   "securityGroupIds": options.vpc_config.security_group_ids})
        plan.map({key: UNSUPPORTED[key] for key in ("seed", "integrations")})
        return plan.resolved(self.name)

    def estimate(self, request: JobRequest) -> Estimate:
        family = _family(request)
        return text_estimate(request, family.epochs, f"Bedrock's {family.label}",
                             "Bedrock has no estimate API and bills by its own token count, so no cost is given.")

    # -- the hosted lifecycle ------------------------------------------------------------------

    def stage_data(self, request: JobRequest) -> Staged:
        family = _family(request)
        options = options_of(request, BedrockOptions, self.kind)
        layout: Literal["converse", "prompt_completion", "text"] = (
            "text" if options.customization_type == "CONTINUED_PRE_TRAINING" else family.data)
        prefix = self.connection.s3_prefix.strip("/")

        def upload(path: Path, param: str) -> str:
            body = _convert(path, layout)
            key = (f"{prefix}/" if prefix else "") + digest(body) + ".jsonl"
            self.bucket.put_once(key, body)
            return f"s3://{self.bucket.name}/{key}"
        return stage(request, upload)

    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        native = self.resolve(request, staged).native
        try:
            return self.get(native["jobName"])  # this job id already made its Bedrock job
        except ProviderError as error:
            if error.status != 404:
                raise
        created = self._call(self.bedrock, "create_model_customization_job", **native)
        return self.get(created["jobArn"])

    def get(self, remote_id: str) -> RemoteJob:
        return _remote_job(self._call(self.bedrock, "get_model_customization_job", jobIdentifier=remote_id))

    def list(self, limit: int = 20) -> list[RemoteJob]:
        answer = self._call(self.bedrock, "list_model_customization_jobs", maxResults=limit,
                            sortBy="CreationTime", sortOrder="Descending")
        return [_remote_job(summary) for summary in answer.get("modelCustomizationJobSummaries", [])]

    def cancel(self, remote_id: str) -> RemoteJob:
        self._call(self.bedrock, "stop_model_customization_job", jobIdentifier=remote_id)
        return self.get(remote_id)

    def deploy(self, model: str) -> Deployment:
        """On-demand serving of a custom model (`create_custom_model_deployment`), billed per token.

        Bedrock offers it for some base models and regions only; the others need provisioned throughput,
        which is billed by the hour and is left to the AWS console on purpose."""
        handle = re.sub(r"[^0-9a-zA-Z]+", "-", model.rsplit("/", 1)[-1]).strip("-")
        name = f"ftserve-{handle}"[:63].rstrip("-")
        created = self._call(self.bedrock, "create_custom_model_deployment", modelDeploymentName=name,
                             modelArn=model, clientRequestToken=name)
        arn = created["customModelDeploymentArn"]
        answer = _plain(self._call(self.bedrock, "get_custom_model_deployment", customModelDeploymentIdentifier=arn))
        return Deployment(id=arn, model=arn, status=answer.get("status", "Creating"), raw=answer)

    # -- AWS -----------------------------------------------------------------------------------

    @property
    def bedrock(self) -> Any:
        if self._bedrock is None:
            self._bedrock = self._session().client("bedrock")
        return self._bedrock

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._session().client("s3", endpoint_url=self.connection.endpoint_url)
        return self._s3

    def _session(self) -> Any:
        import boto3  # type: ignore[import-untyped]  # boto3 ships no type hints; the providers extra installs it

        c = self.connection
        return boto3.session.Session(
            aws_access_key_id=c.aws_access_key_id,
            aws_secret_access_key=c.aws_secret_access_key.get_secret_value() if c.aws_secret_access_key else None,
            aws_session_token=c.aws_session_token.get_secret_value() if c.aws_session_token else None,
            region_name=c.region, profile_name=c.profile_name,
        )

    def _s3_root(self) -> str:
        prefix = self.connection.s3_prefix.strip("/")
        return f"s3://{self.connection.s3_bucket}/" + (f"{prefix}/" if prefix else "")

    def _call(self, client: Any, operation: str, **params: Any) -> dict[str, Any]:
        with errors.translated(f"Bedrock {operation}", errors.aws):
            return getattr(client, operation)(**params)


# -- resolve ----------------------------------------------------------------------------------


def _family_prefix(model_id: str) -> str | None:
    return max((prefix for prefix in FAMILIES if model_id.startswith(prefix)), key=len, default=None)


def _family(request: JobRequest) -> Family:
    """The model family of a job Bedrock can run; an error naming why for any other job."""
    if request.method == "dpo":
        raise ProviderUnsupported("Bedrock model customization has no preference (DPO) training; "
                                  "run DPO jobs on the local engine or another provider.")
    if request.method != "supervised":
        raise ProviderUnsupported(
            "Bedrock grades reinforcement fine-tuning with an AWS Lambda function of your own "
            "(rftConfig.graderConfig.lambdaGrader); OpenAI graders cannot be turned into one, so "
            "reinforcement jobs need another provider.")
    # An ARN names the model after `foundation-model/` or `custom-model/`.
    model_id = request.model.split("/")[1] if request.model.startswith("arn:") else request.model
    prefix = _family_prefix(model_id)
    if prefix is None:
        raise InvalidRequest(f"Bedrock fine-tunes base models whose id starts with {', '.join(FAMILIES)}; "
                             f"{request.model} is none of them.", param="model")
    return FAMILIES[prefix]


def _layout_reason(family: Family, customization: str) -> str:
    if customization == "CONTINUED_PRE_TRAINING":
        return "continued pre-training reads {\"input\": text}: each chat row is rendered as User:/Assistant: blocks"
    if family.data == "converse":
        return f"{family.label} reads Converse records (bedrock-conversation-2024), converted from the chat rows"
    return (f"{family.label} reads {{prompt, completion}}: the last assistant message is the completion and "
            "the turns before it are rendered into the prompt as User:/Assistant: blocks")


def _hyperparameters(plan: Plan, family: Family, options: BedrockOptions) -> dict[str, str]:
    """Bedrock's string map under the family's keys; each value sent is reported as converted."""
    hyper = Plan(plan.request, "hyperParameters.", converted=plan.converted, dropped=plan.dropped)
    as_text = "Bedrock takes hyperparameters as strings"
    hyper.map({"hyperparameters.n_epochs": Mapped("epochCount", as_text, lambda epochs: _text(int(epochs)))})
    batch = hyper.given("hyperparameters.batch_size")
    if "batchSize" in family.keys:
        hyper.map({"hyperparameters.batch_size": Mapped("batchSize", as_text, lambda size: _text(int(size)))})
    else:
        hyper.map({"hyperparameters.batch_size": dropped(f"{family.label} takes no batch size; Bedrock sets it")})
    if family.learning_rate is None:
        hyper.map({"hyperparameters.learning_rate_multiplier": Mapped(
            "learningRateMultiplier", f"{family.label} takes the multiplier itself, as a string",
            lambda multiplier: _text(float(multiplier)))})
    else:
        hyper.learning_rate("learningRate", family.learning_rate, family.label, "its documented default", _text)
    plan.map({key: mapped for key, mapped in UNSUPPORTED.items() if key.startswith("ftserve.")})
    for key in sorted(set(plan.request.options) - {"warmup_ratio"} - {k.removeprefix("ftserve.") for k in UNSUPPORTED}):
        plan.drop(f"ftserve.{key}", plan.request.options[key], "Bedrock has no such setting")
    if "warmup_ratio" in plan.request.options:
        _warmup(hyper, family, options, batch)
    for option, key in _OPTION_KEYS.items():
        value = getattr(options, option)
        if value is None:
            continue
        if key not in family.keys:
            raise InvalidRequest(f"provider_options.bedrock.{option}: {family.label} takes no {key}; its "
                                 f"hyperparameters are {', '.join(sorted(family.keys))}.", param="provider_options")
        hyper.put(key, _text(value))
    return hyper.native


def _warmup(hyper: Plan, family: Family, options: BedrockOptions, batch: Any) -> None:
    ratio = hyper.request.options["warmup_ratio"]
    if options.learning_rate_warmup_steps is not None:
        raise InvalidRequest("ftserve.warmup_ratio and provider_options.bedrock.learning_rate_warmup_steps both "
                             "set the warmup; set one of them.", param="provider_options")
    if "learningRateWarmupSteps" not in family.keys:
        hyper.drop("ftserve.warmup_ratio", ratio, f"{family.label} takes no warmup")
        return
    # The batch Bedrock will use: the one asked for only where the family takes one.
    batch_size = int(batch) if batch is not None and "batchSize" in family.keys else family.batch_size
    hyper.warmup("learningRateWarmupSteps", batch_size, epochs_of(hyper.request, family.epochs), "Bedrock",
                 f"{family.label}'s batch size is not published, so a ratio cannot become steps; "
                 "set provider_options.bedrock.learning_rate_warmup_steps instead", convert=_text)


def _text(value: float) -> str:
    """Integers as they are, floats in their shortest form: 2e-05, not 2.0000000000000002e-05."""
    return str(value) if isinstance(value, int) else format(value, ".10g")


def _job_name(job_id: str) -> str:
    return ("ftserve-" + re.sub(r"[^a-zA-Z0-9-]+", "-", job_id))[:63].rstrip("-")


def _model_name(suffix: str | None, job_id: str) -> str:
    """`([0-9a-zA-Z][_-]?){1,63}`: no dots, no two separators in a row, the job id kept whole."""
    tail = re.sub(r"[^0-9a-zA-Z]+", "-", job_id).strip("-")
    head = re.sub(r"[^0-9a-zA-Z]+", "-", suffix or "ftserve").strip("-") or "ftserve"
    return f"{head[:max(1, 62 - len(tail))].rstrip('-')}-{tail}"[:63]


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in tags.items()]


def _job_tags(metadata: dict[str, str] | None, option: dict[str, str] | None) -> list[dict[str, str]]:
    metadata, option = metadata or {}, option or {}
    clashes = sorted(key for key in metadata.keys() & option.keys() if metadata[key] != option[key])
    if clashes:
        raise InvalidRequest(f"metadata and provider_options.bedrock.job_tags give {', '.join(clashes)} different "
                             "values; set each tag once.", param="provider_options")
    return _tag_list({**metadata, **option})


# -- data -------------------------------------------------------------------------------------


def _convert(path: Path, layout: Literal["converse", "prompt_completion", "text"]) -> bytes:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            messages = json.loads(line).get("messages")
            if not isinstance(messages, list):
                raise InvalidRequest(f"Bedrock fine-tuning takes chat rows; line {number} has no messages.",
                                     param="training_file")
            turns = [(message.get("role"), _content(message, number)) for message in messages]
            rows.append(json.dumps(_row(turns, layout, number), ensure_ascii=False))
    return ("\n".join(rows) + "\n").encode()


def _content(message: dict[str, Any], line: int) -> str:
    if message.get("role") not in _ROLES or message.get("tool_calls") or message.get("function_call"):
        raise InvalidRequest(f"Bedrock fine-tuning data holds system, user and assistant text only; line {line} "
                             f"has a {message.get('role')} message or a tool call.", param="training_file")
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    if any(part.get("type") != "text" for part in content):
        raise InvalidRequest(f"Bedrock fine-tuning data is text only; line {line} has a non-text part.",
                             param="training_file")
    return "".join(part["text"] for part in content)


def _row(turns: list[tuple[str, str]], layout: str, line: int) -> dict[str, Any]:
    if layout == "converse":
        row: dict[str, Any] = {"schemaVersion": "bedrock-conversation-2024"}
        system = [{"text": text} for role, text in turns if role == "system"]
        if system:
            row["system"] = system
        row["messages"] = [{"role": role, "content": [{"text": text}]} for role, text in turns if role != "system"]
        return row
    if layout == "text":
        return {"input": _rendered(turns)}
    if not turns or turns[-1][0] != "assistant":
        raise InvalidRequest(f"Bedrock trains this model on prompt and completion pairs; line {line} does not end "
                             "with the assistant message that becomes the completion.", param="training_file")
    before = turns[:-1]
    prompt = before[0][1] if [role for role, _ in before] == ["user"] else _rendered(before)
    return {"prompt": prompt, "completion": turns[-1][1]}


def _rendered(turns: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"{_ROLES[role]}: {text}" for role, text in turns)


# -- jobs -------------------------------------------------------------------------------------


def _remote_job(payload: dict[str, Any]) -> RemoteJob:
    """A job from `get_model_customization_job` or a summary from `list_model_customization_jobs`."""
    raw = _plain(payload)
    provider_status = raw.get("status", "")
    status = map_status(STATUSES, provider_status)
    details = raw.get("statusDetails") or {}
    if status == "running" and any((details.get(stage) or {}).get("status") == "InProgress"
                                   for stage in ("validationDetails", "dataProcessingDetails")):
        status = "validating_files"
    model = raw.get("outputModelArn") or raw.get("customModelArn")
    failure = raw.get("failureMessage") or "Bedrock reported the job as Failed without a message."
    return RemoteJob(
        id=raw["jobArn"], status=status, provider_status=provider_status, model=model,
        error=RemoteError("bedrock_job_failed", failure) if status == "failed" else None,
        serving="needs_deployment" if model else None, raw=raw,
    )


def _plain(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without botocore's ResponseMetadata, timestamps as ISO strings: storable as JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value
    return {key: plain(value) for key, value in payload.items() if key != "ResponseMetadata"}
