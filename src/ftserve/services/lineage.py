"""The fine-tuned model a job continues from, when its `model` names one (docs/training.md, "Continuing from a
fine-tuned model").

A job's `model` may be a fine-tuned or checkpoint model the project owns or that was shared with it, as at OpenAI.
Its manifest (written by the engine beside its weights) says which catalogue model it grew from and how it was
trained; the job trains on from there, on this server. It is looked up when the job is planned and again when it
runs, so a parent deleted in between fails the job with a message naming it rather than with a missing directory.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from ftserve.domain.errors import InvalidRequest
from ftserve.engine.artifacts import MANIFEST
from ftserve.files.storage import BlobStore
from ftserve.providers.contract import Parent
from ftserve.store import models as model_rows


def parent_of(engine: sa.Engine, blobs: BlobStore, project: str, model: str) -> Parent | None:
    """The model `model` names, if it is a fine-tuned one. Raises `InvalidRequest` naming `model` when the project
    cannot see it or its weights are not on this server."""
    if not model.startswith("ft:"):
        return None
    with engine.connect() as conn:
        row = model_rows.find_model(conn, model)
        visible = row is not None and (row.project == project or model_rows.is_shared_with(conn, model, project))
    if row is None or not visible:  # another project's model and no model get the same answer
        raise InvalidRequest(f"The model '{model}' does not exist or you do not have access to it.",
                             param="model", code="model_not_available")
    if row.remote_model is not None or row.path is None:
        raise InvalidRequest(
            f"The model '{model}' was trained at {row.provider or 'a hosted provider'} and its weights are not on this "
            "server, so a job here cannot continue from it.", param="model", code="model_not_available",
        )
    try:
        with blobs.open(f"{row.path}/{MANIFEST}") as file:
            manifest = json.load(file)
    except (FileNotFoundError, ValueError):  # a fake trainer's model: a manifest of its own, no weights
        raise InvalidRequest(f"The model '{model}' has no saved weights to continue from.", param="model",
                             code="model_not_available") from None
    # Anything but full weights is an adapter on the base (QLoRA's too: its adapter goes on the unquantised base).
    full = manifest.get("training_type") == "full"
    return Parent(name=model, base=manifest["base_model"], training_type="full" if full else "lora",
                  path=blobs.workdir(row.path))
