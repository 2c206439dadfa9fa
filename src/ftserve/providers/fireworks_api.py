"""Fireworks AI: managed LoRA fine-tuning (supervised and DPO jobs) through the official `fireworks-ai` SDK.

Training data goes to a dataset resource named after the file's hash, so a retried `stage_data`
reuses what it uploaded. Fireworks lets the client name a job, so a job's id is ftserve's job id
lowercased, and a retried `submit` finds the job it already made instead of making a second one.
Fireworks batches by tokens and takes an absolute learning rate; `resolve` reports both conversions.
A finished model is a LoRA addon that nothing can call until `deploy` loads it onto a dedicated
deployment of its base model (Fireworks dropped serverless LoRA), which bills per GPU-second.

One module rather than several: every part of it translates the same two SDK resources.
"""

from __future__ import annotations

import builtins  # inside the class, the adapter's own `list` method hides the builtin
import re
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.clients import Sdk
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
    RemoteCheckpoint,
    RemoteError,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    chosen,
    map_status,
)
from ftserve.providers.plan import Mapped, Plan, dropped, epochs_of, options_of, text_estimate
from ftserve.providers.staging import digest, stage

# The SDK declares no defaults; these are the ones Fireworks documents for its fine-tuning jobs.
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_CONTEXT = 8192
DEFAULT_EPOCHS = 1

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
RESOURCE_ID_LENGTH = 63

# Options that both job kinds take (DPO inside its training_config), and those only one kind has.
TRAINING_OPTIONS = ("region", "jinja_template", "batch_size_samples", "gradient_accumulation_steps",
                    "optimizer_weight_decay")
SUPERVISED_OPTIONS = ("is_turbo", "nodes", "early_stop", "eval_auto_carveout")

# The caller's fields Fireworks takes under its own names, or not at all: before the batch, and after it.
RENAMED: dict[str, Mapped] = {
    "hyperparameters.n_epochs": Mapped("epochs", "Fireworks' name for it", int),
    "ftserve.max_seq_length": Mapped("max_context_length", "Fireworks' name for it"),
}
_NO_LORA_KNOBS = "Fireworks sets LoRA alpha and dropout itself; its jobs take only the rank"
LORA_AND_STEPS: dict[str, Mapped] = {
    "ftserve.lora_rank": Mapped("lora_rank"),
    "ftserve.lora_alpha": dropped(_NO_LORA_KNOBS),
    "ftserve.lora_dropout": dropped(_NO_LORA_KNOBS),
    "ftserve.eval_interval": dropped("Fireworks evaluates on its own schedule; its jobs take no evaluation interval"),
    "ftserve.checkpoint_interval": Mapped("sampler_checkpoint_save_interval_steps",
                                          "Fireworks' name for the steps between checkpoints that can become models"),
}
NOT_KEPT: dict[str, Mapped] = {
    "seed": dropped("Fireworks' fine-tuning jobs have no seed"),
    "metadata": dropped("Fireworks' fine-tuning jobs have no metadata"),
}


class FireworksConnection(Connection):
    api_key: SecretStr
    account_id: str
    base_url: str | None = None
    wandb_api_key: SecretStr | None = None
    """Fireworks logs to W&B only with a key; it is added to jobs that ask for W&B, never shown in a dry run."""


class FireworksOptions(Options):
    """`ftserve.provider_options.fireworks`: the job settings Fireworks has and OpenAI's job lacks."""

    region: str | None = None
    jinja_template: str | None = None
    is_turbo: bool | None = None
    nodes: int | None = Field(None, ge=1)
    warm_start_from: str | None = None
    """A LoRA model (`accounts/<a>/models/<id>`) to continue training, instead of the job's base model."""
    early_stop: bool | None = None
    eval_auto_carveout: bool | None = None
    batch_size_samples: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    optimizer_weight_decay: float | None = Field(None, ge=0)
    dpo_loss: Literal["DPO", "ORPO"] | None = None


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
        if request.method not in ("supervised", "dpo"):
            raise ProviderUnsupported(
                "Fireworks has no reinforcement job that takes an OpenAI grader: its RFT scores with an evaluator "
                "resource of its own. Use the supervised or dpo method here."
            )
        if request.options.get("training_type") == "full":
            raise ProviderUnsupported(
                "Fireworks' managed fine-tuning trains LoRA adapters only; use ftserve.training_type 'lora'."
            )
        options = options_of(request, FireworksOptions, self.kind)
        dpo = request.method == "dpo"
        plan = Plan(request)
        job_id = resource_id(request.job_id)
        training = self._training(Plan(request, "training_config." if dpo else "", converted=plan.converted,
                                       dropped=plan.dropped), options, job_id)
        # Fireworks keeps display names under 64 characters; the job id is the part worth keeping whole.
        display_name = request.job_id
        if request.suffix:
            display_name = f"{request.suffix[: RESOURCE_ID_LENGTH - len(request.job_id) - 3]} ({request.job_id})"
        dataset = staged.training if staged else "<training_file>"
        validation = None
        if request.validation_file is not None:
            validation = (staged.validation if staged else None) or "<validation_file>"

        if dpo:
            for key in SUPERVISED_OPTIONS:
                if getattr(options, key) is not None:
                    raise ProviderUnsupported(
                        f"provider_options.fireworks.{key} applies to supervised jobs: Fireworks' DPO job has no such setting."
                    )
            if validation is not None:
                plan.drop("validation_file", str(request.validation_file), "Fireworks' DPO job takes no evaluation dataset")
            native: dict[str, Any] = {
                "dpo_job_id": job_id, "dataset": dataset, "display_name": display_name,
                "training_config": training, "loss_config": self._loss(request, options, plan.converted),
            }
        else:
            if options.dpo_loss is not None:
                raise ProviderUnsupported("provider_options.fireworks.dpo_loss applies to dpo jobs only.")
            if validation is not None and options.eval_auto_carveout:
                raise InvalidRequest(
                    "validation_file and provider_options.fireworks.eval_auto_carveout both choose the evaluation "
                    "data; set one of them.", param="validation_file",
                )
            native = {"supervised_fine_tuning_job_id": job_id, "dataset": dataset, "display_name": display_name,
                      **training}
            if validation is not None:
                native["evaluation_dataset"] = validation
            native.update({key: getattr(options, key) for key in SUPERVISED_OPTIONS if getattr(options, key) is not None})

        wandb = self._wandb(request, plan.converted, plan.dropped)
        if wandb is not None:
            native["wandb_config"] = wandb
        plan.map(NOT_KEPT)
        return plan.resolved(self.name, native)

    def _training(self, plan: Plan, options: FireworksOptions, job_id: str) -> dict[str, Any]:
        """The settings both job kinds share: top level in a supervised job, `training_config` in a DPO one."""
        request = plan.request
        if options.warm_start_from is not None:
            plan.put("warm_start_from", options.warm_start_from, source="model", given=request.model, reason=(
                "Fireworks takes a base model or a LoRA to continue, not both: the job continues "
                "provider_options.fireworks.warm_start_from, on that LoRA's own base model"))
        else:
            base = request.model if "/" in request.model else f"accounts/fireworks/models/{request.model}"
            if base != request.model:
                plan.put("base_model", base, source="model", given=request.model,
                         reason="a bare model name is one of Fireworks' public models")
            else:
                plan.put("base_model", base)
        plan.map(RENAMED)
        plan.learning_rate("learning_rate", DEFAULT_LEARNING_RATE, "Fireworks", "Fireworks' documented default")
        batch = plan.given("hyperparameters.batch_size")
        if batch is not None:
            if options.batch_size_samples is not None:
                raise InvalidRequest(
                    "hyperparameters.batch_size and provider_options.fireworks.batch_size_samples both set the "
                    "batch size; set one of them.", param="hyperparameters.batch_size",
                )
            context = request.options.get("max_seq_length")
            source = "ftserve.max_seq_length" if context else "Fireworks' default context"
            plan.put("batch_size", int(batch) * (context or DEFAULT_CONTEXT), source="hyperparameters.batch_size",
                     given=batch, reason=f"Fireworks counts a batch in tokens, packing examples into it: {batch} "
                                         f"examples x {context or DEFAULT_CONTEXT} tokens of context ({source})")
        per_batch = batch or options.batch_size_samples
        plan.warmup("learning_rate_warmup_steps", int(per_batch) if per_batch else None,
                    epochs_of(request, DEFAULT_EPOCHS), "Fireworks",
                    "Fireworks takes warmup in steps, and counting steps needs a batch size in examples: "
                    "set hyperparameters.batch_size", note="; packing may change the count")
        plan.map(LORA_AND_STEPS)
        if request.suffix:
            tail = f"-{job_id}"
            head = resource_id(request.suffix)[: RESOURCE_ID_LENGTH - len(tail)].strip("-")
            plan.put("output_model", f"accounts/{self.connection.account_id}/models/{head}{tail}", source="suffix",
                     given=request.suffix, reason="Fireworks names the model by id: the suffix, lowercased, then the "
                                                  "job id so that the name is unique")
        plan.native.update({key: getattr(options, key) for key in TRAINING_OPTIONS if getattr(options, key) is not None})
        return plan.native

    @staticmethod
    def _loss(request: JobRequest, options: FireworksOptions, converted: list[Change]) -> dict[str, Any]:
        # Always named: the SDK's loss config says an unnamed method means GRPO for preference jobs.
        loss: dict[str, Any] = {"method": options.dpo_loss or "DPO"}
        beta = chosen(request, "beta")
        if beta is not None:
            if loss["method"] != "DPO":
                raise InvalidRequest(
                    "hyperparameters.beta is DPO's, and provider_options.fireworks.dpo_loss chooses ORPO; "
                    "leave beta 'auto' or use DPO.", param="hyperparameters.beta",
                )
            loss["dpo"] = {"beta": float(beta)}
            converted.append(Change("hyperparameters.beta", beta, "loss_config.dpo.beta", float(beta),
                                    "Fireworks sets DPO's beta in the job's loss config"))
        return loss

    def _wandb(self, request: JobRequest, converted: list[Change], dropped: list[Change]) -> dict[str, Any] | None:
        config: dict[str, Any] | None = None
        for integration in request.integrations or []:
            if integration.get("type") != "wandb" or config is not None:
                dropped.append(Change("integrations", integration, None,
                                      reason="Fireworks reports to Weights & Biases only, one run per job"))
            elif self.connection.wandb_api_key is None:
                dropped.append(Change("integrations", integration, None, reason=(
                    "Fireworks logs to W&B only with an API key, and this server configures no wandb_api_key "
                    "for this provider")))
            else:
                wandb = integration.get("wandb") or {}
                config = {"enabled": True, **{key: wandb[key] for key in ("project", "entity") if wandb.get(key)}}
                unsent = [key for key in ("name", "tags") if wandb.get(key)]
                converted.append(Change(
                    "integrations", integration, "wandb_config", config,
                    "Fireworks' W&B settings; the server's W&B key is added when the job is sent"
                    + (f"; Fireworks has no field for the run's {' and '.join(unsent)}" if unsent else ""),
                ))
        return config

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


def resource_id(text: str) -> str:
    """`text` as a Fireworks resource id: lowercase letters, digits and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:RESOURCE_ID_LENGTH].rstrip("-")
