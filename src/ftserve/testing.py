"""Fakes shipped in the package, for fast tests and for trying the API without training anything."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from ftserve.providers.base import Reporter, TrainingOutcome, TrainingRequest


class FakeTrainer:
    """A deterministic trainer: the same job and seed give the same losses, steps and checkpoints.

    It takes `step_seconds` per step, so cancel and pause can be watched while it runs, writes a
    small checkpoint directory per epoch, and a model directory at the end.
    """

    def __init__(self, step_seconds: float = 0.2):
        self.step_seconds = step_seconds

    def train(self, request: TrainingRequest, reporter: Reporter) -> TrainingOutcome:
        hp = request.hyperparameters
        steps_per_epoch = max(1, math.ceil(request.training_examples / int(hp["batch_size"])))
        total = steps_per_epoch * int(hp["n_epochs"])
        rng = random.Random(request.seed)
        noise = [rng.uniform(-0.05, 0.05) for _ in range(total + 1)]
        tokens_per_step = max(1, request.training_file.stat().st_size // 4 // steps_per_epoch)
        step = request.resume_step
        if step:
            reporter.message(f"Resuming from step {step}")
        reporter.started(step, total)
        while step < total:
            stop = reporter.should_stop()
            if stop:
                return TrainingOutcome(stopped=stop, trained_tokens=step * tokens_per_step, step=step)
            time.sleep(self.step_seconds)
            step += 1
            loss = 2.0 * math.exp(-2.5 * step / total) + noise[step]
            metrics = {"train_loss": round(loss, 4), "train_mean_token_accuracy": round(min(1.0, 1.0 - loss / 2.5), 4)}
            if request.validation_file is not None:
                metrics["valid_loss"] = round(loss * 1.1, 4)
                metrics["valid_mean_token_accuracy"] = round(min(1.0, 1.0 - loss * 1.1 / 2.5), 4)
            reporter.metrics(step, total, metrics)
            if step % steps_per_epoch == 0:
                path = request.output_dir / f"checkpoint-{step}"
                _write_weights(path, request, step)
                reporter.checkpoint(step, {"step": step, **metrics}, path)
                reporter.state_saved(step)  # it resumes from its last checkpoint (`resume_step`): that is its saved state
        model_dir = request.output_dir / "model"
        _write_weights(model_dir, request, total)
        return TrainingOutcome(stopped=None, trained_tokens=total * tokens_per_step, model_dir=model_dir, step=total)


def _write_weights(path: Path, request: TrainingRequest, step: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"base_model": request.model, "step": step, "trainer": "fake", "seed": request.seed}
    (path / "ftserve_fake.json").write_text(json.dumps(manifest))
