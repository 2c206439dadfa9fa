"""Supervised fine-tuning: cross-entropy on the assistant tokens of chat or prompt/completion examples."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from ftserve.engine import loop, models
from ftserve.engine.batching import collate, pack
from ftserve.engine.data import Sequence
from ftserve.engine.events import Message
from ftserve.engine.losses import EMPTY, Stats, token_loss
from ftserve.engine.setup import encode_dataset, prepare
from ftserve.engine.sink import Sink
from ftserve.engine.spec import JobSpec


class SupervisedTask:
    def __init__(self, train: list[Sequence], validation: list[Sequence], pad_id: int, device: torch.device, batch_size: int,
                 packed_row_tokens: int | None = None):
        self.packed_row_tokens = packed_row_tokens
        """Set when training batches are packed (`JobSpec.packing`): the most tokens a packed row holds."""
        self.train = train
        self.validation = validation
        self.pad_id = pad_id
        self.device = device
        self.batch_size = batch_size
        self.lengths = [len(s) for s in train]
        self.validation_size = len(validation)

    def loss(self, model: torch.nn.Module, indices: list[int]) -> tuple[torch.Tensor, Stats, int]:
        sequences = [self.train[i] for i in indices]
        batch = (collate(sequences, self.pad_id, self.device) if self.packed_row_tokens is None
                 else pack(sequences, self.pad_id, self.device, self.packed_row_tokens))
        loss, stats = token_loss(model, batch)
        return loss, stats, batch.tokens

    def evaluate(self, model: PreTrainedModel, indices: list[int]) -> Stats:
        # Sorted by length so evaluation batches pad as little as training ones.
        ordered = sorted(indices, key=lambda i: len(self.validation[i]))
        total = EMPTY
        for start in range(0, len(ordered), self.batch_size):
            chunk = [self.validation[i] for i in ordered[start : start + self.batch_size]]
            total += token_loss(model, collate(chunk, self.pad_id, self.device))[1]
        return total

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, saved: dict[str, Any]) -> None:
        pass


def run(spec: JobSpec, sink: Sink) -> loop.Result:
    ready = prepare(spec, sink)
    train, validation = encode_dataset(spec, ready.encoder.sft, _trained, sink)
    sink.emit(Message(text=(
        f"Training {spec.model.id} ({spec.training_type}) on {len(train)} examples "
        f"({sum(map(len, train))} tokens, {sum(s.trained for s in train)} trained) on {ready.hardware.describe()}"
    )))
    model = models.load_for_training(ready.model_path, spec, ready.hardware, ready.ranks)
    task = SupervisedTask(train, validation, ready.tokenizer.pad_token_id, ready.hardware.device, spec.batch_size,
                          spec.max_seq_length if spec.packing else None)
    return loop.train(spec, model, ready, task, sink)


def _trained(sequence: Sequence) -> int:
    return sequence.trained
