"""Counting a dataset's tokens the way the engine will see them, with the engine's own encoder and file reader.

`engine.setup.encode_file` does the reading: it truncates each example to `max_seq_length` and
drops the ones left with nothing to train, exactly as a job would. Counting wraps the encoder it
is given, to also note each example's untruncated length.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
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
    encode: Callable[[dict[str, Any]], Item]
    encode_whole: Callable[[dict[str, Any]], Item]
    if method == "dpo":
        encode, encode_whole = encoder.preference, whole.preference
    else:
        encode, encode_whole = encoder.sft, whole.sft
    lengths: list[int] = []
    truncated = 0

    def counted(example: dict[str, Any]) -> Item:
        nonlocal truncated
        item = encode(example)
        length = _tokens(item)
        if len(item) >= encoder.max_length:  # may have been cut: count the whole example
            length = _tokens(encode_whole(example))
            truncated += length > _tokens(item) and bool(_trained(item))
        lengths.append(length)
        return item

    sink = MemorySink()
    kept = encode_file(path, counted, _trained, "training file", encoder.max_length, sink)
    warnings = [event.text for event in sink.of(Message) if event.level == "warn"]
    return TokenCounts(
        lengths=lengths, trained_examples=len(kept), tokens_per_epoch=sum(map(_tokens, kept)), truncated=truncated,
        warning=warnings[0] if warnings else None,
    )


def _tokens(item: Item) -> int:
    # A batch of pairs processes both sequences of each (engine/dpo.py collates chosen and rejected).
    return len(item.chosen) + len(item.rejected) if isinstance(item, Pair) else len(item)


def _trained(item: Item) -> int:
    """What makes an example worth training, as each recipe decides it (engine/sft.py, engine/dpo.py)."""
    return min(item.chosen.trained, item.rejected.trained) if isinstance(item, Pair) else item.trained
