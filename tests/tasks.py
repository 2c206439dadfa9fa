"""Small tasks the default model cannot do before fine-tuning, on word lists.

Supervised and DPO: the user sends `List: kilo echo lima`; the assistant must answer exactly
`Items: 3 | first=kilo | last=lima`. SmolLM2-135M-Instruct answers in free prose before training, so the share
of answers in this format shows whether fine-tuning took.

Reinforcement: asked for the first word of a list "with that word only", the base model answers in a sentence
(`The first word in this list is "delta."`), now and then naming another word; `FIRST_WORD_GRADER` gives half a
point for the exact word and half for how close the answer is to it (fuzzy_match), so an answer nearer the bare
word earns more before any is exact, and the policy has a slope to climb.
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


FIRST_WORD_QUESTION = "What is the first word in this list? Answer with that word only."
FIRST_WORD_GRADER = {
    "type": "multi", "name": "first word", "calculate_output": "0.5 * exact + 0.5 * similar",
    "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "operation": "eq"},
        "similar": {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"},
    },
}


def first_word(seed: int) -> tuple[str, str]:
    """A user message asking for a list's first word, and that word."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
    return f"{FIRST_WORD_QUESTION}\nList: {' '.join(words)}", words[0]


def reinforcement_examples(count: int, offset: int = 0) -> list[dict]:
    """The first-word task as reinforcement rows: the user message to answer, and `answer` for `{{item.answer}}`."""
    examples = []
    for seed in range(offset, offset + count):
        user, answer = first_word(seed)
        examples.append({"messages": [{"role": "user", "content": user}], "answer": answer})
    return examples


def jsonl(examples: list[dict]) -> bytes:
    return ("\n".join(json.dumps(e) for e in examples) + "\n").encode()


def follows_format(answer: str) -> bool:
    return ANSWER.match(answer.strip()) is not None
