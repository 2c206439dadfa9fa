"""Training speed on a GPU: ftserve's engine against TRL's SFTTrainer on a Qwen2.5-0.5B-shaped model.

    python -m benchmarks.gpu_training [--examples N] [--batch-size N] [--seq-len-max N] [--packing]

The model has Qwen2.5-0.5B's shape with random weights (the subject is speed, and nothing is downloaded); the data is
benchmarks/train_throughput.py's synthetic chat task through the default model's tokenizer, whose ids all fall inside
Qwen's vocabulary. Both trainers run LoRA (all linear layers, rank 16) in bf16 on the same tokens, batch size and
sequence length, one after the other in this process; TRL with gradient checkpointing off, as the engine trains.
Prints tokens/s each, the ratio and the model FLOPs utilisation. Refuses to run without CUDA. docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.train_throughput import MODEL_ID, Report, make_examples, run_trl, write_jsonl

# Qwen2.5-0.5B's config.json (Qwen/Qwen2.5-0.5B on the Hugging Face hub), written out: 494M parameters.
QWEN25_05B: dict[str, Any] = {
    "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True, "rope_theta": 1_000_000.0,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "hidden_act": "silu",
}

# Dense bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets (H100 SXM5 and H200: 989.4; H100 PCIe: 756;
# A100: 312), without 2:4 sparsity. Matched against torch.cuda.get_device_name(), most specific first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0))


def peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def build_model(out: Path) -> int:
    """Writes the random-weight model and the default model's tokenizer to `out`; returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ftserve.catalogue import load_catalogue
    from ftserve.engine import models
    from ftserve.providers.local import source_of

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B), dtype=torch.bfloat16)
    model.save_pretrained(out)
    default_dir = models.local_dir(source_of(load_catalogue()[MODEL_ID]), out.parent / "cache")
    models.load_tokenizer(Path(default_dir)).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def run_engine(args: argparse.Namespace, work: Path, model_dir: Path) -> Report:
    from ftserve.engine import sft
    from ftserve.engine.events import Event, Finished, Started
    from ftserve.engine.sink import MemorySink
    from ftserve.engine.spec import JobSpec, ModelSource

    class TimedSink(MemorySink):
        """Training timed from `started` to `finished`: loading and tokenizing excluded, as for TRL."""

        def __init__(self) -> None:
            super().__init__()
            self.clock: dict[type, float] = {}

        def emit(self, event: Event) -> None:
            super().emit(event)
            self.clock.setdefault(type(event), time.perf_counter())

    spec = JobSpec(
        job_id="benchmark-gpu", method="supervised", model=ModelSource(id="qwen2.5-0.5b-shape", path=model_dir),
        training_file=work / "train.jsonl", output_dir=work / "engine", cache_dir=work / "cache",
        n_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        max_seq_length=args.seq_len_max, warmup_ratio=args.warmup_ratio, device="cuda", packing=args.packing,
    )
    sink = TimedSink()
    sft.run(spec, sink)
    report = Report("engine")
    report.trained_tokens = sink.of(Finished)[0].trained_tokens
    report.train_seconds = sink.clock[Finished] - sink.clock[Started]
    return report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len-max", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packing", action="store_true", help="the engine packs its batches (ftserve.packing)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_training needs a CUDA GPU; none is visible here.")
    args.device = "cuda"
    work = Path(tempfile.mkdtemp(prefix="ftserve-gpu-bench-"))
    try:
        write_jsonl(work / "train.jsonl", make_examples(args.examples, args.seed))
        params = build_model(work / "model")
        reports = [run_engine(args, work, work / "model")]
        gc.collect()
        torch.cuda.empty_cache()
        trl = Report("trl-nockpt")
        run_trl(args, work, work / "model", trl, checkpointing=False)
        reports.append(trl)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(reports, params, torch.cuda.get_device_name(), args)


def print_table(reports: list[Report], params: int, device: str, args: Any) -> None:
    peak = peak_tflops(device)
    print(f"{device}; Qwen2.5-0.5B shape ({params / 1e6:.0f}M parameters), LoRA r16, bf16, batch {args.batch_size}, "
          f"sequences up to {args.seq_len_max} tokens, {args.examples} examples x {args.epochs} epoch(s)"
          f"{', engine packing' if args.packing else ''}")
    print("\n| trainer | tokens | seconds | tokens/s | vs TRL | MFU |\n|---|---:|---:|---:|---:|---:|")
    baseline = reports[-1].tokens_per_second
    for report in reports:
        # 6 x parameters FLOPs per token (forward 2, backward 4), the usual convention even for LoRA, whose
        # backward skips the frozen weights' gradients: a comparable figure, an upper bound on work done.
        mfu = f"{6 * params * report.tokens_per_second / (peak * 1e12):.1%}" if peak else "unknown GPU"
        print(f"| {report.run} | {report.trained_tokens} | {report.train_seconds:.1f} | "
              f"{report.tokens_per_second:.0f} | {report.tokens_per_second / baseline:.2f}x | {mfu} |")


if __name__ == "__main__":
    main(sys.argv[1:])
