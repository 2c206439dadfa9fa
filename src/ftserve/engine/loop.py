"""The training loop every recipe shares: schedule, steps, evaluation, checkpoints, pause and resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftserve.engine import distributed, memory, models, state
from ftserve.engine.batching import epoch_batches, steps_per_epoch
from ftserve.engine.distributed import Ranks
from ftserve.engine.evaluate import HeldOut
from ftserve.engine.events import Checkpoint, Finished, Message, Metrics, Started, StateSaved, Stopped
from ftserve.engine.hardware import Hardware
from ftserve.engine.losses import EMPTY, Stats
from ftserve.engine.setup import Prepared
from ftserve.engine.sink import Journal, Sink
from ftserve.engine.spec import JobSpec

MAX_GRAD_NORM = 1.0
# Without a checkpoint_interval, resumable state is also saved about this many times per run.
STATE_SAVES_PER_RUN = 10
# Without an eval_interval, a validation batch is scored this many times per run (and at every epoch end).
EVALS_PER_RUN = 50


class Task(Protocol):
    """What a recipe gives the loop: its examples and how to score a batch of them."""

    lengths: list[int]
    validation_size: int

    def loss(self, model: torch.nn.Module, indices: list[int]) -> tuple[torch.Tensor, Stats, int]:
        """The batch's mean loss to backpropagate, its counts, and the tokens the batch processed. `model` is what
        the step runs through (`distributed.trainer`): the model, or DDP around it."""
        ...

    def evaluate(self, model: PreTrainedModel, indices: list[int]) -> Stats: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, saved: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Result:
    step: int
    trained_tokens: int
    model_dir: Path | None
    """None when training stopped early (pause or cancel)."""


class Run:
    """What every recipe's steps share: the optimizer and its schedule, the step count, resumable state, the
    journal of reported events, and stopping when asked. A run resumes from the newest state it can read.

    Across processes (`ranks`), each keeps its own optimizer over its weights (or shards of them); rank 0 chooses
    the state to resume from and alone writes states, and a stop is shared so that every process stops together."""

    def __init__(self, spec: JobSpec, model: PreTrainedModel, total: int, hardware: Hardware, sink: Sink,
                 task_state: Callable[[], dict[str, Any]], restore: Callable[[dict[str, Any]], None],
                 ranks: Ranks = Ranks(), longest: int | None = None):
        check_memory(spec, model, hardware, spec.max_seq_length if longest is None else longest)
        self.spec, self.total, self.sink, self.task_state, self.ranks = spec, total, sink, task_state, ranks
        self.weights = models.trainable(model)
        self.optimizer = torch.optim.AdamW(self.weights.values(), lr=spec.learning_rate, weight_decay=0.0,
                                           fused=hardware.device.type == "cuda")
        warmup = math.ceil(total * spec.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _schedule(s, warmup, total))
        self.save_every = spec.checkpoint_interval or max(1, total // STATE_SAVES_PER_RUN)
        torch.manual_seed(spec.seed)
        self.step, self.tokens = 0, 0
        self.journal = Journal(sink)
        saved = self._newest_state()
        if saved is not None:
            state.restore(ranks.localised(saved, self.weights, self.optimizer), self.weights, self.optimizer,
                          self.scheduler)
            self.step, self.tokens, self.journal = saved.step, saved.trained_tokens, Journal(sink, saved.reported)
            restore(saved.extra)
            sink.emit(Message(text=f"Resuming from step {self.step}"))
        sink.emit(Started(step=self.step, total_steps=total, hardware=hardware.describe() + ranks.describe(model)))
        self.journal.replay()
        self.started, self.started_tokens = time.monotonic(), self.tokens

    def _newest_state(self) -> state.Saved | None:
        """The newest state rank 0 can read; every other process reads the same one."""
        chosen, saved = None, None
        if self.ranks.main:
            for resume in state.saved_states(self.spec.output_dir):
                try:
                    saved, chosen = state.read(resume), resume
                    break
                except Exception as error:  # any unreadable state: fall back to the one before it
                    self.sink.emit(Message(level="warn", text=f"The state saved at {resume.name} could not be read "
                                           f"({error}); trying the one before it"))
        chosen = self.ranks.agree(chosen)
        if chosen is not None and saved is None:
            saved = state.read(chosen)
        return saved

    def stopped(self) -> bool:
        """True when a stop was asked for: state is kept first for a pause or a shutdown (both continue later)."""
        stop = self.sink.requested_stop()
        if stop is None:
            return False
        if stop in ("pause", "shutdown"):
            self.keep_state()
        self.sink.emit(Stopped(reason=stop, step=self.step, trained_tokens=self.tokens))
        return True

    def update(self, loss: torch.Tensor, tokens: int) -> None:
        """One optimizer step on `loss`, which the batch computed from `tokens` tokens."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.weights.values(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += tokens

    def report(self, metrics: dict[str, float]) -> None:
        elapsed = time.monotonic() - self.started
        self.journal.report(Metrics(step=self.step, total_steps=self.total, metrics=_rounded(metrics),
                                    tokens_per_second=round((self.tokens - self.started_tokens) / max(elapsed, 1e-9), 1)))

    def checkpoint(self, path: Path, metrics: dict[str, float], step: int | None = None) -> None:
        step = self.step if step is None else step
        self.journal.report(Checkpoint(step=step, metrics=_rounded({"step": step, **metrics}), path=path))

    def keep_state(self) -> None:
        weights = self.ranks.full(self.weights)  # a sharded model's shards, gathered by all
        optimizer = self.ranks.full_optimizer(self.optimizer.state_dict())
        if self.ranks.main:
            state.save(self.spec.output_dir, self.step, self.tokens, weights, optimizer, self.scheduler.state_dict(),
                       self.task_state(), self.journal.lines)
            self.sink.emit(StateSaved(step=self.step))

    def keep_state_if_due(self, epoch_end: bool) -> None:
        if self.step < self.total and (epoch_end or self.step % self.save_every == 0):
            self.keep_state()


def fit(spec: JobSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
        hardware: Hardware, sink: Sink, ranks: Ranks = Ranks()) -> Result:
    per_epoch = steps_per_epoch(len(task.lengths), spec.batch_size)
    total = per_epoch * spec.n_epochs
    eval_every = spec.eval_interval or max(1, total // EVALS_PER_RUN)
    run = Run(spec, model, total, hardware, sink, task.state, task.restore, ranks, longest=max(task.lengths))
    trainer = distributed.trainer(model, ranks)

    last_dir: Path | None = None
    for epoch in range(run.step // per_epoch, spec.n_epochs):
        batches = epoch_batches(task.lengths, spec.batch_size, spec.seed, epoch)
        for indices in batches[run.step - epoch * per_epoch :]:
            if run.stopped():
                return Result(run.step, run.tokens, None)
            trainer.train()
            mine = ranks.shard(indices)
            with hardware.autocast():
                # A process left without examples (a batch smaller than the processes) still runs one, weighted 0,
                # since every process takes part in each step's gradient exchange.
                loss, own, batch_tokens = task.loss(trainer, mine or indices[:1])
            if not mine:
                own, batch_tokens = EMPTY, 0
            stats, batch_tokens = ranks.total(own, batch_tokens)
            run.update(loss * ranks.weight(own, stats), batch_tokens)
            step = run.step

            metrics = {"train_loss": stats.loss, "train_mean_token_accuracy": stats.accuracy}
            epoch_end = step % per_epoch == 0
            if task.validation_size and (step % eval_every == 0 or epoch_end):
                valid = _evaluate(task, model, hardware, _validation_batch(task, spec, step // eval_every))
                metrics |= {"valid_loss": valid.loss, "valid_mean_token_accuracy": valid.accuracy}
            if task.validation_size and epoch_end:
                full = _evaluate(task, model, hardware, list(range(task.validation_size)))
                metrics |= {"full_valid_loss": full.loss, "full_valid_mean_token_accuracy": full.accuracy}
            run.report(metrics)

            if epoch_end and epoch >= spec.n_epochs - spec.keep_epoch_checkpoints:
                last_dir = models.save_model(model, tokenizer, spec.output_dir / f"checkpoint-{step}", spec, step, ranks)
                run.checkpoint(last_dir, metrics)
            run.keep_state_if_due(epoch_end)

    model_dir = last_dir or models.save_model(model, tokenizer, spec.output_dir / "model", spec, run.step, ranks)
    return Result(run.step, run.tokens, model_dir)


def train(spec: JobSpec, model: PreTrainedModel, ready: Prepared, task: Task, sink: Sink) -> Result:
    """A recipe's whole run: `fit`, with the model scored before and after when the job has validation
    examples, and a `finished` event (carrying that comparison) when it trained to the end."""
    held_out = HeldOut(spec, ready.tokenizer, ready.encoder, ready.hardware, sink, ready.ranks) if task.validation_size else None
    if held_out:
        held_out.measure_base(model)
    result = fit(spec, model, ready.tokenizer, task, ready.hardware, sink, ready.ranks)
    if result.model_dir is None:  # stopped early: paused or cancelled
        return result
    sink.emit(Finished(step=result.step, trained_tokens=result.trained_tokens, model_dir=result.model_dir,
                       evaluation=held_out.compare(model) if held_out else None))
    return result


def check_memory(spec: JobSpec, model: PreTrainedModel, hardware: Hardware, longest: int) -> None:
    """The job's memory estimate again, now that the hardware and the longest example are known, against the memory
    it may use: over it, the job fails before its first step rather than out of memory in the middle of one.
    Raises `memory.OverBudget`."""
    limit = spec.memory_limit_gb or hardware.memory_gb()
    try:
        found = memory.estimate(model.config.to_dict(), memory.job_of(spec, longest),
                                memory.Machine(half=hardware.bf16, eager_attention=hardware.attention == "eager"))
    except memory.UnknownShape:
        return  # an architecture the estimate cannot read: trained unchecked, as before there was one
    if found.total_gb > limit:
        field = memory.culprit(found, limit, spec.training_type, spec.batch_size)
        raise memory.OverBudget(memory.over_budget(found, limit, field))


def _schedule(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to zero."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _validation_batch(task: Task, spec: JobSpec, index: int) -> list[int]:
    """The validation examples scored at an interval: the next batch, cycling through the file."""
    start = (index * spec.batch_size) % task.validation_size
    return [(start + k) % task.validation_size for k in range(min(spec.batch_size, task.validation_size))]


def _evaluate(task: Task, model: PreTrainedModel, hardware: Hardware, indices: list[int]) -> Stats:
    model.eval()
    with torch.no_grad(), hardware.autocast():
        return task.evaluate(model, indices)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in metrics.items()}
