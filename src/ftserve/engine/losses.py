"""Losses computed on the trained positions only.

The output projection and the softmax over the vocabulary are the costliest part of a small
model's step, and most positions (prompts, system messages, padding) carry no loss. So the
hidden states are gathered at the trained positions first, and only those go through the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from ftserve.engine.batching import Batch
from ftserve.engine.data import IGNORE


@dataclass(frozen=True)
class Stats:
    """Summable counts over some tokens: total loss, tokens, correctly predicted tokens."""

    loss_sum: float
    tokens: int
    correct: int

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.loss_sum + other.loss_sum, self.tokens + other.tokens, self.correct + other.correct)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.tokens)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.tokens)


EMPTY = Stats(0.0, 0, 0)


@dataclass(frozen=True)
class TokenLogits:
    logits: torch.Tensor
    """fp32 logits at the trained positions, one row per trained token."""
    targets: torch.Tensor
    rows: torch.Tensor
    """Which sequence of the batch each trained token belongs to."""


def trained_logits(model: torch.nn.Module, batch: Batch) -> TokenLogits:
    """`model` is the causal LM (or its PEFT wrapper), or, in a step of a job run across processes, what the step
    runs through: DDP around it, or the FSDP2-sharded model."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    causal_lm: PreTrainedModel = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # type: ignore[operator,assignment]  # PEFT's method, found by hasattr; a causal LM either way
    # No cache: transformers reads a packed batch's example boundaries from position_ids only without one.
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE
    if not _head_is_plain(causal_lm):  # models that scale or cap their logits: let them do it
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits[:, :-1][keep]
    else:
        if isinstance(model, (DistributedDataParallel, FSDPModule)):
            # DDP averages gradients, and FSDP2 gathers the root's weights, only in the outer module's forward: it
            # runs whole, asked for the last position's logits alone, and its final hidden states go through the head.
            hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                           use_cache=False, logits_to_keep=1,
                           output_hidden_states=True).hidden_states[-1]
        else:
            hidden = causal_lm.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                             position_ids=batch.position_ids, use_cache=False).last_hidden_state
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    rows = keep.nonzero()[:, 0]
    return TokenLogits(logits.float(), targets[keep], rows)


def _head_is_plain(model: PreTrainedModel) -> bool:
    config = model.config
    return not getattr(config, "final_logit_softcapping", None) and getattr(config, "logit_scale", None) in (None, 1.0)


def token_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Stats]:
    """Mean cross-entropy over the batch's trained tokens, and its counts."""
    out = trained_logits(model, batch)
    loss_sum = F.cross_entropy(out.logits, out.targets, reduction="sum")
    tokens = out.targets.numel()
    correct = int((out.logits.argmax(-1) == out.targets).sum())
    return loss_sum / max(1, tokens), Stats(float(loss_sum.detach()), tokens, correct)


def sequence_logps(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Stats]:
    """Each sequence's summed log-probability of its trained tokens, and the token counts."""
    out = trained_logits(model, batch)
    token_logps = -F.cross_entropy(out.logits, out.targets, reduction="none")
    sums = torch.zeros(batch.input_ids.shape[0], device=token_logps.device, dtype=token_logps.dtype)
    sums = sums.index_add(0, out.rows, token_logps)
    correct = int((out.logits.argmax(-1) == out.targets).sum())
    return sums, Stats(float(-token_logps.detach().sum()), out.targets.numel(), correct)
