"""The FastAPI application: OpenAI's fine-tuning surface under `/v1`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext

from fastapi import FastAPI

from ftserve import __version__, dashboard
from ftserve.api import errors
from ftserve.api.auth import metrics_guard, project_resolver
from ftserve.api.limits import MULTIPART_FRAMING, BodyLimit, RateLimiter
from ftserve.api.metrics import Observed, expose
from ftserve.api.middleware import RequestId
from ftserve.api.open_server import OpenServerGuard
from ftserve.api.openapi import openai_style
from ftserve.api.routes import extensions, files, fine_tuning, graders, inference, models, webhooks
from ftserve.domain.files import MAX_PART_BYTES
from ftserve.services.runtime import Runtime


def create_app(runtime: Runtime, *, beside: AbstractContextManager[object] | None = None) -> FastAPI:
    """The API over `runtime`. `beside` (the server command passes an embedded worker) is entered when
    the server starts and left when it stops, so whatever runs beside the API lives exactly as long."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            with beside or nullcontext():
                yield
        finally:
            runtime.inference.engine.close()  # the vLLM servers it started stop with the API

    app = FastAPI(title="ftserve", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    errors.install(app)
    settings = runtime.settings
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes, overrides=[
        ("POST", "/v1/files", settings.max_file_bytes + MULTIPART_FRAMING,
         f"File is larger than {settings.max_file_bytes} bytes. Larger files go through /v1/uploads in parts."),
        ("POST", "/v1/uploads/[^/]+/parts", MAX_PART_BYTES + MULTIPART_FRAMING,
         f"A part can hold at most {MAX_PART_BYTES} bytes."),
    ])
    if not settings.api_keys:
        app.add_middleware(OpenServerGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(Observed, seconds=runtime.metrics.http_seconds)  # inside RequestId: its log line has the id
    app.add_middleware(RequestId)
    limiter = RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
    failures = RateLimiter(settings.auth_failures_per_minute)  # wrong keys per client, for every key the server checks
    project = project_resolver(settings.api_keys, limiter, failures)
    app.include_router(files.router(runtime.files, project), prefix="/v1")
    app.include_router(fine_tuning.router(runtime.jobs, runtime.models, project), prefix="/v1")
    app.include_router(graders.router(runtime.graders, project), prefix="/v1")
    app.include_router(models.router(runtime.models, project), prefix="/v1")
    app.include_router(inference.router(runtime.inference, project), prefix="/v1")
    app.include_router(extensions.router(
        runtime.inference, runtime.exports, runtime.jobs, runtime.models, runtime.providers, project,
    ), prefix="/v1")
    app.include_router(webhooks.router(runtime.webhooks, project), prefix="/v1")

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if settings.metrics:
        expose(app, runtime.metrics, runtime.engine,
               metrics_guard(settings.metrics_key, failures) if settings.api_keys else None)

    dashboard.mount(app)
    openai_style(app)
    return app
