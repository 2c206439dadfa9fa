"""Write a Hugging Face model directory as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

This follows llama.cpp's own `convert_hf_to_gguf.py` for the architectures it supports, so the file
reads as if llama.cpp had converted it: the same tensor names and storage types, the same
hyperparameter keys, and llama's q/k weights re-ordered for llama.cpp's rotary embedding.
Tensors are streamed one at a time from safetensors into the file, so a model never has to fit
in memory twice. Nothing is written under `out_file` until the whole file is complete.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from itertools import groupby
from math import prod
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape, quantize

from ftserve.engine.artifacts import GgufType


class GgufExportError(Exception):
    """The model cannot be written as GGUF (names why)."""


@dataclass(frozen=True)
class _Arch:
    """How one family of Hugging Face models maps onto one llama.cpp architecture."""

    gguf_arch: gguf.MODEL_ARCH
    # llama.cpp's llama graph uses interleaved ("normal") rotary embedding, Hugging Face's the
    # rotate-half layout; qwen2 runs NeoX rotary embedding in llama.cpp, which matches Hugging Face.
    permute_qk: bool


_ARCHITECTURES: dict[str, _Arch] = {
    "LlamaForCausalLM": _Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "MistralForCausalLM": _Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": _Arch(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
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

# llama.cpp names a BPE pre-tokenizer (how text is split before merging) by the hash of the token
# ids its Hugging Face tokenizer gives for this text; the table is a subset of llama.cpp's
# `get_vocab_base_pre`, for the tokenizers that come with llama, mistral and qwen2 models.
_PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
    "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 to 2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3's tokenizer
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
}


@dataclass(frozen=True)
class _Tensor:
    """One tensor to write: where it is read from, and its name, shape and storage type in the file."""

    shard: Path
    source: str
    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    permute_heads: int | None  # heads to re-order the rows of, for llama's q and k


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
    tensors = _plan_tensors(model_dir, config, arch, quantization)
    n_vocab = next(t.shape[0] for t in tensors if t.name == "token_embd.weight")

    # Everything that can be refused is refused before a file exists: while planning the tensors
    # and filling in the writer's metadata. The file is written beside the target and renamed
    # only once complete, so a crash or a full disk never leaves a GGUF that looks whole.
    out_file.parent.mkdir(parents=True, exist_ok=True)
    staging = out_file.with_name(f".{out_file.name}.{uuid.uuid4().hex}.tmp")
    writer = gguf.GGUFWriter(staging, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _add_hyperparameters(writer, config, n_vocab, quantization)
    if source_gguf is None:
        _add_tokenizer_from_json(writer, model_dir, n_vocab)
    else:
        _add_tokenizer_from_gguf(writer, source_gguf, model_dir, n_vocab)
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


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GgufExportError(f"{path} does not exist")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict[str, Any], n_vocab: int, quantization: GgufType) -> None:
    # The order and the keys are those of a file llama.cpp's converter writes.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise GgufExportError(f"rope scaling {rope_type!r} is not supported by the GGUF export yet")
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(_FILE_TYPES[quantization])
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        # llama.cpp assumes hidden_size / heads unless told otherwise.
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


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
                planned.append(_Tensor(shard, source, name, shape, _storage_type(name, shape, quantization), heads))
    if not any(t.name == "token_embd.weight" for t in planned):
        raise GgufExportError(f"{model_dir} has no token embedding (model.embed_tokens.weight)")
    return planned


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
        with safe_open(shard, framework="pt") as weights:
            for tensor in group:
                data = weights.get_tensor(tensor.source).float().numpy()
                if tensor.permute_heads is not None:
                    data = _interleave_rotary(data, tensor.permute_heads)
                yield quantize(data, tensor.qtype)


def _interleave_rotary(data: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: within each head, rows (i, i + d/2) become rows (2i, 2i + 1)."""
    return data.reshape(n_head, 2, data.shape[0] // n_head // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def _add_tokenizer_from_json(writer: gguf.GGUFWriter, model_dir: Path, n_vocab: int) -> None:
    """The vocabulary as llama.cpp's converter builds it for a byte-level BPE tokenizer (`_set_vocab_gpt2`)."""
    path = model_dir / "tokenizer.json"
    spec = _read_json(path)
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise GgufExportError(
            f"{path} is not a byte-level BPE tokenizer; only those can be exported without the base "
            "model's own GGUF (pass source_gguf to copy its tokenizer)"
        )
    ids: dict[str, int] = dict(model["vocab"])
    added = {entry["content"]: entry for entry in spec.get("added_tokens", [])}
    ids.update({content: entry["id"] for content, entry in added.items()})
    if max(ids.values()) >= n_vocab:
        raise GgufExportError(f"the tokenizer has ids up to {max(ids.values())}, but the model only {n_vocab} embeddings")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for token, index in ids.items():
        tokens[index] = token
        if token not in added:
            types[index] = gguf.TokenType.NORMAL
        elif added[token].get("special") or _looks_special(token):
            types[index] = gguf.TokenType.CONTROL
        else:
            types[index] = gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(path))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # Merges, special token ids, whether BOS/EOS are added and the chat template, read as llama.cpp does.
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    # Unless the tokenizer says it adds BOS, it adds none; say so, rather than leave llama.cpp to guess.
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)  # as in llama.cpp's files; byte-level BPE never adds a space


def _looks_special(token: str) -> bool:
    # llama.cpp's `does_token_look_special`: some tokenizers forget to mark their control tokens.
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _pre_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(path)).encode(_PRE_TOKENIZER_PROBE).ids
    digest = sha256(str(ids).encode()).hexdigest()
    name = _PRE_TOKENIZERS.get(digest)
    if name is None:
        raise GgufExportError(
            f"{path} splits text in a way llama.cpp's converter does not recognise (hash {digest}); "
            "pass source_gguf to copy the tokenizer from the base model's GGUF"
        )
    return name


def _add_tokenizer_from_gguf(writer: gguf.GGUFWriter, source_gguf: Path, model_dir: Path, n_vocab: int) -> None:
    """Every `tokenizer.ggml.*` field of the base model's GGUF, exactly as its converter wrote it,
    and the chat template of `model_dir` (the base model's where `model_dir` has none)."""
    if not source_gguf.is_file():
        raise GgufExportError(f"source GGUF {source_gguf} does not exist")
    fields = gguf.GGUFReader(source_gguf).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != n_vocab:
        found = "no" if tokens is None else len(tokens.data)
        raise GgufExportError(f"source GGUF {source_gguf} has {found} tokens, but the model has {n_vocab} embeddings")
    for key, field in fields.items():
        if key.startswith("tokenizer.ggml."):
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    template = gguf.SpecialVocab(model_dir).chat_template
    if template is None and (inherited := fields.get("tokenizer.chat_template")) is not None:
        template = inherited.contents()
    if template is not None:
        writer.add_chat_template(template)
