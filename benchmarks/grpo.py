"""Reinforcement (GRPO) throughput: ftserve's recipe against TRL's GRPOTrainer on the same job.

    python -m benchmarks.grpo [--steps N] [--lr LR] [--seed N] [--threads N] [--cache-dir DIR] [--work-dir DIR]

The task: name the first word of a short list ("List: kilo echo lima" -> "kilo"), graded by one OpenAI `multi`
grader, half exact match and half fuzzy similarity, which both sides run through `ftserve.graders`. Each step
samples 8 answers to each of 2 prompts and takes one optimizer step on their group-relative advantages.

As in `benchmarks.train_throughput`, the parent writes the data, then runs each side in a child process of its
own, one after another. A child trains, reports its per-step timings and rewards as JSON, and scores the adapter
it produced on the validation prompts with the one greedy scorer below. The markdown report goes to stdout,
everything the children print to stderr.

See docs/benchmarks.md for what each side runs and how to read the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.train_throughput import (
    LORA_ALPHA, LORA_DROPOUT, LORA_RANK, MODEL_ID, machine, model_source, resolved_device, write_jsonl,
)
from tests.tasks import FIRST_WORD_GRADER, reinforcement_examples

GROUP_SIZE, PROMPTS_PER_STEP = 8, 2
MAX_COMPLETION_TOKENS, TEMPERATURE = 16, 1.0
VALIDATION_PROMPTS = 16
# Rewards are reported as means over windows of this many steps: one step's 16 answers are a noisy sample.
WINDOW = 5

# The runs, in the order they execute; the first TRL run is the baseline the ratios divide by.
RUNS = {
    "engine": "ftserve engine",
    "trl": "TRL GRPOTrainer (defaults: gradient checkpointing on)",
    "trl-nockpt": "TRL GRPOTrainer (gradient_checkpointing=False)",
}
BASELINE = "trl"

# The task and its grader are the reinforcement tests' (tests/tasks.py): the benchmark measures the job CI trains.
GRADER = FIRST_WORD_GRADER


# Data: each example is its own seed, so the training and validation sets never depend on each other's size.

def make_examples(count: int, first_seed: int) -> list[dict[str, Any]]:
    return reinforcement_examples(count, offset=first_seed)


def read_examples(path: Path) -> list[dict[str, Any]]:
    from ftserve.engine.data import read_jsonl

    return [example for _, example in read_jsonl(path)]


def prompt_ids(tokenizer: Any, examples: list[dict[str, Any]]) -> list[list[int]]:
    """The engine's own prompt tokens: its chat template rendering, up to the assistant's turn."""
    from ftserve.engine.data import Encoder

    encoder = Encoder(tokenizer, max_length=2048)  # the engine's default max_seq_length; the prompts are ~60 tokens
    return [encoder.prompt(example["messages"]) for example in examples]


# What each child reports.

@dataclass
class Report:
    run: str
    step_seconds: list[float] = field(default_factory=list)
    """Each step's own time: sampling, grading, advantages, loss, backward and the optimizer step."""
    sample_seconds: list[float] = field(default_factory=list)
    grade_seconds: list[float] = field(default_factory=list)
    """The grader and what leads from rewards to advantages."""
    rewards: list[float] = field(default_factory=list)
    """Each step's mean reward over its sampled answers."""
    completion_tokens: list[float] = field(default_factory=list)
    """Each step's mean answer length, its end-of-turn token included."""
    loop_seconds: float = 0.0
    """The whole training loop, with what each side does between steps."""
    loop_cpu_seconds: float = 0.0
    valid_reward: float = 0.0
    own_evaluation: list[float] | None = None
    """The engine's own greedy evaluation, base and trained, from its `finished` event."""
    peak_rss_mib: float = 0.0
    described: str = ""

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def completions(self) -> int:
        return len(self.step_seconds) * PROMPTS_PER_STEP * GROUP_SIZE

    @property
    def completions_per_second(self) -> float:
        return self.completions / self.seconds if self.seconds else 0.0

    @property
    def cores_busy(self) -> float:
        """Below the torch thread count, something else took CPU time from this run: its timing is suspect."""
        return self.loop_cpu_seconds / self.loop_seconds if self.loop_seconds else 0.0


# Scoring: one function for every model, independent of both trainers' sampling code.

def greedy_reward(adapter_dir: Path | None, base_dir: Path, work: Path, device: str) -> float:
    """Mean reward of greedy answers to the validation prompts, from a fresh fp32 base plus an adapter, through
    transformers' `generate` without autocast, so neither side is scored by its own sampler or precision."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftserve import graders
    from ftserve.engine import models

    tokenizer = models.load_tokenizer(base_dir)
    examples = read_examples(work / "valid.jsonl")
    prompts = prompt_ids(tokenizer, examples)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.to(device).eval()
    pad, end, width = tokenizer.pad_token_id, tokenizer.eos_token_id, max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_COMPLETION_TOKENS,
                             do_sample=False, pad_token_id=pad, eos_token_id=end)
    texts = []
    for row in out[:, width:].tolist():
        kept = row[: row.index(end) + 1] if end in row else row
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return statistics.fmean(outcome.reward for outcome in graders.run_batch(GRADER, texts, examples))


# The runs, each in its own process.

def run_engine(args: argparse.Namespace, work: Path, report: Report) -> Path:
    import torch

    from ftserve.engine import grpo
    from ftserve.engine.events import Event, Finished, Metrics, Started
    from ftserve.engine.sink import MemorySink
    from ftserve.engine.spec import JobSpec, LoraOptions, Reinforcement

    class Clock(MemorySink):
        """Stamps `started` and each `metrics` event (wall and CPU seconds): the loop runs from the first to the
        last."""

        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[tuple[float, float]] = []

        def emit(self, event: Event) -> None:
            super().emit(event)
            if isinstance(event, Started):
                report.described = (f"{event.hardware}, sampling included; frozen weights in the compute dtype; "
                                    f"{torch.get_num_threads()} torch threads")
            if isinstance(event, (Started, Metrics)):
                self.stamps.append((time.perf_counter(), time.process_time()))
            if isinstance(event, Metrics):
                print(f"engine: step {event.step}/{event.total_steps}, reward {event.metrics['train_reward_mean']:.3f}",
                      file=sys.stderr, flush=True)

    output = work / "engine"
    shutil.rmtree(output, ignore_errors=True)  # the engine resumes from any state it finds there
    spec = JobSpec(
        job_id="benchmark", method="reinforcement", model=model_source(), training_file=work / "train.jsonl",
        validation_file=work / "valid.jsonl", output_dir=output, cache_dir=args.cache_dir,
        n_epochs=1, batch_size=PROMPTS_PER_STEP, learning_rate=args.lr, seed=args.seed, warmup_ratio=0.0,
        lora=LoraOptions(rank=LORA_RANK, alpha=LORA_ALPHA, dropout=LORA_DROPOUT, target_modules="all-linear"),
        device=args.device,
        # One validation round, at the last step: it and its checkpoint fall outside the steps' own time.
        reinforcement=Reinforcement(grader=GRADER, group_size=GROUP_SIZE, max_completion_tokens=MAX_COMPLETION_TOKENS,
                                    temperature=TEMPERATURE, eval_interval=args.steps, eval_samples=VALIDATION_PROMPTS),
    )
    sink = Clock()
    result = grpo.run(spec, sink)
    (began, began_cpu), (ended, ended_cpu) = sink.stamps[0], sink.stamps[-1]
    report.loop_seconds, report.loop_cpu_seconds = ended - began, ended_cpu - began_cpu
    for event in sink.of(Metrics):
        m = event.metrics
        report.step_seconds.append(m["sample_seconds"] + m["grade_seconds"] + m["train_seconds"])
        report.sample_seconds.append(m["sample_seconds"])
        report.grade_seconds.append(m["grade_seconds"])
        report.rewards.append(m["train_reward_mean"])
        report.completion_tokens.append(m["completion_tokens_mean"])
    evaluation = sink.of(Finished)[0].evaluation
    assert evaluation is not None and result.model_dir is not None
    report.own_evaluation = [evaluation["base"]["reward_mean"], evaluation["fine_tuned"]["reward_mean"]]
    return result.model_dir


def run_trl(args: argparse.Namespace, work: Path, base_dir: Path, report: Report, checkpointing: bool) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ftserve import graders
    from ftserve.engine import models
    from ftserve.engine.batching import epoch_batches

    phases = {"sample": 0.0, "prepare": 0.0}  # seconds in the current step
    running: set[str] = set()

    def timed(function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            running.add(phase)
            try:
                return function(*a, **k)
            finally:
                running.discard(phase)
                phases[phase] += time.perf_counter() - started
        return wrapper

    seen: dict[str, str] = {}  # the dtype of a LoRA layer's outputs while sampling and while training

    class Steps(TrainerCallback):
        """Times each step (on_step_begin to on_step_end: generation, rewards, loss, backward, optimizer step) and
        the loop (on_train_begin to on_train_end); reads each step's reward from TRL's logs."""

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.began, self.began_cpu = time.perf_counter(), time.process_time()

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            phases.update(sample=0.0, prepare=0.0)
            self.step_began = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the step's kernels may still be running
            report.step_seconds.append(time.perf_counter() - self.step_began)
            report.sample_seconds.append(phases["sample"])
            report.grade_seconds.append(phases["prepare"] - phases["sample"])
            probe.remove()

        def on_log(self, *_: Any, logs: dict[str, float] | None = None, **__: Any) -> None:
            if logs and "reward" in logs:
                report.rewards.append(logs["reward"])
                report.completion_tokens.append(logs["completions/mean_length"])
                print(f"{report.run}: step {len(report.rewards)}/{args.steps}, reward {logs['reward']:.3f}",
                      file=sys.stderr, flush=True)

        def on_train_end(self, *_: Any, **__: Any) -> None:
            report.loop_seconds = time.perf_counter() - self.began
            report.loop_cpu_seconds = time.process_time() - self.began_cpu

    def first_word(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        # The engine grades each answer against its whole example; this grader reads only `answer`.
        items = [{"messages": p, "answer": a} for p, a in zip(prompts, answer, strict=True)]
        outcomes = graders.run_batch(GRADER, [c[0]["content"] for c in completions], items)
        return [outcome.reward for outcome in outcomes]

    tokenizer = models.load_tokenizer(base_dir)
    examples = read_examples(work / "train.jsonl")
    ids = prompt_ids(tokenizer, examples)
    # The engine's batches, in its order: unshuffled, TRL takes the same 2 prompts at every step.
    order = [i for batch in epoch_batches([len(p) for p in ids], PROMPTS_PER_STEP, args.seed, 0) for i in batch]
    dataset = Dataset.from_list([{"prompt": examples[i]["messages"], "answer": examples[i]["answer"]} for i in order])
    output = work / report.run
    shutil.rmtree(output, ignore_errors=True)
    config = GRPOConfig(
        output_dir=str(output),
        max_steps=args.steps,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE,  # completions: 2 prompts' groups
        num_generations=GROUP_SIZE,
        max_completion_length=MAX_COMPLETION_TOKENS,
        temperature=TEMPERATURE, top_k=0, top_p=1.0,
        beta=0.0,
        num_iterations=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",  # the engine's schedule: with no warm-up, lr·(total - step)/total
        warmup_steps=0,
        shuffle_dataset=False,
        seed=args.seed,
        bf16=True,
        use_cpu=args.device == "cpu",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        **({} if checkpointing else {"activation_checkpointing": False}),
    )
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    # The model as a path: TRL loads it its own way (fp32 weights by default) and wraps it with PEFT.
    trainer = GRPOTrainer(model=str(base_dir), reward_funcs=first_word, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[Steps()])
    rendered, _, _ = trainer._tokenize_prompts([examples[i]["messages"] for i in order])
    if [list(r) for r in rendered] != [ids[i] for i in order]:
        raise RuntimeError("TRL's prompt tokens differ from the engine's")
    trainer._generate = timed(trainer._generate, "sample")
    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "prepare")
    base = trainer.model.get_base_model()

    def note_dtype(_module: Any, _inputs: Any, out: Any) -> None:
        seen.setdefault("sample" if "sample" in running else "train", str(out.dtype).removeprefix("torch."))

    probe = base.model.layers[0].self_attn.q_proj.register_forward_hook(note_dtype)
    trainer.train()
    report.described = (
        f"frozen weights {str(next(base.parameters()).dtype).removeprefix('torch.')}, "
        f"{base.config._attn_implementation} attention, "
        f"checkpointing {base.is_activation_checkpointing}, optimizer {getattr(config.optim, 'value', config.optim)}, "
        f"mixed precision {trainer.accelerator.mixed_precision}: generation in {seen.get('sample')}, "
        f"training in {seen.get('train')}; {torch.get_num_threads()} torch threads"
    )
    trainer.save_model(str(output / "adapter"))
    return output / "adapter"


def child(args: argparse.Namespace) -> None:
    import torch

    from ftserve.engine import models

    torch.set_num_threads(args.threads)
    args.device = resolved_device(args.device)
    work, base_dir = args.work_dir, Path(models.local_dir(model_source(), args.cache_dir))
    report = Report(args.only)
    if args.only == "engine":
        adapter: Path | None = run_engine(args, work, report)
    elif args.only in ("trl", "trl-nockpt"):
        adapter = run_trl(args, work, base_dir, report, checkpointing=args.only == "trl")
    else:  # "base": no training, only the reference reward
        adapter = None
    # ru_maxrss is the lifetime peak, in KiB on Linux: read before scoring, it covers loading and training.
    report.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.valid_reward = greedy_reward(adapter, base_dir, work, args.device)
    (work / f"{args.only}.json").write_text(json.dumps(asdict(report)))


# The parent: data, children, tables.

def parent(args: argparse.Namespace, argv: list[str]) -> None:
    import torch

    from ftserve.engine import models

    args.device = resolved_device(args.device)  # both sides on the same device, whatever "auto" finds
    torch.set_num_threads(args.threads)  # as the children do, so the machine line says what they ran with
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ftserve-bench-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", make_examples(args.steps * PROMPTS_PER_STEP, 0))
    write_jsonl(work / "valid.jsonl", make_examples(VALIDATION_PROMPTS, 1000))
    # Converted here once, so no child's timing or memory includes the GGUF conversion.
    models.local_dir(model_source(), args.cache_dir)

    if os.getloadavg()[0] > 1:
        print(f"warning: load average {os.getloadavg()[0]:.1f} before starting: if other work is running, it will "
              "skew the timings (the 'CPU cores busy' column shows whether it did)", file=sys.stderr)
    reports: dict[str, Report] = {}
    try:
        for run in ["base", *RUNS]:
            print(f"--- {run} ---", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "benchmarks.grpo", *argv,
                       "--only", run, "--work-dir", str(work), "--device", args.device]
            # Children's chatter (progress bars, TRL's logs) goes to stderr; stdout is the report alone.
            subprocess.run(command, check=True, stdout=sys.stderr)
            reports[run] = Report(**json.loads((work / f"{run}.json").read_text()))
        print(render(args, reports))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def render(args: argparse.Namespace, reports: dict[str, Report]) -> str:
    import torch

    base = reports["base"].valid_reward
    baseline = reports[BASELINE].completions_per_second
    head = min(WINDOW, args.steps)

    def table(rows: list[list[str]]) -> str:
        return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], ["---"] * len(rows[0]), *rows[1:]])

    main = [["run", "steps", "completions", "step s", "completions/s", f"vs {BASELINE}", "answer tokens (mean)",
             f"train reward, first {head} → last {head} steps", "greedy validation reward (base → trained)",
             "CPU cores busy", "peak RSS MiB"]]
    breakdown = [["run", "sample s/step", "grade s/step", "update s/step", "whole loop s"]]
    for run, label in RUNS.items():
        r = reports[run]
        main.append([
            label, f"{len(r.step_seconds)}", f"{r.completions}", f"{r.seconds:.1f}", f"{r.completions_per_second:.2f}",
            f"{r.completions_per_second / baseline:.2f}x", f"{statistics.fmean(r.completion_tokens):.1f}",
            f"{statistics.fmean(r.rewards[:head]):.3f} → {statistics.fmean(r.rewards[-head:]):.3f}",
            f"{base:.3f} → {r.valid_reward:.3f}", f"{r.cores_busy:.2f}", f"{r.peak_rss_mib:.0f}",
        ])
        update = [s - a - g for s, a, g in zip(r.step_seconds, r.sample_seconds, r.grade_seconds, strict=True)]
        breakdown.append([label, *(f"{statistics.fmean(s):.2f}" for s in (r.sample_seconds, r.grade_seconds, update)),
                          f"{r.loop_seconds:.1f}"])
    curve = [["steps", *RUNS.values()]]
    for start in range(0, args.steps, WINDOW):
        end = min(start + WINDOW, args.steps)
        curve.append([f"{start + 1}–{end}",
                      *(f"{statistics.fmean(reports[run].rewards[start:end]):.3f}" for run in RUNS)])

    engine = reports["engine"]
    assert engine.own_evaluation is not None
    lines = [
        f"Reinforcement (GRPO) throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine()}",
        f"- Versions: Python {platform.python_version()}, " + ", ".join(
            f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "peft", "trl")),
        f"- CUDA: {torch.cuda.get_device_name(0) if args.device == 'cuda' else 'no'}",
        f"- Job: {MODEL_ID}, {args.steps} steps of {PROMPTS_PER_STEP} prompts × {GROUP_SIZE} answers, at most "
        f"{MAX_COMPLETION_TOKENS} tokens each, temperature {TEMPERATURE:g} (no top-k or top-p), no KL term, one update "
        f"per batch of samples, learning rate {args.lr:g} decaying linearly to zero, no warm-up, seed {args.seed}; "
        f"LoRA r={LORA_RANK}, alpha={LORA_ALPHA:g}, dropout={LORA_DROPOUT:g}, all-linear; grader "
        f"{GRADER['calculate_output']} (string_check eq, text_similarity fuzzy_match); "
        f"{VALIDATION_PROMPTS} validation prompts",
        "- Step s: the sum of the steps' own times (sampling, grading, advantages, loss, backward, optimizer step); "
        "model loading, validation, logging and checkpoint saves are out",
        "- Per step: sample is the engine's sampler, TRL's `_generate` (prompt tokens, `generate`, decoding); grade "
        "is the grader and the advantages (for TRL, the rest of `_generate_and_score_completions`); update is the "
        "rest of the step. Whole loop s: from the engine's `started` event to its last `metrics` event (its "
        "resumable-state saves, last validation round and checkpoint in), from TRL's on_train_begin to on_train_end",
        "- Greedy validation reward: one scorer for every model (fp32 base plus the run's adapter, transformers' "
        f"`generate`, greedy). The engine's own evaluation (its sampler, bf16): {engine.own_evaluation[0]:.3f} → "
        f"{engine.own_evaluation[1]:.3f}",
        *(f"- {RUNS[run]}: {reports[run].described}" for run in RUNS),
        "",
        table(main),
        "",
        table(breakdown),
        "",
        f"Train reward, mean over each {WINDOW} steps:",
        "",
        table(curve),
    ]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpo", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-4, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
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
