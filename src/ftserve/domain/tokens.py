"""The token estimate ftserve gives before a tokenizer has seen a dataset: four characters of text a token.

One rule, so that the count a file shows once uploaded (`ftserve.estimated_tokens`) and the count a dry
run prices agree. Providers count with their own tokenizers later; this is what can be said before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHARACTERS_PER_TOKEN = 4
# Keys whose values name a structure rather than hold text the model reads or writes.
_NOT_TEXT = frozenset({"role", "type", "weight"})


def text_length(value: Any) -> int:
    """Characters of text in a parsed JSON value: every string, less the values of `_NOT_TEXT` keys."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_length(v) for k, v in value.items() if k not in _NOT_TEXT)
    if isinstance(value, list):
        return sum(text_length(v) for v in value)
    return 0


def estimated_tokens(characters: int) -> int:
    """Tokens estimated for `characters` of text; never 0, since a dataset with an example has some."""
    return max(1, characters // CHARACTERS_PER_TOKEN)


def tokens_of(path: Path) -> int:
    """Tokens of text in a JSONL file; a line that is not JSON counts as text."""
    characters = 0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                characters += text_length(json.loads(line))
            except json.JSONDecodeError:
                characters += len(line)
    return estimated_tokens(characters)
