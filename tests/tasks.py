"""A small task the default model cannot do before fine-tuning: summarise a word list in a fixed format.

The user sends `List: kilo echo lima`; the assistant must answer exactly `Items: 3 | first=kilo | last=lima`.
SmolLM2-135M-Instruct answers in free prose before training, so the share of answers in this format
shows whether fine-tuning took.
"""

from __future__ import annotations

import json
import random
import re

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()
ANSWER = re.compile(r"^Items: (\d+) \| first=([a-z]+) \| last=([a-z]+)$")


def prompt(seed: int) -> tuple[str, str]:
    """A user message and the answer the task wants."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
    return f"List: {' '.join(words)}", f"Items: {len(words)} | first={words[0]} | last={words[-1]}"


def chat_examples(count: int, offset: int = 0) -> list[dict]:
    examples = []
    for seed in range(offset, offset + count):
        user, answer = prompt(seed)
        examples.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return examples


def preference_examples(count: int, offset: int = 0) -> list[dict]:
    """The task as preferences: the formatted answer over a prose one."""
    examples = []
    for seed in range(offset, offset + count):
        user, answer = prompt(seed)
        words = user.removeprefix("List: ").split()
        examples.append({
            "input": {"messages": [{"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": f"The list has {len(words)} words in it."}],
        })
    return examples


def jsonl(examples: list[dict]) -> bytes:
    return ("\n".join(json.dumps(e) for e in examples) + "\n").encode()


def follows_format(answer: str) -> bool:
    return ANSWER.match(answer.strip()) is not None
