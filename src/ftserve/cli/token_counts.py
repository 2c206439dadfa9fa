"""Counting a dataset's tokens the way the engine will see them, with the engine's own encoder and file reader.

`engine.setup.encode_file` does the reading: it truncates each example to `max_seq_length` and
drops the ones left with nothing to train, exactly as a job would. Counting wraps the encoder it
is given, to also note each example's untruncated length.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ftserve.engine.data import Encoder, Pair, Sequence
from ftserve.engine.events import Message
from ftserve.engine.setup import encode_file
from ftserve.engine.sink import MemorySink

Item = Sequence | Pair


@dataclass(frozen=True)
class TokenCounts:
    lengths: list[int]
    """Tokens of each example in the file, untruncated (a preference pair: both of its sequences)."""
    trained_examples: int
    """Examples a job trains on: those with something to train within max_seq_length."""
    tokens_per_epoch: int
    """Tokens an epoch processes: the trained examples' tokens after truncation (the engine's `trained_tokens`)."""
    truncated: int
    """Examples cut at max_seq_length that still train."""
    warning: str | None
    """The engine's own message about the examples it drops, if any."""

    @property
    def dropped(self) -> int:
        return len(self.lengths) - self.trained_examples

    @property
    def mean(self) -> float:
        return sum(self.lengths) / len(self.lengths)


def count_tokens(path: Path, method: Literal["supervised", "dpo"], encoder: Encoder) -> TokenCounts:
    """Raises `engine.data.DataError` where the engine would fail the job (nothing to train, a template it cannot use)."""
    whole = Encoder(encoder.tokenizer, sys.maxsize)  # for the untruncated length of the few long examples
    if method == "dpo":
        encode, encode_whole, trained = encoder.preference, whole.preference, _pair_trained
    else:
        encode, encode_whole, trained = encoder.sft, whole.sft, _sequence_trained
    lengths: list[int] = []
    truncated = 0

    def counted(example: dict[str, Any]) -> Item:
        nonlocal truncated
        item = encode(example)
        length = _tokens(item)
        if len(item) >= encoder.max_length:  # may have been cut: count the whole example
            length = _tokens(encode_whole(example))
            truncated += length > _tokens(item) and bool(trained(item))  # type: ignore[arg-type]
        lengths.append(length)
        return item

    sink = MemorySink()
    kept = encode_file(path, counted, trained, "training file", encoder.max_length, sink)  # type: ignore[arg-type]
    warnings = [event.text for event in sink.of(Message) if event.level == "warn"]
    return TokenCounts(
        lengths=lengths, trained_examples=len(kept), tokens_per_epoch=sum(map(_tokens, kept)), truncated=truncated,
        warning=warnings[0] if warnings else None,
    )


def _tokens(item: Item) -> int:
    # A batch of pairs processes both sequences of each (engine/dpo.py collates chosen and rejected).
    return len(item.chosen) + len(item.rejected) if isinstance(item, Pair) else len(item)


# What makes an example worth training, as each recipe decides it (engine/sft.py, engine/dpo.py).
def _sequence_trained(sequence: Sequence) -> int:
    return sequence.trained


def _pair_trained(pair: Pair) -> int:
    return min(pair.chosen.trained, pair.rejected.trained)
