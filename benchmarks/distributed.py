"""One job in 1 process against N processes (torch.distributed): trained tokens per second, same job, same machine.

    python -m benchmarks.distributed [--processes 1,2] [--examples N] [--epochs N] [--batch-size N] [--seq-len-max N]

Each run is the engine as the local trainer starts it (`providers.local.engine_command`: the engine module for one
process, torchrun for more), on the same synthetic chat data as benchmarks/train_throughput.py, supervised LoRA
on the default model. Training is timed from the engine's `started` event to its `finished` event, as the parent
receives them (loading and tokenizing excluded; the final save included). The parent prints a markdown table on
stdout; the engines' logs go to stderr.

See docs/benchmarks.md for what it measures and how to read it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from benchmarks.train_throughput import (
    LORA_ALPHA, LORA_DROPOUT, LORA_RANK, MODEL_ID, machine, make_examples, model_source, write_jsonl,
)


@dataclass(frozen=True)
class Run:
    processes: int
    trained_tokens: int
    train_seconds: float
    engine_tokens_per_second: float | None
    """The engine's own figure at its last step."""
    last_loss: float
    hardware: str

    @property
    def tokens_per_second(self) -> float:
        return self.trained_tokens / self.train_seconds


def train(args: argparse.Namespace, work: Path, processes: int) -> Run:
    from ftserve.engine.events import Failed, Finished, Metrics, Started, decode
    from ftserve.engine.spec import JobSpec, LoraOptions
    from ftserve.providers.local import engine_command

    output = work / f"processes-{processes}"
    shutil.rmtree(output, ignore_errors=True)  # the engine resumes from any state it finds there
    output.mkdir(parents=True)
    spec = JobSpec(
        job_id=f"benchmark-{processes}", method="supervised", model=model_source(), training_file=work / "train.jsonl",
        output_dir=output, cache_dir=args.cache_dir, n_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, max_seq_length=args.seq_len_max, device=args.device,
        lora=LoraOptions(rank=LORA_RANK, alpha=LORA_ALPHA, dropout=LORA_DROPOUT), processes=processes,
    )
    (output / "spec.json").write_text(spec.model_dump_json())
    child = subprocess.Popen(engine_command(sys.executable, "ftserve.engine", output / "spec.json", processes),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    assert child.stdout is not None
    clock: dict[type, float] = {}
    last: Metrics | None = None
    started: Started | None = None
    finished: Finished | None = None
    for line in child.stdout:
        event = decode(line)
        clock.setdefault(type(event), time.perf_counter())
        if isinstance(event, Started):
            started = event
        elif isinstance(event, Metrics):
            last = event
            if event.step % max(1, event.total_steps // 10) == 0:
                print(f"{processes} process(es): step {event.step}/{event.total_steps}, loss "
                      f"{event.metrics['train_loss']:.3f}, {event.tokens_per_second} tokens/s", file=sys.stderr)
        elif isinstance(event, Finished):
            finished = event
        elif isinstance(event, Failed):
            raise RuntimeError(f"the engine failed: {event.message}")
    if child.wait() != 0 or finished is None or last is None or started is None:
        raise RuntimeError(f"the engine in {processes} process(es) exited {child.returncode} without finishing")
    return Run(processes, finished.trained_tokens, clock[Finished] - clock[Started], last.tokens_per_second,
               last.metrics["train_loss"], started.hardware)


def render(args: argparse.Namespace, runs: list[Run], examples: int) -> str:
    baseline = runs[0]
    header = ["processes", "trained tokens", "train s", "trained tokens/s", f"vs {baseline.processes}",
              "engine's last-step tokens/s", "last-step loss"]
    rows = [header, ["---"] * len(header)]
    for run in runs:
        rows.append([str(run.processes), str(run.trained_tokens), f"{run.train_seconds:.1f}",
                     f"{run.tokens_per_second:.1f}", f"{run.tokens_per_second / baseline.tokens_per_second:.2f}x",
                     str(run.engine_tokens_per_second), f"{run.last_loss:.4f}"])
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    lines = [
        f"One job across processes, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine()}, load average {os.getloadavg()[0]:.2f} at the end",
        f"- Versions: Python {platform.python_version()}, "
        + ", ".join(f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "peft")),
        *(f"- {run.processes} process(es): {run.hardware}" for run in runs),
        f"- Job: {MODEL_ID}, supervised LoRA r={LORA_RANK} alpha={LORA_ALPHA:g} all-linear, {examples} examples, "
        f"{args.epochs} epoch(s), global batch {args.batch_size} (split between the processes), learning rate "
        f"{args.lr:g}, max length {args.seq_len_max}, seed {args.seed}",
        "",
        table,
    ]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2", help="process counts to run, in order (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=128, help="training examples (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-4, help="(default: %(default)s)")
    parser.add_argument("--seq-len-max", type=int, default=256, help="truncation length (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda: a GPU per process (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ftserve-benchmarks",
                        help="where the base model's safetensors copy is kept (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data and models here (default: a temporary directory, removed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from ftserve.engine import models

    args = parse(sys.argv[1:] if argv is None else argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ftserve-bench-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", make_examples(args.examples, args.seed))
    models.local_dir(model_source(), args.cache_dir)  # converted once here, so no run's timing includes it
    if os.getloadavg()[0] > 1:
        print(f"warning: load average {os.getloadavg()[0]:.1f} before starting: other work will skew the timings",
              file=sys.stderr)
    try:
        runs = [train(args, work, int(n)) for n in args.processes.split(",")]
        print(render(args, runs, args.examples))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
