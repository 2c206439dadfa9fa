"""The job spec the worker hands the engine: every choice already made, nothing left to look up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["supervised", "dpo", "reinforcement"]
TrainingType = Literal["lora", "qlora", "full"]
"""`qlora`: a LoRA adapter trained on a 4-bit NF4 base (CUDA only); saved and served as `lora` is."""


Device = Literal["auto", "cpu", "cuda"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSource(Frozen):
    """Where a base model's weights come from; exactly one of `path`, `hub` or `package` is set.

    `gguf_file` names a GGUF file inside the directory (or package); it is dequantised once into
    a plain safetensors copy under the engine's cache dir.
    """

    id: str
    path: Path | None = None
    hub: str | None = None
    revision: str | None = None
    package: str | None = None
    gguf_file: str | None = None


class LoraOptions(Frozen):
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | Literal["all-linear"] = "all-linear"


class StartFrom(Frozen):
    """The fine-tuned model a job continues from (docs/training.md, "Continuing from a fine-tuned model"): `model`
    (the job's base) is its catalogue root. A LoRA parent's adapter goes on that base and trains on (or is merged
    into it, for a full child); a full parent's saved weights are where a full child starts."""

    model: str
    """Its name (`ft:...` or a checkpoint's), recorded in the child's manifest."""
    path: Path
    training_type: Literal["lora", "full"]
    """How the parent was trained: an adapter (`lora`, QLoRA's too) or full weights (`full`) at `path`."""


class PythonGraderLimits(Frozen):
    """The sandbox a python grader runs in (the operator's settings)."""

    enabled: bool = True
    cpu_seconds: float = 10.0
    wall_seconds: float = 30.0
    memory_mb: int = 512


class Reinforcement(Frozen):
    """A reinforcement job's rollouts and rewards, every "auto" already resolved (docs/reinforcement.md).

    Each step takes `batch_size` prompts, samples `group_size` completions of each from the current policy,
    grades them with `grader` and trains on the group-relative advantages."""

    grader: dict[str, Any]
    """The job's grader as sent (OpenAI's shape), run by `ftserve.graders`."""
    group_size: int = Field(8, ge=2, le=64)
    max_completion_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_beta: float = Field(0.0, ge=0)
    clip_epsilon: float = Field(0.2, gt=0)
    eval_interval: int = Field(1, ge=1)
    """Steps between validation rounds (each also saves a checkpoint; the 3 best are kept)."""
    eval_samples: int = Field(1, ge=1)
    """Validation prompts each round answers (greedy, one answer each)."""
    python: PythonGraderLimits = PythonGraderLimits()


class JobSpec(Frozen):
    job_id: str
    method: Method
    model: ModelSource
    training_file: Path
    validation_file: Path | None = None
    output_dir: Path
    cache_dir: Path

    n_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    beta: float = Field(0.1, gt=0)
    seed: int = 0

    training_type: TrainingType = "lora"
    lora: LoraOptions = LoraOptions()
    max_seq_length: int = Field(2048, ge=16)
    gradient_checkpointing: bool = False
    """Activations recomputed in the backward pass instead of kept: less memory, about a third more compute."""
    memory_limit_gb: float | None = Field(None, gt=0)
    """The memory the job may use (FTSERVE_TRAIN_MEMORY_GB); the engine checks its estimate against it before its
    first step. Unset: the device's own memory."""
    packing: bool = False
    """Supervised only: each step's examples packed into rows of up to `max_seq_length` tokens, without padding."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    eval_interval: int | None = Field(None, ge=1)
    checkpoint_interval: int | None = Field(None, ge=1)
    keep_epoch_checkpoints: int = Field(3, ge=0)
    device: Device = "auto"
    processes: int = Field(1, ge=1)
    """Processes the job trains in (torch.distributed; `engine.distributed`), each step's batch split between them."""
    reinforcement: Reinforcement | None = None
    """Set for reinforcement jobs, and only for them."""
    start_from: StartFrom | None = None
    """Set when the job continues a fine-tuned model rather than starting from the catalogue model alone."""

    @model_validator(mode="after")
    def _reinforcement_matches_method(self) -> JobSpec:
        if (self.method == "reinforcement") != (self.reinforcement is not None):
            raise ValueError("a reinforcement job's spec has `reinforcement` (its grader), and no other job's does")
        if self.reinforcement is not None and self.processes > 1:
            raise ValueError("a reinforcement job trains in one process")
        if self.packing and self.method != "supervised":
            raise ValueError("only supervised jobs pack their examples")
        return self
