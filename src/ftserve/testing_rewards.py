"""What both fakes (`testing.FakeTrainer` and `testing_engine`) report for a reinforcement job, as the real recipe
(`engine/grpo.py`) does: the same metrics, validation rounds, kept checkpoints and before/after evaluation.

Rewards are curves that rise with the step, deterministic for a job and seed. The job's grader runs for real
(`ftserve.graders.run_batch`) on each step's prompts and each validation round's, the prompt's last user message
standing in for the answers a policy would sample; a sample whose grader fails scores 0 and counts in
`grader_errors`, as in training. There is no judge model nor embedder here: a model grader or the cosine metric
fails on every sample (the local provider refuses model graders before a job gets here).

Imported by the engine stand-in too, so, like the engine, it imports nothing of the service, nor torch.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from ftserve import graders
from ftserve.engine.candidates import MAX_EVALUATED, Candidates
from ftserve.engine.spec import JobSpec



class Refused(Exception):
    """The job cannot be trained as its spec says; the message is the real engine's."""


class FakeRewards:
    """A reinforcement job's step metrics and before/after evaluation."""

    def __init__(self, spec: JobSpec, per_epoch: int, total: int):
        if spec.reinforcement is None:
            raise Refused("a reinforcement job needs its grader")
        self.spec = spec
        self.settings = spec.reinforcement
        self.per_epoch = per_epoch
        self.total = total
        limits = self.settings.python
        self.python = graders.PythonLimits(enabled=limits.enabled, cpu_seconds=limits.cpu_seconds,
                                           wall_seconds=limits.wall_seconds, memory_mb=limits.memory_mb)
        self.rows = _rows(spec.training_file, "training file")
        self.valid_rows = _rows(spec.validation_file, "validation file") if spec.validation_file is not None else []
        rng = random.Random(spec.seed)
        self.noise = [rng.uniform(-0.08, 0.08) for _ in range(total + 1)]
        self.warned = False

    @property
    def validated(self) -> bool:
        """With a validation file: validation rounds, whose best become the checkpoints (`Candidates`);
        without one, a checkpoint per epoch."""
        return bool(self.valid_rows)

    def step(self, step: int, train_seconds: float) -> tuple[dict[str, float], str | None]:
        """Step `step`'s metrics (with a validation round's where one falls), and a warning the first time the
        grader fails in this run."""
        start = (step - 1) % self.per_epoch * self.spec.batch_size
        batch = self.rows[start : start + self.spec.batch_size]
        group = self.settings.group_size
        started = time.monotonic()
        outcomes = self._grade(batch)  # a prompt's answers are all its stand-in: graded once, counted group times
        grade_seconds = time.monotonic() - started
        spread = random.Random(self.spec.seed * 1_000_003 + step)
        rewards = [0.0 if outcome.errors.any else _clamp(self._rise(step) + spread.uniform(-0.15, 0.15))
                   for outcome in outcomes for _ in range(group)]
        failed = [outcome for outcome in outcomes if outcome.errors.any]
        metrics = {
            "train_loss": self.noise[step] / 4, "train_reward_mean": statistics.fmean(rewards),
            "train_reward_std": statistics.pstdev(rewards), "grader_errors": float(len(failed) * group),
            "completion_tokens_mean": statistics.fmean(len(stand_in_answer(row)) / 4 for row in batch),
            "sample_seconds": 0.0, "grade_seconds": grade_seconds, "train_seconds": train_seconds,
            **_sub_rewards("sub_rewards", outcomes, self._rise(step)),
        }
        if self.settings.kl_beta > 0:
            metrics["kl"] = abs(self.noise[step]) / 10
        if self.validated and (step % self.settings.eval_interval == 0 or step == self.total):
            metrics |= self._validation_round(step)
        warning = None
        if failed and not self.warned:
            self.warned = True
            warning = (f"The grader failed on {len(failed) * group} of {len(outcomes) * group} samples at step {step}, "
                       f"which score 0; the first: {describe_errors(failed[0])}")
        return _rounded(metrics), warning

    def _validation_round(self, step: int) -> dict[str, float]:
        count = min(self.settings.eval_samples, len(self.valid_rows))
        start = (step // self.settings.eval_interval * count) % len(self.valid_rows)  # the next prompts, cycling
        rows = [self.valid_rows[(start + k) % len(self.valid_rows)] for k in range(count)]
        reward = _clamp(self._rise(step) - 0.05 + self.noise[step])
        outcomes = self._grade(rows)
        return {"valid_reward_mean": statistics.fmean(0.0 if o.errors.any else reward for o in outcomes),
                **_sub_rewards("valid_sub_rewards", outcomes, reward)}

    def evaluation(self) -> dict[str, Any] | None:
        """The before/after comparison on the validation file (None without one), as grpo's report."""
        if not self.valid_rows:
            return None
        graded = [not outcome.errors.any for outcome in self._grade(self.valid_rows[:MAX_EVALUATED])]

        def mean(reward: float) -> float:
            return round(statistics.fmean(reward if ok else 0.0 for ok in graded), 6)

        return {"examples": len(graded), "generated": len(graded), "metric": "reward",
                "base": {"reward_mean": mean(self._rise(0))}, "fine_tuned": {"reward_mean": mean(self._rise(self.total))}}

    def _grade(self, rows: list[dict[str, Any]]) -> list[graders.Outcome]:
        return graders.run_batch(self.settings.grader, [stand_in_answer(row) for row in rows], rows,
                                 python=self.python)

    def _rise(self, step: int) -> float:
        return 0.15 + 0.7 * (1 - math.exp(-3 * step / self.total))


def stand_in_answer(row: dict[str, Any]) -> str:
    """What the fakes grade in place of a sampled answer: the prompt's last user message, its text."""
    for message in reversed(row.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content") or ""
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def describe_errors(outcome: graders.Outcome) -> str:
    """The error flags a failed grading raised, and their details."""
    flags = vars(outcome.errors)
    raised = [name for name, value in flags.items() if value is True]
    details = [str(value) for name, value in flags.items() if name.endswith(("_details", "_type")) and value]
    return ", ".join(raised) + (f": {'; '.join(details)}" if details else "")


def _sub_rewards(prefix: str, outcomes: list[graders.Outcome], reward: float) -> dict[str, float]:
    """A multi grader's sub-rewards by the names its outcomes give them, each a little apart from `reward` so that
    their curves can be told apart; 0 where the sample's grader failed."""
    names = sorted({name for outcome in outcomes for name in outcome.sub_rewards})
    return {f"{prefix}.{name}": statistics.fmean(
                0.0 if outcome.errors.any else _clamp(reward + 0.05 * (k % 3 - 1)) for outcome in outcomes)
            for k, name in enumerate(names)}


def _rows(path: Path, label: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise Refused(f"{label}: the file has no examples")
    return rows


def _clamp(reward: float) -> float:
    return min(1.0, max(0.0, reward))


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 6) for key, value in metrics.items()}
