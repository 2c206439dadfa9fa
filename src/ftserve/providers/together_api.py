"""Together AI's fine-tuning API, through the official `together` SDK (3.x).

Data goes up through the files API: Together reads OpenAI chat and preference JSONL as they are.
The create body is built in `together_request`, in the shape of the SDK's own `FinetuneRequest`, and posted to the
path the SDK's `fine_tuning.create` posts to. `create` itself first fetches the model's limits and
a price estimate and fills defaults on its own, so what it sends is not the dry run; posting the
body directly makes `resolve(...).native` exactly what Together receives. Values the caller left on
"auto" take the defaults `create` would send (`SDK_DEFAULTS`).

Together has no idempotency token: the job's suffix carries a tag of the ftserve job id, and
`submit` looks for a job with that tag before it creates one. There is no pause (a job continues
from a checkpoint with `from_checkpoint` instead). A LoRA result is callable at once on models with
serverless LoRA; anything else needs a dedicated endpoint, which `deploy` makes.
"""

from __future__ import annotations

import builtins  # inside the class, the adapter's own `list` method hides the builtin
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

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
    no_reinforcement,
)
from ftserve.providers.plan import epochs_of, options_of
from ftserve.providers.together_request import SDK_DEFAULTS, TogetherOptions, create_body
from ftserve.providers.together_request import tag as together_tag
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

DEFAULT_BASE_URL = "https://api.together.ai"
LEVELS: dict[str, Literal["info", "warn", "error"]] = {
    "warning": "warn", "legacy_iwarning": "warn", "error": "error", "legacy_ierror": "error",
}
ERROR_EVENTS = ("job_error", "job_user_error")
SERVING: dict[str, Serving] = {"Lora": "ready", "Full": "needs_deployment"}
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
        if request.method == "reinforcement":
            raise no_reinforcement("Together's fine-tuning API trains with SFT and DPO only; it takes no grader.")
        plan = create_body(request, options_of(request, TogetherOptions, self.kind), staged,
                           default_rank=lambda: self._default_rank(request.model),
                           wandb_key=bool(self.connection.wandb_api_key), wandb_base_url=self.connection.wandb_base_url)
        return plan.resolved(self.name)

    def _default_rank(self, model: str) -> int:
        """The LoRA rank the SDK's create fills in when none is given: the model's own default."""
        with self.sdk.calling():
            return int(self.sdk.client.fine_tuning.model_limits(model_name=model).lora_training.default_rank)

    def estimate(self, request: JobRequest) -> Estimate:
        asked = chosen(request, "n_epochs")
        epochs = epochs_of(request, SDK_DEFAULTS["n_epochs"])
        local = request.trained_tokens() * epochs
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
        tag = together_tag(request.job_id)
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
