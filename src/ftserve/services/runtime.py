"""The composition root: one database engine, one blob store and the services over them, built from Settings."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from ftserve import testing
from ftserve.catalogue import load_catalogue
from ftserve.config import Settings, TrainerName
from ftserve.domain.webhook_targets import Allow
from ftserve.domain.webhooks import Retry
from ftserve.files.storage import BlobStore, LocalBlobStore
from ftserve.files.workspace import Workspace
from ftserve.graders import PythonLimits
from ftserve.inference.interface import Engine
from ftserve.inference.pool import ModelPool
from ftserve.inference.transformers_engine import TransformersEngine
from ftserve.inference.vllm_engine import VllmEngine
from ftserve.inference.vllm_server import VllmOptions
from ftserve.metrics import Metrics
from ftserve.providers.base import Trainer
from ftserve.providers.local import LocalTrainer
from ftserve.providers.ray_executor import RayTrainer
from ftserve.providers.registry import providers_for
from ftserve.services.embeddings import Embedder
from ftserve.services.exports import ExportService
from ftserve.services.files import FileService
from ftserve.services.graders import GraderService, GraderSettings
from ftserve.services.inference import InferenceService, Limits, resolver
from ftserve.services.jobs import JobService
from ftserve.services.lifecycle import Lifecycle
from ftserve.services.models import ModelService
from ftserve.services.providers import ProviderService
from ftserve.services.webhooks import Sending, WebhookService
from ftserve.store.database import create_engine, migrate

# What trains a worker's local jobs, by FTSERVE_TRAINER. The fakes live in `testing` and are wired in
# here, at the root, so that nothing below it depends on them.
TRAINERS: dict[TrainerName, Callable[[Settings], Trainer]] = {
    "local": lambda settings: engine_trainer(settings, "ftserve.engine"),
    "fake": lambda settings: testing.FakeTrainer(step_seconds=settings.fake_step_seconds),
    # The local trainer's process and protocol, around an engine that fakes the training (crash tests).
    "fake-engine": lambda settings: engine_trainer(settings, "ftserve.testing_engine"),
}


def engine_trainer(settings: Settings, module: str) -> Trainer:
    """The engine `module` run by the worker's executor: a child process, or an actor on a Ray cluster."""
    if settings.executor == "ray":
        # Without an object store the nodes must see the data dir at the same path (one machine, a shared mount).
        staging = Workspace(blob_store(settings)) if settings.blob_store == "s3" else None
        return RayTrainer(settings.ray_address, staging, engine_module=module)
    return local_trainer(settings, module)


def local_trainer(settings: Settings, module: str) -> LocalTrainer:
    """The engine `module` in a child process. With an object store it works in a scratch dir of its own,
    its files fetched and what it saves stored through the store."""
    if settings.blob_store == "s3":
        return LocalTrainer(engine_module=module, staging=Workspace(blob_store(settings), on_worker=True),
                            scratch_dir=settings.resolved_blob_cache_dir / "runs")
    return LocalTrainer(engine_module=module)


def blob_store(settings: Settings) -> BlobStore:
    """The data dir's `blobs`, or the S3-compatible store the settings name (docs/storage.md)."""
    if settings.blob_store == "local":
        return LocalBlobStore(settings.data_dir / "blobs")
    from ftserve.files.s3_store import S3BlobStore, S3Location  # boto3, installed with the `cluster` extra

    assert settings.s3_bucket is not None  # Settings refuses s3 without a bucket
    secret = settings.s3_secret_access_key
    return S3BlobStore(S3Location(
        bucket=settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None,
        secret_access_key=secret.get_secret_value() if secret else None,
    ), settings.resolved_blob_cache_dir)


def generation_engine(settings: Settings, pool: ModelPool) -> Engine:
    """vLLM where it is installed (or asked for), the transformers loop otherwise."""
    python = settings.resolved_vllm_python
    if settings.inference_engine == "transformers" or (settings.inference_engine == "auto" and python is None):
        return TransformersEngine(pool)
    if python is None:
        raise ValueError("FTSERVE_INFERENCE_ENGINE=vllm, but no vLLM was found: install it (make install does, into "
                         ".venv-vllm) or set FTSERVE_VLLM_PYTHON to the interpreter of a virtualenv that has it.")
    options = VllmOptions(
        python=python, log_dir=settings.data_dir.resolve() / "logs", max_batch=settings.vllm_max_batch,
        max_loras=settings.vllm_max_loras, max_lora_rank=settings.vllm_max_lora_rank,
        kv_cache_gb=settings.vllm_kv_cache_gb, idle_seconds=settings.vllm_idle_seconds,
        start_timeout=settings.vllm_start_timeout_seconds, extra_args=tuple(shlex.split(settings.vllm_args)),
    )
    return VllmEngine(options, pool.base_dir)


def grader_settings(settings: Settings) -> GraderSettings:
    python = PythonLimits(enabled=settings.python_graders, cpu_seconds=settings.python_grader_cpu_seconds,
                          wall_seconds=settings.python_grader_wall_seconds, memory_mb=settings.python_grader_memory_mb)
    model = settings.grader_embeddings_model
    return GraderSettings(python, Embedder(model, settings.device) if model is not None else None)


def trainer_for(settings: Settings) -> Trainer | None:
    """The worker's trainer for local jobs (None: this worker runs hosted jobs only)."""
    return TRAINERS[settings.trainer](settings) if settings.trainer else None


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: sa.Engine
    blobs: BlobStore
    files: FileService
    jobs: JobService
    models: ModelService
    inference: InferenceService
    graders: GraderService
    exports: ExportService
    providers: ProviderService
    webhooks: WebhookService
    metrics: Metrics


def build(settings: Settings) -> Runtime:
    """Open (and migrate) the database and wire the services. Call once per process."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    migrate(engine)
    blobs = blob_store(settings)
    catalogue = load_catalogue(settings.catalogue_file)
    files = FileService(engine, blobs, settings.max_file_bytes, max_line_bytes=settings.max_line_bytes,
                        storage_quota=settings.project_storage_bytes)
    models = ModelService(engine, blobs, catalogue)
    pool = ModelPool(settings.resolved_models_dir, settings.device, settings.inference_cache_mb << 20)
    resolve = resolver(catalogue, models.artifact)
    exports = ExportService(resolve, pool, blobs, catalogue)
    generator = generation_engine(settings, pool)
    models.on_delete += [pool.evict, generator.forget, exports.forget]
    providers = ProviderService(providers_for(settings, catalogue), files, blobs, engine)
    inference = InferenceService(resolve, pool, generator, files, blobs, Limits(
        settings.inference_max_tokens, settings.inference_max_choices, settings.inference_max_prompt_bytes,
        settings.inference_max_per_project, settings.inference_max_queue),
        slots=settings.vllm_max_batch if generator.name == "vllm" else 1)
    graders = GraderService(inference, providers.providers.hosted, grader_settings(settings))
    return Runtime(
        settings=settings,
        engine=engine,
        blobs=blobs,
        files=files,
        jobs=JobService(engine, files, catalogue, settings.create_dedup_seconds, providers,
                        Lifecycle(engine, settings.max_attempts), graders, settings.max_active_jobs),
        models=models,
        inference=inference,
        graders=graders,
        exports=exports,
        providers=providers,
        webhooks=WebhookService(engine, Retry(settings.webhook_retry_seconds, give_up=settings.webhook_give_up_seconds),
                                Sending(settings.webhook_timeout_seconds, settings.webhook_senders,
                                        settings.webhook_endpoint_concurrency, Allow.parse(settings.webhook_allow))),
        metrics=Metrics(),
    )
