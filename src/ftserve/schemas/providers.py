"""Wire types of ftserve's provider endpoints under `/v1/ftserve`: dry runs, providers, deployments."""

from __future__ import annotations

from typing import Any, Literal

from ftserve.schemas.common import Request, Wire


class ParameterChange(Wire):
    field: str
    """The OpenAI-side name, dotted: `hyperparameters.learning_rate_multiplier`, `ftserve.lora_rank`, `seed`."""
    value: Any
    native: str | None
    """Where it went in the provider's request; null when it was dropped."""
    native_value: Any = None
    reason: str


class JobEstimate(Wire):
    trained_tokens: int
    epochs: int
    cost_usd: float | None
    basis: str
    memory_gb: float | None = None
    """This server's engine: the job's estimated peak memory in GiB (docs/training.md, "Memory estimate")."""
    memory_limit_gb: float | None = None
    """This server's engine: the memory a job may use (FTSERVE_TRAIN_MEMORY_GB)."""


class Resolution(Wire):
    """What creating a job would send, where, and what it would cost, without creating it."""

    object: Literal["ftserve.resolution"] = "ftserve.resolution"
    provider: str
    """`local`, or the configured provider's name."""
    kind: str
    model: str
    """The base model in the provider's own naming."""
    native: dict[str, Any]
    """The provider's create request, as sent; file references are placeholders until the data is staged."""
    converted: list[ParameterChange]
    dropped: list[ParameterChange]
    estimate: JobEstimate | None


class ProviderCapabilities(Wire):
    methods: list[str]
    training_types: list[str]
    data: str
    serving: str
    events: bool
    checkpoints: bool
    pause: bool
    deploy: bool
    cost_estimate: bool


class ProviderObject(Wire):
    object: Literal["ftserve.provider"] = "ftserve.provider"
    name: str
    kind: str
    capabilities: ProviderCapabilities


class ProviderList(Wire):
    object: Literal["list"] = "list"
    data: list[ProviderObject]


class ProviderModel(Wire):
    object: Literal["ftserve.provider.model"] = "ftserve.provider.model"
    id: str
    """The model in the provider's naming; prefix it with the provider's name to train it here."""
    methods: list[str]
    context_length: int | None


class ProviderModelList(Wire):
    object: Literal["list"] = "list"
    data: list[ProviderModel]


class DeploymentRequest(Request):
    model: str
    """A fine-tuned model that a hosted job made."""


class DeploymentObject(Wire):
    object: Literal["ftserve.deployment"] = "ftserve.deployment"
    id: str
    model: str
    """ftserve's name of the model."""
    provider: str
    provider_model: str
    """What to call at the provider once the deployment is ready."""
    status: str
