"""The catalogue of base models, kept as data: `base_models.json`, plus an optional file of the user's own.

An entry names where the weights come from with exactly one of:
- `package` (+ `gguf_file`): a Python package that ships the model file, found without importing it;
- `path` (+ optional `gguf_file`): a local Hugging Face model directory;
- `hub` (+ optional `revision`): a Hugging Face hub id, for machines that can reach the hub;
- `provider` (+ optional `provider_model`): a configured hosted provider trains it, under its own id.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import BaseModel as Record
from pydantic import ConfigDict, Field, ValidationError, model_validator


class CatalogueEntry(Record):
    """One base model a job can start from: where its weights come from (or the provider that trains it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    created: int = 0
    owned_by: str = "user"
    learning_rate: float = Field(1e-4, gt=0)
    """Learning rate that `learning_rate_multiplier` scales."""
    package: str | None = None
    path: Path | None = None
    hub: str | None = None
    revision: str | None = None
    gguf_file: str | None = None
    train_memory_gb: float | None = Field(None, gt=0)
    """Memory one engine process needs to train this model (LoRA, default settings), which the Ray executor asks
    the cluster for; unset: it asks for none."""
    family: str | None = None
    """The model family (qwen2.5, qwen3, llama3.1, llama3.2, mistral, gemma3, phi3, ...): docs/models.md."""
    context_length: int | None = Field(None, gt=0)
    """The longest sequence the model was trained for (its config's max_position_embeddings): the ceiling of
    `ftserve.max_seq_length`. Unset: read from a `path` model's config.json, else no ceiling."""
    lora_target_modules: tuple[str, ...] | None = None
    """The projections LoRA adapts, by module name; unset: every linear layer but the output head."""
    config: dict[str, int | bool] | None = None
    """The shape keys of the model's config.json (`num_hidden_layers`, `hidden_size`, `intermediate_size`,
    `num_attention_heads`, `num_key_value_heads`, `head_dim`, `vocab_size`, `tie_word_embeddings`), recorded for a
    model whose config.json is not on this machine before its weights are (hub and package models), so that its
    memory estimate can be made offline. Unset: read from a `path` model's config.json."""
    chat_template_notes: str | None = None
    """What the model's chat template does that a trainer must know (docs/models.md)."""
    provider: str | None = None
    """A configured hosted provider's name: jobs on this model run there, not here."""
    provider_model: str | None = None
    """The model's id at that provider; unset: the same as `id`."""

    @model_validator(mode="after")
    def _one_source(self) -> CatalogueEntry:
        named = [key for key in ("package", "path", "hub", "provider") if getattr(self, key) is not None]
        if len(named) != 1:
            raise ValueError(f"set exactly one of package, path, hub or provider (got {', '.join(named) or 'none'})")
        if self.provider_model is not None and self.provider is None:
            raise ValueError("provider_model needs provider")
        return self


def config_of(base: CatalogueEntry) -> dict[str, object] | None:
    """The model's config as far as known before its weights load: the recorded `config`, else a `path` model's
    config.json; None when neither can be read (the engine says what is wrong when it loads the model)."""
    if base.config is not None:
        return dict(base.config)
    if base.path is None:
        return None
    try:
        config = json.loads((base.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


class CatalogueError(Exception):
    """The user's catalogue file cannot be read."""


def load_catalogue(extra: Path | None = None) -> dict[str, CatalogueEntry]:
    """The built-in models, then the entries of `extra` (which may replace a built-in by id)."""
    text = resources.files(__package__).joinpath("base_models.json").read_text(encoding="utf-8")
    models = _entries(text, "the built-in catalogue")
    if extra is not None:
        try:
            models.update(_entries(extra.read_text(encoding="utf-8"), str(extra)))
        except OSError as error:
            raise CatalogueError(f"cannot read the catalogue file {extra}: {error.strerror}") from error
    return models


def _entries(text: str, origin: str) -> dict[str, CatalogueEntry]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise CatalogueError(f"{origin}: not JSON ({error})") from error
    if not isinstance(raw, list):
        raise CatalogueError(f"{origin}: expected a JSON list of models")
    models = {}
    for index, entry in enumerate(raw):
        try:
            model = CatalogueEntry.model_validate(entry)
        except ValidationError as error:
            first = error.errors()[0]
            where = "".join(f".{part}" for part in first["loc"])
            raise CatalogueError(f"{origin}: entry {index}{where}: {first['msg']}") from error
        models[model.id] = model
    return models
