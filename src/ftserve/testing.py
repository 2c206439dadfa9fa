"""Fakes shipped in the package, for fast tests and for trying the API without training anything."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from ftserve.engine.spec import JobSpec
from ftserve.providers.base import Reporter, TrainingOutcome


class FakeTrainer:
    """A deterministic trainer: the same job and seed give the same losses, steps and checkpoints.

    It takes `step_seconds` per step, so cancel and pause can be watched while it runs, writes a
    small checkpoint directory per epoch, and a model directory at the end.
    """

    def __init__(self, step_seconds: float = 0.2):
        self.step_seconds = step_seconds

    def train(self, spec: JobSpec, reporter: Reporter) -> TrainingOutcome:
        examples = sum(1 for line in spec.training_file.read_bytes().splitlines() if line.strip())
        steps_per_epoch = max(1, math.ceil(examples / spec.batch_size))
        total = steps_per_epoch * spec.n_epochs
        rng = random.Random(spec.seed)
        noise = [rng.uniform(-0.05, 0.05) for _ in range(total + 1)]
        tokens_per_step = max(1, spec.training_file.stat().st_size // 4 // steps_per_epoch)

        def metrics_at(step: int) -> dict[str, float]:
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
        if step:  # a worker killed after the directory was written may not have recorded it; recorded ones are skipped
            reporter.checkpoint(step, {"step": step, **metrics_at(step)}, spec.output_dir / f"checkpoint-{step}")
        while step < total:
            stop = reporter.should_stop()
            if stop:
                return TrainingOutcome(stopped=stop, trained_tokens=step * tokens_per_step, step=step)
            time.sleep(self.step_seconds)
            step += 1
            metrics = metrics_at(step)
            reporter.metrics(step, total, metrics)
            if step % steps_per_epoch == 0:
                path = spec.output_dir / f"checkpoint-{step}"
                _write_weights(path, spec, step)
                reporter.checkpoint(step, {"step": step, **metrics}, path)
                reporter.state_saved(step)  # it resumes from its newest checkpoint directory: that is its saved state
        model_dir = spec.output_dir / "model"
        _write_weights(model_dir, spec, total)
        return TrainingOutcome(stopped=None, trained_tokens=total * tokens_per_step, model_dir=model_dir, step=total)


def _resume_step(spec: JobSpec) -> int:
    """The newest checkpoint this job wrote. It reports each step before it writes the step's checkpoint, so
    every step up to that one is recorded."""
    steps = [int(path.name.removeprefix("checkpoint-")) for path in spec.output_dir.glob("checkpoint-*")
             if path.name.removeprefix("checkpoint-").isdigit()]
    return max(steps, default=0)


def _write_weights(path: Path, spec: JobSpec, step: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"base_model": spec.model.id, "step": step, "trainer": "fake", "seed": spec.seed}
    (path / "ftserve_fake.json").write_text(json.dumps(manifest))
