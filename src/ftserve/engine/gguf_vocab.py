"""A model's tokenizer written into its GGUF file, as llama.cpp's `convert_hf_to_gguf.py` writes it.

Two kinds of Hugging Face `tokenizer.json` are read: byte-level BPE (Llama 3, Qwen, Phi-4: llama.cpp's
"gpt2" tokenizer model, named by its pre-tokenizer) and SentencePiece BPE with byte fallback (Llama 2,
Mistral, Phi-3.5, Gemma: llama.cpp's "llama" tokenizer model, which merges by token score). Or the
tokenizer fields are copied from the GGUF the base model came from.
"""

from __future__ import annotations

import json
import re
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType


class GgufExportError(Exception):
    """The model cannot be written as GGUF (names why)."""


# llama.cpp names a BPE pre-tokenizer (how text is split before merging) by the hash of the token
# ids its Hugging Face tokenizer gives for this text; the table is a subset of llama.cpp's
# `get_vocab_base_pre`, for the tokenizers of the families ftserve tunes.
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
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 to 2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3's tokenizer
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # o200k: Phi-4-mini
}

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def add_tokenizer_from_json(writer: gguf.GGUFWriter, model_dir: Path, n_vocab: int) -> None:
    """The vocabulary of `model_dir/tokenizer.json`, with its special ids, merges and chat template."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GgufExportError(f"{path} does not exist")
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    ids: dict[str, int] = dict(model.get("vocab") or {})
    if ids and max(ids.values()) >= n_vocab:
        raise GgufExportError(f"the tokenizer has ids up to {max(ids.values())}, but the model only {n_vocab} embeddings")
    # Added tokens past the embeddings (Gemma 3's image token) can never be read or written by the
    # model; llama.cpp's converter leaves them out too.
    added = {entry["content"]: entry for entry in spec.get("added_tokens", []) if entry["id"] < n_vocab}
    ids.update({content: entry["id"] for content, entry in added.items()})
    if model.get("type") == "BPE" and (spec.get("decoder") or {}).get("type") == "ByteLevel":
        _add_byte_level_bpe(writer, path, ids, added, n_vocab)
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        _add_sentencepiece_bpe(writer, spec, ids, added, n_vocab)
    else:
        raise GgufExportError(
            f"{path} is neither a byte-level BPE nor a SentencePiece (byte-fallback BPE) tokenizer; only those "
            "can be exported without the base model's own GGUF (pass source_gguf to copy its tokenizer)"
        )
    # Special token ids, whether BOS/EOS are added, merges (BPE) and the chat template, read as llama.cpp does.
    special = gguf.SpecialVocab(model_dir, load_merges=model.get("byte_fallback") is not True, n_vocab=n_vocab)
    # Unless the tokenizer says it adds BOS, it adds none; say so, rather than leave llama.cpp to guess.
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)


def _add_byte_level_bpe(
    writer: gguf.GGUFWriter, path: Path, ids: dict[str, int], added: dict[str, dict[str, Any]], n_vocab: int,
) -> None:
    """llama.cpp's `_set_vocab_gpt2`: tokens and their types; the merges come with the special vocabulary."""
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
    writer.add_add_space_prefix(False)  # as in llama.cpp's files; byte-level BPE never adds a space


def _add_sentencepiece_bpe(
    writer: gguf.GGUFWriter, spec: dict[str, Any], ids: dict[str, int], added: dict[str, dict[str, Any]],
    n_vocab: int,
) -> None:
    """llama.cpp's `_create_vocab_sentencepiece`, from the tokenizer.json a SentencePiece model was converted to.

    llama.cpp's SentencePiece tokenizer merges, at each step, the adjacent pair whose joined token scores
    highest. The .model file's scores are not in tokenizer.json, but the merges it was converted to are
    in the same order (best first), so a token scores minus the rank of the first merge that makes it:
    the same choices, merge for merge.
    """
    model = spec["model"]
    rank: dict[str, int] = {}
    for index, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, index)
    unmerged = len(rank)  # single characters: never the result of a merge, so never compared
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    for token, index in ids.items():
        entry = added.get(token)
        if token == model.get("unk_token"):
            tokens[index], scores[index], types[index] = token, 0.0, gguf.TokenType.UNKNOWN
        elif entry is not None and (entry.get("special") or _looks_special(token)):
            tokens[index], scores[index], types[index] = token, -1000.0, gguf.TokenType.CONTROL
        elif entry is not None:
            # llama.cpp matches user-defined tokens in the raw text, where spaces are still spaces.
            tokens[index], scores[index], types[index] = token.replace("\u2581", " "), -1000.0, gguf.TokenType.USER_DEFINED
        elif _BYTE_TOKEN.fullmatch(token):
            tokens[index], scores[index], types[index] = token, 0.0, gguf.TokenType.BYTE
        else:
            tokens[index], scores[index], types[index] = token, -float(rank.get(token, unmerged)), gguf.TokenType.NORMAL
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(_adds_space_prefix(spec))


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether llama.cpp should put "▁" before the text, and after each special token, as it does when told to.

    Llama 2's tokenizer.json (and Phi-3.5's) does exactly that. A tokenizer that prepends it only at the very
    start ("first": Mistral v0.3's, converted without legacy) gets none: chat templates open with a special
    token, after which it adds none, and llama.cpp would otherwise double every space written after one.
    Gemma adds none at all.
    """
    steps: list[dict[str, Any]] = []
    for part in (spec.get("normalizer"), spec.get("pre_tokenizer")):
        if part:
            steps.extend(part.get("normalizers") or part.get("pretokenizers") or [part])
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace":
            return bool(step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") == "always")
    return False


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


def add_tokenizer_from_gguf(writer: gguf.GGUFWriter, source_gguf: Path, model_dir: Path, n_vocab: int) -> None:
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
