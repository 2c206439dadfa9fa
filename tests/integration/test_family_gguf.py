"""Each family's GGUF export runs in llama.cpp as the merged model runs in transformers.

Per family (tests/families: a tiny random-weight model of its architecture with its real tokenizer), the
model is exported as f32 GGUF, so that no rounding blurs the comparison. llama.cpp (the prebuilt CPU build
node-llama-cpp ships, one Node process for every file) greedily generates N tokens from a fixed prompt given
as token ids, so no tokenizer difference can hide a weight bug; transformers does the same on the model
directory. The first N ids must agree. Random models soon repeat one token, so llama.cpp also gives its
argmax after every prefix of the prompt (a fresh context each), which must be transformers' too.

Random weights give flat logits, where argmax ties are decided by rounding. So the weights are sharpened
first (embeddings x10, every projection x4 so that the layers, not the embedding, decide and attention
depends on position; norms and biases made non-trivial), and positions are compared only where
transformers' top-2 margin exceeds MARGIN (in units of the logits' standard deviation); in the greedy run,
only up to the first position below it, past which the two may fairly part ways. Every family must reach
MIN_COMPARED greedy positions and half the prefixes.

The q8_0 export is run too, for the families with small vocabularies (writing a 128k-262k token vocabulary
once more costs seconds, and which tensors are stored as q8_0 does not depend on the family): it must load
and agree where the margin exceeds Q8_MARGIN.

Separately, llama.cpp must tokenize a chat-rendered prompt to the ids transformers gives, and add BOS
when transformers does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ftserve.engine.gguf_export import write_gguf
from tests.families import FAMILIES, build, missing

pytestmark = pytest.mark.engine

LLAMA_CPP = Path(__file__).parent.parent / "llama_cpp"
N = 16
MARGIN = 1e-3  # of the logits' standard deviation; f32 llama.cpp and torch differ by ~1e-5 of it here
MIN_COMPARED = 8
Q8_MARGIN = 0.1
Q8_FAMILIES = ("mistral", "phi3.5", "phi4-mini")
PROMPT = "The quick brown fox jumps over the lazy dog, and then"
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word, please."},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")

if shutil.which("node") is None:
    pytest.skip("Node.js is not installed (llama.cpp runs through node-llama-cpp)", allow_module_level=True)
if not (LLAMA_CPP / "node_modules" / "node-llama-cpp").is_dir():
    pytest.skip("llama.cpp's prebuilt npm build is not installed (make installs it into tests/llama_cpp)",
                allow_module_level=True)


@dataclass(frozen=True)
class Expected:
    """What transformers does with one family's sharpened model."""

    model_dir: Path
    prompt: list[int]
    greedy: list[int]
    margins: list[float]
    next: list[int]
    """The argmax after each prefix of the prompt, and its top-2 margin."""
    next_margins: list[float]
    chat_text: str
    chat_ids: list[int]
    adds_bos: bool


def sharpened(family: str, into: Path) -> PreTrainedModel:
    """The family's tiny model with logits far enough apart that greedy decoding is not decided by rounding."""
    source = build(family)
    config = AutoConfig.from_pretrained(source)
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "llama3":
        # Llama 3.1's scaling reshapes only wavelengths longer than original / high_freq_factor positions:
        # with the real 8192 none that a short prompt reaches. Scaled from 64, it shapes all but one here.
        rope["original_max_position_embeddings"] = 64
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name:  # Gemma stores norms as offsets from 1, the others as the factor itself
                parameter.add_(0.3 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.5 * noise)
            elif "embed_tokens" in name or name == "lm_head.weight":
                parameter.mul_(10.0)
            elif parameter.dim() == 2:  # every layer's projections: the layers, not the embedding, decide
                parameter.mul_(4.0)
    model.save_pretrained(into)
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (source / name).is_file():
            shutil.copy(source / name, into / name)
    return model


def argmax_and_margin(logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """Per row: the top token, and how far ahead of the second it is, in units of the row's spread."""
    top = logits.topk(2, dim=-1)
    return top.indices[:, 0].tolist(), ((top.values[:, 0] - top.values[:, 1]) / logits.std(dim=-1)).tolist()


def greedy(model: PreTrainedModel, prompt: list[int]) -> tuple[list[int], list[float]]:
    ids, margins = list(prompt), []
    with torch.no_grad():
        for _ in range(N):
            token, margin = argmax_and_margin(model(torch.tensor([ids])).logits[0, -1:])
            ids.append(token[0])
            margins.append(margin[0])
    return ids[len(prompt):], margins


def expected_of(family: str, into: Path) -> Expected:
    model = sharpened(family, into)
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(into)
    prompt = tokenizer(PROMPT)["input_ids"]
    generated, margins = greedy(model, prompt)
    with torch.no_grad():
        next_tokens, next_margins = argmax_and_margin(model(torch.tensor([prompt])).logits[0])
    chat_text = str(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False))
    chat_ids = tokenizer(chat_text, add_special_tokens=False)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    return Expected(into, prompt, generated, margins, next_tokens, next_margins, chat_text, chat_ids, adds_bos)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Expected, dict[str, Any], dict[str, Any]]]:
    """Per family: transformers' expectations, and llama.cpp's run of the f32 and of the q8_0 export."""
    expected: dict[str, Expected] = {}
    # llama.cpp reads each file while the next is written.
    node = subprocess.Popen(["node", str(LLAMA_CPP / "greedy.mjs")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=LLAMA_CPP)
    assert node.stdin is not None
    for family in FAMILIES:
        if missing(FAMILIES[family]):
            continue
        directory = tmp_path_factory.mktemp(family)
        expected[family] = exp = expected_of(family, directory / "model")
        for quantization in ("f32", "q8_0") if family in Q8_FAMILIES else ("f32",):
            path = write_gguf(exp.model_dir, directory / f"model.{quantization}.gguf", quantization)  # type: ignore[arg-type]
            job = {"gguf": str(path), "prompt": exp.prompt, "n": N,
                   "text": exp.chat_text if quantization == "f32" else None}
            node.stdin.write(json.dumps(job) + "\n")
            node.stdin.flush()
    stdout, stderr = node.communicate(timeout=300)
    assert node.returncode == 0, stderr[-4000:]
    results = {r["gguf"]: r for r in map(json.loads, filter(None, stdout.splitlines()))}
    by_family = {}
    for family, exp in expected.items():
        directory = exp.model_dir.parent
        by_family[family] = (exp, results[str(directory / "model.f32.gguf")],
                             results.get(str(directory / "model.q8_0.gguf"), {}))
    return by_family


def run_of(runs: dict[str, tuple[Expected, dict[str, Any], dict[str, Any]]], family: str
           ) -> tuple[Expected, dict[str, Any], dict[str, Any]]:
    if family not in runs:
        pytest.skip(str(missing(FAMILIES[family])))
    return runs[family]


def compared(margins: list[float], margin: float = MARGIN) -> int:
    """How many leading positions are decided by more than `margin`."""
    return next((i for i, m in enumerate(margins) if m < margin), len(margins))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_cpp_generates_what_transformers_generates(runs: Any, family: str) -> None:
    exp, f32, _ = run_of(runs, family)
    n = compared(exp.margins)

    assert n >= MIN_COMPARED, f"only {n} positions have a top-2 margin over {MARGIN}: {exp.margins}"
    assert f32["generated"][:n] == exp.greedy[:n]
    decided = [i for i, m in enumerate(exp.next_margins) if m >= MARGIN]
    assert len(decided) >= len(exp.prompt) // 2
    assert [f32["next"][i] for i in decided] == [exp.next[i] for i in decided]


@pytest.mark.parametrize("family", Q8_FAMILIES)
def test_the_q8_0_export_loads_and_generates_as_the_model_does(runs: Any, family: str) -> None:
    exp, _, q8 = run_of(runs, family)

    assert len(q8["generated"]) == N
    n = compared(exp.margins, Q8_MARGIN)
    assert q8["generated"][:n] == exp.greedy[:n]
    decided = [i for i, m in enumerate(exp.next_margins) if m >= Q8_MARGIN]
    assert len(decided) >= len(exp.prompt) // 3
    assert [q8["next"][i] for i in decided] == [exp.next[i] for i in decided]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_cpp_tokenizes_the_chat_prompt_as_transformers_does(runs: Any, family: str) -> None:
    exp, f32, _ = run_of(runs, family)

    assert f32["tokens"] == exp.chat_ids
    assert f32["addsBos"] is exp.adds_bos
