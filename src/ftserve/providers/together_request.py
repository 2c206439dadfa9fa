"""The body Together's `POST /v1/fine-tunes` takes, built from a job, in the shape of the SDK's `FinetuneRequest`.

Values the caller left on "auto" take the defaults the SDK's own `fine_tuning.create` would send
(`SDK_DEFAULTS`), so the dry run is exactly what Together receives. The job's suffix carries a tag
of the ftserve job id (`tag`): Together has no idempotency token, and `submit` finds a job by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import Change, JobRequest, Options, Reference, Staged, chosen
from ftserve.providers.plan import Mapped, Plan, dropped, epochs_of, steps

# What `fine_tuning.create` sends for arguments it is not given (together 3.1.1); a test reads them
# back from its signature, so an SDK that changes a default fails the test, not a job.
SDK_DEFAULTS: dict[str, Any] = {
    "n_epochs": 1, "learning_rate": 1e-5, "batch_size": "max", "packing": True, "n_checkpoints": 1,
    "n_evals": 0, "lr_scheduler_type": "cosine", "min_lr_ratio": 0.0, "scheduler_num_cycles": 0.5,
    "warmup_ratio": 0.0, "max_grad_norm": 1.0, "weight_decay": 0.0, "lora_dropout": 0,
    "lora_trainable_modules": "all-linear",
}
SUFFIX_LIMIT = 40
TAG_LENGTH = 10
LORA_KNOBS = ("lora_rank", "lora_alpha", "lora_dropout")
QLORA_AS_LORA = "; a LoRA adapter, on a base of Together's precision (it has no 4-bit QLoRA base)"
DPO_ONLY = ("rpo_alpha", "simpo_gamma", "dpo_normalize_logratios_by_length")
RENAMED: dict[str, Mapped] = {
    "seed": Mapped("random_seed", "Together's name for the seed"),
    "metadata": dropped("Together jobs carry no metadata"),
    "ftserve.num_processes": dropped("Together chooses the machines a job trains on"),
    "ftserve.packing": dropped("the provider decides how examples are batched"),
    "ftserve.gradient_checkpointing": dropped("the provider manages training memory itself"),
}


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

    # Operator's: from_hf_model and hf_model_revision read, and hf_output_repo_name writes, Hugging Face with the
    # connection's hf_api_token.
    TENANT: ClassVar[frozenset[str]] = frozenset({
        "n_checkpoints", "n_evals", "lr_scheduler_type", "min_lr_ratio", "scheduler_num_cycles", "weight_decay",
        "max_grad_norm", "gradient_accumulation_steps", "train_on_inputs", "packing", "lora_trainable_modules",
        "train_vision", "dpo_normalize_logratios_by_length", "rpo_alpha", "simpo_gamma", "early_stopping_enabled",
        "early_stopping_patience", "early_stopping_min_delta", "early_stopping_warmup_evals",
    })
    REFERENCES: ClassVar[dict[str, Reference]] = {"from_checkpoint": Reference("job or model", step=True)}


def create_body(request: JobRequest, options: TogetherOptions, staged: Staged | None, *,
                default_rank: Callable[[], int], wandb_key: bool, wandb_base_url: str | None) -> Plan:
    """The body of Together's `POST /v1/fine-tunes` for `request`, with what was converted or dropped."""
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
            _per_run(request, count, key, native, converted, dropped)
    training_type = _training_type(request, options, converted, default_rank)
    if training_type is not None:
        native["training_type"] = training_type
    native["training_method"] = _method(request, options, converted)
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
    _wandb(request, native, converted, dropped, wandb_key, wandb_base_url)
    return plan



def _per_run(request: JobRequest, option: str, key: str, native: dict[str, Any],
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

def _training_type(request: JobRequest, options: TogetherOptions, converted: list[Change],
                   default_rank: Callable[[], int]) -> dict[str, Any] | None:
    asked = request.options.get("training_type")
    if asked == "full":
        converted.append(Change("ftserve.training_type", asked, "training_type.type", "Full", "Together's spelling"))
        return {"type": "Full"}
    knobs = [key for key in LORA_KNOBS if key in request.options]
    if not knobs and options.lora_trainable_modules is None:
        if asked in ("lora", "qlora"):
            converted.append(Change("ftserve.training_type", asked, "training_type", None, (
                "left out: Together trains a LoRA adapter at the model's default rank unless told otherwise"
                + QLORA_AS_LORA * (asked == "qlora"))))
        return None
    if asked in ("lora", "qlora"):
        converted.append(Change("ftserve.training_type", asked, "training_type.type", "Lora",
                                "Together's spelling" + QLORA_AS_LORA * (asked == "qlora")))
    rank = request.options.get("lora_rank")
    if rank is None:
        rank = default_rank()
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

def _method(request: JobRequest, options: TogetherOptions, converted: list[Change]) -> dict[str, Any]:
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

def _wandb(request: JobRequest, native: dict[str, Any], converted: list[Change], dropped: list[Change],
           wandb_key: bool, wandb_base_url: str | None) -> None:
    if not request.integrations:
        return
    wandb = next((i["wandb"] for i in request.integrations if i.get("type") == "wandb"), None)
    if wandb is None or not wandb_key:
        why = ("Together logs to W&B with the server's wandb_api_key, which this provider's configuration lacks"
               if wandb is not None else "Together integrates with W&B only")
        dropped.append(Change("integrations", request.integrations, None, reason=why))
        return
    for key, name in (("project", "wandb_project_name"), ("name", "wandb_name"), ("entity", "wandb_entity")):
        if wandb.get(key) is not None:
            native[name] = wandb[key]
            converted.append(Change(f"integrations.wandb.{key}", wandb[key], name, wandb[key],
                                    "Together takes W&B settings as flat fields (the key is the server's)"))
    if wandb_base_url:
        native["wandb_base_url"] = wandb_base_url
    if wandb.get("tags"):
        dropped.append(Change("integrations.wandb.tags", wandb["tags"], None,
                              reason="Together's W&B settings have no tags"))


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


def tag(job_id: str) -> str:
    """A short, lowercase mark of the ftserve job, carried in the suffix of the Together job it made."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:TAG_LENGTH]


def _suffix(suffix: str | None, job_id: str) -> str:
    if not suffix:
        return f"ftserve-{tag(job_id)}"
    return f"{suffix[:SUFFIX_LIMIT - TAG_LENGTH - 1]}-{tag(job_id)}"
