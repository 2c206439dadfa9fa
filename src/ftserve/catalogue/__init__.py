"""The catalogue of base models, kept as data in `base_models.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class BaseModel:
    id: str
    created: int
    owned_by: str
    learning_rate: float
    """Learning rate that `learning_rate_multiplier` scales."""


def load_catalogue() -> dict[str, BaseModel]:
    text = resources.files(__package__).joinpath("base_models.json").read_text(encoding="utf-8")
    return {entry["id"]: BaseModel(**entry) for entry in json.loads(text)}
