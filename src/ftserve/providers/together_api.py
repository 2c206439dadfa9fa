"""Together AI's fine-tuning API, through the official `together` SDK (3.x).

Data goes up through the files API: Together reads OpenAI chat and preference JSONL as they are.
The create body is built here, in the shape of the SDK's own `FinetuneRequest`, and posted to the
path the SDK's `fine_tuning.create` posts to. `create` itself first fetches the model's limits and
a price estimate and fills defaults on its own, so what it sends is not the dry run; posting the
body directly makes `resolve(...).native` exactly what Together receives. Values the caller left on
"auto" take the defaults `create` would send (`SDK_DEFAULTS`).

Together has no idempotency token: the job's suffix carries a tag of the ftserve job id, and
`submit` looks for a job with that tag before it creates one. There is no pause (a job continues
from a checkpoint with `from_checkpoint` instead). A LoRA result is callable at once on models with
serverless LoRA; anything else needs a dedicated endpoint, which `deploy` makes.

One module of about 630 lines, past the usual size: the request mapping (`resolve` and its helpers,
about half) and the lifecycle share the status table, the job tag and the error translation. The
mapping could move to a `together_request.py` of its own if it grows further.
"""

from __future__ import annotations

import builtins  # inside the class, the adapter's own `list` method hides the builtin
import hashlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

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
    ProviderUnsupported,
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Serving,
    Staged,
    capabilities_of,
    chosen,
    map_status,
    tokens_of,
)
from ftserve.providers.plan import Mapped, Plan, dropped, epochs_of, options_of, steps
from ftserve.providers.staging import digest, once, stage

# Every status the SDK declares: the `FinetuneResponse.status` Literal, plus `user_error` from the
# hand-written `lib.types.fine_tuning.FinetuneJobStatus` enum.
STATUSES: dict[str, RemoteStatus] = {
    "pending": "queued",
    "queued": "queued",
    "running": "running",
    # Training is over but the weights are still being packed and stored: not yet a usable model.
    "compressing": "running",
    "uploading": "running",
    "cancel_requested": "cancelling",
    "cancelled": "cancelled",
    "error": "failed",
    "user_error": "failed",
    # Includes jobs that stopped early on their validation loss (`early_stopped`): they succeeded.
    "completed": "succeeded",
}

# What `fine_tuning.create` sends for arguments it is not given (together 3.1.1); a test reads them
# back from its signature, so an SDK that changes a default fails the test, not a job.
SDK_DEFAULTS: dict[str, Any] = {
    "n_epochs": 1, "learning_rate": 1e-5, "batch_size": "max", "packing": True, "n_checkpoints": 1,
    "n_evals": 0, "lr_scheduler_type": "cosine", "min_lr_ratio": 0.0, "scheduler_num_cycles": 0.5,
    "warmup_ratio": 0.0, "max_grad_norm": 1.0, "weight_decay": 0.0, "lora_dropout": 0,
    "lora_trainable_modules": "all-linear",
}
DEFAULT_BASE_URL = "https://api.together.ai"
SUFFIX_LIMIT = 40
TAG_LENGTH = 10
LORA_KNOBS = ("lora_rank", "lora_alpha", "lora_dropout")
DPO_ONLY = ("rpo_alpha", "simpo_gamma", "dpo_normalize_logratios_by_length")
LEVELS: dict[str, Literal["info", "warn", "error"]] = {
    "warning": "warn", "legacy_iwarning": "warn", "error": "error", "legacy_ierror": "error",
}
ERROR_EVENTS = ("job_error", "job_user_error")
SERVING: dict[str, Serving] = {"Lora": "ready", "Full": "needs_deployment"}
RENAMED: dict[str, Mapped] = {
    "seed": Mapped("random_seed", "Together's name for the seed"),
    "metadata": dropped("Together jobs carry no metadata"),
}


class TogetherConnection(Connection):
    api_key: str
    base_url: str | None = None
    """The API root; https://api.together.ai when unset."""
    project_id: str | None = None
    """The Together project that owns fine-tuned models and endpoints; `deploy` needs it."""
    wandb_api_key: str | None = None
    """Sent with jobs that ask for a W&B integration, and never shown in a dry run."""
    wandb_base_url: str | None = None
    hf_api_token: str | None = None
    """Sent with jobs that start from (`from_hf_model`) or push to (`hf_output_repo_name`) Hugging Face."""
    deploy_config: str | None = None
    """Hardware config revision for dedicated endpoints (`projects/{project}/configs/{revision}`)."""
    deploy_min_replicas: int = Field(1, ge=0)
    deploy_max_replicas: int = Field(1, ge=1)
    deploy_inactive_timeout: int = Field(60, ge=0, le=1440)
    """Minutes without a request before a dedicated endpoint stops billing (0: never; else 30-1440)."""
    timeout_seconds: float = Field(60.0, gt=0)


class TogetherOptions(Options):
    """Together's own knobs, sent as `ftserve.provider_options.together`."""

    n_checkpoints: int | None = Field(None, ge=1)
    n_evals: int | None = Field(None, ge=0)
    lr_scheduler_type: Literal["linear", "cosine"] | None = None
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    scheduler_num_cycles: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    max_grad_norm: float | None = Field(None, ge=0)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    train_on_inputs: bool | Literal["auto"] | None = None
    packing: bool | None = None
    lora_trainable_modules: str | None = None
    train_vision: bool | None = None
    from_checkpoint: str | None = None
    """Continue a previous Together job: `{job id or output model}[:{step}]`."""
    from_hf_model: str | None = None
    hf_model_revision: str | None = None
    hf_output_repo_name: str | None = None
    """Push the weights to this Hugging Face repo (needs the connection's hf_api_token)."""
    dpo_normalize_logratios_by_length: bool | None = None
    rpo_alpha: float | None = Field(None, ge=0)
    simpo_gamma: float | None = Field(None, ge=0)
    early_stopping_enabled: bool | None = None
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_min_delta: float | None = Field(None, ge=0)
    early_stopping_warmup_evals: int | None = Field(None, ge=0)


class TogetherProvider:
    kind: ClassVar[Literal["together"]] = "together"
    Connection = TogetherConnection
    Options = TogetherOptions
    LACKS: ClassVar[dict[str, str]] = {
        "pause": "Together has no pause; cancel the job and start a new one with ftserve.provider_options.together."
                 "from_checkpoint = '<Together job id>:<step>' to continue from a checkpoint.",
    }

    def __init__(self, name: str, connection: TogetherConnection, *, client: Any = None):
        self.name = name
        self.connection = connection
        self.sdk = Sdk(name, "together", "Together", {
            "api_key": connection.api_key, "base_url": connection.base_url or DEFAULT_BASE_URL,
            "project_id": connection.project_id, "timeout": connection.timeout_seconds,
        }, client)

    def capabilities(self) -> Capabilities:
        return capabilities_of(self, methods=("supervised", "dpo"), training_types=("lora", "full"),
                               data="file_api", serving="ready", cost_estimate=True)

    def list_base_models(self) -> list[BaseModelInfo]:
        with self.sdk.calling():
            models = list(self.sdk.client.models.list_supported(product="PRODUCT_FINE_TUNING"))
        return [
            BaseModelInfo(m.name, ("supervised", "dpo"),
                          int(m.context_length) if (m.context_length or "").isdigit() else None)
            for m in models
        ]

    # The request.

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        if request.method not in ("supervised", "dpo"):
            raise ProviderUnsupported(
                f"Together's fine-tuning API trains with SFT and DPO only, not {request.method}.", param="method",
            )
        options = options_of(request, TogetherOptions, self.kind)
        _refuse_conflicts(request, options)
        plan = Plan(request)
        native, converted, dropped = plan.native, plan.converted, plan.dropped
        native["training_file"] = staged.training if staged else "<training_file>"
        if request.validation_file is not None:
            native["validation_file"] = staged.validation if staged and staged.validation else "<validation_file>"
        if options.from_checkpoint is not None:
            native["from_checkpoint"] = options.from_checkpoint
            converted.append(Change("model", request.model, "from_checkpoint", options.from_checkpoint,
                                    "Together continues the checkpoint's own base model and refuses both"))
        else:
            native["model"] = request.model
        native["n_epochs"] = epochs_of(request, SDK_DEFAULTS["n_epochs"])
        native["learning_rate"] = SDK_DEFAULTS["learning_rate"]
        plan.learning_rate("learning_rate", SDK_DEFAULTS["learning_rate"], "Together",
                           "the together SDK's default learning rate for fine-tuning jobs,")
        batch_size = chosen(request, "batch_size")
        native["batch_size"] = int(batch_size) if batch_size is not None else SDK_DEFAULTS["batch_size"]
        native.update(_scheduler(options))
        native["warmup_ratio"] = request.options.get("warmup_ratio", SDK_DEFAULTS["warmup_ratio"])
        if "max_seq_length" in request.options:
            native["max_seq_length"] = request.options["max_seq_length"]
        for key in ("packing", "max_grad_norm", "weight_decay"):
            native[key] = _given(getattr(options, key), SDK_DEFAULTS[key])
        if options.gradient_accumulation_steps is not None:
            native["gradient_accumulation_steps"] = options.gradient_accumulation_steps
        for key, count in (("n_evals", "eval_interval"), ("n_checkpoints", "checkpoint_interval")):
            native[key] = _given(getattr(options, key), SDK_DEFAULTS[key])
            if count in request.options:
                self._per_run(request, count, key, native, converted, dropped)
        training_type = self._training_type(request, options, converted)
        if training_type is not None:
            native["training_type"] = training_type
        native["training_method"] = self._method(request, options, converted)
        native["early_stopping_enabled"] = bool(options.early_stopping_enabled)
        for key in ("early_stopping_patience", "early_stopping_min_delta", "early_stopping_warmup_evals",
                    "from_hf_model", "hf_model_revision", "hf_output_repo_name"):
            if getattr(options, key) is not None:
                native[key] = getattr(options, key)
        if options.train_vision is not None:
            native["multimodal_params"] = {"train_vision": options.train_vision}
        native["suffix"] = _suffix(request.suffix, request.job_id)
        if request.suffix is not None:
            converted.append(Change(
                "suffix", request.suffix, "suffix", native["suffix"],
                f"Together allows {SUFFIX_LIMIT} characters; ftserve keeps the first "
                f"{SUFFIX_LIMIT - TAG_LENGTH - 1} and appends a tag of the job id, so a retried submit finds this job"))
        plan.map(RENAMED)
        self._wandb(request, native, converted, dropped)
        return plan.resolved(self.name)

    def _per_run(self, request: JobRequest, option: str, key: str, native: dict[str, Any],
                 converted: list[Change], dropped: list[Change]) -> None:
        """A step interval (ftserve) as a count per run (Together's `n_evals`, `n_checkpoints`)."""
        interval = request.options[option]
        field = f"ftserve.{option}"
        if option == "eval_interval" and request.validation_file is None:
            dropped.append(Change(field, interval, None, reason="Together evaluates only on a validation file"))
            return
        if native["batch_size"] == "max":
            dropped.append(Change(field, interval, None, reason=(
                f"Together counts {key} per run, and with batch_size 'max' (chosen by Together) the steps per run "
                "are not known; set hyperparameters.batch_size, or provider_options.together." + key)))
            return
        total = steps(request.training_examples, native["batch_size"], native["n_epochs"])
        native[key] = max(1, total // interval)
        converted.append(Change(field, interval, key, native[key], (
            f"Together counts {key} per run: {total} steps (ceil(examples / batch_size) x n_epochs) "
            f"divided by the interval")))

    def _training_type(self, request: JobRequest, options: TogetherOptions,
                       converted: list[Change]) -> dict[str, Any] | None:
        asked = request.options.get("training_type")
        if asked == "full":
            converted.append(Change("ftserve.training_type", asked, "training_type.type", "Full", "Together's spelling"))
            return {"type": "Full"}
        knobs = [key for key in LORA_KNOBS if key in request.options]
        if not knobs and options.lora_trainable_modules is None:
            if asked == "lora":
                converted.append(Change("ftserve.training_type", asked, "training_type", None, (
                    "left out: Together trains a LoRA adapter at the model's default rank unless told otherwise")))
            return None
        if asked == "lora":
            converted.append(Change("ftserve.training_type", asked, "training_type.type", "Lora", "Together's spelling"))
        rank = request.options.get("lora_rank")
        if rank is None:
            # The same default the SDK's create fills in: the model's own default rank.
            with self.sdk.calling():
                rank = self.sdk.client.fine_tuning.model_limits(model_name=request.model).lora_training.default_rank
        alpha = request.options.get("lora_alpha", 2 * rank)
        lora = {
            "lora_r": rank, "lora_alpha": round(alpha),
            "lora_dropout": float(request.options.get("lora_dropout", SDK_DEFAULTS["lora_dropout"])),
            "lora_trainable_modules": options.lora_trainable_modules or SDK_DEFAULTS["lora_trainable_modules"],
            "type": "Lora",
        }
        native_names = {"lora_rank": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}
        for key in knobs:
            name = native_names[key]
            reason = "Together takes LoRA settings inside training_type"
            if key == "lora_alpha" and lora["lora_alpha"] != alpha:
                reason += "; its alpha is an integer, so rounded"
            converted.append(Change(f"ftserve.{key}", request.options[key], f"training_type.{name}", lora[name], reason))
        return lora

    def _method(self, request: JobRequest, options: TogetherOptions, converted: list[Change]) -> dict[str, Any]:
        if request.method == "supervised":
            return {"method": "sft", "train_on_inputs": _given(options.train_on_inputs, "auto")}
        method: dict[str, Any] = {"method": "dpo"}
        beta = chosen(request, "beta")
        if beta is not None:
            method["dpo_beta"] = beta
            converted.append(Change("hyperparameters.beta", beta, "training_method.dpo_beta", beta,
                                    "Together's name for DPO's beta"))
        # As the SDK does: a positive SimPO gamma means reference-free DPO with length-normalised log-ratios.
        simpo = bool(options.simpo_gamma)
        method["dpo_normalize_logratios_by_length"] = simpo or bool(options.dpo_normalize_logratios_by_length)
        method["dpo_reference_free"] = simpo
        for key in ("rpo_alpha", "simpo_gamma"):
            if getattr(options, key) is not None:
                method[key] = getattr(options, key)
        return method

    def _wandb(self, request: JobRequest, native: dict[str, Any], converted: list[Change],
               dropped: list[Change]) -> None:
        if not request.integrations:
            return
        wandb = next((i["wandb"] for i in request.integrations if i.get("type") == "wandb"), None)
        if wandb is None or not self.connection.wandb_api_key:
            why = ("Together logs to W&B with the server's wandb_api_key, which this provider's configuration lacks"
                   if wandb is not None else "Together integrates with W&B only")
            dropped.append(Change("integrations", request.integrations, None, reason=why))
            return
        for key, name in (("project", "wandb_project_name"), ("name", "wandb_name"), ("entity", "wandb_entity")):
            if wandb.get(key) is not None:
                native[name] = wandb[key]
                converted.append(Change(f"integrations.wandb.{key}", wandb[key], name, wandb[key],
                                        "Together takes W&B settings as flat fields (the key is the server's)"))
        if self.connection.wandb_base_url:
            native["wandb_base_url"] = self.connection.wandb_base_url
        if wandb.get("tags"):
            dropped.append(Change("integrations.wandb.tags", wandb["tags"], None,
                                  reason="Together's W&B settings have no tags"))

    def estimate(self, request: JobRequest) -> Estimate:
        asked = chosen(request, "n_epochs")
        epochs = epochs_of(request, SDK_DEFAULTS["n_epochs"])
        local = tokens_of(request.training_file) * epochs
        basis = "text at 4 characters per token, times the epochs" + (
            "" if asked is not None else f" (Together's default: {epochs})")
        try:
            training = self._uploaded(_filename(request.training_file))
            validation = self._uploaded(_filename(request.validation_file)) if request.validation_file else None
            if training is None or (request.validation_file is not None and validation is None):
                return Estimate(local, epochs, None, f"{basis}; Together prices only uploaded files, and this "
                                "job's are not uploaded yet (they are when the job starts)")
            native = self.resolve(request, Staged(training, validation)).native
            kwargs = {key: native[key] for key in ("model", "from_checkpoint", "validation_file", "training_type")
                      if key in native}
            with self.sdk.calling():
                answer = self.sdk.client.fine_tuning.estimate_price(
                    training_file=training, n_epochs=native["n_epochs"], n_evals=native["n_evals"],
                    training_method=native["training_method"], **kwargs,
                )
        except ProviderError as error:
            return Estimate(local, epochs, None, f"{basis}; Together's estimate could not be had: {error.message}")
        if not answer.estimation_available:
            return Estimate(local, epochs, None, f"{basis}; Together gave no estimate ({answer.unavailable_reason})")
        tokens = int(answer.estimated_train_token_count) if answer.estimated_train_token_count is not None else local
        over = "" if answer.allowed_to_proceed is not False else (
            f"; it exceeds this account's credit limit (${answer.user_limit}), so Together would refuse the job")
        return Estimate(tokens, epochs, answer.estimated_total_price,
                        f"Together's estimate_price API: the tokens it will train on and the price in USD{over}")

    # The lifecycle.

    def stage_data(self, request: JobRequest) -> Staged:
        def upload(path: Path, param: str) -> str:
            def send(name: str) -> str:
                with tempfile.TemporaryDirectory() as folder, self.sdk.calling():
                    # The SDK names the upload after the file on disk: a link gives it the content's name.
                    named = Path(folder) / name
                    named.symlink_to(path.resolve())
                    return self.sdk.client.files.upload(named, purpose="fine-tune", check=True).id
            return once(_filename(path), self._uploaded, send)
        return stage(request, upload)

    def _uploaded(self, filename: str) -> str | None:
        """A usable earlier upload of the same content (named after its sha256), so a retry uploads nothing."""
        with self.sdk.calling():
            files = self.sdk.client.files.list().data
        for existing in files:
            if (existing.filename == filename and existing.purpose == "fine-tune"
                    and existing.processing_status not in ("FAILED", "INVALID_FORMAT")):
                return existing.id
        return None

    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        native = self.resolve(request, staged).native
        tag = _tag(request.job_id)
        with self.sdk.calling():
            for job in self.sdk.client.fine_tuning.list().data:
                if tag in (job.suffix or "").lower() or tag in (job.x_model_output_name or "").lower():
                    return self._job(job)
            from together.types import FinetuneResponse

            created = self.sdk.client.post("/v1/fine-tunes", body=self._with_credentials(native), cast_to=FinetuneResponse)
        return self._job(created)

    def _with_credentials(self, native: dict[str, Any]) -> dict[str, Any]:
        """The server's secrets, added at send time only: a dry run never shows them."""
        secrets: dict[str, Any] = {}
        if "wandb_project_name" in native and self.connection.wandb_api_key:
            secrets["wandb_key"] = self.connection.wandb_api_key
        if ("from_hf_model" in native or "hf_output_repo_name" in native) and self.connection.hf_api_token:
            secrets["hf_api_token"] = self.connection.hf_api_token
        return {**native, **secrets}

    def get(self, remote_id: str) -> RemoteJob:
        with self.sdk.calling():
            return self._job(self.sdk.client.fine_tuning.retrieve(remote_id))

    def list(self, limit: int = 20) -> list[RemoteJob]:
        with self.sdk.calling():
            jobs = self.sdk.client.fine_tuning.list().data
        jobs.sort(key=lambda job: job.created_at, reverse=True)
        return [self._job(job) for job in jobs[:limit]]

    def cancel(self, remote_id: str) -> RemoteJob:
        with self.sdk.calling():
            return self._job(self.sdk.client.fine_tuning.cancel(remote_id))

    def events(self, remote_id: str, after: str | None = None) -> builtins.list[RemoteEvent]:
        # Together's events carry no id and come as one list, oldest first, that only grows: an
        # event's id is its position in it.
        if after is not None and not after.isdigit():
            raise ProviderError(f"{self.name}: '{after}' is not a Together event position")
        start = int(after) + 1 if after is not None else 0
        with self.sdk.calling():
            found = self.sdk.client.fine_tuning.list_events(remote_id).data
        return [_event(str(index), event) for index, event in enumerate(found) if index >= start]

    def checkpoints(self, remote_id: str) -> builtins.list[RemoteCheckpoint]:
        with self.sdk.calling():
            found = self.sdk.client.fine_tuning.list_checkpoints(remote_id).data
        by_step: dict[int, RemoteCheckpoint] = {}
        for saved in found:
            # A LoRA job lists its final step twice (adapter and merged model); one step is one checkpoint.
            by_step.setdefault(saved.step, RemoteCheckpoint(saved.step, _epoch(saved.created_at), model=saved.object_name))
        return [by_step[step] for step in sorted(by_step)]

    def deploy(self, model: str) -> Deployment:
        """A dedicated endpoint serving `model`: an endpoint, a deployment on it, and all traffic routed there."""
        project = self.connection.project_id
        if not project:
            raise ProviderUnsupported(
                f"{self.name}: deploying needs the provider's project_id setting (the Together project of the model)."
            )
        config = {"config": self.connection.deploy_config} if self.connection.deploy_config else {}
        with self.sdk.calling():
            resource = model if model.startswith("projects/") else self._registry_model(model, project)
            endpoint = self.sdk.client.endpoints.create(
                project_id=project, name=_endpoint_name(model), visibility="VISIBILITY_PRIVATE",
            )
            deployment = self.sdk.client.endpoints.deployments.create(
                endpoint.id, project_id=project, name="primary", model=resource,
                autoscaling={"min_replicas": self.connection.deploy_min_replicas,
                             "max_replicas": self.connection.deploy_max_replicas},
                inactive_timeout=self.connection.deploy_inactive_timeout, **config,
            )
            routed = self.sdk.client.endpoints.update(
                endpoint.id, project_id=project, etag=endpoint.etag,
                traffic_split=[{"deployment_id": deployment.id, "weight": 1}],
            )
        return Deployment(
            id=routed.id, model=routed.name, status=deployment.status.state,
            raw={"endpoint": routed.to_dict(mode="json"), "deployment": deployment.to_dict(mode="json")},
        )

    def _registry_model(self, model: str, project: str) -> str:
        """The model-registry resource of the job that made `model` (its output name)."""
        for job in self.sdk.client.fine_tuning.list().data:
            if job.x_model_output_name == model:
                made = self.sdk.client.fine_tuning.retrieve(job.id)
                if made.api_model_object_id:
                    return f"projects/{project}/models/{made.api_model_object_id}"
                raise ProviderError(f"{self.name}: job {job.id} has no registered model yet ({made.status})")
        raise ProviderError(f"{self.name}: no Together fine-tuning job made '{model}'", status=404)

    def _job(self, job: Any) -> RemoteJob:
        raw = job.to_dict(mode="json")
        status = raw.get("status") or ""
        # Together serves a LoRA adapter at once on its serverless-LoRA models; full weights (and
        # adapters of other models) need a dedicated endpoint, which `deploy` makes.
        training = (raw.get("training_type") or {}).get("type")
        serving = SERVING.get(training or "")
        progress = raw.get("progress") or {}
        finish = None
        if status == "running" and progress.get("estimate_available"):
            finish = int(time.time() + progress.get("seconds_remaining", 0))
        return RemoteJob(
            id=raw["id"], status=map_status(STATUSES, status), provider_status=status,
            model=(raw.get("model_output_name") or raw.get("model_object_name")) if status == "completed" else None,
            trained_tokens=raw.get("token_count"), estimated_finish=finish,
            error=_error(status, raw.get("events") or []), serving=serving, raw=raw,
        )


def _refuse_conflicts(request: JobRequest, options: TogetherOptions) -> None:
    """A Together option that says the same as a common field, or that the job's method has no use for."""
    where = "ftserve.provider_options.together."
    pairs = (("n_evals", "eval_interval"), ("n_checkpoints", "checkpoint_interval"))
    for key, common in pairs:
        if getattr(options, key) is not None and common in request.options:
            raise InvalidRequest(f"Set either ftserve.{common} or {where}{key}, not both: they say the same "
                                 "thing (steps between, or a count per run).", param=where + key)
    if request.options.get("training_type") == "full":
        lora = [f"ftserve.{key}" for key in LORA_KNOBS if key in request.options]
        lora += [where + "lora_trainable_modules"] if options.lora_trainable_modules is not None else []
        if lora:
            raise InvalidRequest(f"{lora[0]} is a LoRA setting, but ftserve.training_type is 'full'.", param=lora[0])
    method_only = [k for k in DPO_ONLY if getattr(options, k) is not None] if request.method != "dpo" else []
    method_only += ["train_on_inputs"] if request.method == "dpo" and options.train_on_inputs is not None else []
    if method_only:
        raise InvalidRequest(f"{where}{method_only[0]} does not apply to a {request.method} job.",
                             param=where + method_only[0])
    if options.from_checkpoint is not None and options.from_hf_model is not None:
        raise InvalidRequest(f"Start from {where}from_checkpoint or {where}from_hf_model, not both.",
                             param=where + "from_hf_model")


def _scheduler(options: TogetherOptions) -> dict[str, Any]:
    kind = options.lr_scheduler_type or SDK_DEFAULTS["lr_scheduler_type"]
    args: dict[str, Any] = {"min_lr_ratio": _given(options.min_lr_ratio, SDK_DEFAULTS["min_lr_ratio"])}
    if kind == "cosine":
        args["num_cycles"] = _given(options.scheduler_num_cycles, SDK_DEFAULTS["scheduler_num_cycles"])
    return {"lr_scheduler": {"lr_scheduler_type": kind, "lr_scheduler_args": args}}


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _tag(job_id: str) -> str:
    """A short, lowercase mark of the ftserve job, carried in the suffix of the Together job it made."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:TAG_LENGTH]


def _suffix(suffix: str | None, job_id: str) -> str:
    if not suffix:
        return f"ftserve-{_tag(job_id)}"
    return f"{suffix[:SUFFIX_LIMIT - TAG_LENGTH - 1]}-{_tag(job_id)}"


def _filename(path: Path) -> str:
    return f"ftserve-{digest(path)}.jsonl"


def _endpoint_name(model: str) -> str:
    tail = model.rstrip("/").split("/")[-1].lower()
    return "".join(c if c.isalnum() else "-" for c in tail).strip("-")[:63] or "ftserve-model"


def _epoch(stamp: str) -> int:
    moment = datetime.fromisoformat(stamp)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _event(position: str, event: Any) -> RemoteEvent:
    level = LEVELS.get(event.level or "", "info")
    if event.type in ERROR_EVENTS:
        level = "error"
    elif event.type in ("warning", "billing_limit"):
        level = "warn"
    data = {key: getattr(event, key) for key in ("step", "total_steps", "token_count", "checkpoint_path", "wandb_url")
            if getattr(event, key, None) is not None}
    return RemoteEvent(position, _epoch(event.created_at), event.message, level, "message",
                       {"together_type": event.type, **data})


def _error(status: str, events: list[dict[str, Any]]) -> RemoteError | None:
    """Together keeps a failed job's reason in its events, not on the job."""
    if STATUSES.get(status) != "failed":
        return None
    reasons = [e.get("message") for e in events if e.get("type") in ERROR_EVENTS or e.get("level") == "error"]
    message = next((m for m in reversed(reasons) if m), None)
    return RemoteError(status, message or f"Together reported '{status}' without a reason; see the job's events")
