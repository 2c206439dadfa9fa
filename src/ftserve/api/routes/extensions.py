"""ftserve's own endpoints, under `/v1/ftserve`: evaluate a served model, export one for other servers,
dry-run a job on its provider, list the providers, and deploy a hosted model.

`GET /ftserve/export` answers a GGUF file as itself and a directory (adapter, merged) as a tar
stream written on the fly, so no second copy of the weights is made for a download.
"""


import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from ftserve.schemas import fine_tuning as jobs_wire
from ftserve.schemas import inference as wire
from ftserve.schemas import providers as providers_wire
from ftserve.services.exports import ExportFormat, ExportService, Quantization
from ftserve.services.inference import InferenceService
from ftserve.services.jobs import JobService
from ftserve.services.models import ModelService
from ftserve.services.providers import ProviderService

CHUNK = 1 << 20


def router(
    inference: InferenceService, exports: ExportService, jobs: JobService, models: ModelService,
    providers: ProviderService, project: Callable[..., str],
) -> APIRouter:
    api = APIRouter(prefix="/ftserve", tags=["ftserve"])
    Project = Annotated[str, Depends(project)]

    @api.post("/fine_tuning/resolve", response_model=providers_wire.Resolution)
    async def resolve(body: jobs_wire.CreateFineTuningJobRequest, owner: Project) -> providers_wire.Resolution:
        """Dry-run a job create: the provider's native request, every converted and dropped parameter, an estimate."""
        plan = await run_in_threadpool(jobs.preview, owner, body)
        return providers_wire.Resolution(
            provider=plan.resolved.provider, kind=plan.route.provider.kind, model=plan.route.model,
            native=plan.resolved.native,
            converted=[providers_wire.ParameterChange(**asdict(c)) for c in plan.resolved.converted],
            dropped=[providers_wire.ParameterChange(**asdict(c)) for c in plan.resolved.dropped],
            estimate=providers_wire.JobEstimate(**asdict(plan.estimate)) if plan.estimate else None,
        )

    @api.get("/providers", response_model=providers_wire.ProviderList)
    async def list_providers(owner: Project) -> providers_wire.ProviderList:
        """Where jobs can run: this server, and each configured hosted provider with what it can do."""
        return providers_wire.ProviderList(data=[
            providers_wire.ProviderObject(
                name=info.name, kind=info.kind,
                capabilities=providers_wire.ProviderCapabilities(**{
                    key: list(value) if isinstance(value, tuple) else value
                    for key, value in asdict(info.capabilities).items()
                }),
            ) for info in providers.list()
        ])

    @api.get("/providers/{name}/models", response_model=providers_wire.ProviderModelList)
    async def provider_models(name: str, owner: Project) -> providers_wire.ProviderModelList:
        """The base models a provider fine-tunes, as it lists them."""
        found = await run_in_threadpool(providers.base_models, name)
        return providers_wire.ProviderModelList(data=[
            providers_wire.ProviderModel(id=m.id, methods=list(m.methods), context_length=m.context_length) for m in found
        ])

    @api.post("/deployments", response_model=providers_wire.DeploymentObject)
    async def deploy(body: providers_wire.DeploymentRequest, owner: Project) -> providers_wire.DeploymentObject:
        """Make a hosted model callable at its provider. This is the provider's billed step, so it is never automatic."""
        hosted = models.hosted(owner, body.model)
        deployment = await run_in_threadpool(providers.deploy, hosted.provider, hosted.remote_model, body.model)
        return providers_wire.DeploymentObject(
            id=deployment.id, model=body.model, provider=hosted.provider or "", provider_model=deployment.model,
            status=deployment.status,
        )

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

