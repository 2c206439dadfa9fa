"""Amazon Bedrock model customization, through boto3, with the job's data in S3.

Bedrock differs from OpenAI's shape in four ways this adapter translates:
- data is read from S3, in a layout that depends on the base model's family (`bedrock_families`);
- hyperparameters are a string-to-string map whose keys and defaults differ per family, and most
  families take an absolute learning rate where OpenAI sends a multiplier;
- there are no events, checkpoints or pause: a job is polled, and its metrics are in `raw`;
- the custom model is not callable until a deployment serves it (`deploy`, a separate billed step).

`submit` is idempotent on the job id twice over: the Bedrock job is named after it, and a job that
already has that name is returned instead of creating another; `clientRequestToken` is derived from
it too, which covers two submits racing past the name lookup.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

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
    RemoteError,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    map_status,
)
from ftserve.providers.bedrock_families import (
    UNSUPPORTED,
    BedrockOptions,
    converted,
    family_of,
    family_prefix,
    hyperparameters,
    layout_reason,
)
from ftserve.providers.plan import Plan, options_of, text_estimate
from ftserve.providers.staging import Bucket, digest, stage

STATUSES: dict[str, RemoteStatus] = {
    "InProgress": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Stopping": "cancelling",
    "Stopped": "cancelled",
}
"""`ModelCustomizationJobStatus` of the botocore service model `bedrock` 2023-04-20."""

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
                for summary in answer.get("modelSummaries", []) if family_prefix(summary["modelId"])]

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        family = family_of(request)
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
        layout = layout_reason(family, options.customization_type)
        plan.put("trainingDataConfig", {"s3Uri": training})
        plan.converted.append(Change("training_file", str(request.training_file), "trainingDataConfig.s3Uri",
                                     training, layout))
        if request.validation_file is not None:
            validation = (staged.validation if staged else None) or "<validation_file>"
            plan.put("validationDataConfig", {"validators": [{"s3Uri": validation}]})
            plan.converted.append(Change("validation_file", str(request.validation_file),
                                         "validationDataConfig.validators.0.s3Uri", validation, layout))
        hyper = hyperparameters(plan, family, options)
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
        family = family_of(request)
        return text_estimate(request, family.epochs, f"Bedrock's {family.label}",
                             "Bedrock has no estimate API and bills by its own token count, so no cost is given.")

    # -- the hosted lifecycle ------------------------------------------------------------------

    def stage_data(self, request: JobRequest) -> Staged:
        family = family_of(request)
        options = options_of(request, BedrockOptions, self.kind)
        layout: Literal["converse", "prompt_completion", "text"] = (
            "text" if options.customization_type == "CONTINUED_PRE_TRAINING" else family.data)
        prefix = self.connection.s3_prefix.strip("/")

        def upload(path: Path, param: str) -> str:
            body = converted(path, layout)
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
