"""Use cases of ftserve's export extension: a served model as a vLLM adapter, merged weights or GGUF.

Exports are made once and kept under `exports/` in the blob store, so a second download of the
same model and format is a file copy (with an object store, from the local cache or fetched into it once);
deleting the model deletes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from ftserve.catalogue import CatalogueEntry
from ftserve.domain.errors import InvalidRequest
from ftserve.engine.artifacts import ExportFormat, GgufType
from ftserve.files.storage import BlobStore
from ftserve.inference import engine_gateway as engine
from ftserve.inference.pool import ModelPool, Target

Quantization = GgufType


def export_key(model: str) -> str:
    """Where a model's exports live in the blob store."""
    return "exports/" + hashlib.sha256(model.encode()).hexdigest()[:24]


class ExportService:
    def __init__(self, resolve: Callable[[str, str], Target], pool: ModelPool, blobs: BlobStore, catalogue: dict[str, CatalogueEntry]):
        self.resolve = resolve
        self.pool = pool
        self.blobs = blobs
        self.catalogue = catalogue

    def export(self, project: str, model: str, format: ExportFormat, quantization: Quantization = "f16",
               include_embeddings: bool = False) -> Path:
        """The export's path: a directory (adapter, merged) or a file (gguf), made on first request."""
        target = self.resolve(project, model)
        if format == "adapter" and (target.kind != "adapter" or target.artifact is None):
            raise InvalidRequest(
                f"'{model}' has no LoRA adapter ({'it is a base model' if target.kind is None else 'it was fully fine-tuned'}); "
                "export it as merged or gguf.", param="format",
            )
        base_dir = self.pool.base_dir(target.base)
        if format == "adapter":
            name = "adapter-with-embeddings" if include_embeddings else "adapter"
        else:
            name = "merged" if format == "merged" else f"{_file_stem(model)}.{quantization}.gguf"
        key = f"{export_key(model)}/{name}"
        try:
            return self.blobs.local(key)  # made before, here or by another server sharing the store
        except FileNotFoundError:
            pass
        out = self.blobs.workdir(key)
        try:
            if format == "adapter" and target.artifact is not None:
                made = engine.export_adapter(target.artifact, out, include_embeddings=include_embeddings)
            elif format == "merged":
                made = engine.export_merged(base_dir, target.artifact, out)
            else:
                made = engine.export_gguf(
                    base_dir, target.artifact, out, quantization, source_gguf=engine.source_gguf(target.base), name=model,
                )
        except engine.ExportError as error:
            raise InvalidRequest(f"Cannot export '{model}' as {format}: {error}", param="format") from error
        self.blobs.put(made, key, move=True)  # on the local store it was made in place
        return self.blobs.local(key)

    def forget(self, model: str) -> None:
        self.blobs.delete(export_key(model))


def _file_stem(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in model).strip("-")


