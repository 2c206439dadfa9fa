"""Turning `"auto"` hyperparameters into numbers, from the dataset size, the way OpenAI documents it."""

from __future__ import annotations

import math
from typing import Any

# OpenAI aims for about this many example passes in total when `n_epochs` is "auto".
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25


def auto_epochs(examples: int) -> int:
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / examples))
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


def auto_batch_size(examples: int) -> int:
    # About 0.2 % of the dataset per step, within the API's 1-256 range.
    return max(1, min(256, round(examples * 0.002)))


def auto_prompts_per_step(examples: int) -> int:
    # Reinforcement samples a group of answers to each prompt: a step's prompts are fewer, 1 % of the set, 2 to 8.
    return max(2, min(8, round(examples * 0.01)))


def resolve(requested: dict[str, Any], examples: int, method: str = "supervised") -> dict[str, Any]:
    """The hyperparameters a job trains with: every `"auto"` replaced by a number. Reinforcement's `eval_interval`
    and `eval_samples` stay `"auto"`: they depend on the step count and the validation file, which the trainer knows."""
    resolved = dict(requested)
    defaults = {
        "n_epochs": auto_epochs(examples),
        "batch_size": auto_prompts_per_step(examples) if method == "reinforcement" else auto_batch_size(examples),
        "learning_rate_multiplier": 1.0,
        "beta": 0.1,
        "compute_multiplier": 1.0,
    }
    for key, value in requested.items():
        if value == "auto" and key in defaults:
            resolved[key] = defaults[key]
    return resolved
