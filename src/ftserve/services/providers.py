"""Use cases that reach past this server: plan a job on its provider, list providers, deploy a hosted model.

`plan` is the dry run behind job creation and `POST /ftserve/fine_tuning/resolve`: where the job
runs, the exact native request, every converted and dropped parameter, and an estimate. A hosted
job is refused when the provider would drop something the caller set; silently training with
different settings is the failure this contract exists to prevent.

A provider account is the operator's, shared by every tenant: a tenant's options block holds only the
options its adapter lists as the tenant's (`Options.TENANT`), and an option naming a job or model in
that account (`Options.REFERENCES`) only one this project made, as its own rows show. The operator's
options (the provider configuration's `options`) apply to every job, under the tenant's.
"""

from __future__ import annotations

import builtins  # the service's own `list` method shadows the type inside its class
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from ftserve.domain.errors import InvalidRequest, NotFound
from ftserve.domain.jobs import Job
from ftserve.files.storage import BlobStore
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Deployable,
    Deployment,
    Estimate,
    JobRequest,
    Options,
    Parent,
    Provider,
    ProviderUnsupported,
    Reference,
    Resolved,
    lacking,
)
from ftserve.providers.registry import HOSTED, Providers, Route
from ftserve.services.files import FileService
from ftserve.services.lineage import parent_of
from ftserve.store import provider_resources


@dataclass(frozen=True)
class Plan:
    route: Route
    request: JobRequest
    resolved: Resolved
    estimate: Estimate | None
    """Left out where only the native request matters: an estimate may ask the provider, which takes time."""


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    kind: str
    capabilities: Capabilities


def job_request(job: Job, route: Route, files: FileService, blobs: BlobStore, parent: Parent | None = None) -> JobRequest:
    """A job as its provider sees it: files on local disk (copies, with an object store), `ftserve` split into
    common options and the provider's own options block; `parent`, the fine-tuned model its `model` names."""
    training = files.get(job.project, job.training_file)
    validation = files.get(job.project, job.validation_file) if job.validation_file else None
    options = dict(job.extensions)
    provider_options = options.pop("provider_options", None) or {}
    return JobRequest(
        job_id=job.id, model=route.model, method=job.method, hyperparameters=job.hyperparameters,
        method_config=job.method_config, seed=job.seed, suffix=job.suffix, metadata=job.metadata,
        integrations=job.integrations, options=options,
        provider_options=merged(route.options, provider_block(route.provider, provider_options)),
        training_file=blobs.local(training.storage_key), training_examples=training.examples or 0,
        training_tokens=training.estimated_tokens,
        validation_file=blobs.local(validation.storage_key) if validation else None,
        validation_examples=validation.examples or 0 if validation else 0,
        output_dir=blobs.workdir(f"artifacts/{job.id}"), parent=parent,
    )


def provider_block(provider: Provider, options: dict[str, Any]) -> dict[str, Any]:
    """The options block for `provider` out of `ftserve.provider_options`; unknown kinds are refused."""
    unknown = sorted(set(options) - set(HOSTED))
    if unknown:
        raise InvalidRequest(
            f"ftserve.provider_options has no provider kind {', '.join(map(repr, unknown))}; "
            f"kinds are {', '.join(HOSTED)}.", param=f"ftserve.provider_options.{unknown[0]}",
        )
    block = options.get(provider.kind, {})
    allowed: type[Options] | None = getattr(provider, "Options", None)
    if allowed is not None and isinstance(block, dict):
        _tenant_only(provider.kind, allowed, block)
    return block


def _tenant_only(kind: str, options: type[Options], block: dict[str, Any]) -> None:
    """Refuses an option the tenant may not set: one of the operator's, or a free-form key not on the list."""
    for key, value in block.items():
        where = f"ftserve.provider_options.{kind}.{key}"
        if key not in options.model_fields or key in options.REFERENCES:
            continue  # an unknown key is refused by the options' validation; a reference by `_owned`
        if key not in options.TENANT:
            raise _operators(where)
        keys = options.TENANT_KEYS.get(key)
        if keys is not None and isinstance(value, dict):
            for inner in value:
                if inner not in keys:
                    raise _operators(f"{where}.{inner}", f" (a tenant may set {', '.join(sorted(keys))})")


def _operators(where: str, allowed: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"{where} is an operator setting: it reaches the provider account this server shares between projects, "
        f"so only the server's operator sets it, in the provider's configuration (options){allowed}.", param=where,
    )


def merged(operator: Mapping[str, Any], tenant: dict[str, Any]) -> dict[str, Any]:
    """The tenant's options over the operator's; an object both set (RunPod's `axolotl`) is merged key by key."""
    result = {**operator, **tenant}
    for key, value in tenant.items():
        if isinstance(value, dict) and isinstance(operator.get(key), dict):
            result[key] = {**operator[key], **value}
    return result


class ProviderService:
    def __init__(self, providers: Providers, files: FileService, blobs: BlobStore, engine: sa.Engine | None = None):
        self.providers = providers
        self.files = files
        self.blobs = blobs
        self.engine = engine
        """Where a tenant's jobs and models are recorded; without it, no option may name one."""

    def plan(self, job: Job, *, estimate: bool = True) -> Plan:
        """Resolve and estimate `job` (not yet stored) on the provider its model routes to."""
        route = self.providers.route(job.model)
        parent = parent_of(self.engine, self.blobs, job.project, job.model) if self.engine and route.name is None else None
        request = job_request(job, route, self.files, self.blobs, parent)
        if route.name is not None:
            self._owned(job, route)
        try:
            if route.name is not None:
                route.provider.Options.model_validate(request.provider_options)  # type: ignore[attr-defined]  # hosted adapters declare Options
            resolved = route.provider.resolve(request)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidRequest(
                f"ftserve.provider_options.{route.provider.kind}.{where}: {first['msg']}",
                param=f"ftserve.provider_options.{route.provider.kind}.{where}",
            ) from None
        except ProviderUnsupported as error:
            raise InvalidRequest(error.message, param=error.param or "model", code=error.code) from None
        return Plan(route, request, resolved, route.provider.estimate(request) if estimate else None)

    def _owned(self, job: Job, route: Route) -> None:
        """Refuses a tenant's option naming a provider-side job or model its project did not make there.

        Another project's resource and one that does not exist get the same answer, so the refusal tells
        nothing of what other tenants have.
        """
        assert route.name is not None
        options: type[Options] | None = getattr(route.provider, "Options", None)
        block = (job.extensions.get("provider_options") or {}).get(route.provider.kind) or {}
        if options is None or not isinstance(block, dict):
            return
        for key, reference in options.REFERENCES.items():
            value = block.get(key)
            if not isinstance(value, str):
                continue  # absent, or of a type the options' validation refuses
            if not self._made(job.project, route.name, value, reference):
                where = f"ftserve.provider_options.{route.provider.kind}.{key}"
                raise InvalidRequest(
                    f"{where}: {value!r} is not a {reference.what} that a job of this project made at {route.name}; "
                    "only those may be named here.",
                    param=where,
                )

    def _made(self, project: str, provider: str, value: str, reference: Reference) -> bool:
        if self.engine is None:
            return False
        names = [value]
        head, colon, step = value.rpartition(":")
        if reference.step and colon and step.isdigit():
            names.append(head)
        with self.engine.connect() as conn:
            return any(
                (reference.jobs and provider_resources.made_job(conn, project, provider, name))
                or (reference.models and provider_resources.made_model(conn, project, provider, name))
                for name in names
            )

    def check(self, job: Job, explicit: set[str]) -> Plan:
        """The plan of a hosted job about to be created, refused if it would drop a parameter the caller set."""
        plan = self.plan(job, estimate=False)
        # Metadata is kept on this server's job whatever the provider does with it.
        lost = [change for change in plan.resolved.dropped
                if change.field.split(".")[0] in explicit and change.field != "metadata"]
        if lost:
            first = lost[0]
            names = ", ".join(change.field for change in lost)
            raise InvalidRequest(
                f"{plan.route.name} cannot honour {names}: {first.reason}. Remove {'it' if len(lost) == 1 else 'them'}, "
                f"or see POST /v1/ftserve/fine_tuning/resolve for how this job maps onto {plan.route.name}.",
                param=first.field, code="unsupported_by_provider",
            )
        return plan

    def list(self) -> list[ProviderInfo]:
        providers: list[Provider] = [self.providers.local, *self.providers.hosted.values()]
        return [ProviderInfo(p.name, p.kind, p.capabilities()) for p in providers]

    def base_models(self, name: str) -> builtins.list[BaseModelInfo]:
        """The models a provider trains, as it lists them (`local`: the catalogue)."""
        provider: Provider = self.providers.local if name == "local" else self.providers.get(name, param="name")
        return provider.list_base_models()

    def deploy(self, provider: str | None, remote_model: str | None, name: str) -> Deployment:
        if provider is None or remote_model is None:
            raise InvalidRequest(f"'{name}' is served by this server already; only hosted models are deployed.",
                                 param="model")
        hosted = self.providers.hosted.get(provider)
        if hosted is None:
            raise NotFound(f"'{name}' lives at the provider '{provider}', which this server no longer configures.",
                           param="model")
        try:
            if not isinstance(hosted, Deployable):
                raise lacking(hosted, "deploy")
            return hosted.deploy(remote_model)
        except ProviderUnsupported as error:
            raise InvalidRequest(error.message, param="model", code=error.code) from None
