"""Fireworks AI: managed LoRA fine-tuning (supervised and DPO jobs) through the official `fireworks-ai` SDK.

Training data goes to a dataset resource named after the file's hash, so a retried `stage_data`
reuses what it uploaded. Fireworks lets the client name a job, so a job's id is ftserve's job id
lowercased, and a retried `submit` finds the job it already made instead of making a second one.
Fireworks batches by tokens and takes an absolute learning rate; `resolve` reports both conversions.
A finished model is a LoRA addon that nothing can call until `deploy` loads it onto a dedicated
deployment of its base model (Fireworks dropped serverless LoRA), which bills per GPU-second.

The job's create request is built in `fireworks_request`; this module runs the job.
"""

from __future__ import annotations

import builtins  # inside the class, the adapter's own `list` method hides the builtin
import re
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

from pydantic import SecretStr

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.clients import Sdk
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Connection,
    Deployment,
    Estimate,
    JobRequest,
    Options,
    ProviderError,
    ProviderKind,
    RemoteCheckpoint,
    RemoteError,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    map_status,
)
from ftserve.providers.fireworks_request import DEFAULT_EPOCHS, FireworksOptions, job_body, resource_id
from ftserve.providers.plan import options_of, text_estimate
from ftserve.providers.staging import digest, stage

# Every `JOB_STATE_*` value of the SDK's `SupervisedFineTuningJob.state` and `DpoJob.state` (the same Literal).
STATUSES: dict[str, RemoteStatus] = {
    "JOB_STATE_CREATING": "validating_files",
    "JOB_STATE_VALIDATING": "validating_files",
    "JOB_STATE_CREATING_INPUT_DATASET": "validating_files",
    "JOB_STATE_PENDING": "queued",
    "JOB_STATE_RE_QUEUEING": "queued",
    "JOB_STATE_IDLE": "queued",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_WRITING_RESULTS": "running",
    # Set by Fireworks (account suspension, manual intervention), never by a pause call: the SDK has none.
    "JOB_STATE_PAUSED": "paused",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_COMPLETED": "succeeded",
    "JOB_STATE_EARLY_STOPPED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    # Neither says how the job ended.
    "JOB_STATE_UNSPECIFIED": "unknown",
    "JOB_STATE_DELETING": "unknown",
    "JOB_STATE_DELETING_CLEANING_UP": "unknown",
}

JOB_NAME = re.compile(r"accounts/([^/]+)/(supervisedFineTuningJobs|dpoJobs)/([^/]+)")
MODEL_NAME = re.compile(r"accounts/([^/]+)/models/([^/#]+)")
CHECKPOINT_STEP = re.compile(r"step-(\d+)$")

class FireworksConnection(Connection):
    api_key: SecretStr
    account_id: str
    base_url: str | None = None
    wandb_api_key: SecretStr | None = None
    """Fireworks logs to W&B only with a key; it is added to jobs that ask for W&B, never shown in a dry run."""


class FireworksProvider:
    kind: ClassVar[ProviderKind] = "fireworks"
    Connection: ClassVar[type[FireworksConnection]] = FireworksConnection
    Options: ClassVar[type[FireworksOptions]] = FireworksOptions
    LACKS: ClassVar[dict[str, str]] = {
        "events": "Fireworks has no event list for fine-tuning jobs; poll the job for its state and progress instead.",
        "pause": "Fireworks has no pause for fine-tuning jobs (only Fireworks itself pauses one); cancel it instead, "
                 "or resume a job Fireworks paused.",
    }

    def __init__(self, name: str, connection: FireworksConnection, *, client: Any = None):
        self.name = name
        self.connection = connection
        self.sdk = Sdk("Fireworks", "fireworks", "Fireworks", {
            "api_key": connection.api_key.get_secret_value(), "account_id": connection.account_id,
            "base_url": connection.base_url,
        }, client)

    # -- what it can do ---------------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return capabilities_of(self, methods=("supervised", "dpo"), training_types=("lora",), data="dataset",
                               serving="needs_deployment")

    def list_base_models(self) -> list[BaseModelInfo]:
        with self.sdk.calling():
            models = [model for model in self.sdk.client.models.list(account_id="fireworks", page_size=200) if model.tunable]
        return [
            BaseModelInfo(model.name, ("supervised", "dpo"), model.training_context_length or model.context_length)
            for model in models
        ]

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        plan = job_body(request, options_of(request, FireworksOptions, self.kind), staged,
                        account=self.connection.account_id, wandb_key=self.connection.wandb_api_key is not None)
        return plan.resolved(self.name)

    def estimate(self, request: JobRequest) -> Estimate:
        return text_estimate(request, DEFAULT_EPOCHS, "Fireworks", "Fireworks bills per training token but has no "
                             "estimate API, and shows a job's estimated cost only once the job exists")

    # -- running a job ------------------------------------------------------------------------------------

    def stage_data(self, request: JobRequest) -> Staged:
        def upload(path: Path, param: str) -> str:
            examples = request.training_examples if param == "training_file" else request.validation_examples
            return self._dataset(path, examples)
        return stage(request, upload, validation=request.method == "supervised")

    def _dataset(self, path: Path, examples: int) -> str:
        """The dataset holding `path`, uploaded once: it is named after the file's hash, and a READY one is reused."""
        dataset_id = f"ftserve-{digest(path)[:40]}"  # a letter first: Fireworks refuses ids that start with a digit
        try:
            with self.sdk.calling():
                existing = self.sdk.client.datasets.get(dataset_id)
        except ProviderError as error:
            if error.status != 404:
                raise
            existing = None
        if existing is None:
            try:
                with self.sdk.calling():
                    self.sdk.client.datasets.create(dataset_id=dataset_id, dataset={
                        "user_uploaded": {}, "example_count": str(examples), "display_name": path.name,
                    })
            except ProviderError as error:
                if error.status != 409:  # 409: a concurrent stage_data created it first; upload anyway
                    raise
        if existing is None or existing.state != "READY":
            with self.sdk.calling(), path.open("rb") as file:
                self.sdk.client.datasets.upload(dataset_id, file=(path.name, file))
        return f"accounts/{self.connection.account_id}/datasets/{dataset_id}"

    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        native = self.resolve(request, staged).native
        jobs = self.sdk.client.dpo_jobs if request.method == "dpo" else self.sdk.client.supervised_fine_tuning_jobs
        job_id = native["dpo_job_id"] if request.method == "dpo" else native["supervised_fine_tuning_job_id"]
        try:
            with self.sdk.calling():
                job = jobs.create(**self._with_credentials(native))
        except ProviderError as error:
            if error.status != 409:
                raise
            # The id is ftserve's job id: a job with it is the one an earlier, interrupted submit created.
            with self.sdk.calling():
                job = jobs.get(job_id)
        return self._remote(job)

    def _with_credentials(self, native: dict[str, Any]) -> dict[str, Any]:
        """`native` plus the server's W&B key, which a dry run must never show."""
        if "wandb_config" not in native or self.connection.wandb_api_key is None:
            return native
        key = self.connection.wandb_api_key.get_secret_value()
        return {**native, "wandb_config": {**native["wandb_config"], "api_key": key}}

    def get(self, remote_id: str) -> RemoteJob:
        account, jobs, job_id = self._job(remote_id)
        with self.sdk.calling():
            return self._remote(jobs.get(job_id, account_id=account))

    def list(self, limit: int = 20) -> list[RemoteJob]:
        found: list[Any] = []
        for jobs in (self.sdk.client.supervised_fine_tuning_jobs, self.sdk.client.dpo_jobs):
            with self.sdk.calling():  # the pages after the first are fetched while iterating
                found.extend(islice(jobs.list(page_size=limit, order_by="create_time desc"), limit))
        found.sort(key=lambda job: job.create_time.timestamp() if job.create_time else 0, reverse=True)
        return [self._remote(job) for job in found[:limit]]

    def cancel(self, remote_id: str) -> RemoteJob:
        account, jobs, job_id = self._job(remote_id)
        with self.sdk.calling():
            jobs.cancel(job_id, account_id=account, body={})  # answers an empty object: read the job back
            return self._remote(jobs.get(job_id, account_id=account))

    def checkpoints(self, remote_id: str) -> builtins.list[RemoteCheckpoint]:
        """The job's checkpoints that carry a step (`.../checkpoints/step-N`), oldest first.

        The listing is the one `fireworks.training.sdk.FireworksClient.list_training_job_checkpoints` calls;
        the SDK gives it no response type, so rows are read as the dicts it documents.
        """
        self._job(remote_id)
        rows: list[dict[str, Any]] = []
        params: dict[str, Any] = {"pageSize": 200}
        with self.sdk.calling():
            while True:
                page = self.sdk.client.get(f"/v1/{remote_id}/checkpoints", cast_to=object, options={"params": params})
                rows.extend(page.get("checkpoints") or [])
                if not page.get("nextPageToken"):
                    break
                params = {**params, "pageToken": page["nextPageToken"]}
        found = []
        for row in rows:
            step = CHECKPOINT_STEP.search(row.get("name", ""))
            if step is not None:
                created = row.get("createTime")
                found.append(RemoteCheckpoint(
                    step=int(step.group(1)),
                    created_at=int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()) if created else 0,
                ))
        return sorted(found, key=lambda checkpoint: checkpoint.step)

    def resume(self, remote_id: str) -> RemoteJob:
        account, jobs, job_id = self._job(remote_id)
        with self.sdk.calling():
            return self._remote(jobs.resume(job_id, account_id=account, body={}))

    def deploy(self, model: str) -> Deployment:
        """Load the LoRA `model` onto ftserve's deployment of its base model, creating that deployment if needed.

        One deployment per base model serves all its LoRAs (up to 100), and it scales to zero when idle,
        so deploying a second fine-tune adds no GPUs. Calling it again returns the same deployment.
        """
        parsed = MODEL_NAME.fullmatch(model)
        if parsed is None:
            raise InvalidRequest(f"'{model}' is not a Fireworks model name (accounts/<account>/models/<id>).",
                                 param="model")
        with self.sdk.calling():
            details = self.sdk.client.models.get(parsed.group(2), account_id=parsed.group(1))
        base = details.peft_details.base_model if details.peft_details else model
        deployment_id = resource_id(f"ftserve-{base.rsplit('/', 1)[-1]}")
        try:
            with self.sdk.calling():
                deployment = self.sdk.client.deployments.create(
                    base_model=base, deployment_id=deployment_id, display_name=f"ftserve: {base}",
                    deployment_shape="default", enable_addons=True, min_replica_count=0,
                )
        except ProviderError as error:
            if error.status != 409:
                raise
            with self.sdk.calling():
                deployment = self.sdk.client.deployments.get(deployment_id)
        if base == model:  # a full model is the deployment itself; nothing to load onto it
            return Deployment(deployment.name, model, deployment.state or "", {"deployment": deployment.to_dict(mode="json")})
        with self.sdk.calling():
            loaded = next((item for item in self.sdk.client.lora.list(page_size=200)
                           if item.model == model and item.deployment == deployment.name), None)
            if loaded is None:
                loaded = self.sdk.client.lora.load(model=model, deployment=deployment.name)
        return Deployment(
            deployment.name, f"{model}#{deployment.name}", loaded.state or "",
            {"deployment": deployment.to_dict(mode="json"), "deployed_model": loaded.to_dict(mode="json")},
        )

    # -- translation --------------------------------------------------------------------------------------

    def _job(self, remote_id: str) -> tuple[str, Any, str]:
        """The account, the SDK resource and the job id named by a job's resource name."""
        parsed = JOB_NAME.fullmatch(remote_id)
        if parsed is None:
            raise ProviderError(f"'{remote_id}' is not a Fireworks supervised or DPO job name "
                                "(accounts/<account>/supervisedFineTuningJobs/<id> or .../dpoJobs/<id>)")
        account, kind, job_id = parsed.groups()
        jobs = self.sdk.client.dpo_jobs if kind == "dpoJobs" else self.sdk.client.supervised_fine_tuning_jobs
        return account, jobs, job_id

    def _remote(self, job: Any) -> RemoteJob:
        raw = job.to_dict(mode="json")
        status = map_status(STATUSES, job.state)
        model = None
        if status == "succeeded":
            config = getattr(job, "training_config", None)  # a DPO job keeps its output model there
            model = getattr(job, "output_model", None) or (config.output_model if config else None)
            parsed = JOB_NAME.fullmatch(job.name or "")
            if model is None and parsed is not None:
                # Fireworks documents that a job without an output model names the model after the job.
                model = f"accounts/{parsed.group(1)}/models/{parsed.group(3)}"
        error = None
        if status == "failed":
            detail = job.status
            error = RemoteError(
                code=(detail.code if detail and detail.code else job.state) or "failed",
                message=(detail.message if detail and detail.message else f"Fireworks reports {job.state}"),
            )
        progress = getattr(job, "job_progress", None)
        return RemoteJob(
            id=job.name or "", status=status, provider_status=job.state or "", model=model,
            trained_tokens=progress.input_tokens if progress else None, error=error,
            serving="needs_deployment", raw=raw,
        )
