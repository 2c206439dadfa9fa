"""Names of fine-tuned and checkpoint models: `ft:{base}:{org}:{suffix}:{id}` and `…:ckpt-step-{N}`."""

from __future__ import annotations

import re

from ftserve.domain.ids import short_id


def org_slug(project: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", project.lower()).strip("-") or "default"


def normalise_suffix(suffix: str | None) -> str:
    """OpenAI turns `initial_tuning` into `initial-tuning` inside the model name."""
    if not suffix:
        return ""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", suffix.replace("_", "-"))


def fine_tuned_name(base: str, project: str, suffix: str | None) -> str:
    return f"ft:{base}:{org_slug(project)}:{normalise_suffix(suffix)}:{short_id()}"


def checkpoint_name(fine_tuned: str, step: int) -> str:
    return f"{fine_tuned}:ckpt-step-{step}"


def root_base(name: str) -> str:
    """The base model at the root of a fine-tuned or checkpoint model's name: a child of `ft:X:...` is named after X,
    as at OpenAI, so the base is found in the name whatever the lineage's depth. A base model's name is itself."""
    if not name.startswith("ft:"):
        return name
    name = re.sub(r":ckpt-step-\d+$", "", name)
    parts = name.removeprefix("ft:").rsplit(":", 3)  # org, suffix and id hold no colon; a base's id may
    return parts[0] if len(parts) == 4 else name
