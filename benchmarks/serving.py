"""Serving speed: time to first token and decode speed for a base model and for LoRA adapters on it,
and what switching between adapters costs. Transformers' own `generate` on the same model and
prompt is the peer, measured in the same run.

    python -m benchmarks.serving [--tokens N] [--repeats N] [--adapters N]

The adapters are random LoRA weights (rank 16 on every linear layer, as ftserve trains them):
speed does not depend on what an adapter learned. The markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

from ftserve.catalogue import load_catalogue
from ftserve.engine.data import Encoder
from ftserve.engine.models import load_tokenizer, local_dir
from ftserve.inference.generate import Sampling, generate
from ftserve.inference.pool import ModelPool, Target
from ftserve.providers.local import source_of

MODEL_ID = "SmolLM2-135M-Instruct"
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def make_adapters(base_dir: Path, out: Path, count: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                               LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.01)  # a trained adapter's B is not zero
        path = out / f"adapter-{i}"
        model.save_pretrained(path)
        (path / "ftserve_model.json").write_text(f'{{"base_model": "{MODEL_ID}", "training_type": "lora"}}')
        paths.append(path)
    return paths


def timed_generation(pool: ModelPool, target: Target, prompt: list[int], tokens: int) -> tuple[float, float, float]:
    """(seconds to take the model and switch to the target, time to first token, decode tokens/s)."""
    text = pool.text(target)
    sampling = Sampling(max_tokens=tokens, temperature=0)
    started = time.perf_counter()
    with pool.session(target) as model:
        ready = time.perf_counter()
        # Stop ids left empty so that every run decodes exactly `tokens` tokens.
        pieces = generate(model, text.tokenizer, prompt, sampling, set())
        first = None
        count = 0
        for piece in pieces:
            if first is None:
                first = time.perf_counter()
            count = piece.tokens
        done = time.perf_counter()
    assert first is not None and count == tokens
    return ready - started, first - started, (count - 1) / (done - first)


def hf_generate(pool: ModelPool, target: Target, prompt: list[int], tokens: int) -> float:
    """Decode tokens/s of transformers' generate on the same model (greedy, KV cache, no stop)."""
    with pool.session(target) as model, torch.inference_mode():
        ids = torch.tensor([prompt])
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        first = time.perf_counter() - started
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        whole = time.perf_counter() - started
    return (tokens - 1) / max(whole - first, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ftserve-benchmarks")
    args = parser.parse_args(argv)

    source = source_of(load_catalogue()[MODEL_ID])
    base_dir = local_dir(source, args.cache_dir)
    tokenizer = load_tokenizer(base_dir)
    prompt = Encoder(tokenizer, 2048).prompt(PROMPT)
    pool = ModelPool(args.cache_dir)
    base = Target(MODEL_ID, source)

    with tempfile.TemporaryDirectory() as work:
        adapters = [Target(f"ft:{MODEL_ID}:bench:{i}", source, path, "adapter")
                    for i, path in enumerate(make_adapters(base_dir, Path(work), args.adapters))]
        rows: list[tuple[str, float, float, float]] = []
        timed_generation(pool, base, prompt, 8)  # load the base and warm up
        runs = [timed_generation(pool, base, prompt, args.tokens) for _ in range(args.repeats)]
        rows.append(("base model", *(statistics.median(r[i] for r in runs) for i in range(3))))

        cold = [timed_generation(pool, a, prompt, args.tokens) for a in adapters]  # first use: loaded from disk
        rows.append(("adapter, first request (loads it)", *(statistics.median(r[i] for r in cold) for i in range(3))))
        same = [timed_generation(pool, adapters[0], prompt, args.tokens) for _ in range(args.repeats)]
        rows.append(("adapter, same as the last request", *(statistics.median(r[i] for r in same) for i in range(3))))
        switched = [timed_generation(pool, adapters[k % len(adapters)], prompt, args.tokens)
                    for k in range(1, 1 + args.repeats * len(adapters))]
        rows.append(("adapter, switched from another", *(statistics.median(r[i] for r in switched) for i in range(3))))

        peer_base = statistics.median(hf_generate(pool, base, prompt, args.tokens) for _ in range(args.repeats))
        peer_adapter = statistics.median(hf_generate(pool, adapters[0], prompt, args.tokens) for _ in range(args.repeats))

    print(f"# Serving benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n")
    print(f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
          f"torch {torch.__version__}, transformers {metadata.version('transformers')}, peft {metadata.version('peft')}")
    print(f"- model: {MODEL_ID} ({pool.dtype}); prompt {len(prompt)} tokens; {args.tokens} tokens generated greedily; "
          f"median of {args.repeats} runs; {args.adapters} random rank-16 adapters on all linear layers\n")
    print("| request | take model + switch (ms) | time to first token (ms) | decode tokens/s |")
    print("|---|---:|---:|---:|")
    for name, switch, ttft, speed in rows:
        print(f"| {name} | {switch * 1000:.1f} | {ttft * 1000:.1f} | {speed:.1f} |")
    print("\n| decode tokens/s | ftserve | transformers generate | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| base model | {rows[0][3]:.1f} | {peer_base:.1f} | {rows[0][3] / peer_base:.2f}x |")
    print(f"| adapter | {rows[2][3]:.1f} | {peer_adapter:.1f} | {rows[2][3] / peer_adapter:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
