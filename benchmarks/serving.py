"""Serving speed, side by side in one run: ftserve's two generation engines (vLLM, and the transformers loop)
and llama.cpp, on the default model and on LoRA adapters of it, one stream and many at once, and how long
another project's small request waits while one project floods the engine.

    python -m benchmarks.serving [--tokens N] [--repeats N] [--adapters N] [--engines vllm,transformers]

Requests go through the generation interface the API uses (`ftserve.inference`), with the API's fair gate in
front, so HTTP is left out: what is measured is the engines. The adapters are random LoRA weights (rank 16 on
every linear layer, as ftserve trains them): speed does not depend on what an adapter learned. llama.cpp runs
the GGUF file the default model ships as (Q4_1), one stream. The markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

from ftserve.catalogue import load_catalogue
from ftserve.config import Settings
from ftserve.domain.errors import RateLimited
from ftserve.engine.data import Encoder
from ftserve.engine.models import load_tokenizer, local_dir, source_gguf
from ftserve.inference.gate import FairGate
from ftserve.inference.interface import Engine, Generation, Sampling, Target
from ftserve.inference.pool import ModelPool
from ftserve.inference.transformers_engine import TransformersEngine
from ftserve.inference.vllm_engine import VllmEngine
from ftserve.inference.vllm_server import VllmOptions
from ftserve.providers.local import source_of

MODEL_ID = "SmolLM2-135M-Instruct"
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
CONCURRENCY = (1, 4, 16)
FLOOD = 24
LLAMA_CPP = Path(__file__).resolve().parent.parent / "tests" / "llama_cpp"


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


class Timed:
    """One request's timings: when it was sent, its first and last token, how many tokens."""

    def __init__(self, engine: Engine, gate: FairGate, project: str, target: Target, prompt: list[int], tokens: int):
        self.sent = time.perf_counter()
        self.first = self.done = 0.0
        self.tokens = 0
        # No end token: every request decodes exactly `tokens` (the model's EOS id is banned).
        request = Generation(target, [prompt], Sampling(max_tokens=tokens, temperature=0, logit_bias={2: -100.0}))
        with gate.turn(project):
            for chunk in engine.generate(request, lambda: False):
                if not self.first and chunk.tokens:
                    self.first = time.perf_counter()
                self.tokens = chunk.tokens
        self.done = time.perf_counter()

    @property
    def decode(self) -> float:
        return (self.tokens - 1) / max(self.done - self.first, 1e-9)


def concurrently(count: int, make: Callable[[int], Timed]) -> tuple[list[Timed], float]:
    results: list[Timed] = []
    threads = [threading.Thread(target=lambda k=k: results.append(make(k))) for k in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def measure(name: str, engine: Engine, slots: int, base: Target, adapters: list[Target], prompt: list[int],
            tokens: int, repeats: int) -> dict[str, object]:
    gate = FairGate(per_project=FLOOD + 1, queue=256, slots=slots)
    row: dict[str, object] = {"engine": name}
    started = time.perf_counter()
    Timed(engine, gate, "a", base, prompt, 4)  # starts the engine and loads the base
    row["start_s"] = time.perf_counter() - started
    loads = []
    for adapter in adapters:  # each adapter's first use loads it
        started = time.perf_counter()
        Timed(engine, gate, "a", adapter, prompt, 4)
        loads.append(time.perf_counter() - started)
    row["adapter_first_use_s"] = statistics.median(loads)
    for kind, pick in (("base", lambda k: base), ("adapters", lambda k: adapters[k % len(adapters)])):
        ones = [Timed(engine, gate, "a", pick(k), prompt, tokens) for k in range(repeats)]
        row[f"{kind}_ttft_ms"] = statistics.median(t.first - t.sent for t in ones) * 1000
        row[f"{kind}_one_stream"] = statistics.median(t.decode for t in ones)
        for count in CONCURRENCY:
            results, wall = concurrently(count, lambda k: Timed(engine, gate, "a", pick(k), prompt, tokens))
            row[f"{kind}_x{count}"] = sum(t.tokens for t in results) / wall
    # Another project's 1-token request, idle and then while project "a" has FLOOD requests in flight.
    idle = [Timed(engine, gate, "b", base, prompt, 1) for _ in range(repeats)]
    row["small_idle_ms"] = statistics.median(t.done - t.sent for t in idle) * 1000
    flood: list[Timed] = []
    threads = [threading.Thread(target=lambda: flood.append(Timed(engine, gate, "a", base, prompt, tokens)))
               for _ in range(FLOOD)]
    for thread in threads:
        thread.start()
    while gate.waiting().get("a", 0) < FLOOD:
        time.sleep(0.01)
    time.sleep(0.5)
    small = Timed(engine, gate, "b", base, prompt, 1)
    row["small_flooded_ms"] = (small.done - small.sent) * 1000
    for thread in threads:
        thread.join()
    # The same with the server's default limits: a project may have 8 requests in flight, so of its 24, 16 are
    # refused at once (429) and 8 run beside the small request.
    defaults = Settings()
    limited = FairGate(defaults.inference_max_per_project, defaults.inference_max_queue, min(slots, defaults.vllm_max_batch))
    refused: list[int] = []

    def attempt() -> None:
        try:
            Timed(engine, limited, "a", base, prompt, tokens)
        except RateLimited:
            refused.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(FLOOD)]
    for thread in threads:
        thread.start()
    while len(refused) + limited.waiting().get("a", 0) < FLOOD:
        time.sleep(0.01)
    time.sleep(0.5)
    small = Timed(engine, limited, "b", base, prompt, 1)
    row["small_limited_ms"] = (small.done - small.sent) * 1000
    row["refused"] = len(refused)
    for thread in threads:
        thread.join()
    return row


def llama_cpp(gguf: Path, tokens: int, repeats: int) -> dict[str, float] | None:
    if not (LLAMA_CPP / "node_modules").is_dir():
        return None
    done = subprocess.run(["node", str(LLAMA_CPP / "speed.mjs"), str(gguf), PROMPT[0]["content"], str(tokens),
                           str(repeats)], capture_output=True, text=True, timeout=600, cwd=LLAMA_CPP)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--engines", default="vllm,transformers")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ftserve-benchmarks")
    args = parser.parse_args(argv)

    source = source_of(load_catalogue()[MODEL_ID])
    base_dir = local_dir(source, args.cache_dir)
    prompt = Encoder(load_tokenizer(base_dir), 2048).prompt(PROMPT)
    pool = ModelPool(args.cache_dir)
    base = Target(MODEL_ID, source)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        adapters = [Target(f"ft:{MODEL_ID}:bench:{i}", source, path, "adapter")
                    for i, path in enumerate(make_adapters(base_dir, Path(work), args.adapters))]
        for name in args.engines.split(","):
            engine: Engine
            if name == "vllm":
                python = Settings().resolved_vllm_python
                if python is None:
                    print("vLLM is not installed; skipping it", file=sys.stderr)
                    continue
                engine, slots = VllmEngine(VllmOptions(python, Path(work) / "logs", max_batch=32), pool.base_dir), 32
            else:
                engine, slots = TransformersEngine(pool), 1
            try:
                rows.append(measure(name, engine, slots, base, adapters, prompt, args.tokens, args.repeats))
            finally:
                engine.close()
    peer = llama_cpp(source_gguf(source), args.tokens, args.repeats)

    print(f"# Serving benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n")
    print(f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
          f"torch {torch.__version__}, transformers {metadata.version('transformers')}")
    print(f"- model: {MODEL_ID}; prompt {len(prompt)} tokens; {args.tokens} tokens per request, greedy; medians of "
          f"{args.repeats}; {args.adapters} random rank-16 adapters on all linear layers, used in turn\n")
    print("| engine | model | time to first token (ms) | one stream (tok/s) | " +
          " | ".join(f"{c} at once, in all (tok/s)" for c in CONCURRENCY) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(CONCURRENCY))
    for row in rows:
        for kind in ("base", "adapters"):
            print(f"| ftserve, {row['engine']} | {kind} | {row[f'{kind}_ttft_ms']:.0f} | {row[f'{kind}_one_stream']:.1f} | " +
                  " | ".join(f"{row[f'{kind}_x{c}']:.1f}" for c in CONCURRENCY) + " |")
    if peer is not None:
        print(f"| llama.cpp (Q4_1 GGUF, node-llama-cpp) | base | {peer['ttft_s'] * 1000:.0f} | "
              f"{peer['decode_tokens_per_s']:.1f} | (one stream) | | |")
    print("\n| engine | start + load base (s) | adapter first use (s) | 1-token request, idle (ms) | "
          f"same, another project has {FLOOD} in flight (ms) | ratio | same, default limits (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        idle = float(row["small_idle_ms"])  # type: ignore[arg-type]
        print(f"| ftserve, {row['engine']} | {row['start_s']:.1f} | {row['adapter_first_use_s']:.2f} | {idle:.0f} | "
              f"{row['small_flooded_ms']:.0f} | {float(row['small_flooded_ms']) / idle:.1f}x | "  # type: ignore[arg-type]
              f"{row['small_limited_ms']:.0f} ({row['refused']} of {FLOOD} refused) | "
              f"{float(row['small_limited_ms']) / idle:.1f}x |")  # type: ignore[arg-type]
    by_name = {row["engine"]: row for row in rows}
    if {"vllm", "transformers"} <= set(by_name):
        v, t = by_name["vllm"], by_name["transformers"]
        print("\n| vLLM / transformers loop | base | adapters |")
        print("|---|---:|---:|")
        print(f"| one stream | {float(v['base_one_stream']) / float(t['base_one_stream']):.2f}x | "  # type: ignore[arg-type]
              f"{float(v['adapters_one_stream']) / float(t['adapters_one_stream']):.2f}x |")  # type: ignore[arg-type]
        print(f"| 16 at once, in all | {float(v['base_x16']) / float(t['base_x16']):.2f}x | "  # type: ignore[arg-type]
              f"{float(v['adapters_x16']) / float(t['adapters_x16']):.2f}x |")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
