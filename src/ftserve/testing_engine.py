"""`python -m ftserve.testing_engine SPEC.json`: a stand-in for the training engine, for crash tests.

It speaks the engine's protocol (JSON-line events out, `pause`/`cancel`/`shutdown` in, stdin closing
is cancel) and is honest about files: resumable state under `state/step-N`, written aside and renamed,
the two newest kept; checkpoint and model directories that hold a real LoRA adapter (a no-op one: its
B matrices are zero), so a result model loads and answers a chat. Training is a sleep per step, so a
job of a dozen steps takes seconds and kills can land anywhere in it cheaply.

Two knobs, read from the environment because the worker passes its own environment to the engine:
FTSERVE_FAKE_ENGINE_STEP_SECONDS (default 0.2) and FTSERVE_FAKE_ENGINE_STALL_AT, a step the engine
never gets past (it hangs before training it), for a job that makes no progress.

A reinforcement job reports rewards, validation rounds and its best checkpoints as the real recipe does
(`testing_rewards`, which the in-process fake trainer shares), from its grader run for real on each step's prompts.

Like the real engine it imports nothing of the service, and not torch either.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ftserve.engine import events
from ftserve.engine.artifacts import MANIFEST
from ftserve.engine.sink import Journal, JsonLinesSink, Sink
from ftserve.engine.spec import JobSpec
from ftserve.testing_rewards import Candidates, FakeRewards, Refused

STATE_FILE = "state.json"
KEEP = 2
STATE_SAVES_PER_RUN = 10  # as the real loop: without a checkpoint_interval, about this many saves a run


def run(spec: JobSpec, sink: Sink, step_seconds: float, stall_at: int | None) -> int:
    examples = sum(1 for line in spec.training_file.read_text().splitlines() if line.strip())
    per_epoch = max(1, math.ceil(examples / spec.batch_size))
    total = per_epoch * spec.n_epochs
    save_every = spec.checkpoint_interval or max(1, total // STATE_SAVES_PER_RUN)
    try:
        adapter_shapes = _adapter_shapes(spec)
        rewards = FakeRewards(spec, per_epoch, total) if spec.method == "reinforcement" else None
    except OSError as error:
        sink.emit(events.Failed(message=f"The fake engine reads the base model's config.json: {error}"))
        return 1
    except Refused as error:
        sink.emit(events.Failed(message=str(error)))
        return 1

    step, journal, resumed = 0, Journal(sink), {}
    for saved in saved_states(spec.output_dir)[:1]:  # the newest
        resumed = json.loads((saved / STATE_FILE).read_text())
        step, journal = resumed["step"], Journal(sink, resumed["reported"])
        sink.emit(events.Message(text=f"Resuming from step {step}"))
    sink.emit(events.Started(step=step, total_steps=total, hardware="fake engine"))
    journal.replay()  # as the real loop
    candidates = None
    if rewards is not None and rewards.validated:  # the validation rounds kept so far, as the state saved them
        candidates = Candidates(spec.output_dir, resumed.get("candidates"))
        candidates.prune()

    def keep_state() -> None:
        save_state(spec.output_dir, step, journal.lines, candidates.kept if candidates is not None else None)
        sink.emit(events.StateSaved(step=step))

    last_dir: Path | None = None
    while step < total:
        stop = sink.requested_stop()
        if stop is not None:
            if stop in ("pause", "shutdown"):
                keep_state()
            sink.emit(events.Stopped(reason=stop, step=step, trained_tokens=step * 100))
            return 0
        if stall_at is not None and step + 1 >= stall_at:  # stuck before this step; a stop request or a kill ends it
            time.sleep(0.1)
            continue
        time.sleep(step_seconds)
        step += 1
        if rewards is not None:
            metrics, warning = rewards.step(step, step_seconds)
            if warning:
                sink.emit(events.Message(text=warning, level="warn"))
        else:
            metrics = _supervised_metrics(spec, step, total)
        if candidates is not None and "valid_reward_mean" in metrics:
            candidates.offer(step, metrics, lambda path: _save_adapter(spec, path, adapter_shapes, step))
        journal.report(events.Metrics(step=step, total_steps=total, metrics=metrics, tokens_per_second=100.0))
        epoch_end = step % per_epoch == 0
        if candidates is None and epoch_end and step // per_epoch > spec.n_epochs - spec.keep_epoch_checkpoints:
            last_dir = _save_adapter(spec, spec.output_dir / f"checkpoint-{step}", adapter_shapes, step)
            journal.report(events.Checkpoint(step=step, metrics={"step": step, **metrics}, path=last_dir))
        if step < total and (epoch_end or step % save_every == 0):
            keep_state()

    if candidates is not None:  # the best validation rounds, reported once training is done
        for kept_step, kept_metrics, path in candidates.in_order():
            journal.report(events.Checkpoint(step=kept_step, metrics={"step": kept_step, **kept_metrics}, path=path))
    model_dir = last_dir or _save_adapter(spec, spec.output_dir / "model", adapter_shapes, step)
    evaluation = None
    if rewards is not None:
        evaluation = rewards.evaluation()
    elif spec.validation_file is not None:
        scores = {"loss": 1.0, "token_accuracy": 0.5, "exact_match": 0.0}
        evaluation = {"examples": 1, "generated": 1, "base": scores, "fine_tuned": scores}
    sink.emit(events.Finished(step=step, trained_tokens=step * 100, model_dir=model_dir, evaluation=evaluation))
    return 0


def _supervised_metrics(spec: JobSpec, step: int, total: int) -> dict[str, float]:
    loss = round(2.0 * math.exp(-2.5 * step / total), 6)
    metrics: dict[str, float] = {"train_loss": loss, "train_mean_token_accuracy": round(1 - loss / 2.5, 6)}
    if spec.validation_file is not None:
        metrics |= {"valid_loss": round(loss * 1.1, 6), "valid_mean_token_accuracy": round(1 - loss * 1.1 / 2.5, 6)}
    return metrics


def save_state(output_dir: Path, step: int, reported: list[str], candidates: list[dict[str, Any]] | None = None) -> Path:
    """The real engine's discipline (engine/state.py): written aside, synced, renamed, two newest kept. A
    reinforcement job's kept validation checkpoints go with it, as grpo's do."""
    root = output_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".step-{step}.tmp"
    staging.mkdir()
    with (staging / STATE_FILE).open("w") as file:
        json.dump({"step": step, "reported": reported, **({"candidates": candidates} if candidates is not None else {})},
                  file)
        file.flush()
        os.fsync(file.fileno())
    target = root / f"step-{step}"
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for old in saved_states(output_dir)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def saved_states(output_dir: Path) -> list[Path]:
    done = [p for p in (output_dir / "state").glob("step-*") if (p / STATE_FILE).exists()]
    return sorted(done, key=step_of, reverse=True)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _adapter_shapes(spec: JobSpec) -> dict[str, tuple[int, int]]:
    """Each layer's q_proj, as (in, out) features, from the converted base model's config."""
    config = json.loads((spec.cache_dir / spec.model.id / "config.json").read_text())
    hidden = int(config["hidden_size"])
    out = int(config.get("head_dim") or hidden // config["num_attention_heads"]) * int(config["num_attention_heads"])
    return {f"base_model.model.model.layers.{i}.self_attn.q_proj": (hidden, out)
            for i in range(int(config["num_hidden_layers"]))}


def _save_adapter(spec: JobSpec, directory: Path, shapes: dict[str, tuple[int, int]], step: int) -> Path:
    """A LoRA adapter PEFT loads, appearing whole or not at all, kept if already there (as save_model does)."""
    if (directory / MANIFEST).exists():
        return directory
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rank = spec.lora.rank
    rng = np.random.default_rng(spec.seed)
    weights: dict[str, Any] = {}
    for module, (features_in, features_out) in shapes.items():
        weights[f"{module}.lora_A.weight"] = rng.normal(0, 0.02, (rank, features_in)).astype(np.float32)
        weights[f"{module}.lora_B.weight"] = np.zeros((features_out, rank), dtype=np.float32)
    save_file(weights, str(staging / "adapter_model.safetensors"))
    (staging / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": spec.lora.alpha,
        "lora_dropout": 0.0, "target_modules": ["q_proj"], "bias": "none", "inference_mode": True,
        "base_model_name_or_path": None,
    }))
    (staging / MANIFEST).write_text(json.dumps({
        "base_model": spec.model.id, "training_type": "lora", "method": spec.method, "step": step,
        "job_id": spec.job_id, "trainer": "fake-engine",
    }))
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ftserve.testing_engine SPEC.json", file=sys.stderr)
        return 2
    spec = JobSpec.model_validate_json(Path(args[0]).read_text())
    stall = os.environ.get("FTSERVE_FAKE_ENGINE_STALL_AT")
    sink = JsonLinesSink(sys.stdout, sys.stdin)
    return run(spec, sink, float(os.environ.get("FTSERVE_FAKE_ENGINE_STEP_SECONDS", "0.2")), int(stall) if stall else None)


if __name__ == "__main__":
    sys.exit(main())
