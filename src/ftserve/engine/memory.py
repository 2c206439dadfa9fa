"""How much memory a job needs to train, worked out from the model's config.json before any weight loads.

Pure arithmetic on the config's shape (no torch), so that the service can refuse a job at create, the dry run and
`ftserve data validate` can show the figure, and the engine can check it again before its first step. It is an
estimate of the peak, in five parts (docs/training.md, "Memory estimate"):

- weights: the base model as it is stored while training: LoRA's frozen base in the compute dtype (bf16 where
  the hardware has it, else fp32); full fine-tuning's fp32 weights with their fp32 gradients and AdamW's two fp32
  moments (16 bytes a parameter); QLoRA's NF4 base, half a byte a projection weight plus its double-quantised
  scales, the rest (embeddings, norms) in fp32 as PEFT's k-bit preparation leaves them;
- trainable: the LoRA adapter's fp32 weights, gradients and AdamW moments (rank x (in + out) of each target
  module, in every layer);
- activations: what the backward pass keeps per token, `ACTIVATION_WIDTHS` hidden-size and
  `ACTIVATION_INTERMEDIATES` MLP-size tensors per layer, plus each head's row of attention scores where attention
  is eager (the CPU's); with gradient checkpointing only each layer's input, and one layer's worth recomputed;
- logits: fp32 logits of every token in the step and cross-entropy's log-softmax of them, vocab wide;
- overhead: the process itself (Python, torch's kernels, a CUDA context), a fixed `OVERHEAD_GB`.

Tokens are counted as every row of a step at its full length, the worst case for those rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ftserve.engine.spec import JobSpec, TrainingType

GIB = 1 << 30
OVERHEAD_GB = 1.0
# Tensors the backward pass keeps per token per layer: the norms' inputs and outputs, q, k, v, the attention
# output and o_proj's input (hidden-sized), the MLP's gate, up, activation and product (intermediate-sized).
ACTIVATION_WIDTHS = 10
ACTIVATION_INTERMEDIATES = 4
# Eager attention keeps each head's scores, its fp32 softmax, and the probabilities cast back, per key position.
EAGER_SCORE_BYTES = 4
# NF4: 4 bits a weight; a block of 64 weights shares an 8-bit scale, and 256 blocks share an fp32 one (double
# quantisation).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
ADAMW_BYTES = 16
"""fp32 weight, gradient and AdamW's two moments, per trained parameter."""
LOGIT_BYTES = 8
"""fp32 logits and cross-entropy's fp32 log-softmax of them, per vocabulary entry per token."""


class OverBudget(Exception):
    """The job's memory estimate is over the memory it may use."""


class UnknownShape(Exception):
    """The config lacks a key the estimate needs (an architecture that names its shape otherwise): no estimate."""


@dataclass(frozen=True)
class Shape:
    """The parts of a decoder's config.json the estimate reads (a multimodal model's from its `text_config`)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Shape:
        """The shape of `config`. Raises `UnknownShape` naming a key the estimate cannot do without."""
        text = {**config, **(config.get("text_config") or {})}
        try:
            heads = int(text["num_attention_heads"])
            hidden = int(text["hidden_size"])
            return cls(
                layers=int(text["num_hidden_layers"]), hidden=hidden, intermediate=int(text["intermediate_size"]),
                heads=heads, kv_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or hidden // heads), vocab=int(text["vocab_size"]),
                tied=bool(text.get("tie_word_embeddings", True)),
            )
        except KeyError as error:
            raise UnknownShape(f"the model's config has no {error.args[0]}") from None
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise UnknownShape(f"the model's config does not give its shape ({error})") from None

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of a decoder layer, by the module names LoRA targets: (in, out) features. Phi-3's
        fused projections are here under their own names too."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
            "qkv_proj": (h, q + 2 * kv), "gate_up_proj": (h, 2 * i),
        }

    @property
    def linear_per_layer(self) -> int:
        """Weights of one layer's projections (attention and MLP)."""
        p = self.projections()
        return sum(a * b for name, (a, b) in p.items() if name not in ("qkv_proj", "gate_up_proj"))

    @property
    def params(self) -> int:
        """Every weight: the layers (projections and two norms each), the embeddings, the final norm, and the
        output head unless it is the embeddings. Biases, which some families have on q, k and v, are left out."""
        embeddings = self.vocab * self.hidden
        return (self.layers * (self.linear_per_layer + 2 * self.hidden) + self.hidden
                + embeddings * (1 if self.tied else 2))

    def lora_params(self, rank: int, targets: Iterable[str] | Literal["all-linear"]) -> int:
        """The adapter's weights: rank x (in + out) for each targeted projection in every layer. "all-linear" is
        every projection; a name this shape does not know counts nothing."""
        p = self.projections()
        names = [n for n in p if n not in ("qkv_proj", "gate_up_proj")] if targets == "all-linear" else list(targets)
        return self.layers * sum(rank * sum(p[name]) for name in names if name in p)


@dataclass(frozen=True)
class Job:
    """What the job asks that memory depends on."""

    training_type: TrainingType
    sequences: int
    """Rows in one step's forward pass (`sequences_per_step`)."""
    seq_len: int
    lora_rank: int = 16
    lora_targets: tuple[str, ...] | Literal["all-linear"] = "all-linear"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class Machine:
    """What the hardware does to the figures."""

    half: bool
    """The frozen base and activations in bf16 (autocast), as where the hardware has native bf16."""
    eager_attention: bool
    """Attention scores are materialised (the CPU's eager attention), rather than fused away (SDPA on CUDA)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's estimated peak memory, by part, in GiB."""

    weights_gb: float
    trainable_gb: float
    activations_gb: float
    logits_gb: float
    overhead_gb: float
    total_gb: float
    gradient_checkpointing: bool
    basis: str
    """The figure's makings in one line."""


def readable(config: Mapping[str, Any] | None) -> bool:
    """Whether an estimate can be made from `config` (a config is there, and it gives the shape)."""
    if config is None:
        return False
    try:
        Shape.of(config)
    except UnknownShape:
        return False
    return True


def sequences_per_step(method: str, batch_size: int, group_size: int = 1) -> int:
    """Rows one step runs forward: a DPO pair is two (preferred and not), a reinforcement prompt its group of
    answers."""
    if method == "dpo":
        return 2 * batch_size
    if method == "reinforcement":
        return batch_size * group_size
    return batch_size


def job_of(spec: JobSpec, longest: int) -> Job:
    """What `spec` asks, its rows as long as its longest example (`longest` tokens, cut at `max_seq_length`):
    rows are padded to the longest in their batch, so this is the longest a step can be. Packed, the same tokens
    are in rows of `max_seq_length`."""
    group = spec.reinforcement.group_size if spec.reinforcement is not None else 1
    sequences = sequences_per_step(spec.method, spec.batch_size, group)
    seq_len = max(1, min(spec.max_seq_length, longest))
    if spec.packing:
        sequences, seq_len = max(1, math.ceil(sequences * seq_len / spec.max_seq_length)), spec.max_seq_length
    return Job(spec.training_type, sequences, seq_len, spec.lora.rank, spec.lora.target_modules,
               spec.gradient_checkpointing)


def estimate(config: Mapping[str, Any], job: Job, machine: Machine) -> MemoryEstimate:
    """The peak memory of training `job` on a model with `config` on `machine`. Raises `UnknownShape`."""
    shape = Shape.of(config)
    act_bytes = 2 if machine.half else 4
    weights: float
    if job.training_type == "full":
        weights = shape.params * ADAMW_BYTES
    elif job.training_type == "qlora":
        quantised = shape.layers * shape.linear_per_layer
        weights = quantised * NF4_BYTES + (shape.params - quantised) * 4
    else:
        weights = shape.params * act_bytes
    adapter = 0 if job.training_type == "full" else shape.lora_params(job.lora_rank, job.lora_targets)
    tokens = job.sequences * job.seq_len
    per_layer = (ACTIVATION_WIDTHS * shape.hidden + ACTIVATION_INTERMEDIATES * shape.intermediate) * act_bytes
    if machine.eager_attention:
        per_layer += shape.heads * job.seq_len * (EAGER_SCORE_BYTES + 2 * act_bytes)
    if job.gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden * act_bytes + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    logits = tokens * shape.vocab * LOGIT_BYTES
    parts = [weights / GIB, adapter * ADAMW_BYTES / GIB, activations / GIB, logits / GIB, OVERHEAD_GB]
    weights_gb, trainable_gb, activations_gb, logits_gb, overhead_gb = (round(p, 3) for p in parts)
    dtype = {"full": "fp32 + grads + AdamW", "qlora": "NF4", "lora": "bf16" if machine.half else "fp32"}
    basis = (
        f"{shape.params / 1e9:.2f}B params ({dtype[job.training_type]}), "
        + (f"LoRA r={job.lora_rank} {adapter / 1e6:.1f}M params, " if adapter else "")
        + f"{job.sequences} x {job.seq_len} tokens a step"
        + (" with gradient checkpointing" if job.gradient_checkpointing else "")
        + (", eager attention" if machine.eager_attention else "")
        + f", {shape.vocab:,}-token vocab, {OVERHEAD_GB:g} GiB runtime"
    )
    return MemoryEstimate(weights_gb, trainable_gb, activations_gb, logits_gb, overhead_gb,
                          round(math.fsum(parts), 2), job.gradient_checkpointing, basis)


@dataclass(frozen=True)
class Verdict:
    """Whether a job fits, with gradient checkpointing turned on if it needs it (and may have it)."""

    estimate: MemoryEstimate
    fits: bool


def plan(config: Mapping[str, Any], job: Job, machine: Machine, limit_gb: float,
         checkpointing: bool | Literal["auto"] = "auto") -> Verdict:
    """The job's estimate under `checkpointing`: `"auto"` turns it on only when the job does not fit without it
    and does with it. `fits` is False when even that is over `limit_gb`."""
    if checkpointing != "auto":
        chosen = estimate(config, _with(job, checkpointing), machine)
        return Verdict(chosen, chosen.total_gb <= limit_gb)
    without = estimate(config, _with(job, False), machine)
    if without.total_gb <= limit_gb:
        return Verdict(without, True)
    with_it = estimate(config, _with(job, True), machine)
    return Verdict(with_it, with_it.total_gb <= limit_gb)


def culprit(found: MemoryEstimate, limit_gb: float, training_type: TrainingType, batch_size: int) -> str:
    """The job's field that makes it too big, by which part is over: the model itself (its training type: over
    the limit alone, or a full fine-tune's weights and optimizer outweighing its tokens), else the tokens of a step
    (its batch size, or its sequence length once the batch is a single example)."""
    if found.weights_gb + found.trainable_gb + found.overhead_gb > limit_gb or (
            training_type == "full" and found.weights_gb > found.activations_gb + found.logits_gb):
        return "ftserve.training_type"
    return "hyperparameters.batch_size" if batch_size > 1 else "ftserve.max_seq_length"


def over_budget(found: MemoryEstimate, limit_gb: float, field: str) -> str:
    """Why a job is refused: its estimate against its limit, and what to change."""
    return (
        f"The job would need about {found.total_gb:g} GiB to train ({found.basis}), more than the {limit_gb:g} GiB "
        f"it may use (FTSERVE_TRAIN_MEMORY_GB)"
        + (", even with gradient checkpointing" if found.gradient_checkpointing else "")
        + ("; train less of it (ftserve.training_type lora, or qlora on a CUDA GPU), or pick a smaller model."
           if field == "ftserve.training_type" else f"; lower {field}.")
    )


def _with(job: Job, checkpointing: bool) -> Job:
    return Job(job.training_type, job.sequences, job.seq_len, job.lora_rank, job.lora_targets, checkpointing)
