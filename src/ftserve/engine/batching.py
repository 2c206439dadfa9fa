"""Batches with little padding: examples of similar length travel together.

Each epoch shuffles the examples with the job's seed, sorts them by length within large windows,
cuts the windows into batches and shuffles the batches, so a step pads only to the longest of
similar sequences and the order is still random. Given the seed and the epoch, the order is the
same every time, which is what lets a resumed job skip exactly the batches it already trained.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from ftserve.engine.data import IGNORE, Sequence

WINDOW_BATCHES = 64


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return math.ceil(examples / batch_size)


def epoch_batches(lengths: Seq[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    tokens: int
    """Real (non-padding) tokens in the batch."""
    position_ids: torch.Tensor | None = None
    """Set for a packed batch: positions restart at 0 with each example, which is how attention is kept within it."""


def collate(sequences: Seq[Sequence], pad_id: int, device: torch.device) -> Batch:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        ids[row, :n] = torch.tensor(sequence.input_ids)
        labels[row, :n] = torch.tensor(sequence.labels)
        mask[row, :n] = 1
    tokens = sum(len(s) for s in sequences)
    full = tokens == mask.numel()  # no padding: let attention take its causal fast path
    return Batch(
        ids.to(device), labels.to(device), None if full else mask.to(device), tokens,
    )


def pack(sequences: Seq[Sequence], pad_id: int, device: torch.device, row_tokens: int) -> Batch:
    """The examples end to end in as few rows of at most `row_tokens` as first-fit finds, without an attention mask.

    With no mask, transformers reads the examples' boundaries from where `position_ids` restart and builds a
    block-causal mask (masking_utils.find_packed_sequence_indices), or flash-attention runs varlen. An example's
    first token is never a target, so the previous example's last token does not learn to predict it: the trained
    tokens, and so the mean loss, are the padded batch's. A short row's tail is a filler segment of its own.
    """
    rows: list[list[Sequence]] = []
    for sequence in sorted(sequences, key=len, reverse=True):
        row = next((r for r in rows if sum(map(len, r)) + len(sequence) <= row_tokens), None)
        if row is None:
            rows.append([sequence])
        else:
            row.append(sequence)
    width = max(sum(map(len, r)) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for sequence in row:
            n = len(sequence)
            ids[r, at : at + n] = torch.tensor(sequence.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(sequence.labels[1:])
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    tokens = sum(len(s) for s in sequences)
    return Batch(ids.to(device), labels.to(device), None, tokens, positions.to(device))
