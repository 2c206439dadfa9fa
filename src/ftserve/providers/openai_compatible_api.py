"""Any service that speaks OpenAI's files and fine-tuning API: OpenAI, Azure OpenAI, Bedrock's
OpenAI-compatible endpoint, a LiteLLM proxy, or another ftserve.

The request is already in the provider's shape, so resolving is mostly passing fields through.
The `dialect` says what the far side understands beyond OpenAI's fields: another ftserve takes
ftserve's own options in the `ftserve` extension field; Azure takes its training tier in the body.
"""

from __future__ import annotations

import builtins  # inside the class, the adapter's own `list` method hides the builtin
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ftserve.domain.hyperparameters import auto_epochs
from ftserve.providers.clients import Sdk
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Change,
    Connection,
    Estimate,
    JobRequest,
    Options,
    ProviderUnsupported,
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    map_status,
)
from ftserve.providers.plan import options_of
from ftserve.providers.staging import digest, once, stage

# OpenAI's job statuses; `pausing` and `paused` are sent although the Python SDK's Literal omits them.
STATUSES: dict[str, RemoteStatus] = {
    "validating_files": "validating_files",
    "queued": "queued",
    "running": "running",
    "pausing": "pausing",
    "paused": "paused",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}

# The metadata key that ties a remote job to the ftserve job that made it, so a retried submit finds it.
JOB_TAG = "ftserve_job"
EVENT_PAGE = 100
MAX_EVENT_PAGES = 50


class OpenAICompatibleConnection(Connection):
    base_url: str
    """The API root, ending in `/v1` (Azure: `https://NAME.openai.azure.com/openai`)."""
    api_key: str = ""
    dialect: Literal["openai", "azure", "ftserve"] = "openai"
    api_version: str | None = None
    """Azure's `api-version` query parameter."""
    timeout_seconds: float = Field(60.0, gt=0)


class OpenAICompatibleOptions(Options):
    training_type: Literal["Standard", "GlobalStandard", "Developer"] | None = None
    """Azure's training tier (`trainingType`); Developer is cheaper, on capacity that may pause."""

    TENANT: ClassVar[frozenset[str]] = frozenset({"training_type"})


class OpenAICompatibleProvider:
    kind: ClassVar[Literal["openai_compatible"]] = "openai_compatible"
    Connection = OpenAICompatibleConnection
    Options = OpenAICompatibleOptions

    def __init__(self, name: str, connection: OpenAICompatibleConnection, *, client: Any = None):
        self.name = name
        self.connection = connection
        azure = connection.dialect == "azure"
        self.sdk = Sdk(name, "openai", "OpenAI", {
            "base_url": connection.base_url, "api_key": connection.api_key or "none",
            "timeout": connection.timeout_seconds,
            "default_headers": {"api-key": connection.api_key} if azure else None,
            "default_query": {"api-version": connection.api_version} if connection.api_version else None,
        }, client)
        self.LACKS = {"deploy": (
            f"{name}: Azure serves a fine-tuned model after a deployment made through Azure Resource Manager "
            "(the portal, `az cognitiveservices account deployment create`); this API cannot make one."
            if connection.dialect == "azure" else f"{name} serves fine-tuned models at once; there is nothing to deploy.")}

    def capabilities(self) -> Capabilities:
        ftserve = self.connection.dialect == "ftserve"
        return capabilities_of(
            self, methods=("supervised", "dpo", "reinforcement"),
            training_types=("lora", "full") if ftserve else ("lora",), data="file_api",
            serving="needs_deployment" if self.connection.dialect == "azure" else "ready",
        )

    def list_base_models(self) -> list[BaseModelInfo]:
        # OpenAI's model list has no flag for "fine-tunable"; every model the far side lists is offered.
        with self.sdk.calling():
            models = list(self.sdk.client.models.list())
        return [BaseModelInfo(m.id, ("supervised", "dpo")) for m in models if not m.id.startswith("ft:")]

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        options = options_of(request, OpenAICompatibleOptions, self.kind)
        native: dict[str, Any] = {
            "model": request.model,
            "training_file": staged.training if staged else "<training_file>",
        }
        if request.validation_file is not None:
            native["validation_file"] = staged.validation if staged else "<validation_file>"
        native["method"] = {"type": request.method, request.method: {
            "hyperparameters": dict(request.hyperparameters), **request.method_config,
        }}
        for key in ("seed", "suffix", "integrations"):
            if getattr(request, key) is not None:
                native[key] = getattr(request, key)
        native["metadata"] = {**(request.metadata or {}), JOB_TAG: request.job_id}
        converted = [Change("metadata", request.metadata, f"metadata.{JOB_TAG}", request.job_id,
                            "added, so a retried submit finds the job it already made")]
        dropped: list[Change] = []
        extra: dict[str, Any] = {}
        if request.options:
            if self.connection.dialect == "ftserve":
                extra["ftserve"] = dict(request.options)
            else:
                dropped += [Change(f"ftserve.{key}", value, None, reason=f"{self.name} speaks OpenAI's fields only")
                            for key, value in request.options.items()]
        if options.training_type is not None:
            if self.connection.dialect != "azure":
                raise ProviderUnsupported(
                    f"provider_options.{self.kind}.training_type is Azure's; {self.name} is not an Azure endpoint.",
                    param=f"ftserve.provider_options.{self.kind}.training_type",
                )
            extra["trainingType"] = options.training_type
        if extra:
            native["extra_body"] = extra
        return Resolved(self.name, native, converted, dropped)

    def estimate(self, request: JobRequest) -> Estimate:
        epochs = request.hyperparameters.get("n_epochs", "auto")
        epochs = auto_epochs(request.training_examples or 1) if epochs == "auto" else int(epochs)
        return Estimate(
            request.trained_tokens() * epochs, epochs,
            basis="text at 4 characters per token, times the epochs (auto epochs by OpenAI's documented rule); "
            "the API publishes no price or estimate endpoint",
        )

    def stage_data(self, request: JobRequest) -> Staged:
        def upload(path: Path, param: str) -> str:
            def send(filename: str) -> str:
                with self.sdk.calling(), path.open("rb") as data:
                    return self.sdk.client.files.create(file=(filename, data), purpose="fine-tune").id
            return once(f"ftserve-{digest(path)[:32]}.jsonl", self._uploaded, send)
        return stage(request, upload)

    def _uploaded(self, filename: str) -> str | None:
        with self.sdk.calling():
            for existing in self.sdk.client.files.list(purpose="fine-tune"):
                if existing.filename == filename and existing.status != "error":
                    return str(existing.id)
        return None

    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        native = dict(self.resolve(request, staged).native)
        with self.sdk.calling():
            for job in self.sdk.client.fine_tuning.jobs.list(metadata={JOB_TAG: request.job_id}, limit=1):
                return self._job(job)
            extra = native.pop("extra_body", None)
            job = self.sdk.client.fine_tuning.jobs.create(
                **native, extra_body=extra, extra_headers={"Idempotency-Key": f"ftserve-{request.job_id}"},
            )
        return self._job(job)

    def get(self, remote_id: str) -> RemoteJob:
        with self.sdk.calling():
            return self._job(self.sdk.client.fine_tuning.jobs.retrieve(remote_id))

    def list(self, limit: int = 20) -> list[RemoteJob]:
        with self.sdk.calling():
            return [self._job(job) for job in self.sdk.client.fine_tuning.jobs.list(limit=limit).data]

    def cancel(self, remote_id: str) -> RemoteJob:
        with self.sdk.calling():
            return self._job(self.sdk.client.fine_tuning.jobs.cancel(remote_id))

    def pause(self, remote_id: str) -> RemoteJob:
        with self.sdk.calling():
            return self._job(self.sdk.client.fine_tuning.jobs.pause(remote_id))

    def resume(self, remote_id: str) -> RemoteJob:
        with self.sdk.calling():
            return self._job(self.sdk.client.fine_tuning.jobs.resume(remote_id))

    def events(self, remote_id: str, after: str | None = None) -> builtins.list[RemoteEvent]:
        # The API pages newest first; walk back until the last event already seen.
        newer: list[RemoteEvent] = []
        cursor: str | None = None
        with self.sdk.calling():
            for _ in range(MAX_EVENT_PAGES):
                kwargs: dict[str, Any] = {"limit": EVENT_PAGE}
                if cursor:
                    kwargs["after"] = cursor
                page = self.sdk.client.fine_tuning.jobs.list_events(remote_id, **kwargs)
                for event in page.data:
                    if event.id == after:
                        return newer[::-1]
                    newer.append(RemoteEvent(
                        id=event.id, created_at=event.created_at, message=event.message, level=event.level,
                        type=event.type or "message", data=dict(event.data) if isinstance(event.data, dict) else None,
                    ))
                if not page.has_more or not page.data:
                    break
                cursor = page.data[-1].id
        return newer[::-1]

    def checkpoints(self, remote_id: str) -> builtins.list[RemoteCheckpoint]:
        with self.sdk.calling():
            found = list(self.sdk.client.fine_tuning.jobs.checkpoints.list(remote_id, limit=100))
        return sorted(
            (RemoteCheckpoint(
                step=c.step_number, created_at=c.created_at, model=c.fine_tuned_model_checkpoint,
                metrics={k: v for k, v in c.metrics.model_dump().items() if v is not None},
            ) for c in found),
            key=lambda c: c.step,
        )

    def _job(self, job: Any) -> RemoteJob:
        raw = job.model_dump(mode="json")
        error = None
        if job.error is not None and (job.error.message or job.error.code):
            error = RemoteError(job.error.code or "failed", job.error.message or "")
        return RemoteJob(
            id=job.id, status=map_status(STATUSES, job.status), provider_status=job.status,
            model=job.fine_tuned_model, trained_tokens=job.trained_tokens, estimated_finish=job.estimated_finish,
            error=error, serving="needs_deployment" if self.connection.dialect == "azure" else "ready", raw=raw,
        )
