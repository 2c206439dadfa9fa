"""The first part of every recipe: hardware, tokenizer and examples, checked before any weights load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sized, TypeVar

from transformers import PreTrainedTokenizerBase

from ftserve.engine import distributed, models
from ftserve.engine.data import DataError, Encoder, read_jsonl
from ftserve.engine.events import Message
from ftserve.engine.hardware import Hardware, detect
from ftserve.engine.sink import Sink
from ftserve.engine.spec import JobSpec

T = TypeVar("T", bound=Sized)


@dataclass(frozen=True)
class Prepared:
    hardware: Hardware
    model_path: Path
    tokenizer: PreTrainedTokenizerBase
    encoder: Encoder
    ranks: distributed.Ranks
    """This process's place among the job's processes (the only one, unless a launcher started several)."""


def prepare(spec: JobSpec, sink: Sink) -> Prepared:
    hardware = detect(spec.device)
    sink.emit(Message(text=f"Loading {spec.model.id}"))
    path = models.local_dir(spec.model, spec.cache_dir)
    tokenizer = models.load_tokenizer(path)
    return Prepared(hardware, path, tokenizer, Encoder(tokenizer, spec.max_seq_length), distributed.current())


def encode_dataset(spec: JobSpec, encode: Callable[[dict], T], trained: Callable[[T], int],
                   sink: Sink) -> tuple[list[T], list[T]]:
    """The job's training examples and its validation examples (none without a validation file)."""
    train = encode_file(spec.training_file, encode, trained, "training file", spec.max_seq_length, sink)
    validation = (
        encode_file(spec.validation_file, encode, trained, "validation file", spec.max_seq_length, sink)
        if spec.validation_file else []
    )
    return train, validation


def encode_file(path: Path, encode: Callable[[dict], T], trained: Callable[[T], int], label: str,
                max_length: int, sink: Sink) -> list[T]:
    """Every example of a file, encoded; examples left with no trained token are skipped and counted.

    A file where nothing at all is left to train fails here, before any weights load.
    """
    items: list[T] = []
    skipped: list[int] = []
    first_reason = ""
    for line, example in read_jsonl(path):
        try:
            item = encode(example)
        except (DataError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise DataError(f"{label}, line {line}: {error}") from error
        if trained(item):
            items.append(item)
            continue
        if not skipped:
            first_reason = (
                f"the example is longer than max_seq_length={max_length} tokens, and its assistant tokens "
                "all lie beyond it" if len(item) >= max_length else "every assistant message has weight 0"
            )
        skipped.append(line)
    if not items and not skipped:
        raise DataError(f"{label}: the file has no examples")
    lines = f"lines {', '.join(map(str, skipped[:10]))}{'…' if len(skipped) > 10 else ''}"
    if not items:
        raise DataError(
            f"{label}, line {skipped[0]}: {first_reason}; no example has assistant tokens to train on "
            f"within max_seq_length={max_length} ({lines})"
        )
    if skipped:
        sink.emit(Message(
            level="warn",
            text=f"{label}: skipped {len(skipped)} example(s) with no assistant tokens to train within "
            f"max_seq_length={max_length} ({lines}); the first, line {skipped[0]}: {first_reason}",
        ))
    return items
