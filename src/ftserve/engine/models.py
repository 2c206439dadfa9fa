"""Base models: find their weights, load them for training, and save what training made."""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ftserve.engine import distributed
from ftserve.engine.artifacts import MANIFEST
from ftserve.engine.distributed import Ranks
from ftserve.engine.hardware import Hardware
from ftserve.engine.spec import JobSpec, LoraOptions, ModelSource


# Used when a base model has no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelUnavailable(Exception):
    """The base model's weights cannot be found or loaded."""


def local_dir(source: ModelSource, cache_dir: Path) -> Path:
    """A local directory that `from_pretrained` loads quickly.

    A GGUF file is dequantised once into `cache_dir/<id>` as safetensors: the first load takes
    tens of seconds, every later one a fraction of a second.
    """
    if source.hub is not None:
        return _downloaded(source)
    root = _root(source)
    if source.gguf_file is None:
        return root
    return _dequantised(source, root, cache_dir)


def source_gguf(source: ModelSource) -> Path | None:
    """The GGUF file a base model comes from, if it comes from one."""
    if source.gguf_file is None or source.hub is not None:
        return None
    return _root(source) / source.gguf_file


def _root(source: ModelSource) -> Path:
    if source.package is not None:
        # Found without importing it: such packages' own code may need things we don't install.
        found = importlib.util.find_spec(source.package)
        if found is None or not found.submodule_search_locations:
            raise ModelUnavailable(
                f"model {source.id} ships in the Python package {source.package!r}, which is not installed"
            )
        return Path(next(iter(found.submodule_search_locations)))
    if source.path is not None:
        if not source.path.is_dir():
            raise ModelUnavailable(f"model {source.id}: {source.path} is not a directory")
        return source.path
    raise ModelUnavailable(f"model {source.id} names no path, hub id or package")


def _downloaded(source: ModelSource) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source.hub, revision=source.revision))  # type: ignore[arg-type]  # hub is set
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise ModelUnavailable(f"model {source.id}: cannot fetch {source.hub} from the Hugging Face hub ({error})") from error


def _dequantised(source: ModelSource, root: Path, cache_dir: Path) -> Path:
    target = cache_dir / source.id
    if (target / "config.json").exists():
        return target
    if not (root / source.gguf_file).exists():  # type: ignore[operator]  # gguf_file is set here
        raise ModelUnavailable(f"model {source.id}: {root / str(source.gguf_file)} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=source.gguf_file, dtype=torch.float32)
    _forget_quantization(model)
    # Write beside the target and rename, so a crash or a second engine never sees half a model.
    staging = cache_dir / f".{source.id}.{uuid.uuid4().hex}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another engine got there first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _forget_quantization(model: PreTrainedModel) -> None:
    # The GGUF loader dequantises to float but leaves a quantization config behind, which makes
    # transformers refuse to save and confuses PEFT; the weights are plain floats now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types the attribute as a quantizer
    model.is_quantized = False  # type: ignore[assignment]  # as above: a plain flag in practice


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_training(path: Path, spec: JobSpec, hardware: Hardware, ranks: Ranks = Ranks()) -> PreTrainedModel:
    """The base model, ready to train: LoRA adapters on a frozen base (4-bit under QLoRA), or every weight trainable.

    Under LoRA the frozen base is stored in the compute dtype (bf16 where supported), which saves
    autocast a cast per matmul per step; trainable weights always stay fp32. Fully trained across
    processes, the model is sharded (FSDP2) before it moves to the device, which then holds a shard.
    With gradient checkpointing, each layer's activations are recomputed in the backward pass.
    """
    parent = spec.start_from
    if parent is not None and parent.training_type == "full":
        path = parent.path  # a full parent's weights are the start; its catalogue root is only named
    if spec.training_type == "qlora":
        model = _quantised(path, spec, hardware)
    else:
        frozen_dtype = hardware.dtype if spec.training_type == "lora" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=frozen_dtype, attn_implementation=hardware.attention)
        if spec.gradient_checkpointing:
            # Non-reentrant: it needs no input that requires grad, and works under DDP and FSDP. Transformers 5
            # renamed the switch (the old name warns, and goes in 6); earlier 5.x releases have only the old one.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if spec.training_type == "lora":
                model.enable_input_require_grads()  # as PEFT asks of a frozen base under checkpointing
    model.config.use_cache = False
    torch.manual_seed(spec.seed)  # LoRA's initial A matrices are random
    if parent is not None and parent.training_type == "lora":
        model = with_parent_adapter(model, parent.path, spec)
    elif spec.training_type != "full":
        model = with_lora(model, spec.lora)
    if spec.training_type == "full" and ranks.size > 1:
        distributed.shard(model, hardware, ranks)
    if spec.training_type == "qlora":
        return model  # loaded onto its GPU: a 4-bit model is not moved
    return model.to(hardware.device)  # type: ignore[arg-type]  # transformers' decorated `to` hides its signature


def _quantised(path: Path, spec: JobSpec, hardware: Hardware) -> PreTrainedModel:
    """The base in 4-bit NF4 (double-quantised scales, bf16 compute) on this process's GPU, prepared for training
    an adapter on it: norms and embeddings in fp32, and gradient checkpointing where the job has it."""
    if hardware.device.type != "cuda":
        raise ModelUnavailable("QLoRA needs a CUDA GPU: bitsandbytes' 4-bit weights have no CPU kernels here")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    device = hardware.device.index if hardware.device.index is not None else torch.cuda.current_device()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=torch.bfloat16,
                                                 attn_implementation=hardware.attention, device_map={"": device})
    return prepare_model_for_kbit_training(  # type: ignore[no-any-return]  # PEFT leaves it unannotated
        model, use_gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def with_lora(model: PreTrainedModel, options: LoraOptions) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    targets = options.target_modules if isinstance(options.target_modules, str) else list(options.target_modules)
    config = LoraConfig(
        r=options.rank, lora_alpha=options.alpha,  # type: ignore[arg-type]  # PEFT annotates an int; it scales by a float
        lora_dropout=options.dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return peft_model  # type: ignore[return-value]  # a PEFT model stands in for the model it wraps


def with_parent_adapter(model: PreTrainedModel, adapter: Path, spec: JobSpec) -> PreTrainedModel:
    """A LoRA parent's adapter on its base: for a LoRA child, the same adapter trained on (its rank, alpha and
    target modules kept, dropout the child's), so the child's adapter holds both jobs on the base alone; for a full
    child, merged into the base, whose every weight then trains."""
    from peft import PeftConfig, PeftModel

    if spec.training_type == "full":
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.requires_grad_(True)  # loading the adapter froze the base, which now trains whole
        return merged  # type: ignore[return-value]  # the base model, with the adapter's deltas in its weights
    config = PeftConfig.from_pretrained(str(adapter))
    config.lora_dropout = spec.lora.dropout  # type: ignore[attr-defined]  # a LoRA adapter's config
    peft_model = PeftModel.from_pretrained(model, adapter, config=config, is_trainable=True)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return peft_model  # type: ignore[return-value]  # a PEFT model stands in for the model it wraps


def _untied(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The model's state dict with each weight once, under its first name: a tied head is the embeddings, which
    transformers saves once. (A sharded state dict holds a tied weight twice, under two names.)"""
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in model.state_dict().items() if name in names}


def trainable(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    if isinstance(model, FSDPModule):
        # While FSDP2 has a module's weights gathered (the root's stay so after a forward without a backward, as
        # when the base model is scored), its parameters are the whole copies: the optimizer must get the shards.
        model.reshard()
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path, spec: JobSpec, step: int,
               ranks: Ranks = Ranks()) -> Path:
    """Write a usable model: a PEFT adapter (LoRA) or a full checkpoint, with a manifest naming its base.

    The directory appears complete or not at all (written aside, then renamed). One that is already
    complete is kept as it is: a run resumed from an earlier state repeats steps, and the checkpoint
    recorded the first time may already be listed and served. Across processes, rank 0 writes it,
    after every process has handed in its shards of a sharded model.
    """
    if ranks.agree((directory / MANIFEST).exists()):
        return directory
    weights = ranks.full(_untied(model)) if isinstance(model, FSDPModule) else None
    if not ranks.main:
        return directory
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, state_dict=weights)
    tokenizer.save_pretrained(staging)
    manifest: dict[str, Any] = {
        "base_model": spec.model.id, "training_type": spec.training_type, "method": spec.method,
        "step": step, "job_id": spec.job_id,
    }
    if spec.start_from is not None:  # lineage only: the directory needs nothing of the parent's to load
        manifest["parent_model"] = spec.start_from.model
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory
