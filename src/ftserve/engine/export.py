"""Fine-tuned models in the formats serving stacks load: a vLLM LoRA adapter, merged Hugging Face
weights, or a GGUF file for llama.cpp.

Every export is written beside its target under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from ftserve.engine import models
from ftserve.engine.artifacts import ExportFormat, GgufType
from ftserve.engine.gguf_export import GgufExportError, write_gguf

MergedDtype = Literal["auto", "float32", "bfloat16", "float16"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The projections vLLM applies LoRA to in decoder-only models (it packs q/k/v and gate/up itself).
# Phi-3's fused projections (qkv_proj, gate_up_proj) are among vLLM's packed LoRA modules.
VLLM_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                          "qkv_proj", "gate_up_proj"})
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ExportError(Exception):
    """The model cannot be exported in the format asked for (the message says why)."""


def is_adapter(model_dir: Path) -> bool:
    return (model_dir / ADAPTER_CONFIG).exists()


def export_adapter(model_dir: Path, out: Path, *, include_embeddings: bool = False) -> Path:
    """The PEFT adapter as vLLM's `--lora-modules NAME=DIR` loads it: only projections vLLM accepts,
    and no embedding or output-head weights unless `include_embeddings`."""
    if not is_adapter(model_dir):
        raise ExportError("this model was fully fine-tuned and has no adapter; export it as merged or gguf")
    config = json.loads((model_dir / ADAPTER_CONFIG).read_text())
    allowed = VLLM_MODULES | (EMBEDDING_MODULES if include_embeddings else frozenset())
    targets = config.get("target_modules") or []
    # PEFT names every module in full (`model.layers.0.mlp.up_proj`) when a model has few of them, and by the
    # short name otherwise; vLLM matches the short name.
    targets = [targets] if isinstance(targets, str) else sorted({name.rsplit(".", 1)[-1] for name in targets})
    unsupported = sorted(set(targets) - VLLM_MODULES - EMBEDDING_MODULES)
    if unsupported:
        raise ExportError(f"vLLM cannot apply LoRA to {', '.join(unsupported)}; it takes {', '.join(sorted(VLLM_MODULES))}")
    weights = load_file(str(model_dir / ADAPTER_WEIGHTS))
    kept = {name: tensor for name, tensor in weights.items() if _module_of(name) in allowed}
    if not kept:
        raise ExportError("the adapter has no weights vLLM can load")
    config["target_modules"] = sorted(set(targets) & allowed)
    saved = config.get("modules_to_save") or []
    config["modules_to_save"] = [m for m in saved if include_embeddings and m in EMBEDDING_MODULES] or None

    def write(staging: Path) -> None:
        save_file(kept, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        _copy_tokenizer(model_dir, staging)

    return _atomic_dir(out, write)


def _module_of(weight_name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `q_proj`."""
    parts = weight_name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_") or part in ("modules_to_save", "original_module"):
            return parts[i - 1]
    return parts[-2] if len(parts) > 1 else parts[0]


def merged_model(base_dir: Path, model_dir: Path | None) -> PreTrainedModel:
    """The fine-tuned model as one plain model in fp32: adapter folded into the base, or the full weights."""
    if model_dir is not None and not is_adapter(model_dir):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if model_dir is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()


def export_merged(base_dir: Path, model_dir: Path | None, out: Path, dtype: MergedDtype = "auto") -> Path:
    """Merged full weights as a Hugging Face directory: safetensors, config, tokenizer, chat template.

    `auto` keeps the dtype the base model is stored in.
    """
    model = merged_model(base_dir, model_dir)
    if dtype == "auto":
        stored = getattr(AutoConfig.from_pretrained(base_dir), "dtype", None) or torch.float32
        target = getattr(torch, stored) if isinstance(stored, str) else stored
    else:
        target = getattr(torch, dtype)
    model = model.to(target)  # type: ignore[arg-type]  # transformers' decorated `to` hides its signature
    tokenizer = models.load_tokenizer(model_dir or base_dir)

    def write(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return _atomic_dir(out, write)


def export_gguf(base_dir: Path, model_dir: Path | None, out_file: Path, quantization: GgufType = "f16",
                *, source_gguf: Path | None = None, name: str | None = None) -> Path:
    """A GGUF file of the merged model, with the tokenizer and chat template, for llama.cpp."""
    staging = out_file.parent / f".merged-{uuid.uuid4().hex}"
    try:
        export_merged(base_dir, model_dir, staging, dtype="float32")
        try:
            return write_gguf(staging, out_file, quantization, source_gguf=source_gguf, name=name)
        except GgufExportError as error:
            raise ExportError(str(error)) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_tokenizer(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)


def _atomic_dir(out: Path, write: Callable[[Path], None]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
