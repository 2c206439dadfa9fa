"""Fakes shipped in the package, for fast tests and for trying the API without training anything."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from ftserve.domain.errors import TrainingFailed
from ftserve.engine.spec import JobSpec
from ftserve.providers.base import Placement, Reporter, TrainingOutcome
from ftserve.testing_rewards import Candidates, FakeRewards, Refused

MANIFEST = "ftserve_fake.json"


class FakeTrainer:
    """A deterministic trainer: the same job and seed give the same losses, steps and checkpoints.

    It takes `step_seconds` per step, so cancel and pause can be watched while it runs, writes a
    small checkpoint directory per epoch, and a model directory at the end. A reinforcement job reports
    what the real recipe does, as the fake engine does (`testing_rewards`, which runs the job's grader); with
    a validation file its checkpoints are the three best validation rounds, reported at the end.
    """

    def __init__(self, step_seconds: float = 0.2):
        self.step_seconds = step_seconds

    def train(self, spec: JobSpec, reporter: Reporter, placement: Placement | None = None) -> TrainingOutcome:
        examples = sum(1 for line in spec.training_file.read_bytes().splitlines() if line.strip())
        steps_per_epoch = max(1, math.ceil(examples / spec.batch_size))
        total = steps_per_epoch * spec.n_epochs
        rng = random.Random(spec.seed)
        noise = [rng.uniform(-0.05, 0.05) for _ in range(total + 1)]
        tokens_per_step = max(1, spec.training_file.stat().st_size // 4 // steps_per_epoch)
        try:
            rewards = FakeRewards(spec, steps_per_epoch, total) if spec.method == "reinforcement" else None
        except Refused as error:
            raise TrainingFailed(str(error)) from None
        # Its saved state is its checkpoint directories, so the kept validation rounds are read back from them.
        candidates = Candidates(spec.output_dir, _candidates(spec)) if rewards is not None and rewards.validated else None

        def metrics_at(step: int) -> dict[str, float]:
            if rewards is not None:
                metrics, warning = rewards.step(step, self.step_seconds)
                if warning:
                    reporter.message(warning, "warn")
                return metrics
            loss = 2.0 * math.exp(-2.5 * step / total) + noise[step]
            metrics = {"train_loss": round(loss, 4), "train_mean_token_accuracy": round(min(1.0, 1.0 - loss / 2.5), 4)}
            if spec.validation_file is not None:
                metrics["valid_loss"] = round(loss * 1.1, 4)
                metrics["valid_mean_token_accuracy"] = round(min(1.0, 1.0 - loss * 1.1 / 2.5), 4)
            return metrics

        step = _resume_step(spec)
        if step:
            reporter.message(f"Resuming from step {step}")
        reporter.started(step, total)
        if step and candidates is None:  # a worker killed after the directory was written may not have recorded it
            reporter.checkpoint(step, {"step": step, **metrics_at(step)}, spec.output_dir / f"checkpoint-{step}")
        while step < total:
            stop = reporter.should_stop()
            if stop:
                return TrainingOutcome(stopped=stop, trained_tokens=step * tokens_per_step, step=step)
            time.sleep(self.step_seconds)
            step += 1
            metrics = metrics_at(step)
            reporter.metrics(step, total, metrics)
            if candidates is not None:
                if "valid_reward_mean" in metrics:
                    candidates.offer(step, metrics, lambda path: _write_weights(path, spec, step, metrics))
            elif step % steps_per_epoch == 0:
                path = _write_weights(spec.output_dir / f"checkpoint-{step}", spec, step)
                reporter.checkpoint(step, {"step": step, **metrics}, path)
            if (spec.output_dir / f"checkpoint-{step}").exists():
                reporter.state_saved(step)  # it resumes from its newest checkpoint directory: that is its saved state
        for kept_step, kept, path in candidates.in_order() if candidates is not None else []:
            reporter.checkpoint(kept_step, {"step": kept_step, **kept}, path)
        model_dir = _write_weights(spec.output_dir / "model", spec, total)
        return TrainingOutcome(stopped=None, trained_tokens=total * tokens_per_step, model_dir=model_dir, step=total,
                               evaluation=rewards.evaluation() if rewards is not None else None)


def _resume_step(spec: JobSpec) -> int:
    """The newest checkpoint this job wrote. It reports each step before it writes the step's checkpoint, so
    every step up to that one is recorded."""
    steps = [int(path.name.removeprefix("checkpoint-")) for path in spec.output_dir.glob("checkpoint-*")
             if path.name.removeprefix("checkpoint-").isdigit()]
    return max(steps, default=0)


def _candidates(spec: JobSpec) -> list[dict[str, Any]]:
    """The validation checkpoints on disk, each {step, metrics} as its manifest keeps them."""
    manifests = (json.loads(path.read_text()) for path in spec.output_dir.glob(f"checkpoint-*/{MANIFEST}"))
    return [{"step": manifest["step"], "metrics": manifest["metrics"]} for manifest in manifests if "metrics" in manifest]


def _write_weights(path: Path, spec: JobSpec, step: int, metrics: dict[str, float] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"base_model": spec.model.id, "step": step, "trainer": "fake", "seed": spec.seed}
    if metrics is not None:  # a validation checkpoint: what ranks it among the kept ones, and what it reports
        manifest["metrics"] = metrics
    (path / MANIFEST).write_text(json.dumps(manifest))
    return path
