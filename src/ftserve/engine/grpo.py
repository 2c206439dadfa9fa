"""Reinforcement fine-tuning with group-relative advantages (GRPO), graded by the job's OpenAI grader.

Each step takes `batch_size` prompts and samples `group_size` answers to each from the policy as it is now
(`rollouts`). The grader scores every answer; an answer's advantage is its reward less its group's mean,
divided by the group's standard deviation, so only groups whose answers differ teach anything. The loss is
a clipped surrogate averaged over all answer tokens of the step, plus, when `kl_beta` is set, a KL penalty
against the base model (with LoRA, the adapter switched off: no second copy is held).

Every `eval_interval` steps, `eval_samples` validation prompts are answered greedily and graded:
`valid_reward_mean`. Each of those steps is a candidate checkpoint; the 3 with the best validation reward are
kept and reported when training ends. The job's before/after evaluation is the mean greedy reward on the
validation file, base against fine-tuned.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ftserve import graders
from ftserve.engine import loop, models, rollouts
from ftserve.engine.batching import epoch_batches, steps_per_epoch
from ftserve.engine.candidates import MAX_EVALUATED, Candidates
from ftserve.engine.data import DataError, read_jsonl
from ftserve.engine.evaluate import BASELINE_FILE, REPORT_FILE, write_json
from ftserve.engine.events import Finished, Message
from ftserve.engine.setup import Prepared, prepare
from ftserve.engine.sink import Sink
from ftserve.engine.spec import JobSpec, Reinforcement

# A group whose rewards differ by less than this carries no signal.
FLAT = 1e-6


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    item: dict[str, Any]
    """The whole example, which the grader's `{{item.*}}` templates read."""


def read_prompts(path: Path, ready: Prepared, label: str) -> list[Prompt]:
    prompts = []
    for line, example in read_jsonl(path):
        messages = example.get("messages")
        if not isinstance(messages, list) or not messages or messages[-1].get("role") not in ("user", "developer"):
            raise DataError(f"{label}, line {line}: a reinforcement example is `messages` ending with the user or "
                            "developer message the model answers")
        ids = ready.encoder.prompt(messages, example.get("tools"))
        if len(ids) >= ready.encoder.max_length:
            raise DataError(f"{label}, line {line}: the prompt is {len(ids)} tokens, over max_seq_length="
                            f"{ready.encoder.max_length}")
        prompts.append(Prompt(ids, example))
    if not prompts:
        raise DataError(f"{label}: the file has no examples")
    return prompts


@dataclass(frozen=True)
class Graded:
    rewards: list[float]
    sub_rewards: dict[str, list[float]]
    errors: int


class Rewards:
    """The job's grader over a batch of answers."""

    def __init__(self, rl: Reinforcement):
        self.grader = rl.grader
        limits = rl.python
        self.python = graders.PythonLimits(enabled=limits.enabled, cpu_seconds=limits.cpu_seconds,
                                           wall_seconds=limits.wall_seconds, memory_mb=limits.memory_mb)

    def __call__(self, texts: list[str], items: list[dict[str, Any]]) -> Graded:
        outcomes = graders.run_batch(self.grader, texts, items, python=self.python)
        names = sorted({name for outcome in outcomes for name in outcome.sub_rewards})
        return Graded(
            [outcome.reward for outcome in outcomes],
            {name: [outcome.sub_rewards.get(name, 0.0) for outcome in outcomes] for name in names},
            sum(outcome.errors.any for outcome in outcomes),
        )


class Policy:
    """The model being trained, as the sampler, the grader's subject and the loss see it."""

    def __init__(self, spec: JobSpec, model: PreTrainedModel, ready: Prepared, sink: Sink):
        assert spec.reinforcement is not None
        self.spec, self.rl, self.model, self.ready, self.sink = spec, spec.reinforcement, model, ready, sink
        self.rewards = Rewards(spec.reinforcement)
        self.reference = _reference(spec, model, ready)

    def answers(self, prompts: list[Prompt], n: int, temperature: float) -> list[list[rollouts.Completion]]:
        self.model.eval()
        with torch.no_grad(), self.ready.hardware.autocast():
            return rollouts.sample(self.model, self.ready.tokenizer, [p.ids for p in prompts], n, temperature,
                                   self.rl.max_completion_tokens, self._stop_asked)

    def score(self, prompts: list[Prompt]) -> Graded:
        """Greedy answers to `prompts`, graded: what a served model would answer."""
        answers = self.answers(prompts, 1, 0.0)
        return self.rewards([a[0].text for a in answers], [p.item for p in prompts])

    def loss(self, prompts: list[Prompt], groups: list[list[rollouts.Completion]],
             advantages: torch.Tensor) -> tuple[torch.Tensor, float, int]:
        """The clipped surrogate over every answer token of the step, the mean KL to the base (0 without
        `kl_beta`), and the tokens trained. Answers with no advantage are left out of the forward pass unless
        the KL term needs them; they still count in the token average."""
        room = [max(1, self.spec.max_seq_length - len(p.ids)) for p in prompts]
        answers = [(p, _clipped(completion, room[p])) for p, group in enumerate(groups) for completion in group]
        advantage = [float(advantages[p, g]) for p, group in enumerate(groups) for g in range(len(group))]
        total_tokens = sum(len(a.token_ids) for _, a in answers)
        keep = [i for i in range(len(answers)) if self.rl.kl_beta > 0 or abs(advantage[i]) > FLAT]
        if not keep or total_tokens == 0:
            zero = sum(w.sum() for w in models.trainable(self.model).values()) * 0.0
            return zero, 0.0, total_tokens  # type: ignore[return-value]  # a tensor: the sum of tensors
        # Only the prompts some kept answer needs are run, renumbered.
        used = sorted({answers[i][0] for i in keep})
        index = {p: k for k, p in enumerate(used)}
        batch_prompts = [prompts[p].ids for p in used]
        batch = [(index[answers[i][0]], answers[i][1]) for i in keep]
        pad, device = self.ready.tokenizer.pad_token_id, self.ready.hardware.device
        self.model.train()
        with self.ready.hardware.autocast():
            logps, rows = rollouts.answer_logps(self.model, batch_prompts, batch, pad, device)
        row_advantage = torch.tensor([advantage[i] for i in keep], device=logps.device)[rows]
        ratio = torch.exp(logps - logps.detach())  # one update per batch of samples: the ratio's value is 1
        eps = self.rl.clip_epsilon
        surrogate = torch.minimum(ratio * row_advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * row_advantage)
        loss = -surrogate.sum() / total_tokens
        kl_mean = 0.0
        if self.reference is not None:
            with torch.no_grad():
                reference = self.reference(batch_prompts, batch)
            delta = reference - logps
            kl = torch.exp(delta) - delta - 1  # an unbiased, always positive estimate of KL(policy || base)
            loss = loss + self.rl.kl_beta * kl.sum() / total_tokens
            kl_mean = float(kl.detach().mean())
        return loss, kl_mean, total_tokens

    def _stop_asked(self) -> bool:
        return self.sink.requested_stop() is not None


Reference = Callable[[list[list[int]], list[tuple[int, rollouts.Completion]]], torch.Tensor]


def _reference(spec: JobSpec, model: PreTrainedModel, ready: Prepared) -> Reference | None:
    """The base model's log-probabilities of answer tokens, for the KL term (None without one)."""
    assert spec.reinforcement is not None
    if spec.reinforcement.kl_beta <= 0:
        return None
    pad, device = ready.tokenizer.pad_token_id, ready.hardware.device
    if spec.training_type != "full" and spec.start_from is None:  # an adapter trained from scratch (LoRA, QLoRA)
        def adapter_off(prompts: list[list[int]], answers: list[tuple[int, rollouts.Completion]]) -> torch.Tensor:
            with model.disable_adapter(), ready.hardware.autocast():  # type: ignore[operator]  # PEFT's
                return rollouts.answer_logps(model, prompts, answers, pad, device)[0]
        return adapter_off
    # Full fine-tuning changes every weight, and a continued adapter started from its parent's: the model the job
    # started from is loaded again, from disk, and kept frozen.
    base = models.load_for_training(ready.model_path, spec, ready.hardware)
    base.requires_grad_(False)
    base.eval()

    def frozen(prompts: list[list[int]], answers: list[tuple[int, rollouts.Completion]]) -> torch.Tensor:
        with ready.hardware.autocast():
            return rollouts.answer_logps(base, prompts, answers, pad, device)[0]
    return frozen


def _clipped(completion: rollouts.Completion, room: int) -> rollouts.Completion:
    """The answer cut to what fits after its prompt within max_seq_length."""
    if len(completion.token_ids) <= room:
        return completion
    return rollouts.Completion(completion.token_ids[:room], completion.text, False)


def advantages_of(rewards: torch.Tensor) -> torch.Tensor:
    """Each answer's reward against its group's: (r - mean) / std, and 0 for a group whose answers all tie."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(std > FLAT, (rewards - mean) / (std + 1e-4), torch.zeros_like(rewards))


def run(spec: JobSpec, sink: Sink) -> loop.Result:
    rl = spec.reinforcement
    if rl is None:
        raise DataError("a reinforcement job needs its grader")
    ready = prepare(spec, sink)
    train = read_prompts(spec.training_file, ready, "training file")
    validation = read_prompts(spec.validation_file, ready, "validation file") if spec.validation_file else []
    sink.emit(Message(text=(
        f"Training {spec.model.id} ({spec.training_type}, reinforcement: {rl.group_size} answers per prompt, at most "
        f"{rl.max_completion_tokens} tokens each, grader {rl.grader.get('type')}) on {len(train)} prompts "
        f"on {ready.hardware.describe()}"
    )))
    model = models.load_for_training(ready.model_path, spec, ready.hardware)
    policy = Policy(spec, model, ready, sink)
    before = _baseline(spec, policy, validation, sink) if validation else None
    result = _fit(spec, policy, train, validation, sink)
    if result.model_dir is None or (validation and before is None):
        return result
    evaluation = None
    if before is not None:
        after = policy.score(validation[:MAX_EVALUATED])
        evaluation = _report(spec.output_dir, before, statistics.fmean(after.rewards), len(after.rewards))
    sink.emit(Finished(step=result.step, trained_tokens=result.trained_tokens, model_dir=result.model_dir,
                       evaluation=evaluation))
    return result


def _fit(spec: JobSpec, policy: Policy, train: list[Prompt], validation: list[Prompt], sink: Sink) -> loop.Result:
    rl = spec.reinforcement
    assert rl is not None
    per_epoch = steps_per_epoch(len(train), spec.batch_size)
    total = per_epoch * spec.n_epochs
    candidates = Candidates(spec.output_dir)
    run = loop.Run(spec, policy.model, total, policy.ready.hardware, sink,
                   lambda: {"candidates": candidates.kept}, lambda saved: setattr(candidates, "kept", saved["candidates"]),
                   longest=max(len(p.ids) for p in train) + rl.max_completion_tokens)
    candidates.prune()
    tokenizer = policy.ready.tokenizer

    def save(path: Path) -> Path:
        return models.save_model(policy.model, tokenizer, path, spec, run.step)

    last_dir: Path | None = None
    lengths = [len(p.ids) for p in train]
    for epoch in range(run.step // per_epoch, spec.n_epochs):
        for indices in epoch_batches(lengths, spec.batch_size, spec.seed, epoch)[run.step - epoch * per_epoch :]:
            if run.stopped():
                return loop.Result(run.step, run.tokens, None)
            prompts = [train[i] for i in indices]
            started = time.monotonic()
            groups = policy.answers(prompts, rl.group_size, rl.temperature)
            if run.stopped():  # asked while sampling: the samples are dropped, the step is done again on resume
                return loop.Result(run.step, run.tokens, None)
            sampled = time.monotonic()
            graded = policy.rewards([c.text for group in groups for c in group],
                                    [p.item for p in prompts for _ in range(rl.group_size)])
            rewards = torch.tensor(graded.rewards, dtype=torch.float32).view(len(prompts), rl.group_size)
            advantages = advantages_of(rewards)
            scored = time.monotonic()
            loss, kl, tokens = policy.loss(prompts, groups, advantages)
            run.update(loss, tokens)
            trained = time.monotonic()

            completions = [c for group in groups for c in group]
            metrics: dict[str, float] = {
                "train_loss": float(loss.detach()), "train_reward_mean": float(rewards.mean()),
                "train_reward_std": float(rewards.std(unbiased=False)), "grader_errors": float(graded.errors),
                "completion_tokens_mean": sum(len(c.token_ids) for c in completions) / len(completions),
                "sample_seconds": sampled - started, "grade_seconds": scored - sampled, "train_seconds": trained - scored,
            }
            metrics |= {f"sub_rewards.{name}": statistics.fmean(values) for name, values in graded.sub_rewards.items()}
            if rl.kl_beta > 0:
                metrics["kl"] = kl
            step = run.step
            epoch_end = step % per_epoch == 0
            if validation and (step % rl.eval_interval == 0 or step == total):
                metrics |= _validate(policy, validation, rl, step // rl.eval_interval)
                candidates.offer(step, metrics, save)
            run.report(metrics)
            if not validation and epoch_end and epoch >= spec.n_epochs - spec.keep_epoch_checkpoints:
                last_dir = save(spec.output_dir / f"checkpoint-{step}")
                run.checkpoint(last_dir, metrics)
            run.keep_state_if_due(epoch_end)

    for step, metrics, path in candidates.in_order():
        run.checkpoint(path, metrics, step=step)
    model_dir = save(spec.output_dir / "model") if validation or last_dir is None else last_dir
    return loop.Result(run.step, run.tokens, model_dir)


def _validate(policy: Policy, validation: list[Prompt], rl: Reinforcement, round_: int) -> dict[str, float]:
    """`eval_samples` validation prompts (the next ones, cycling through the file), answered greedily and graded."""
    count = min(rl.eval_samples, len(validation))
    start = (round_ * count) % len(validation)
    graded = policy.score([validation[(start + k) % len(validation)] for k in range(count)])
    metrics = {"valid_reward_mean": statistics.fmean(graded.rewards)}
    metrics |= {f"valid_sub_rewards.{name}": statistics.fmean(v) for name, v in graded.sub_rewards.items()}
    return metrics


def _baseline(spec: JobSpec, policy: Policy, validation: list[Prompt], sink: Sink) -> float | None:
    """The base model's mean reward on the validation prompts: read back from an earlier attempt, or measured
    before the first step and kept (after full fine-tuning the base weights are gone). None when a stop was
    asked for while measuring: training then stops before its first step."""
    path = spec.output_dir / BASELINE_FILE
    if path.exists():
        return float(json.loads(path.read_text())["reward_mean"])
    prompts = validation[:MAX_EVALUATED]
    graded = policy.score(prompts)
    if sink.requested_stop() is not None:
        return None
    mean = statistics.fmean(graded.rewards)
    write_json(path, {"reward_mean": mean, "examples": len(prompts)})
    sink.emit(Message(text=f"Base model on {len(prompts)} validation prompts: mean reward {mean:.4f} (greedy answers)"))
    return mean


def _report(output_dir: Path, before: float, after: float, examples: int) -> dict[str, Any]:
    body = {"examples": examples, "generated": examples, "metric": "reward",
            "base": {"reward_mean": round(before, 6)}, "fine_tuned": {"reward_mean": round(after, 6)}}
    write_json(output_dir / REPORT_FILE, body)
    return body
