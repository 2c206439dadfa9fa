"""Scoring a model on held-out examples: loss, token accuracy, and exact match of greedy answers.

A job with a validation file is scored twice on the same examples: the base model before any
step, and the fine-tuned model after the last one. The base scores are written to the job's
output dir at once, so a resumed job compares against the same baseline without the base
weights (after full fine-tuning they are gone). The same scoring serves ftserve's evaluation
endpoint for any served model and file.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from ftserve.engine.batching import collate
from ftserve.engine.data import DataError, Encoder, Pair, Sequence, read_jsonl
from ftserve.engine.distributed import Ranks
from ftserve.engine.events import Message
from ftserve.engine.hardware import Hardware
from ftserve.engine.losses import EMPTY, Stats, sequence_logps, token_loss
from ftserve.engine.sink import Sink
from ftserve.engine.spec import JobSpec

# Greedy answers cost a generation each; past this many examples only loss and accuracy are scored.
MAX_GENERATED = 64
# A greedy answer may run this many tokens past its reference's length before it is cut off as wrong.
ANSWER_SLACK_TOKENS = 16
BASELINE_FILE = "evaluation-base.json"
REPORT_FILE = "evaluation.json"


@dataclass(frozen=True)
class Scores:
    examples: int
    loss: float
    token_accuracy: float
    exact_match: float
    """Share of the `generated` examples whose greedy answer equals the reference, ignoring surrounding whitespace."""
    generated: int
    preference_accuracy: float | None = None
    """Preference data only: share of pairs where the model gives the preferred answer the higher likelihood."""


class Interrupted(Exception):
    """Scoring stopped part-way because the job was asked to stop (or its parent is gone)."""


def score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoder: Encoder,
          examples: list[dict[str, Any]], *, batch_size: int = 8, max_generated: int = MAX_GENERATED,
          autocast: Callable[[], Any] | None = None, stopped: Callable[[], bool] = lambda: False,
          answers: Callable[[list[list[int]], list[int]], list[str]] | None = None) -> Scores:
    """Score `examples` (chat, prompt/completion or preference rows) with `model` as it is now.

    `stopped` is asked between batches and between generated tokens; once it says yes, this raises
    `Interrupted`, so that a job cancelled, paused or orphaned while it is scored stops at once.
    `answers(prompts, max_new_tokens)`, when given, makes the greedy answers instead of `model` (a
    server's generation engine, which batches them)."""
    if not examples:
        raise DataError("no examples to evaluate")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (autocast() if autocast else nullcontext()):
            sequences, preference = _teacher_forced(model, encoder, examples, tokenizer.pad_token_id, device, batch_size,
                                                    stopped)
            prompts, references = zip(*(encoder.held_out(e) for e in examples[:max_generated]))
            limits = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + ANSWER_SLACK_TOKENS for r in references]
            given = (answers(list(prompts), limits) if answers is not None
                     else greedy(model, tokenizer, list(prompts), limits, batch_size, stopped))
    finally:
        model.train(was_training)
    matches = sum(a.strip() == r.strip() for a, r in zip(given, references))
    return Scores(len(examples), round(sequences.loss, 6), round(sequences.accuracy, 6),
                  round(matches / len(given), 6), len(given), preference)


def _teacher_forced(model: PreTrainedModel, encoder: Encoder, examples: list[dict[str, Any]], pad_id: int,
                    device: torch.device, batch_size: int, stopped: Callable[[], bool]) -> tuple[Stats, float | None]:
    """Loss and token accuracy on the reference answers; for preference rows, on the preferred side."""
    encoded = [encoder.preference(e) if "input" in e else encoder.sft(e) for e in examples]
    pairs = [e for e in encoded if isinstance(e, Pair)]
    sequences: list[Sequence] = [e.chosen if isinstance(e, Pair) else e for e in encoded]
    ordered = sorted((s for s in sequences if s.trained), key=len)
    total = EMPTY
    for start in range(0, len(ordered), batch_size):
        _check(stopped)
        total += token_loss(model, collate(ordered[start : start + batch_size], pad_id, device))[1]
    if not pairs:
        return total, None
    ranked = 0
    for start in range(0, len(pairs), batch_size):
        _check(stopped)
        chunk = pairs[start : start + batch_size]
        logps = sequence_logps(model, collate([p.chosen for p in chunk] + [p.rejected for p in chunk], pad_id, device))[0]
        ranked += int((logps[: len(chunk)] > logps[len(chunk) :]).sum())
    return total, round(ranked / len(pairs), 6)


def greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
           max_new_tokens: list[int], batch_size: int, stopped: Callable[[], bool] = lambda: False) -> list[str]:
    """Greedy answers to tokenised prompts, batched by length with left padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        out = model.generate(  # type: ignore[operator]  # generate comes from GenerationMixin, which the stubs miss
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False, use_cache=True,
            max_new_tokens=max(max_new_tokens[i] for i in chunk), pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, stopping_criteria=StoppingCriteriaList([_Asked(stopped)]),
        )
        _check(stopped)
        for row, i in enumerate(chunk):
            generated = out[row, width:].tolist()[: max_new_tokens[i]]
            answers[i] = str(tokenizer.decode(generated, skip_special_tokens=True))
    return answers


class _Asked(StoppingCriteria):
    """Ends a generation early once `stopped` says so (`greedy` then raises `Interrupted`)."""

    def __init__(self, stopped: Callable[[], bool]):
        self.stopped = stopped

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stopped(), dtype=torch.bool,  # type: ignore[return-value]  # a BoolTensor is a bool Tensor
                          device=input_ids.device)


def _check(stopped: Callable[[], bool]) -> None:
    if stopped():
        raise Interrupted


def read_examples(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The file's first `limit` examples (all without one), reading no further into the file than they go."""
    return [example for _, example in itertools.islice(read_jsonl(path), limit)]


def report(output_dir: Path, before: Scores, after: Scores) -> dict[str, Any]:
    """The before/after comparison, written as the job's `evaluation.json`."""
    body = {"examples": after.examples, "generated": after.generated,
            "base": _metrics(before), "fine_tuned": _metrics(after)}
    write_json(output_dir / REPORT_FILE, body)
    return body


def _metrics(scores: Scores) -> dict[str, float]:
    metrics = {"loss": scores.loss, "token_accuracy": scores.token_accuracy, "exact_match": scores.exact_match}
    if scores.preference_accuracy is not None:
        metrics["preference_accuracy"] = scores.preference_accuracy
    return metrics


def write_json(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # before the first step, nothing else has made it
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(body, indent=2))
    staging.replace(path)


class HeldOut:
    """A job's before/after evaluation on its validation file.

    Across processes every process scores (a sharded model answers only when all run it), and rank 0 alone
    decides whether the base was scored already, keeps the scores and reports them."""

    def __init__(self, spec: JobSpec, tokenizer: PreTrainedTokenizerBase, encoder: Encoder, hardware: Hardware,
                 sink: Sink, ranks: Ranks = Ranks()):
        assert spec.validation_file is not None
        self.spec = spec
        self.examples = read_examples(spec.validation_file)
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.hardware = hardware
        self.sink = sink
        self.ranks = ranks
        self.base: Scores | None = None

    def _score(self, model: PreTrainedModel, stopped: Callable[[], bool] = lambda: False) -> Scores:
        return score(model, self.tokenizer, self.encoder, self.examples, batch_size=self.spec.batch_size,
                     autocast=self.hardware.autocast, stopped=stopped)

    def measure_base(self, model: PreTrainedModel) -> None:
        """Score the model before its first step (or read the scores an earlier attempt kept, which
        reported them already). A stop asked for meanwhile ends the scoring, keeping nothing: training
        then stops before its first step, and the next attempt scores the base again."""
        path = self.spec.output_dir / BASELINE_FILE
        if not self.ranks.agree(path.exists()):
            try:
                self.base = self._score(model, self._stop_asked)
            except Interrupted:
                return
            if self.ranks.main:
                write_json(path, asdict(self.base))
                self.sink.emit(Message(text=f"Base model on {self.base.examples} held-out examples: {describe(self.base)}"))
        elif self.ranks.main:
            self.base = Scores(**json.loads(path.read_text()))

    def _stop_asked(self) -> bool:
        return self.sink.requested_stop() is not None

    def compare(self, model: PreTrainedModel) -> dict[str, Any] | None:
        """Score the trained model and write the comparison; None (with a warning) if scoring fails,
        because a finished training run must not be lost to its evaluation."""
        try:
            after = self._score(model)
        except (DataError, RuntimeError, ValueError) as error:
            self.sink.emit(Message(level="warn", text=f"The before/after evaluation failed: {error}"))
            return None
        if not self.ranks.main:
            return None
        assert self.base is not None, "measure_base runs before training"
        return report(self.spec.output_dir, self.base, after)


def describe(scores: Scores) -> str:
    text = (f"loss {scores.loss:.4f}, token accuracy {scores.token_accuracy:.1%}, "
            f"exact match {scores.exact_match:.1%} of {scores.generated}")
    if scores.preference_accuracy is not None:
        text += f", preference accuracy {scores.preference_accuracy:.1%}"
    return text
