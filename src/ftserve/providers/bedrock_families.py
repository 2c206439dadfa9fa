"""What each Bedrock model family takes: its hyperparameter keys and defaults, and the data layout it reads.

Amazon Nova and Claude 3 Haiku read Converse records (`bedrock-conversation-2024`); Llama, Titan
Text and Cohere read `{"prompt", "completion"}`, so a chat row's last assistant message becomes the
completion and the turns before it are rendered into the prompt as `User: ...` blocks. Continued
pre-training reads `{"input": text}`. Hyperparameters are a string-to-string map whose keys and
defaults differ per family, and most families take an absolute learning rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ftserve.domain.errors import InvalidRequest
from ftserve.providers.contract import JobRequest, Options, ProviderUnsupported, no_reinforcement
from ftserve.providers.plan import Mapped, Plan, dropped, epochs_of

DataFormat = Literal["converse", "prompt_completion"]


@dataclass(frozen=True)
class Family:
    """One model family's hyperparameter keys and Bedrock's documented defaults for them
    (docs.aws.amazon.com/bedrock/latest/userguide/custom-models-hp.html)."""

    label: str
    data: DataFormat
    keys: frozenset[str]
    epochs: int
    learning_rate: float | None
    """The default absolute learning rate; None where the family takes `learningRateMultiplier`."""
    batch_size: int | None
    """The default batch size; None where Bedrock neither takes nor publishes one."""


def _keys(*names: str) -> frozenset[str]:
    return frozenset(("epochCount",) + names)


FAMILIES: dict[str, Family] = {
    "amazon.nova-": Family("Amazon Nova", "converse", _keys("learningRate", "learningRateWarmupSteps"),
                           epochs=2, learning_rate=1e-5, batch_size=None),
    "anthropic.claude-3-haiku": Family(
        "Claude 3 Haiku", "converse",
        _keys("batchSize", "learningRateMultiplier", "earlyStoppingThreshold", "earlyStoppingPatience"),
        epochs=2, learning_rate=None, batch_size=32),
    "meta.llama3": Family("Llama 3", "prompt_completion", _keys("batchSize", "learningRate"),
                          epochs=5, learning_rate=1e-4, batch_size=1),
    "meta.llama2": Family("Llama 2", "prompt_completion", _keys("batchSize", "learningRate"),
                          epochs=5, learning_rate=1e-4, batch_size=1),
    "amazon.titan-text-premier": Family(
        "Titan Text Premier", "prompt_completion", _keys("batchSize", "learningRate", "learningRateWarmupSteps"),
        epochs=2, learning_rate=1e-6, batch_size=1),
    "amazon.titan-text-": Family(
        "Titan Text", "prompt_completion", _keys("batchSize", "learningRate", "learningRateWarmupSteps"),
        epochs=5, learning_rate=1e-5, batch_size=1),
    "cohere.command": Family(
        "Cohere Command", "prompt_completion",
        _keys("batchSize", "learningRate", "earlyStoppingThreshold", "earlyStoppingPatience", "evalPercentage"),
        epochs=1, learning_rate=1e-5, batch_size=8),
}

_NO_LORA = "Bedrock exposes no LoRA settings"
# The caller's fields Bedrock has no knob for, and why; warmup_ratio becomes steps where it can.
UNSUPPORTED: dict[str, Mapped] = {
    "ftserve.training_type": dropped("Bedrock chooses the training technique itself"),
    "ftserve.lora_rank": dropped(_NO_LORA),
    "ftserve.lora_alpha": dropped(_NO_LORA),
    "ftserve.lora_dropout": dropped(_NO_LORA),
    "ftserve.max_seq_length": dropped(
        "the context length is fixed by the base model id (the :128k in amazon.nova-micro-v1:0:128k)"),
    "ftserve.eval_interval": dropped("Bedrock evaluates on its own schedule"),
    "ftserve.checkpoint_interval": dropped("Bedrock keeps no intermediate checkpoints"),
    "ftserve.num_processes": dropped("Bedrock chooses the machines a job trains on"),
    "ftserve.packing": dropped("the provider decides how examples are batched"),
    "ftserve.gradient_checkpointing": dropped("the provider manages training memory itself"),
    "seed": dropped("Bedrock customization jobs take no seed"),
    "integrations": dropped("Bedrock has no Weights & Biases integration; its metrics land in the output S3 prefix"),
}

_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class VpcConfig(Options):
    subnet_ids: list[str] = Field(min_length=1, max_length=16)
    security_group_ids: list[str] = Field(min_length=1, max_length=5)


class BedrockOptions(Options):
    customization_type: Literal["FINE_TUNING", "CONTINUED_PRE_TRAINING"] = "FINE_TUNING"
    vpc_config: VpcConfig | None = None
    custom_model_kms_key_id: str | None = None
    job_tags: dict[str, str] | None = None
    custom_model_tags: dict[str, str] | None = None
    learning_rate_warmup_steps: int | None = Field(None, ge=0)
    early_stopping_threshold: float | None = Field(None, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1)
    eval_percentage: float | None = Field(None, gt=0, lt=100)

    # Operator's: vpc_config and custom_model_kms_key_id reach the account's networks and keys; tags feed its
    # cost allocation and tag-based access policies.
    TENANT: ClassVar[frozenset[str]] = frozenset({
        "customization_type", "learning_rate_warmup_steps", "early_stopping_threshold", "early_stopping_patience",
        "eval_percentage",
    })


# Options that become hyperParameters, by their Bedrock key.
_OPTION_KEYS = {
    "learning_rate_warmup_steps": "learningRateWarmupSteps",
    "early_stopping_threshold": "earlyStoppingThreshold",
    "early_stopping_patience": "earlyStoppingPatience",
    "eval_percentage": "evalPercentage",
}


def family_prefix(model_id: str) -> str | None:
    return max((prefix for prefix in FAMILIES if model_id.startswith(prefix)), key=len, default=None)


def family_of(request: JobRequest) -> Family:
    """The model family of a job Bedrock can run; an error naming why for any other job."""
    if request.method == "dpo":
        raise ProviderUnsupported("Bedrock model customization has no preference (DPO) training; "
                                  "run DPO jobs on the local engine or another provider.", param="method")
    if request.method == "reinforcement":
        raise no_reinforcement(
            "Bedrock grades reinforcement fine-tuning with an AWS Lambda function of your own "
            "(rftConfig.graderConfig.lambdaGrader); an OpenAI grader cannot be turned into one.")
    # An ARN names the model after `foundation-model/` or `custom-model/`.
    model_id = request.model.split("/")[1] if request.model.startswith("arn:") else request.model
    prefix = family_prefix(model_id)
    if prefix is None:
        raise InvalidRequest(f"Bedrock fine-tunes base models whose id starts with {', '.join(FAMILIES)}; "
                             f"{request.model} is none of them.", param="model")
    return FAMILIES[prefix]


def layout_reason(family: Family, customization: str) -> str:
    if customization == "CONTINUED_PRE_TRAINING":
        return "continued pre-training reads {\"input\": text}: each chat row is rendered as User:/Assistant: blocks"
    if family.data == "converse":
        return f"{family.label} reads Converse records (bedrock-conversation-2024), converted from the chat rows"
    return (f"{family.label} reads {{prompt, completion}}: the last assistant message is the completion and "
            "the turns before it are rendered into the prompt as User:/Assistant: blocks")


def hyperparameters(plan: Plan, family: Family, options: BedrockOptions) -> dict[str, str]:
    """Bedrock's string map under the family's keys; each value sent is reported as converted."""
    hyper = Plan(plan.request, "hyperParameters.", converted=plan.converted, dropped=plan.dropped)
    strings = "Bedrock takes hyperparameters as strings"
    hyper.map({"hyperparameters.n_epochs": Mapped("epochCount", strings, lambda epochs: as_text(int(epochs)))})
    batch = hyper.given("hyperparameters.batch_size")
    if "batchSize" in family.keys:
        hyper.map({"hyperparameters.batch_size": Mapped("batchSize", strings, lambda size: as_text(int(size)))})
    else:
        hyper.map({"hyperparameters.batch_size": dropped(f"{family.label} takes no batch size; Bedrock sets it")})
    if family.learning_rate is None:
        hyper.map({"hyperparameters.learning_rate_multiplier": Mapped(
            "learningRateMultiplier", f"{family.label} takes the multiplier itself, as a string",
            lambda multiplier: as_text(float(multiplier)))})
    else:
        hyper.learning_rate("learningRate", family.learning_rate, family.label, "its documented default", as_text)
    plan.map({key: mapped for key, mapped in UNSUPPORTED.items() if key.startswith("ftserve.")})
    for key in sorted(set(plan.request.options) - {"warmup_ratio"} - {k.removeprefix("ftserve.") for k in UNSUPPORTED}):
        plan.drop(f"ftserve.{key}", plan.request.options[key], "Bedrock has no such setting")
    if "warmup_ratio" in plan.request.options:
        _warmup(hyper, family, options, batch)
    for option, key in _OPTION_KEYS.items():
        value = getattr(options, option)
        if value is None:
            continue
        if key not in family.keys:
            raise InvalidRequest(f"provider_options.bedrock.{option}: {family.label} takes no {key}; its "
                                 f"hyperparameters are {', '.join(sorted(family.keys))}.", param="provider_options")
        hyper.put(key, as_text(value))
    return hyper.native


def _warmup(hyper: Plan, family: Family, options: BedrockOptions, batch: Any) -> None:
    ratio = hyper.request.options["warmup_ratio"]
    if options.learning_rate_warmup_steps is not None:
        raise InvalidRequest("ftserve.warmup_ratio and provider_options.bedrock.learning_rate_warmup_steps both "
                             "set the warmup; set one of them.", param="provider_options")
    if "learningRateWarmupSteps" not in family.keys:
        hyper.drop("ftserve.warmup_ratio", ratio, f"{family.label} takes no warmup")
        return
    # The batch Bedrock will use: the one asked for only where the family takes one.
    batch_size = int(batch) if batch is not None and "batchSize" in family.keys else family.batch_size
    hyper.warmup("learningRateWarmupSteps", batch_size, epochs_of(hyper.request, family.epochs), "Bedrock",
                 f"{family.label}'s batch size is not published, so a ratio cannot become steps; "
                 "set provider_options.bedrock.learning_rate_warmup_steps instead", convert=as_text)


def as_text(value: float) -> str:
    """Integers as they are, floats in their shortest form: 2e-05, not 2.0000000000000002e-05."""
    return str(value) if isinstance(value, int) else format(value, ".10g")


def converted(path: Path, layout: Literal["converse", "prompt_completion", "text"]) -> bytes:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            messages = json.loads(line).get("messages")
            if not isinstance(messages, list):
                raise InvalidRequest(f"Bedrock fine-tuning takes chat rows; line {number} has no messages.",
                                     param="training_file")
            turns = [(message.get("role"), _content(message, number)) for message in messages]
            rows.append(json.dumps(_row(turns, layout, number), ensure_ascii=False))
    return ("\n".join(rows) + "\n").encode()


def _content(message: dict[str, Any], line: int) -> str:
    if message.get("role") not in _ROLES or message.get("tool_calls") or message.get("function_call"):
        raise InvalidRequest(f"Bedrock fine-tuning data holds system, user and assistant text only; line {line} "
                             f"has a {message.get('role')} message or a tool call.", param="training_file")
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    if any(part.get("type") != "text" for part in content):
        raise InvalidRequest(f"Bedrock fine-tuning data is text only; line {line} has a non-text part.",
                             param="training_file")
    return "".join(part["text"] for part in content)


def _row(turns: list[tuple[str, str]], layout: str, line: int) -> dict[str, Any]:
    if layout == "converse":
        row: dict[str, Any] = {"schemaVersion": "bedrock-conversation-2024"}
        system = [{"text": text} for role, text in turns if role == "system"]
        if system:
            row["system"] = system
        row["messages"] = [{"role": role, "content": [{"text": text}]} for role, text in turns if role != "system"]
        return row
    if layout == "text":
        return {"input": _rendered(turns)}
    if not turns or turns[-1][0] != "assistant":
        raise InvalidRequest(f"Bedrock trains this model on prompt and completion pairs; line {line} does not end "
                             "with the assistant message that becomes the completion.", param="training_file")
    before = turns[:-1]
    prompt = before[0][1] if [role for role, _ in before] == ["user"] else _rendered(before)
    return {"prompt": prompt, "completion": turns[-1][1]}


def _rendered(turns: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"{_ROLES[role]}: {text}" for role, text in turns)
