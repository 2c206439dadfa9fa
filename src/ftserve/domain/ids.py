"""Object ids in the shapes OpenAI uses on the wire."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def _token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt_…`, `cp_…`, `upload_…`, `part_…`: prefix plus base62."""
    return prefix + _token(length)


def short_id() -> str:
    """The 8-character tail of a fine-tuned model name."""
    return _token(8)
