"""The provider contract: what every place a job can run (the local engine, a hosted service) answers.

One OpenAI-shaped job (`JobRequest`) goes in. A provider says what it can do (`capabilities`),
which base models it trains (`list_base_models`), and, without side effects, the exact native
request it would send for the job with every parameter it converted or dropped (`resolve`) and
what the job will consume (`estimate`). Hosted providers also run the job: `stage_data`, then an
idempotent `submit`, then `get`, `list`, `cancel`, `events`, `checkpoints`, and `pause`, `resume`
and `deploy` where the provider has them. The local engine's lifecycle is the worker's own lease
loop (`providers.base.Trainer`), so it implements only the first half.

Adapters translate and nothing more: no database writes, no global state, no event loop. Their
calls block, and the worker's reconcile loop runs them in its own thread. Credentials come from
the server's provider configuration (`Connection`), never from the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel as Record
from pydantic import ConfigDict

from ftserve.domain.errors import FtserveError, InvalidRequest
from ftserve.domain.jobs import MethodType
from ftserve.domain.tokens import tokens_of

ProviderKind = Literal["local", "openai_compatible", "together", "fireworks", "bedrock", "runpod"]

RemoteStatus = Literal[
    "validating_files", "queued", "running", "pausing", "paused", "cancelling",
    "succeeded", "failed", "cancelled", "unknown",
]
"""A provider's job status, normalised. Each adapter maps its provider's raw statuses through a
table; a raw status missing from the table is `unknown`, never a guess at an active one."""

TERMINAL_REMOTE: frozenset[RemoteStatus] = frozenset({"succeeded", "failed", "cancelled"})

Serving = Literal["ready", "needs_deployment", "external"]
"""How a finished model becomes callable: at once (`ready`), after an explicit, billed deployment
(`needs_deployment`), or by serving the weights yourself (`external`)."""


@dataclass(frozen=True)
class Reference:
    """An option that names something in the provider account (a job, a model): the account holds every
    tenant's work, so a tenant may name only what this server's database shows its own project made there."""

    what: str
    """What it names, for the refusal: `job or model`, `model`."""
    jobs: bool = True
    """A remote job id of the project's jobs counts."""
    models: bool = True
    """A remote model id of the project's models and checkpoints counts."""
    step: bool = False
    """The id may end in `:<step>`, naming a checkpoint of it."""


class Options(Record):
    """Base of each provider's typed options block: unknown keys are an error, not silently dropped.

    Who may set what is data beside the fields: a tenant (`ftserve.provider_options.<kind>`) only the
    options in `TENANT`, and the `REFERENCES` to its own jobs and models; every other option reaches the
    operator's account (repositories, keys, networks, code) and is the operator's, set in the provider's
    configuration (`options`), which applies to every job under what the tenant sets.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    TENANT: ClassVar[frozenset[str]] = frozenset()
    REFERENCES: ClassVar[Mapping[str, Reference]] = {}
    TENANT_KEYS: ClassVar[Mapping[str, frozenset[str]]] = {}
    """Free-form options (objects sent on as they are) whose keys a tenant may set only from this list."""


class Connection(Record):
    """Base of each provider's server-side connection settings (credentials, region, buckets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Parent:
    """The fine-tuned model on this server that a job's `model` names, which the job continues from."""

    name: str
    base: str
    """The catalogue model at the root of its lineage."""
    training_type: Literal["lora", "full"]
    """How it was trained: an adapter on `base`, or full weights."""
    path: Path
    """Its saved model directory on this machine (with an object store, staged before the engine starts)."""


@dataclass(frozen=True)
class JobRequest:
    """One fine-tuning job as a provider sees it: OpenAI's fields, files on local disk, the provider's model id."""

    job_id: str
    """ftserve's job id; hosted providers use it as the idempotency key of `submit`."""
    model: str
    """The base model in the provider's own naming (the `together/` or `remote-NAME/` prefix removed)."""
    method: MethodType
    hyperparameters: dict[str, Any]
    """OpenAI's method hyperparameters as requested; `"auto"` where the caller left the choice to the provider."""
    training_file: Path
    training_examples: int
    training_tokens: int | None = None
    """The training file's tokens as counted when it was uploaded (`tokens_of`'s rule); None for a file stored
    before ftserve counted them. `trained_tokens` falls back to counting."""
    validation_file: Path | None = None
    validation_examples: int = 0
    method_config: dict[str, Any] = field(default_factory=dict)
    """The rest of the method block (a reinforcement job's grader)."""
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """ftserve's common training options the caller set (`training_type`, `lora_rank`, `warmup_ratio`, ...)."""
    provider_options: dict[str, Any] = field(default_factory=dict)
    """This provider's own options block, as sent in `ftserve.provider_options.<kind>`."""
    output_dir: Path | None = None
    """Where a job trained on this server writes (the engine's own directory); hosted providers ignore it."""
    parent: Parent | None = None
    """Set when `model` names a fine-tuned model of this server; only the local engine trains from one."""

    def trained_tokens(self) -> int:
        """The training file's tokens, at four characters a token: as counted at upload, or counted now."""
        return self.training_tokens if self.training_tokens is not None else tokens_of(self.training_file)


@dataclass(frozen=True)
class Change:
    """One parameter as `resolve` treated it: sent under another name or unit, or not sent at all."""

    field: str
    """The OpenAI-side name, dotted: `hyperparameters.learning_rate_multiplier`, `ftserve.lora_rank`, `seed`."""
    value: Any
    native: str | None
    """Where it went in the native request (dotted), or None when it was dropped."""
    native_value: Any = None
    reason: str = ""


@dataclass(frozen=True)
class Resolved:
    """A dry run: the request a provider would send, and what it did to get there."""

    provider: str
    native: dict[str, Any]
    converted: list[Change] = field(default_factory=list)
    dropped: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class Estimate:
    trained_tokens: int
    """Tokens the provider will train on: the training file's tokens times the epochs."""
    epochs: int
    cost_usd: float | None = None
    """Only where the provider publishes a price or an estimate API."""
    basis: str = ""
    """How the figures were reached, in a sentence."""
    memory_gb: float | None = None
    """The memory training will take at its peak, in GiB, where the provider trains here (engine.memory)."""
    memory_limit_gb: float | None = None
    """The memory a job may use here (FTSERVE_TRAIN_MEMORY_GB), beside `memory_gb`."""


@dataclass(frozen=True)
class Capabilities:
    methods: tuple[MethodType, ...]
    training_types: tuple[Literal["lora", "qlora", "full"], ...]
    data: Literal["local", "file_api", "dataset", "s3", "hf_dataset"]
    """Where training data goes: the local disk, a files API, a dataset resource, S3, a Hugging Face dataset."""
    serving: Serving
    events: bool = False
    checkpoints: bool = False
    pause: bool = False
    deploy: bool = False
    cost_estimate: bool = False


@dataclass(frozen=True)
class BaseModelInfo:
    id: str
    methods: tuple[MethodType, ...]
    context_length: int | None = None


@dataclass(frozen=True)
class Staged:
    """Where the provider reads the job's data: file ids, dataset ids, S3 URIs or dataset names."""

    training: str
    validation: str | None = None


@dataclass(frozen=True)
class RemoteError:
    code: str
    message: str


@dataclass(frozen=True)
class RemoteJob:
    """A hosted job as the provider reports it, normalised, with the raw payload kept."""

    id: str
    status: RemoteStatus
    provider_status: str
    """The provider's own status value, never lost."""
    model: str | None = None
    """The provider's id of the fine-tuned model, once it has one."""
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    error: RemoteError | None = None
    serving: Serving | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteEvent:
    id: str
    created_at: int
    message: str
    level: Literal["info", "warn", "error"] = "info"
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class RemoteCheckpoint:
    step: int
    created_at: int
    metrics: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    """The provider's id for a model made from this checkpoint, where it has one."""


@dataclass(frozen=True)
class Deployment:
    id: str
    model: str
    """What to call for inference once the deployment is ready."""
    status: str
    raw: dict[str, Any] = field(default_factory=dict)


class ProviderError(FtserveError):
    """The provider refused or failed the request."""

    status_code = 502
    type = "server_error"
    code = "provider_error"

    def __init__(self, message: str | None = None, *, retryable: bool = False, status: int | None = None,
                 code: str | None = None):
        super().__init__(message, code=code)
        self.retryable = retryable
        """A network error, a rate limit or a 5xx: the same call may succeed later."""
        self.status = status


class ProviderUnsupported(InvalidRequest):
    """The provider has no such operation."""

    code = "unsupported_by_provider"


@runtime_checkable
class Provider(Protocol):
    """What every provider answers without running anything."""

    kind: ClassVar[ProviderKind]
    name: str
    """The configured name: the model prefix (`together`, `remote-b`) that routes jobs here."""

    def capabilities(self) -> Capabilities: ...
    def list_base_models(self) -> list[BaseModelInfo]: ...
    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        """The native request for `request`; file references are placeholders until the data is staged."""
        ...
    def estimate(self, request: JobRequest) -> Estimate: ...


@runtime_checkable
class HostedProvider(Provider, Protocol):
    """A provider that runs jobs itself. Every call may raise `ProviderError`.

    What only some providers can do is a protocol of its own below (`Listable`, `HasEvents`,
    `HasCheckpoints`, `Pausable`, `Deployable`): an adapter has the method or not, and its
    `capabilities` say which (`capabilities_of`), so a flag and a method can never disagree.
    """

    def stage_data(self, request: JobRequest) -> Staged: ...
    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        """Start the job. Calling it again for the same `job_id` returns the same remote job where the provider allows it."""
        ...
    def get(self, remote_id: str) -> RemoteJob: ...
    def cancel(self, remote_id: str) -> RemoteJob: ...


@runtime_checkable
class Listable(Protocol):
    def list(self, limit: int = 20) -> list[RemoteJob]: ...


@runtime_checkable
class HasEvents(Protocol):
    def events(self, remote_id: str, after: str | None = None) -> list[RemoteEvent]:
        """Events newer than the event `after` (all when None), oldest first."""
        ...


@runtime_checkable
class HasCheckpoints(Protocol):
    def checkpoints(self, remote_id: str) -> list[RemoteCheckpoint]: ...


@runtime_checkable
class Resumable(Protocol):
    """Continues a paused job: one this server paused, or one the provider paused itself."""

    def resume(self, remote_id: str) -> RemoteJob: ...


@runtime_checkable
class Pausable(Resumable, Protocol):
    def pause(self, remote_id: str) -> RemoteJob: ...


@runtime_checkable
class Deployable(Protocol):
    def deploy(self, model: str) -> Deployment: ...


OPERATIONS: dict[str, type] = {"events": HasEvents, "checkpoints": HasCheckpoints, "pause": Pausable,
                               "deploy": Deployable}
"""The capability flags that say whether a provider has an operation, by the protocol that holds it."""


def capabilities_of(provider: object, *, methods: tuple[MethodType, ...],
                    training_types: tuple[Literal["lora", "qlora", "full"], ...],
                    data: Literal["local", "file_api", "dataset", "s3", "hf_dataset"], serving: Serving,
                    cost_estimate: bool = False) -> Capabilities:
    """A provider's capabilities: what it declares, and the operations its class has."""
    return Capabilities(methods, training_types, data, serving, cost_estimate=cost_estimate,
                        **{flag: isinstance(provider, protocol) for flag, protocol in OPERATIONS.items()})


def lacking(provider: object, operation: str) -> ProviderUnsupported:
    """The error for an operation `provider` does not have, with its adapter's reason (`LACKS`) where it gives one."""
    reasons: dict[str, str] = getattr(provider, "LACKS", {})
    name = getattr(provider, "name", "this provider")
    return ProviderUnsupported(reasons.get(operation) or f"{name} has no {operation} operation.")


def no_reinforcement(why: str) -> ProviderUnsupported:
    """The refusal of a reinforcement job by a provider that cannot run OpenAI's graders: `why`, then where such
    jobs do run, against the job's `method`."""
    return ProviderUnsupported(
        f"{why} Reinforcement jobs run where OpenAI graders run: this server's engine, or an openai_compatible "
        "provider.", param="method",
    )


def map_status(table: dict[str, RemoteStatus], raw: str | None) -> RemoteStatus:
    """A raw provider status through its adapter's table; a value the table lacks is `unknown`."""
    return table.get(raw or "", "unknown")


def chosen(request: JobRequest, name: str) -> Any | None:
    """A hyperparameter the caller set, or None where it is `"auto"` or absent (the provider's default applies)."""
    value = request.hyperparameters.get(name, "auto")
    return None if value == "auto" else value
