"""Supervised LoRA training throughput: ftserve's engine against TRL's SFTTrainer on the same job.

    python -m benchmarks.train_throughput [--examples N] [--epochs N] [--batch-size N] [--lr LR] [--seq-len-max N]

The parent process writes a synthetic chat data set, then runs each trainer in a child process of
its own, one after another, so every peak-RSS figure belongs to one trainer alone. Each child
trains, reports its figures as JSON, and scores the adapter it produced on the held-out examples
with the one scoring function below. The parent prints a markdown table on stdout; everything the
children print goes to stderr.

See docs/benchmarks.md for what each side runs and how to read the results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

# The default model, as the catalogue names it. It ships as a GGUF file inside a Python package;
# the engine dequantises it once into a safetensors copy under the cache dir, which TRL then loads too.
MODEL_ID = "SmolLM2-135M-Instruct"

LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 16, 32.0, 0.0

# The runs, in the order they execute; the first TRL run is the baseline the ratios divide by.
RUNS = {
    "engine": "ftserve engine",
    "trl": "TRL SFTTrainer (defaults: gradient checkpointing on)",
    "trl-nockpt": "TRL SFTTrainer (gradient_checkpointing=False)",
}
BASELINE = "trl"

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu red orange yellow green blue indigo "
    "violet amber crimson teal cat dog horse otter falcon heron lynx badger maple cedar birch willow oak "
    "river canyon meadow glacier harbor summit"
).split()
PROMPTS = (
    "List: {items}. Reply with the count, the first item and the last item.",
    "Count these words and name the first and the last one: {items}",
    "Here are some items: {items}.\nHow many are there, and which come first and last?",
)


# Data: a synthetic chat task with a strict answer format, so the held-out loss falls visibly.

def make_examples(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        # From a handful of words to about 70: sequences of roughly 60 to 250 tokens, so how
        # batches are formed (and how much they pad) matters.
        items = [rng.choice(WORDS) for _ in range(rng.randint(2, 70))]
        prompt = rng.choice(PROMPTS).format(items=", ".join(items))
        answer = f"Items: {len(items)} | first={items[0]} | last={items[-1]}"
        examples.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return examples


def write_jsonl(path: Path, examples: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")


def encode(tokenizer: Any, path: Path, max_len: int) -> list[Any]:
    """The engine's own token ids and loss masks, so both trainers see exactly the same tokens."""
    from ftserve.engine.data import Encoder, read_jsonl

    encoder = Encoder(tokenizer, max_len)
    sequences = [encoder.chat(example) for _, example in read_jsonl(path)]
    # The engine skips examples truncated down to no trained token; so does everyone here.
    return [s for s in sequences if s.trained]


# What each child reports.

@dataclass
class Report:
    run: str
    trained_tokens: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    """CPU time the process used while training, all its threads together."""
    heldout_loss: float = 0.0
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    base_parameters: int = 0
    self_reported_tokens_per_second: float | None = None
    """The trainer's own figure, where it gives one."""

    @property
    def tokens_per_second(self) -> float:
        return self.trained_tokens / self.train_seconds if self.train_seconds else 0.0

    @property
    def cores_busy(self) -> float:
        """Below the core count, something else took CPU time from this run: its timing is suspect."""
        return self.train_cpu_seconds / self.train_seconds if self.train_seconds else 0.0


def peak_memory(report: Report) -> None:
    import torch

    # ru_maxrss is the lifetime peak, in KiB on Linux: read before scoring, it covers loading and training.
    report.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        report.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20


# Scoring: one function for every model, independent of both trainers' loss code.

def heldout_loss(adapter_dir: Path | None, base_dir: Path, sequences: list[Any], pad_id: int, batch_size: int,
                 device: str) -> float:
    """Mean cross-entropy over the held-out assistant tokens, in fp32, of the base plus an adapter.

    Both trainers' adapters go onto a freshly loaded fp32 base, so neither is scored in the
    precision it happened to train in.
    """
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from ftserve.engine.batching import collate

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.to(device).eval()
    ordered = sorted(sequences, key=len)
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            # The engine's padding (it is not loss code); the loss below is computed independently.
            batch = collate(ordered[start : start + batch_size], pad_id, torch.device(device))
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
            targets = batch.labels[:, 1:]
            loss_sum += F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum").item()
            tokens += int((targets != -100).sum())
    return loss_sum / tokens


# The runs, each in its own process.

def run_engine(args: argparse.Namespace, work: Path, base_dir: Path, report: Report) -> Path:
    from ftserve.engine import sft
    from ftserve.engine.events import Event, Finished, Metrics, Started
    from ftserve.engine.sink import MemorySink
    from ftserve.engine.spec import JobSpec, LoraOptions

    class TimedSink(MemorySink):
        """Stamps the first event of each kind, so training is timed from `started` to `finished` (loading and
        tokenizing excluded)."""

        def __init__(self) -> None:
            super().__init__()
            self.clock: dict[type, tuple[float, float]] = {}  # wall and CPU seconds

        def emit(self, event: Event) -> None:
            super().emit(event)
            self.clock.setdefault(type(event), (time.perf_counter(), time.process_time()))
            if isinstance(event, Metrics) and event.step % max(1, event.total_steps // 10) == 0:
                print(f"engine: step {event.step}/{event.total_steps}, loss {event.metrics['train_loss']:.3f}, "
                      f"{event.tokens_per_second} tokens/s", file=sys.stderr, flush=True)

    output = work / "engine"
    shutil.rmtree(output, ignore_errors=True)  # the engine resumes from any state it finds there
    spec = JobSpec(
        job_id="benchmark", method="supervised", model=model_source(), training_file=work / "train.jsonl",
        output_dir=output, cache_dir=args.cache_dir,
        n_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        lora=LoraOptions(rank=LORA_RANK, alpha=LORA_ALPHA, dropout=LORA_DROPOUT, target_modules="all-linear"),
        max_seq_length=args.seq_len_max, warmup_ratio=args.warmup_ratio, device=args.device,
    )
    sink = TimedSink()
    result = sft.run(spec, sink)
    (started_at, started_cpu), (finished_at, finished_cpu) = sink.clock[Started], sink.clock[Finished]
    report.trained_tokens = sink.of(Finished)[0].trained_tokens
    report.train_seconds = finished_at - started_at
    report.train_cpu_seconds = finished_cpu - started_cpu
    report.self_reported_tokens_per_second = sink.of(Metrics)[-1].tokens_per_second
    report.base_parameters = base_parameters(base_dir)
    peak_memory(report)
    assert result.model_dir is not None
    return result.model_dir


def run_trl(args: argparse.Namespace, work: Path, base_dir: Path, report: Report, checkpointing: bool) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftserve.engine import models

    class Timer(TrainerCallback):
        """Times the training loop alone: the data set is prepared and the model wrapped before it begins."""

        def on_train_begin(self, *_: Any, model: Any = None, **__: Any) -> None:
            # Described here, not earlier: `train()` itself switches checkpointing on.
            base = model.get_base_model()
            print(f"{report.run}: frozen weights {next(base.parameters()).dtype}, "
                  f"{base.config._attn_implementation} attention, checkpointing {base.is_activation_checkpointing}, "
                  f"optimizer {getattr(config.optim, 'value', config.optim)}", file=sys.stderr, flush=True)
            self.began, self.began_cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, *_: Any, **__: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the last step's kernels may still be running
            self.ended, self.ended_cpu = time.perf_counter(), time.process_time()

    tokenizer = models.load_tokenizer(base_dir)
    train = encode(tokenizer, work / "train.jsonl", args.seq_len_max)
    # Pre-tokenized, so TRL trains on the engine's exact token ids and masks. TRL folds an
    # `assistant_masks` column into `labels` (-100 where the mask is 0) whatever
    # `assistant_only_loss` says; that flag only drives its own chat-template tokenization, and
    # with `assistant_only_loss=True` TRL 1.16 refuses a pre-tokenized (non-conversational) data set
    # outright. So the flag stays at its default and the masks alone confine the loss to the
    # assistant tokens; the check after the trainer is built proves it.
    dataset = Dataset.from_dict({
        "input_ids": [s.input_ids for s in train],
        "assistant_masks": [[int(label != -100) for label in s.labels] for s in train],
    })
    output = work / report.run
    shutil.rmtree(output, ignore_errors=True)
    config = SFTConfig(
        output_dir=str(output),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_ratio,  # transformers 5 takes a ratio here: a float below 1
        seed=args.seed,
        max_length=args.seq_len_max,
        bf16=True,
        use_cpu=args.device == "cpu",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        # TRL turns gradient checkpointing on by default; transformers 5 names the switch
        # `activation_checkpointing` (the old name still works, with a deprecation warning).
        **({} if checkpointing else {"activation_checkpointing": False}),
    )
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(args.seed)
    timer = Timer()
    # The model as a path: TRL loads it its own way (fp32 weights by default) and wraps it with PEFT.
    trainer = SFTTrainer(model=str(base_dir), args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    prepared = {tuple(row["input_ids"]): row["labels"] for row in trainer.train_dataset}
    if any(prepared.get(tuple(s.input_ids)) != s.labels for s in train):
        raise RuntimeError("TRL's prepared labels differ from the engine's loss mask")
    trainer.train()
    report.trained_tokens = sum(map(len, train)) * args.epochs
    report.train_seconds = timer.ended - timer.began
    report.train_cpu_seconds = timer.ended_cpu - timer.began_cpu
    report.base_parameters = base_parameters(base_dir)
    peak_memory(report)
    trainer.save_model(str(output / "adapter"))
    del trainer
    gc.collect()
    return output / "adapter"


def base_parameters(base_dir: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # Built on the meta device: counting the parameters costs no memory.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    return sum(p.numel() for p in model.parameters())


def child(args: argparse.Namespace) -> None:
    from ftserve.engine import models

    work, base_dir = args.work_dir, Path(models.local_dir(model_source(), args.cache_dir))
    report = Report(args.only)
    if args.only == "engine":
        adapter: Path | None = run_engine(args, work, base_dir, report)
    elif args.only in ("trl", "trl-nockpt"):
        adapter = run_trl(args, work, base_dir, report, checkpointing=args.only == "trl")
    else:  # "base": no training, only the reference held-out loss
        adapter = None
    gc.collect()
    tokenizer = models.load_tokenizer(base_dir)
    heldout = encode(tokenizer, work / "heldout.jsonl", args.seq_len_max)
    report.heldout_loss = heldout_loss(adapter, base_dir, heldout, tokenizer.pad_token_id, args.batch_size,
                                       resolved_device(args.device))
    (work / f"{args.only}.json").write_text(json.dumps(asdict(report)))


# The parent: data, children, table.

def model_source() -> Any:
    from ftserve.catalogue import load_catalogue
    from ftserve.providers.local import source_of

    return source_of(load_catalogue()[MODEL_ID])


def resolved_device(choice: str) -> str:
    import torch

    return "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"


def parent(args: argparse.Namespace, argv: list[str]) -> None:
    from ftserve.engine import models

    args.device = resolved_device(args.device)  # both sides on the same device, whatever "auto" finds
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ftserve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    examples = make_examples(args.examples + args.heldout, args.seed)
    write_jsonl(work / "train.jsonl", examples[: args.examples])
    write_jsonl(work / "heldout.jsonl", examples[args.examples :])
    # Converted here once, so no child's timing or memory includes the GGUF conversion.
    base_dir = Path(models.local_dir(model_source(), args.cache_dir))
    padding = padding_overhead(args, work, base_dir)

    if os.getloadavg()[0] > 1:
        print(f"warning: load average {os.getloadavg()[0]:.1f} before starting: if other work is running, it will "
              "skew the timings (the 'CPU cores busy' column shows whether it did)", file=sys.stderr)
    reports: dict[str, Report] = {}
    try:
        for run in ["base", *RUNS]:
            print(f"--- {run} ---", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "benchmarks.train_throughput", *argv,
                       "--only", run, "--work-dir", str(work), "--device", args.device]
            # Children's chatter (progress bars, TRL's logs) goes to stderr; stdout is the report alone.
            subprocess.run(command, check=True, stdout=sys.stderr)
            reports[run] = Report(**json.loads((work / f"{run}.json").read_text()))
        print(render(args, reports, padding))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def padding_overhead(args: argparse.Namespace, work: Path, base_dir: Path) -> tuple[float, float]:
    """Positions computed per real token: the engine's batches, and random batches like TRL's sampler draws.

    The engine's order is reproduced exactly; TRL's is averaged over shuffles, which is what its
    random sampler amounts to.
    """
    from ftserve.engine import models
    from ftserve.engine.batching import epoch_batches

    lengths = [len(s) for s in encode(models.load_tokenizer(base_dir), work / "train.jsonl", args.seq_len_max)]

    def computed(batches: list[list[int]]) -> int:
        return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)

    real = sum(lengths)
    engine = sum(computed(epoch_batches(lengths, args.batch_size, args.seed, e)) for e in range(args.epochs))
    rng, shuffles = random.Random(args.seed), 100
    drawn = 0
    for _ in range(shuffles):
        order = rng.sample(range(len(lengths)), len(lengths))
        drawn += computed([order[k : k + args.batch_size] for k in range(0, len(order), args.batch_size)])
    return engine / (real * args.epochs), drawn / (real * shuffles)


def render(args: argparse.Namespace, reports: dict[str, Report], padding: tuple[float, float]) -> str:
    import torch

    base = reports["base"].heldout_loss
    baseline = reports[BASELINE].tokens_per_second
    cuda = args.device == "cuda"
    header = ["trainer", "trained tokens", "train s", "trained tokens/s", f"vs {BASELINE}",
              "held-out loss (base → trained)", "peak RSS MiB"]
    header += ["peak GPU MiB", "MFU"] if cuda else ["CPU cores busy"]
    rows = [header, ["---"] * len(header)]
    for run, label in RUNS.items():
        r = reports[run]
        row = [label, f"{r.trained_tokens}", f"{r.train_seconds:.1f}", f"{r.tokens_per_second:.1f}",
               f"{r.tokens_per_second / baseline:.2f}x", f"{base:.3f} → {r.heldout_loss:.3f}", f"{r.peak_rss_mib:.0f}"]
        if cuda:
            # A LoRA step costs about 4·N FLOPs per token: 2·N forward, 2·N for the activation
            # gradients; the frozen weights get no weight gradients.
            mfu = 4 * r.base_parameters * r.tokens_per_second / (args.peak_tflops * 1e12)
            row += [f"{r.peak_gpu_mib:.0f}", f"{mfu:.2%}"]
        else:
            row += [f"{r.cores_busy:.2f}"]
        rows.append(row)
    reference = ["base model (no training, reference)", "", "", "", "", f"{base:.3f}", ""]
    rows.append(reference + [""] * (len(header) - len(reference)))
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)

    lines = [
        f"Supervised LoRA throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine()}",
        f"- Versions: Python {platform.python_version()}, " + ", ".join(
            f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "peft", "trl")),
        f"- CUDA: {torch.cuda.get_device_name(0) if cuda else 'no'}"
        + (f" (MFU against {args.peak_tflops:g} TFLOPS dense bf16 peak)" if cuda else ""),
        f"- Job: {MODEL_ID}, {args.examples} training / {args.heldout} held-out examples, {args.epochs} epoch(s), "
        f"batch size {args.batch_size}, learning rate {args.lr:g}, linear schedule with warm-up ratio "
        f"{args.warmup_ratio:g}, max length {args.seq_len_max}, seed {args.seed}; LoRA r={LORA_RANK}, "
        f"alpha={LORA_ALPHA:g}, dropout={LORA_DROPOUT:g}, all-linear",
        "- Trained tokens: non-padding tokens processed. The engine's own figure for its last step: "
        f"{reports['engine'].self_reported_tokens_per_second} tokens/s",
        f"- Padding: the engine's length-grouped batches compute {padding[0]:.2f} positions per real token; "
        f"random batches of {args.batch_size}, as TRL's default sampler draws them, {padding[1]:.2f} on average",
        "",
        table,
    ]
    return "\n".join(lines)


def machine() -> str:
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    bf16 = "avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo
    return (f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores "
            f"({torch.get_num_threads()} torch threads), {'native' if bf16 else 'no native'} bf16")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256, help="training examples (default: %(default)s)")
    parser.add_argument("--heldout", type=int, default=64, help="held-out examples (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-4, help="(default: %(default)s)")
    parser.add_argument("--warmup-ratio", type=float, default=0.03, help="(default: %(default)s)")
    parser.add_argument("--seq-len-max", type=int, default=256, help="truncation length (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="GPU dense bf16 peak for MFU, CUDA only (default: %(default)s, H100 SXM)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ftserve-benchmarks",
                        help="where the base model's safetensors copy is kept (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data, adapters and reports here (default: a temporary directory, removed)")
    parser.add_argument("--only", choices=("base", *RUNS), help=argparse.SUPPRESS)  # set for the children
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.only:
        child(args)
    else:
        parent(args, argv)


if __name__ == "__main__":
    main()
