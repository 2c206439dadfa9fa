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
