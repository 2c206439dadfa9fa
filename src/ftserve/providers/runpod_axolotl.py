"""The Axolotl config RunPod's fine-tuning worker runs, built from a job, and the rows it reads.

The worker (runpod-workers/llm-fine-tuning) hands a request's `input.args` to Axolotl as they are;
`axolotl_args` builds them with every converted or dropped field reported, and `axolotl_rows` puts
a preference file into the shape Axolotl's DPO loader reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from ftserve.domain.errors import InvalidFileFormat, InvalidRequest
from ftserve.providers.contract import Change, JobRequest, Options, Staged
from ftserve.providers.plan import Mapped, Plan, dropped

# A job's data, queued or running, is deleted this long after submission at most (RunPod's ttl limit).
MAX_TTL_HOURS = 7 * 24

# Axolotl requires a learning rate and has no default to multiply, so OpenAI's 1x is the rate
# commonly used for each kind of run.
BASE_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 1e-5}
AXOLOTL_EPOCHS = 1  # Axolotl's num_epochs default
# Axolotl keys that ftserve's fields own: `provider_options.runpod.axolotl` may not set them.
OWNED: dict[str, str] = {
    "base_model": "model",
    "datasets": "training_file",
    "test_datasets": "validation_file",
    "val_set_size": "validation_file",
    "rl": "method",
    "rl_beta": "method.dpo.hyperparameters.beta",
    "num_epochs": "hyperparameters.n_epochs",
    "batch_size": "hyperparameters.batch_size",
    "micro_batch_size": "hyperparameters.batch_size or provider_options.runpod.micro_batch_size",
    "gradient_accumulation_steps": "provider_options.runpod.gradient_accumulation_steps",
    "learning_rate": "hyperparameters.learning_rate_multiplier",
    "seed": "seed",
    "adapter": "ftserve.training_type",
    "lora_r": "ftserve.lora_rank",
    "lora_alpha": "ftserve.lora_alpha",
    "lora_dropout": "ftserve.lora_dropout",
    "lora_target_linear": "provider_options.runpod.lora_target_modules",
    "lora_target_modules": "provider_options.runpod.lora_target_modules",
    "load_in_4bit": "provider_options.runpod.load_in_4bit",
    "lr_scheduler": "provider_options.runpod.lr_scheduler",
    "sequence_len": "ftserve.max_seq_length",
    "warmup_ratio": "ftserve.warmup_ratio",
    "warmup_steps": "ftserve.warmup_ratio",
    "eval_steps": "ftserve.eval_interval",
    "save_steps": "ftserve.checkpoint_interval",
    "hub_model_id": "provider_options.runpod.hub_model_id",
    "wandb_project": "integrations",
    "wandb_name": "integrations",
    "wandb_entity": "integrations",
    "output_dir": "the worker, which writes to fine-tuning/<run_id> on the volume",
    "run_name": "the worker",
    "runpod_job_id": "the worker",
}


# Axolotl keys a tenant may set in `provider_options.runpod.axolotl`: training knobs that take numbers, flags or
# the names of Axolotl's built-in choices. Every other key is the operator's: many load code (trust_remote_code,
# plugins, a custom chat template), read or write repositories and buckets with the worker's tokens (hub_*,
# dataset paths), or change what the worker does with its volume.
AXOLOTL_TENANT = frozenset({
    "optimizer", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon", "cosine_min_lr_ratio",
    "gradient_checkpointing", "flash_attention", "sdp_attention", "sample_packing", "eval_sample_packing",
    "pad_to_sequence_len", "train_on_inputs", "group_by_length", "bf16", "fp16", "tf32", "logging_steps",
    "early_stopping_patience", "neftune_noise_alpha", "max_steps", "save_total_limit", "eval_batch_size",
    "lora_fan_in_fan_out", "loraplus_lr_ratio", "peft_use_dora", "peft_use_rslora",
})


class RunpodOptions(Options):
    hub_model_id: str | None = None
    """Push the weights to this Hugging Face repo (the connection's hf_token needs write access)."""
    micro_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    lora_target_modules: list[str] | None = None
    """Unset: every linear layer (Axolotl's lora_target_linear)."""
    load_in_4bit: bool | None = None
    """QLoRA: a 4-bit base model under a LoRA adapter."""
    lr_scheduler: str | None = None
    execution_timeout_hours: float = Field(24, gt=0, le=MAX_TTL_HOURS)
    """RunPod stops a request after its endpoint's execution timeout, 10 minutes unless this overrides it."""
    axolotl: dict[str, Any] = Field(default_factory=dict)
    """Further Axolotl config keys, sent as they are; keys ftserve's own fields set are refused."""

    # Operator's: hub_model_id pushes the weights to Hugging Face with the worker's hf_token.
    TENANT: ClassVar[frozenset[str]] = frozenset({
        "micro_batch_size", "gradient_accumulation_steps", "lora_target_modules", "load_in_4bit", "lr_scheduler",
        "execution_timeout_hours", "axolotl",
    })
    # Keys ftserve's own fields set pass the list, so that `_provider_options` refuses them naming the field to use.
    TENANT_KEYS: ClassVar[dict[str, frozenset[str]]] = {"axolotl": AXOLOTL_TENANT | frozenset(OWNED)}


# The caller's fields that go to Axolotl under its own names, or nowhere.
COMMON: dict[str, Mapped] = {
    "hyperparameters.n_epochs": Mapped("num_epochs", "Axolotl's name for the epochs"),
    "hyperparameters.beta": Mapped("rl_beta", "Axolotl's name for DPO's beta"),
    "ftserve.max_seq_length": Mapped("sequence_len", "Axolotl's name for the longest sequence in tokens"),
    "ftserve.eval_interval": Mapped("eval_steps", "Axolotl's name for the steps between evaluations"),
    "ftserve.checkpoint_interval": Mapped("save_steps", "Axolotl's name for the steps between checkpoints"),
    "ftserve.warmup_ratio": Mapped("warmup_ratio"),
    "seed": Mapped("seed"),
    "suffix": dropped("the worker names its output by run_id; to name a Hub repo, set provider_options.runpod.hub_model_id"),
    "metadata": dropped("a RunPod request has no metadata"),
    "ftserve.num_processes": dropped("the endpoint's worker trains on the GPUs its configuration gives it"),
    "ftserve.packing": dropped("the provider decides how examples are batched"),
    "ftserve.gradient_checkpointing": dropped(
        "Axolotl has its own switch: set provider_options.runpod.axolotl.gradient_checkpointing"),
}


def axolotl_args(request: JobRequest, options: RunpodOptions, staged: Staged | None, *, has_wandb_key: bool,
                 output_dir: str) -> Plan:
    """The Axolotl config for `request`, with what was converted or dropped on the way."""
    plan = Plan(request, where="input.args.")
    _data(plan, staged)
    _adapter(plan, options)
    plan.map(COMMON)
    _batch(plan, options)
    training_type = request.options.get("training_type", "lora")
    base = BASE_LEARNING_RATE[training_type]
    if plan.learning_rate("learning_rate", base, "Axolotl", f"the usual {training_type} rate, as Axolotl "
                          "has no default:") is None:
        plan.put("learning_rate", base)  # Axolotl requires one
    _wandb(plan, has_key=has_wandb_key)
    _provider_options(plan, options)
    plan.put("output_dir", output_dir)
    return plan


def _data(plan: Plan, staged: Staged | None) -> None:
    request = plan.request
    plan.put("base_model", request.model)
    plan.put("datasets", [_dataset(request, staged.training if staged else "<training_file>")])
    if request.validation_file is not None:
        path = staged.validation if staged and staged.validation else "<validation_file>"
        # A JSON file loads as one "train" split, which is the split to evaluate on.
        plan.put("test_datasets", [{**_dataset(request, path), "split": "train"}])
    if request.method == "dpo":
        plan.put("rl", "dpo")


def _dataset(request: JobRequest, path: str) -> dict[str, Any]:
    if request.method == "dpo":
        # stage_data lifts each row's input.messages to messages; the outputs keep OpenAI's names.
        return {"path": path, "ds_type": "json", "type": "chat_template.default", "field_messages": "messages",
                "field_chosen": "preferred_output", "field_rejected": "non_preferred_output"}
    return {"path": path, "ds_type": "json", "type": "chat_template", "field_messages": "messages"}


def _adapter(plan: Plan, options: RunpodOptions) -> None:
    given = plan.request.options
    lora = {k: given[k] for k in ("lora_rank", "lora_alpha", "lora_dropout") if k in given}
    if given.get("training_type") == "full":
        if options.load_in_4bit:
            raise InvalidRequest("provider_options.runpod.load_in_4bit trains a QLoRA adapter; "
                                 "it cannot go with ftserve.training_type 'full'.",
                                 param="ftserve.provider_options.runpod.load_in_4bit")
        plan.put("adapter", None, source="ftserve.training_type", given="full",
                 reason="Axolotl runs a full fine-tune when no adapter is set")
        for key, value in lora.items():
            plan.drop(f"ftserve.{key}", value, "a full fine-tune has no LoRA adapter")
        return
    quantised = bool(options.load_in_4bit) or given.get("training_type") == "qlora"
    adapter = "qlora" if quantised else "lora"
    if "training_type" in given:
        plan.put("adapter", adapter, source="ftserve.training_type", given=given["training_type"],
                 reason="Axolotl's adapter setting" + (" (QLoRA with load_in_4bit)" if adapter == "qlora" else ""))
    else:
        plan.put("adapter", adapter)
    if "lora_rank" in lora:
        plan.put("lora_r", lora["lora_rank"], source="ftserve.lora_rank", given=lora["lora_rank"],
                 reason="Axolotl's name for the LoRA rank")
    for key in ("lora_alpha", "lora_dropout"):
        if key in lora:
            plan.put(key, lora[key])
    if options.lora_target_modules is not None:
        plan.put("lora_target_modules", options.lora_target_modules)
    else:
        plan.put("lora_target_linear", True)
    if quantised:
        plan.put("load_in_4bit", True)


def _batch(plan: Plan, options: RunpodOptions) -> None:
    batch = plan.given("hyperparameters.batch_size")
    accumulation = options.gradient_accumulation_steps
    if batch is None:
        if options.micro_batch_size is not None:
            plan.put("micro_batch_size", options.micro_batch_size)
        if accumulation is not None:
            plan.put("gradient_accumulation_steps", accumulation)
        return
    if options.micro_batch_size is not None:
        raise InvalidRequest(
            "Set either hyperparameters.batch_size or provider_options.runpod.micro_batch_size, not both: "
            "Axolotl's batch is micro_batch_size x gradient_accumulation_steps.",
            param="ftserve.provider_options.runpod.micro_batch_size",
        )
    accumulation = accumulation or 1
    if batch % accumulation:
        raise InvalidRequest(
            f"hyperparameters.batch_size {batch} is not a multiple of "
            f"provider_options.runpod.gradient_accumulation_steps {accumulation}.",
            param="ftserve.provider_options.runpod.gradient_accumulation_steps",
        )
    plan.put("micro_batch_size", batch // accumulation, source="hyperparameters.batch_size", given=batch,
             reason=f"Axolotl's batch is micro_batch_size x gradient_accumulation_steps ({accumulation}) "
                    "on the endpoint's one GPU")
    plan.put("gradient_accumulation_steps", accumulation)


def _wandb(plan: Plan, *, has_key: bool) -> None:
    integrations = plan.request.integrations or []
    for integration in integrations:
        wandb = integration.get("wandb") or {}
        if not has_key:
            raise InvalidRequest("A wandb integration needs the RunPod provider's wandb_api_key, "
                                 "which this server does not configure.", param="integrations")
        settings = {f"wandb_{key}": wandb[key] for key in ("project", "name", "entity") if wandb.get(key)}
        plan.native.update(settings)
        plan.converted.append(Change("integrations", integrations, "input.args.wandb_project", settings,
                                     "Axolotl reports to W&B through its wandb_* settings"))
        if wandb.get("tags"):
            plan.drop("integrations.wandb.tags", wandb["tags"], "Axolotl has no W&B tags setting")


def _provider_options(plan: Plan, options: RunpodOptions) -> None:
    if options.hub_model_id is not None:
        plan.put("hub_model_id", options.hub_model_id)
    if options.lr_scheduler is not None:
        plan.put("lr_scheduler", options.lr_scheduler)
    for key, value in options.axolotl.items():
        if key in OWNED:
            raise InvalidRequest(
                f"provider_options.runpod.axolotl.{key} is set from {OWNED[key]}; set it there instead.",
                param=f"ftserve.provider_options.runpod.axolotl.{key}",
            )
        plan.put(key, value)


def axolotl_rows(path: Path, method: str, param: str) -> bytes:
    """The file as Axolotl reads it: chat rows as they are; preference rows with input.messages lifted to messages.

    Axolotl's chat_template.default DPO type reads the prompt from a top-level field only.
    """
    data = path.read_bytes()
    if method != "dpo":
        return data
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(json.dumps({"messages": row["input"]["messages"], "preferred_output": row["preferred_output"],
                                    "non_preferred_output": row["non_preferred_output"]}, ensure_ascii=False))
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidFileFormat(f"not an OpenAI preference row ({error})", line=number, param=param) from error
    return ("\n".join(rows) + "\n").encode("utf-8")
