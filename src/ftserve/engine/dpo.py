"""Direct preference optimisation: raise the preferred answer's likelihood over the other's, against a frozen reference.

The reference is the model before training. Its log-probabilities are computed once, up
front, for every training and validation pair (with a new LoRA adapter, by switching it off; a job that
continues a fine-tuned model keeps its parent's adapter on, the parent being its reference), so no
second copy of the model is held or run while training. They are part of the resumable state,
because after full fine-tuning the base weights are gone.

The loss is the sigmoid DPO loss, -log σ(β·((π_w − ref_w) − (π_l − ref_l))). Its "accuracy" is the
share of pairs where the preferred answer gains more than the other.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ftserve.engine import distributed, loop, models
from ftserve.engine.batching import collate
from ftserve.engine.data import Pair
from ftserve.engine.events import Message
from ftserve.engine.losses import EMPTY, Stats, sequence_logps
from ftserve.engine.setup import encode_dataset, prepare
from ftserve.engine.sink import Sink
from ftserve.engine.spec import JobSpec


class PreferenceTask:
    def __init__(self, train: list[Pair], validation: list[Pair], beta: float, pad_id: int,
                 device: torch.device, batch_size: int, adapter_off: bool = True):
        self.train = train
        self.adapter_off = adapter_off
        self.validation = validation
        self.beta = beta
        self.pad_id = pad_id
        self.device = device
        self.batch_size = batch_size
        self.lengths = [len(p) for p in train]
        self.validation_size = len(validation)
        self.reference: dict[str, torch.Tensor] | None = None

    def loss(self, model: torch.nn.Module, indices: list[int]) -> tuple[torch.Tensor, Stats, int]:
        reference = self._reference(distributed.unwrapped(model))["train"]
        return self._score(model, self.train, reference, indices)

    def evaluate(self, model: PreTrainedModel, indices: list[int]) -> Stats:
        reference = self._reference(model)["validation"]
        total = EMPTY
        for start in range(0, len(indices), self.batch_size):
            total += self._score(model, self.validation, reference, indices[start : start + self.batch_size])[1]
        return total

    def state(self) -> dict[str, Any]:
        return {"reference": self.reference}

    def restore(self, saved: dict[str, Any]) -> None:
        self.reference = saved["reference"]

    def _score(self, model: torch.nn.Module, pairs: list[Pair], reference: torch.Tensor,
               indices: list[int]) -> tuple[torch.Tensor, Stats, int]:
        batch = collate([pairs[i].chosen for i in indices] + [pairs[i].rejected for i in indices], self.pad_id, self.device)
        logps, _ = sequence_logps(model, batch)
        n = len(indices)
        ref = reference[indices].to(logps.device)
        margin = (logps[:n] - ref[:, 0]) - (logps[n:] - ref[:, 1])
        losses = -F.logsigmoid(self.beta * margin)
        stats = Stats(float(losses.detach().sum()), n, int((margin > 0).sum()))
        return losses.mean(), stats, batch.tokens

    def _reference(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        if self.reference is None:
            was_training = model.training
            model.eval()
            # With LoRA the adapter-free model is the base; with full fine-tuning nothing has trained yet.
            off = model.disable_adapter() if self.adapter_off and hasattr(model, "disable_adapter") else nullcontext()  # type: ignore[operator]  # PEFT's, found by hasattr
            with torch.no_grad(), off:
                self.reference = {
                    "train": self._logps(model, self.train), "validation": self._logps(model, self.validation),
                }
            # Asked from inside a training step's autocast: the weights it cast without grad must not be reused by
            # that step's forward (FSDP2 gathers a layer into the same tensor each time, so they would be).
            torch.clear_autocast_cache()
            model.train(was_training)
        return self.reference

    def _logps(self, model: PreTrainedModel, pairs: list[Pair]) -> torch.Tensor:
        out = torch.zeros((len(pairs), 2))
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            batch = collate([p.chosen for p in chunk] + [p.rejected for p in chunk], self.pad_id, self.device)
            logps = sequence_logps(model, batch)[0].float().cpu()
            out[start : start + len(chunk), 0] = logps[: len(chunk)]
            out[start : start + len(chunk), 1] = logps[len(chunk) :]
        return out


def run(spec: JobSpec, sink: Sink) -> loop.Result:
    ready = prepare(spec, sink)
    train, validation = encode_dataset(spec, ready.encoder.preference, _trained, sink)
    sink.emit(Message(text=(
        f"Training {spec.model.id} ({spec.training_type}, DPO β={spec.beta}) on {len(train)} preference pairs "
        f"on {ready.hardware.describe()}"
    )))
    model = models.load_for_training(ready.model_path, spec, ready.hardware, ready.ranks)
    task = PreferenceTask(train, validation, spec.beta, ready.tokenizer.pad_token_id, ready.hardware.device, spec.batch_size,
                           adapter_off=spec.start_from is None)
    return loop.train(spec, model, ready, task, sink)


def _trained(pair: Pair) -> int:
    return min(pair.chosen.trained, pair.rejected.trained)
