"""Validators that share long-line slots take turns with long lines, and always give their slot back."""

from __future__ import annotations

import json
import threading

import pytest

from ftserve.domain.errors import InvalidFileFormat
from ftserve.files.jsonl import LONG_LINE_BYTES, JsonlValidator

LIMIT = 4 * LONG_LINE_BYTES


def long_line(size: int) -> bytes:
    return json.dumps({"prompt": "a" * size, "completion": "x"}).encode() + b"\n"


def pieces(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_line_past_the_limit_is_refused_before_the_buffer_passes_it() -> None:
    validator = JsonlValidator(LIMIT)
    with pytest.raises(InvalidFileFormat) as refused:
        for piece in pieces(long_line(10 * LIMIT)):
            validator.feed(piece)
            assert len(validator._partial) <= LIMIT + 1
    assert refused.value.line == 1 and refused.value.reason == f"line is longer than {LIMIT} bytes"


def test_a_long_line_holds_a_slot_until_it_is_checked() -> None:
    slots = threading.BoundedSemaphore(1)
    first, second = JsonlValidator(LIMIT, slots), JsonlValidator(LIMIT, slots)
    data = long_line(2 * LONG_LINE_BYTES)
    for piece in pieces(data)[:-1]:
        first.feed(piece)
    assert not slots.acquire(blocking=False)  # the first holds the one slot mid-line

    fed = threading.Event()

    def feed_second() -> None:
        second.feed(data[: 2 * LONG_LINE_BYTES])
        fed.set()

    second_feeds = threading.Thread(target=feed_second)
    second_feeds.start()
    assert not fed.wait(0.2)  # the second waits for it
    first.feed(pieces(data)[-1])  # the line ends and is checked: the slot is free
    assert fed.wait(5)
    second_feeds.join()
    second.close()
    assert first.finish().examples == 1
    assert slots.acquire(blocking=False)


@pytest.mark.parametrize("ending", ["too long", "bad JSON", "closed midway", "last line without a newline"])
def test_the_slot_comes_back_however_the_validation_ends(ending: str) -> None:
    slots = threading.BoundedSemaphore(1)
    validator = JsonlValidator(LIMIT, slots)
    data = {"too long": long_line(2 * LIMIT), "bad JSON": b"{" + long_line(LONG_LINE_BYTES * 2),
            "closed midway": long_line(LONG_LINE_BYTES * 2)[:-1000],
            "last line without a newline": long_line(LONG_LINE_BYTES * 2)[:-1]}[ending]
    try:
        for piece in pieces(data):
            validator.feed(piece)
        if ending == "closed midway":
            validator.close()
        else:
            validator.finish()
    except InvalidFileFormat:
        pass
    assert slots.acquire(blocking=False)
