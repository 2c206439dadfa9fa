"""Write a Hugging Face model directory as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

This follows llama.cpp's own `convert_hf_to_gguf.py` for the architectures it supports, so the file
reads as if llama.cpp had converted it: the same tensor names and storage types, the same
hyperparameter keys, llama's q/k weights re-ordered for llama.cpp's rotary embedding, Gemma's norms
with their +1 folded in, and the rotary frequency factors (Llama 3.1, Phi-3) as tensors.
Tensors are streamed one at a time from safetensors into the file, so a model never has to fit
in memory twice. Nothing is written under `out_file` until the whole file is complete.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from math import prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape, quantize

from ftserve.engine.artifacts import GgufType
from ftserve.engine.gguf_vocab import GgufExportError, add_tokenizer_from_gguf, add_tokenizer_from_json

__all__ = ["GgufExportError", "write_gguf"]

_MODEL_ARCH = gguf.MODEL_ARCH


@dataclass(frozen=True)
class _Arch:
    """How one family of Hugging Face models maps onto one llama.cpp architecture."""

    gguf_arch: gguf.MODEL_ARCH
    # llama.cpp's llama graph uses interleaved ("normal") rotary embedding, Hugging Face's the
    # rotate-half layout; the others run NeoX rotary embedding in llama.cpp, which matches Hugging Face.
    permute_qk: bool = False
    # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by the weight, so the file holds 1 + weight.
    norm_offset: float = 0.0


_ARCHITECTURES: dict[str, _Arch] = {
    "LlamaForCausalLM": _Arch(_MODEL_ARCH.LLAMA, permute_qk=True),
    "MistralForCausalLM": _Arch(_MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": _Arch(_MODEL_ARCH.QWEN2),
    "Qwen3ForCausalLM": _Arch(_MODEL_ARCH.QWEN3),
    "Gemma3ForCausalLM": _Arch(_MODEL_ARCH.GEMMA3, norm_offset=1.0),
    "Phi3ForCausalLM": _Arch(_MODEL_ARCH.PHI3),
}

_FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

_TENSOR_TYPES: dict[str, GGMLQuantizationType] = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class _Tensor:
    """One tensor to write: where it is read from (or its values, when computed), and its name, shape
    and storage type in the file."""

    shard: Path | None
    source: str
    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    permute_heads: int | None = None  # heads to re-order the rows of, for llama's q and k
    offset: float = 0.0
    scale: float = 1.0
    values: tuple[float, ...] = ()  # a tensor llama.cpp needs that the checkpoint does not hold


@dataclass(frozen=True)
class _Rope:
    """A model's rotary embedding, wherever its config.json keeps it (`rope_parameters` in transformers 5,
    `rope_theta` and `rope_scaling` before; Gemma 3 with a second one for its sliding-window layers)."""

    kind: str
    theta: float
    params: dict[str, Any]
    sliding_theta: float


def write_gguf(
    model_dir: Path, out_file: Path, quantization: GgufType = "f16", *, source_gguf: Path | None = None,
    name: str | None = None,
) -> Path:
    """Write `model_dir` (config.json, safetensors, tokenizer.json) to `out_file` and return its path.

    Norms and other 1-D tensors stay f32 whatever `quantization` says, as llama.cpp's converter
    keeps them. `source_gguf`, the GGUF the base model came from, lends its tokenizer fields
    verbatim; the chat template still comes from `model_dir`, where a fine-tune may have changed it.
    `name` is the `general.name` runtimes show; it defaults to the directory's name.
    """
    if quantization not in _FILE_TYPES:
        raise GgufExportError(f"unknown GGUF type {quantization!r}; choose one of {sorted(_FILE_TYPES)}")
    if not (model_dir / "config.json").is_file() and (model_dir / "adapter_config.json").is_file():
        raise GgufExportError(f"{model_dir} holds a LoRA adapter; merge it into its base model first")
    config = _read_json(model_dir / "config.json")
    declared = (config.get("architectures") or ["(none)"])[0]
    arch = _ARCHITECTURES.get(declared)
    if arch is None:
        raise GgufExportError(
            f"cannot write architecture {declared} as GGUF; supported: {', '.join(sorted(_ARCHITECTURES))}"
        )
    rope = _rope(config, arch)
    tensors = _rope_tensors(config, arch, rope) + _plan_tensors(model_dir, config, arch, quantization)
    n_vocab = next(t.shape[0] for t in tensors if t.name == "token_embd.weight")

    # Everything that can be refused is refused before a file exists: while planning the tensors
    # and filling in the writer's metadata. The file is written beside the target and renamed
    # only once complete, so a crash or a full disk never leaves a GGUF that looks whole.
    out_file.parent.mkdir(parents=True, exist_ok=True)
    staging = out_file.with_name(f".{out_file.name}.{uuid.uuid4().hex}.tmp")
    writer = _Writer(staging, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _add_hyperparameters(writer, config, arch, rope, n_vocab, quantization)
    if source_gguf is None:
        add_tokenizer_from_json(writer, model_dir, n_vocab)
    else:
        add_tokenizer_from_gguf(writer, source_gguf, model_dir, n_vocab)
    for tensor in tensors:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), _nbytes(tensor), raw_dtype=tensor.qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in _converted(tensors):
            writer.write_tensor_data(data)
        writer.close()
        staging.replace(out_file)
    finally:
        writer.close()
        staging.unlink(missing_ok=True)
    return out_file


class _Writer(gguf.GGUFWriter):
    """gguf's writer, packing a metadata array in one go: it packs item by item, which for a 150k-260k token
    vocabulary (tokens, scores and types) took 7-8 s of a small model's export."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None) -> bytes:
        if vtype != GGUFValueType.ARRAY or not isinstance(val, (list, tuple)) or not val or isinstance(val[0], bool):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        first = type(val[0])
        if sub_type is None and any(type(item) is not first for item in val):
            return super()._pack_val(val, vtype, add_vtype, sub_type)  # which refuses a mixed array
        ltype = sub_type if sub_type is not None else GGUFValueType.get_type(val[0])
        order = "<" if self.endianess == gguf.GGUFEndian.LITTLE else ">"
        head = struct.pack(f"{order}I", vtype) if add_vtype else b""
        head += struct.pack(f"{order}IQ", ltype, len(val))
        if ltype == GGUFValueType.STRING:
            encoded = [item.encode("utf-8") if isinstance(item, str) else item for item in val]
            return head + b"".join(struct.pack(f"{order}Q", len(item)) + item for item in encoded)
        fmt = self._simple_value_packing.get(ltype)
        if fmt is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return head + struct.pack(f"{order}{len(val)}{fmt}", *val)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GgufExportError(f"{path} does not exist")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _rope(config: dict[str, Any], arch: _Arch) -> _Rope:
    legacy = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
    params: dict[str, Any] = config.get("rope_parameters") or legacy
    full = params.get("full_attention", params)
    sliding = params.get("sliding_attention") or {"rope_theta": config.get("rope_local_base_freq", 10000.0)}
    kind = str(full.get("rope_type", full.get("type")) or "default").lower()
    # The scalings llama.cpp runs as Hugging Face does, each in the architecture it is used with.
    supported = {"default": True, "linear": True, "llama3": arch.gguf_arch == _MODEL_ARCH.LLAMA,
                 "longrope": arch.gguf_arch == _MODEL_ARCH.PHI3}
    if not supported.get(kind, False):
        raise GgufExportError(f"rope scaling {kind!r} is not supported by the GGUF export of {arch.gguf_arch.name.lower()} yet")
    return _Rope(kind, float(full.get("rope_theta", 10000.0)), full, float(sliding.get("rope_theta", 10000.0)))


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _rotary_dim(config: dict[str, Any], rope: _Rope) -> int:
    factor = rope.params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    return int(_head_dim(config) * factor)


def _add_hyperparameters(
    writer: gguf.GGUFWriter, config: dict[str, Any], arch: _Arch, rope: _Rope, n_vocab: int, quantization: GgufType,
) -> None:
    # The order and the keys are those of a file llama.cpp's converter writes.
    n_head = config["num_attention_heads"]
    head_dim = _head_dim(config)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    if rope.kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope.params["factor"]))
    writer.add_rope_freq_base(rope.theta)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(_FILE_TYPES[quantization])
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(_rotary_dim(config, rope))
    if arch.gguf_arch == _MODEL_ARCH.GEMMA3 or head_dim != config["hidden_size"] // n_head:
        # llama.cpp assumes hidden_size / heads unless told otherwise (and Gemma's converter always tells).
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch.gguf_arch == _MODEL_ARCH.GEMMA3:
        _add_gemma3(writer, config, rope)
    if arch.gguf_arch == _MODEL_ARCH.PHI3:
        _add_phi3(writer, config, rope)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_gemma3(writer: gguf.GGUFWriter, config: dict[str, Any], rope: _Rope) -> None:
    if config.get("attn_logit_softcapping"):
        raise GgufExportError("Gemma 3 in llama.cpp has no attention logit soft-capping; this model sets one")
    if softcap := config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(softcap))
    layer_types = config.get("layer_types") or []
    if "sliding_attention" in layer_types:
        writer.add_sliding_window(int(config["sliding_window"]))
        # Which layers slide, layer by layer, rather than llama.cpp's default of 5 in every 6.
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
        writer.add_rope_freq_base_swa(rope.sliding_theta)


def _add_phi3(writer: gguf.GGUFWriter, config: dict[str, Any], rope: _Rope) -> None:
    original = int(rope.params.get("original_max_position_embeddings")
                   or config.get("original_max_position_embeddings") or config["max_position_embeddings"])
    writer.add_rope_scaling_orig_ctx_len(original)
    # llama.cpp tells Phi-3 from Phi-4 by a zero window, and runs neither with one.
    writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if rope.kind == "longrope":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        scale = config["max_position_embeddings"] / original
        attn_factor = rope.params.get("attention_factor")
        if attn_factor is None:  # Hugging Face's default, as llama.cpp's converter computes it
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        writer.add_rope_scaling_attn_factors(float(attn_factor))


def _rope_tensors(config: dict[str, Any], arch: _Arch, rope: _Rope) -> list[_Tensor]:
    """The per-frequency factors llama.cpp reads from tensors rather than from keys."""
    half = _rotary_dim(config, rope) // 2
    factors: dict[str, list[float]] = {}
    if rope.kind == "llama3":
        factors["rope_freqs.weight"] = _llama3_factors(rope, 2 * half)
    elif rope.kind == "longrope":
        factors["rope_factors_long.weight"] = [float(f) for f in rope.params["long_factor"]]
        factors["rope_factors_short.weight"] = [float(f) for f in rope.params["short_factor"]]
    for name, values in factors.items():
        if len(values) != half:
            raise GgufExportError(f"{name.split('.')[0]} has {len(values)} factors; the rotary embedding has {half}")
    return [_Tensor(None, name, name, (half,), GGMLQuantizationType.F32, values=tuple(values))
            for name, values in factors.items()]


def _llama3_factors(rope: _Rope, dim: int) -> list[float]:
    """What each rotary frequency is divided by under Llama 3.1's scaling (as transformers computes it)."""
    factor = float(rope.params.get("factor", 8.0))
    low, high = float(rope.params.get("low_freq_factor", 1.0)), float(rope.params.get("high_freq_factor", 4.0))
    context = float(rope.params.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * rope.theta ** (i / dim)
        if wavelength < context / high:
            factors.append(1.0)
        elif wavelength > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = _read_json(index)["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise GgufExportError(f"{model_dir} has no model.safetensors or model.safetensors.index.json")


def _plan_tensors(model_dir: Path, config: dict[str, Any], arch: _Arch, quantization: GgufType) -> list[_Tensor]:
    from safetensors import safe_open

    n_head = config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(arch.gguf_arch, config["num_hidden_layers"])
    tied = bool(config.get("tie_word_embeddings", False))
    query_scale = _gemma3_query_scale(config) if arch.gguf_arch == _MODEL_ARCH.GEMMA3 else 1.0
    planned: list[_Tensor] = []
    for shard in _shards(model_dir):
        with safe_open(shard, framework="pt") as weights:
            for source in weights.keys():  # noqa: SIM118 (safe_open is not iterable)
                if source.endswith("rotary_emb.inv_freq") or (tied and source == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / the same tensor as token_embd
                name = names.get_name(source, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise GgufExportError(f"tensor {source} has no place in a {arch.gguf_arch.name.lower()} GGUF")
                shape = tuple(weights.get_slice(source).get_shape())
                heads = {"q_proj": n_head, "k_proj": n_kv_head}.get(source.split(".")[-2]) if arch.permute_qk else None
                offset = arch.norm_offset if source.endswith("norm.weight") else 0.0
                scale = query_scale if name.endswith("attn_q_norm.weight") else 1.0
                planned.append(_Tensor(shard, source, name, shape, _storage_type(name, shape, quantization), heads,
                                       offset, scale))
    if not any(t.name == "token_embd.weight" for t in planned):
        raise GgufExportError(f"{model_dir} has no token embedding (model.embed_tokens.weight)")
    return planned


def _gemma3_query_scale(config: dict[str, Any]) -> float:
    """Hugging Face scales Gemma 3's attention by query_pre_attn_scalar ** -0.5; llama.cpp by head_dim ** -0.5
    (hidden / heads for its 62-layer model). The queries are normed just before, so the difference goes
    into the query norm's weight, and any checkpoint runs as trained."""
    n_head = config["num_attention_heads"]
    used = config["hidden_size"] // n_head if config["num_hidden_layers"] == 62 else _head_dim(config)
    return math.sqrt(used / float(config.get("query_pre_attn_scalar") or _head_dim(config)))


def _storage_type(name: str, shape: tuple[int, ...], quantization: GgufType) -> GGMLQuantizationType:
    if len(shape) < 2 or name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    qtype = _TENSOR_TYPES[quantization]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block_size:
        return GGMLQuantizationType.F16  # rows that do not fill whole q8_0 blocks, as llama.cpp falls back
    return qtype


def _nbytes(tensor: _Tensor) -> int:
    return prod(quant_shape_to_byte_shape(tensor.shape, tensor.qtype))


def _converted(tensors: list[_Tensor]) -> Iterator[np.ndarray]:
    """Each tensor in order, read as float32 and made into its storage type: one in memory at a time."""
    from safetensors import safe_open

    for shard, group in groupby(tensors, key=lambda t: t.shard):
        if shard is None:
            for tensor in group:
                yield quantize(np.array(tensor.values, dtype=np.float32), tensor.qtype)
            continue
        with safe_open(shard, framework="pt") as weights:
            for tensor in group:
                data = weights.get_tensor(tensor.source).float().numpy()
                if tensor.permute_heads is not None:
                    data = _interleave_rotary(data, tensor.permute_heads)
                if tensor.offset or tensor.scale != 1.0:
                    data = (data + np.float32(tensor.offset)) * np.float32(tensor.scale)
                yield quantize(data, tensor.qtype)


def _interleave_rotary(data: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: within each head, rows (i, i + d/2) become rows (2i, 2i + 1)."""
    return data.reshape(n_head, 2, data.shape[0] // n_head // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
