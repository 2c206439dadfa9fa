"""Wire types of `/fine_tuning/*`, as OpenAI's spec 2.3.0 defines them.

Request models refuse unknown fields, except that ftserve's own options travel in the single
extension field `ftserve` (the SDK sends it with `extra_body={"ftserve": {...}}`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from ftserve.schemas.common import Omitted, Request, Wire
from ftserve.schemas.graders import GraderAsSent

Auto = Literal["auto"]
BatchSize = Auto | Annotated[int, Field(ge=1, le=256)]
LearningRateMultiplier = Auto | Annotated[float, Field(gt=0)]
Epochs = Auto | Annotated[int, Field(ge=1, le=50)]
Beta = Auto | Annotated[float, Field(gt=0, le=2)]
Metadata = dict[str, Annotated[str, Field(max_length=512)]]


class SupervisedHyperparameters(Request):
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    n_epochs: Epochs = "auto"


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Beta = "auto"


class ReinforcementHyperparameters(SupervisedHyperparameters):
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"
    compute_multiplier: Auto | Annotated[float, Field(gt=1e-5, le=10)] = "auto"
    eval_interval: Auto | Annotated[int, Field(ge=1)] = "auto"
    eval_samples: Auto | Annotated[int, Field(ge=1)] = "auto"


class SupervisedMethod(Request):
    hyperparameters: Omitted[SupervisedHyperparameters] = None


class DpoMethod(Request):
    hyperparameters: Omitted[DpoHyperparameters] = None


class ReinforcementMethod(Request):
    grader: GraderAsSent
    hyperparameters: Omitted[ReinforcementHyperparameters] = None
    # Used by OpenAI's RFT guide for structured outputs; not in the spec. Stored as sent.
    response_format: Omitted[dict[str, Any]] = None


class Method(Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Omitted[SupervisedMethod] = None
    dpo: Omitted[DpoMethod] = None
    reinforcement: Omitted[ReinforcementMethod] = None


class WandbIntegration(Request):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: Omitted[list[str]] = None


class Integration(Request):
    type: Literal["wandb"]
    wandb: WandbIntegration


class FtserveJobOptions(Request):
    """ftserve's own training options, sent as `ftserve` beside OpenAI's fields.

    Every option has a default that suits the base model; a trainer that cannot honour one fails
    the job with a message that names it.
    """

    training_type: Literal["lora", "qlora", "full"] = Field(
        "lora", description="`lora`: an adapter on the frozen base; `qlora`: the same on a 4-bit base (this server's "
        "engine on a CUDA GPU, with bitsandbytes); `full`: every weight.",
    )
    lora_rank: int = Field(16, ge=1, le=1024)
    lora_alpha: float = Field(32, gt=0)
    # No dropout by default: on short fine-tunes it barely regularises, and it costs a third of a CPU step.
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    max_seq_length: int = Field(2048, ge=16, le=1_048_576)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    eval_interval: int | None = Field(
        None, ge=1, description="Steps between validation batches; unset: about 50 per run, and at every epoch end."
    )
    checkpoint_interval: int | None = Field(
        None, ge=1,
        description="Steps between resumable saves; unset: about 10 per run, and at every epoch end. "
        "Checkpoints usable as models are kept for the last 3 epochs, as at OpenAI.",
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=32768, description="Reinforcement: the longest answer sampled, in tokens; unset: from "
        "`reasoning_effort` (low 32, medium 64, high 256)."
    )
    temperature: float = Field(1.0, gt=0, le=2, description="Reinforcement: the temperature answers are sampled at.")
    kl_beta: float = Field(
        0.0, ge=0, le=10, description="Reinforcement: weight of the KL penalty against the base model (0: none)."
    )
    num_processes: int = Field(
        1, ge=1, le=64,
        description="Processes one job trains in, under torch.distributed: each step's batch (`batch_size` examples, "
        "the same ones as in one process) is split between them; LoRA trains under DDP, full fine-tuning under "
        "FSDP2; on CUDA each process takes a GPU. Supervised and DPO jobs on this server's engine.",
    )
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto", description="This server's engine: recompute activations in the backward pass instead of keeping "
        "them (less memory, about a third more compute); `auto`: only when the job's memory estimate is over "
        "FTSERVE_TRAIN_MEMORY_GB without it and fits with it.",
    )
    packing: bool = Field(
        False,
        description="Supervised jobs on this server's engine: each step's examples are trained end to end in rows of "
        "up to `max_seq_length` tokens instead of padded rows, attention kept within each example; the same loss "
        "(docs/training.md, \"Packing\").",
    )
    provider_options: Omitted[dict[str, dict[str, Any]]] = Field(
        None,
        description="Options only one hosted provider has, by provider kind: "
        "`{\"together\": {\"n_checkpoints\": 3}}`. Each block is checked against that provider's options; "
        "blocks for other providers are ignored, so one request can carry options for several.",
    )


class ProviderState(Wire):
    """Where a hosted job runs and what its provider last said."""

    name: str
    """The configured provider (the model's prefix)."""
    job_id: str | None = None
    """The provider's id for the job, once submitted."""
    status: str | None = None
    """The provider's status, normalised: validating_files, queued, running, pausing, paused, cancelling,
    succeeded, failed, cancelled or unknown."""
    provider_status: str | None = None
    """The provider's own status value, as it sent it."""
    fine_tuned_model: str | None = None
    """The provider's id for the fine-tuned model."""
    serving: Literal["ready", "needs_deployment", "external"] | None = None


class FtserveJobInfo(FtserveJobOptions):
    """The `ftserve` field of a job: its options, and for a hosted job, the provider's side of it."""

    provider: Omitted[ProviderState] = None


class CreateFineTuningJobRequest(Request):
    # The spec's union of any string with OpenAI's own model names; any catalogue id is accepted.
    model: str | Literal["babbage-002", "davinci-002", "gpt-3.5-turbo", "gpt-4o-mini"]
    training_file: str
    hyperparameters: SupervisedHyperparameters | SkipJsonSchema[None] = Field(None, json_schema_extra={"deprecated": True})
    suffix: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    validation_file: str | None = None
    integrations: list[Integration] | None = None
    seed: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    method: Method | SkipJsonSchema[None] = None
    metadata: Annotated[Metadata, Field(max_length=16)] | None = None
    ftserve: FtserveJobOptions | SkipJsonSchema[None] = None


class JobError(Wire):
    code: str
    message: str
    param: str | None


class JobHyperparameters(Wire):
    batch_size: BatchSize | None = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    n_epochs: Epochs = "auto"


class FineTuningJob(Wire):
    id: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    # `pausing` and `paused` are not in the spec's enum; docs/conformance.md explains why they are sent.
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "pausing", "paused"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[Integration] | None = None
    seed: int
    estimated_finish: int | None = None
    method: Omitted[Method] = None
    metadata: Metadata | None = None
    user_provided_suffix: str | None = None
    ftserve: Omitted[FtserveJobInfo] = None


class ListPaginatedFineTuningJobsResponse(Wire):
    data: list[FineTuningJob]
    has_more: bool
    object: Literal["list"] = "list"


class FineTuningJobEvent(Wire):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Omitted[Literal["message", "metrics"]] = None
    data: Omitted[dict[str, Any]] = None


class ListFineTuningJobEventsResponse(Wire):
    data: list[FineTuningJobEvent]
    object: Literal["list"] = "list"
    has_more: bool


class CheckpointMetrics(Wire):
    step: Omitted[float] = None
    train_loss: Omitted[float] = None
    train_mean_token_accuracy: Omitted[float] = None
    valid_loss: Omitted[float] = None
    valid_mean_token_accuracy: Omitted[float] = None
    full_valid_loss: Omitted[float] = None
    full_valid_mean_token_accuracy: Omitted[float] = None


class FineTuningJobCheckpoint(Wire):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: CheckpointMetrics
    fine_tuning_job_id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"


class ListFineTuningJobCheckpointsResponse(Wire):
    data: list[FineTuningJobCheckpoint]
    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class CreateFineTuningCheckpointPermissionRequest(Request):
    project_ids: list[str] = Field(min_length=1)


class FineTuningCheckpointPermission(Wire):
    id: str
    created_at: int
    project_id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"


class ListFineTuningCheckpointPermissionResponse(Wire):
    data: list[FineTuningCheckpointPermission]
    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class DeleteFineTuningCheckpointPermissionResponse(Wire):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool
