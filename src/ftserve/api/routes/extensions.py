"""ftserve's own endpoints, under `/v1/ftserve`: evaluate a served model, and export one for other servers.

`GET /ftserve/export` answers a GGUF file as itself and a directory (adapter, merged) as a tar
stream written on the fly, so no second copy of the weights is made for a download.
"""


import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from ftserve.engine.export import ExportFormat
from ftserve.schemas import inference as wire
from ftserve.services.exports import ExportService, Quantization
from ftserve.services.inference import InferenceService

CHUNK = 1 << 20


def router(inference: InferenceService, exports: ExportService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(prefix="/ftserve", tags=["ftserve"])
    Project = Annotated[str, Depends(project)]

    @api.post("/evaluations", response_model=wire.Evaluation)
    async def evaluate(body: wire.EvaluationRequest, owner: Project) -> wire.Evaluation:
        """Score a served model on an uploaded file: loss, token accuracy and exact match of greedy answers."""
        scores = await run_in_threadpool(inference.evaluate, owner, body.model, body.file, body.max_examples)
        return wire.Evaluation(
            model=body.model, file=body.file, examples=scores.examples, generated=scores.generated, loss=scores.loss,
            token_accuracy=scores.token_accuracy, exact_match=scores.exact_match,
            preference_accuracy=scores.preference_accuracy,
        )

    @api.get("/export", response_class=StreamingResponse, responses={200: {"content": {
        "application/x-tar": {}, "application/octet-stream": {}}}})
    async def export(
        owner: Project,
        model: Annotated[str, Query(description="A served model: fine-tuned, checkpoint or base.")],
        format: Annotated[ExportFormat, Query(description="adapter (vLLM LoRA), merged (Hugging Face) or gguf (llama.cpp).")],
        quantization: Annotated[Quantization, Query(description="GGUF only.")] = "f16",
        include_embeddings: Annotated[bool, Query(description="Adapter only: keep embedding and output-head weights.")] = False,
    ) -> object:
        """Download a model as a vLLM adapter or merged weights (a tar of the directory) or a GGUF file."""
        path = await run_in_threadpool(exports.export, owner, model, format, quantization, include_embeddings)
        if path.is_file():
            return FileResponse(path, media_type="application/octet-stream", filename=path.name)
        name = f"{path.name}.tar"
        return StreamingResponse(tar_stream(path, path.name), media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return api


def tar_stream(directory: Path, prefix: str) -> Iterator[bytes]:
    """An uncompressed tar of `directory` (safetensors don't compress), read and sent a chunk at a time."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        info = tarfile.TarInfo(f"{prefix}/{path.relative_to(directory).as_posix()}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)

