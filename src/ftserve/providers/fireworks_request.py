"""The create request of a Fireworks fine-tuning job, built from a job: a supervised job, or a DPO job.

Fireworks batches by tokens and takes an absolute learning rate and warm-up in steps; the request
reports each conversion. The settings both kinds share sit at the top of a supervised job and in
`training_config` of a DPO job. Job ids are ftserve's, made into Fireworks resource ids.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import (
    Change,
    JobRequest,
    Options,
    ProviderUnsupported,
    Reference,
    Staged,
    chosen,
    no_reinforcement,
)
from ftserve.providers.plan import Mapped, Plan, dropped, epochs_of

RESOURCE_ID_LENGTH = 63
# The SDK declares no defaults; these are the ones Fireworks documents for its fine-tuning jobs.
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_CONTEXT = 8192
DEFAULT_EPOCHS = 1

# Options that both job kinds take (DPO inside its training_config), and those only one kind has.
TRAINING_OPTIONS = ("region", "jinja_template", "batch_size_samples", "gradient_accumulation_steps",
                    "optimizer_weight_decay")
SUPERVISED_OPTIONS = ("is_turbo", "nodes", "early_stop", "eval_auto_carveout")

# The caller's fields Fireworks takes under its own names, or not at all: before the batch, and after it.
RENAMED: dict[str, Mapped] = {
    "hyperparameters.n_epochs": Mapped("epochs", "Fireworks' name for it", int),
    "ftserve.max_seq_length": Mapped("max_context_length", "Fireworks' name for it"),
}
_NO_LORA_KNOBS = "Fireworks sets LoRA alpha and dropout itself; its jobs take only the rank"
LORA_AND_STEPS: dict[str, Mapped] = {
    "ftserve.lora_rank": Mapped("lora_rank"),
    "ftserve.lora_alpha": dropped(_NO_LORA_KNOBS),
    "ftserve.lora_dropout": dropped(_NO_LORA_KNOBS),
    "ftserve.eval_interval": dropped("Fireworks evaluates on its own schedule; its jobs take no evaluation interval"),
    "ftserve.checkpoint_interval": Mapped("sampler_checkpoint_save_interval_steps",
                                          "Fireworks' name for the steps between checkpoints that can become models"),
}
NOT_KEPT: dict[str, Mapped] = {
    "seed": dropped("Fireworks' fine-tuning jobs have no seed"),
    "metadata": dropped("Fireworks' fine-tuning jobs have no metadata"),
    "ftserve.num_processes": dropped("Fireworks chooses the machines a job trains on"),
    "ftserve.packing": dropped("the provider decides how examples are batched"),
    "ftserve.gradient_checkpointing": dropped("the provider manages training memory itself"),
}


class FireworksOptions(Options):
    """`ftserve.provider_options.fireworks`: the job settings Fireworks has and OpenAI's job lacks."""

    region: str | None = None
    jinja_template: str | None = None
    is_turbo: bool | None = None
    nodes: int | None = Field(None, ge=1)
    warm_start_from: str | None = None
    """A LoRA model (`accounts/<a>/models/<id>`) to continue training, instead of the job's base model."""
    early_stop: bool | None = None
    eval_auto_carveout: bool | None = None
    batch_size_samples: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    optimizer_weight_decay: float | None = Field(None, ge=0)
    dpo_loss: Literal["DPO", "ORPO"] | None = None

    # Operator's: region places the job (and the data) in the account's capacity where the operator chooses.
    TENANT: ClassVar[frozenset[str]] = frozenset({
        "jinja_template", "is_turbo", "nodes", "early_stop", "eval_auto_carveout", "batch_size_samples",
        "gradient_accumulation_steps", "optimizer_weight_decay", "dpo_loss",
    })
    REFERENCES: ClassVar[dict[str, Reference]] = {"warm_start_from": Reference("model", jobs=False)}



def job_body(request: JobRequest, options: FireworksOptions, staged: Staged | None, *, account: str,
             wandb_key: bool) -> Plan:
    """The create request of a Fireworks supervised or DPO job for `request`, with what was converted or dropped."""
    if request.method == "reinforcement":
        raise no_reinforcement(
            "Fireworks has no reinforcement job that takes an OpenAI grader: its RFT scores with an evaluator "
            "resource of its own."
        )
    if request.options.get("training_type") == "full":
        raise ProviderUnsupported(
            "Fireworks' managed fine-tuning trains LoRA adapters only; use ftserve.training_type 'lora'."
        )
    dpo = request.method == "dpo"
    plan = Plan(request)
    if request.options.get("training_type") == "qlora":
        plan.drop("ftserve.training_type", "qlora", "Fireworks trains LoRA adapters on a base of its own precision, "
                  "with no 4-bit (QLoRA) setting; ask for 'lora'")
    job_id = resource_id(request.job_id)
    training = _training(Plan(request, "training_config." if dpo else "", converted=plan.converted,
                                   dropped=plan.dropped), options, job_id, account)
    # Fireworks keeps display names under 64 characters; the job id is the part worth keeping whole.
    display_name = request.job_id
    if request.suffix:
        display_name = f"{request.suffix[: RESOURCE_ID_LENGTH - len(request.job_id) - 3]} ({request.job_id})"
    dataset = staged.training if staged else "<training_file>"
    validation = None
    if request.validation_file is not None:
        validation = (staged.validation if staged else None) or "<validation_file>"

    if dpo:
        for key in SUPERVISED_OPTIONS:
            if getattr(options, key) is not None:
                raise ProviderUnsupported(
                    f"provider_options.fireworks.{key} applies to supervised jobs: Fireworks' DPO job has no such setting."
                )
        if validation is not None:
            plan.drop("validation_file", str(request.validation_file), "Fireworks' DPO job takes no evaluation dataset")
        native: dict[str, Any] = {
            "dpo_job_id": job_id, "dataset": dataset, "display_name": display_name,
            "training_config": training, "loss_config": _loss(request, options, plan.converted),
        }
    else:
        if options.dpo_loss is not None:
            raise ProviderUnsupported("provider_options.fireworks.dpo_loss applies to dpo jobs only.")
        if validation is not None and options.eval_auto_carveout:
            raise InvalidRequest(
                "validation_file and provider_options.fireworks.eval_auto_carveout both choose the evaluation "
                "data; set one of them.", param="validation_file",
            )
        native = {"supervised_fine_tuning_job_id": job_id, "dataset": dataset, "display_name": display_name,
                  **training}
        if validation is not None:
            native["evaluation_dataset"] = validation
        native.update({key: getattr(options, key) for key in SUPERVISED_OPTIONS if getattr(options, key) is not None})

    wandb = _wandb(request, plan.converted, plan.dropped, wandb_key)
    if wandb is not None:
        native["wandb_config"] = wandb
    plan.map(NOT_KEPT)
    plan.native = native
    return plan

def _training(plan: Plan, options: FireworksOptions, job_id: str, account: str) -> dict[str, Any]:
    """The settings both job kinds share: top level in a supervised job, `training_config` in a DPO one."""
    request = plan.request
    if options.warm_start_from is not None:
        plan.put("warm_start_from", options.warm_start_from, source="model", given=request.model, reason=(
            "Fireworks takes a base model or a LoRA to continue, not both: the job continues "
            "provider_options.fireworks.warm_start_from, on that LoRA's own base model"))
    else:
        base = request.model if "/" in request.model else f"accounts/fireworks/models/{request.model}"
        if base != request.model:
            plan.put("base_model", base, source="model", given=request.model,
                     reason="a bare model name is one of Fireworks' public models")
        else:
            plan.put("base_model", base)
    plan.map(RENAMED)
    plan.learning_rate("learning_rate", DEFAULT_LEARNING_RATE, "Fireworks", "Fireworks' documented default")
    batch = plan.given("hyperparameters.batch_size")
    if batch is not None:
        if options.batch_size_samples is not None:
            raise InvalidRequest(
                "hyperparameters.batch_size and provider_options.fireworks.batch_size_samples both set the "
                "batch size; set one of them.", param="hyperparameters.batch_size",
            )
        context = request.options.get("max_seq_length")
        source = "ftserve.max_seq_length" if context else "Fireworks' default context"
        plan.put("batch_size", int(batch) * (context or DEFAULT_CONTEXT), source="hyperparameters.batch_size",
                 given=batch, reason=f"Fireworks counts a batch in tokens, packing examples into it: {batch} "
                                     f"examples x {context or DEFAULT_CONTEXT} tokens of context ({source})")
    per_batch = batch or options.batch_size_samples
    plan.warmup("learning_rate_warmup_steps", int(per_batch) if per_batch else None,
                epochs_of(request, DEFAULT_EPOCHS), "Fireworks",
                "Fireworks takes warmup in steps, and counting steps needs a batch size in examples: "
                "set hyperparameters.batch_size", note="; packing may change the count")
    plan.map(LORA_AND_STEPS)
    if request.suffix:
        tail = f"-{job_id}"
        head = resource_id(request.suffix)[: RESOURCE_ID_LENGTH - len(tail)].strip("-")
        plan.put("output_model", f"accounts/{account}/models/{head}{tail}", source="suffix",
                 given=request.suffix, reason="Fireworks names the model by id: the suffix, lowercased, then the "
                                              "job id so that the name is unique")
    plan.native.update({key: getattr(options, key) for key in TRAINING_OPTIONS if getattr(options, key) is not None})
    return plan.native

def _loss(request: JobRequest, options: FireworksOptions, converted: list[Change]) -> dict[str, Any]:
    # Always named: the SDK's loss config says an unnamed method means GRPO for preference jobs.
    loss: dict[str, Any] = {"method": options.dpo_loss or "DPO"}
    beta = chosen(request, "beta")
    if beta is not None:
        if loss["method"] != "DPO":
            raise InvalidRequest(
                "hyperparameters.beta is DPO's, and provider_options.fireworks.dpo_loss chooses ORPO; "
                "leave beta 'auto' or use DPO.", param="hyperparameters.beta",
            )
        loss["dpo"] = {"beta": float(beta)}
        converted.append(Change("hyperparameters.beta", beta, "loss_config.dpo.beta", float(beta),
                                "Fireworks sets DPO's beta in the job's loss config"))
    return loss

def _wandb(request: JobRequest, converted: list[Change], dropped: list[Change], wandb_key: bool) -> dict[str, Any] | None:
    config: dict[str, Any] | None = None
    for integration in request.integrations or []:
        if integration.get("type") != "wandb" or config is not None:
            dropped.append(Change("integrations", integration, None,
                                  reason="Fireworks reports to Weights & Biases only, one run per job"))
        elif not wandb_key:
            dropped.append(Change("integrations", integration, None, reason=(
                "Fireworks logs to W&B only with an API key, and this server configures no wandb_api_key "
                "for this provider")))
        else:
            wandb = integration.get("wandb") or {}
            config = {"enabled": True, **{key: wandb[key] for key in ("project", "entity") if wandb.get(key)}}
            unsent = [key for key in ("name", "tags") if wandb.get(key)]
            converted.append(Change(
                "integrations", integration, "wandb_config", config,
                "Fireworks' W&B settings; the server's W&B key is added when the job is sent"
                + (f"; Fireworks has no field for the run's {' and '.join(unsent)}" if unsent else ""),
            ))
    return config


def resource_id(text: str) -> str:
    """`text` as a Fireworks resource id: lowercase letters, digits and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:RESOURCE_ID_LENGTH].rstrip("-")
