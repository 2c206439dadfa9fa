"""Use cases of `/fine_tuning/jobs`: create (retry-safe), read, page, cancel, pause, resume."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa

from ftserve.catalogue import CatalogueEntry
from ftserve.domain.errors import Conflict, InvalidRequest, NotFound, RateLimited
from ftserve.domain.files import StoredFile
from ftserve.domain.ids import new_id
from ftserve.domain.jobs import Checkpoint, Job, JobEvent, JobStatus, MethodType
from ftserve.domain.naming import fine_tuned_name, root_base
from ftserve.schemas.fine_tuning import CreateFineTuningJobRequest, DpoHyperparameters, ReinforcementHyperparameters
from ftserve.services import wandb_runs
from ftserve.services.clock import now
from ftserve.services.files import FINE_TUNE, FileService
from ftserve.services.graders import GraderService
from ftserve.services.lifecycle import Lifecycle
from ftserve.services.providers import Plan, ProviderService
from ftserve.store import events as event_rows
from ftserve.store import files as file_rows
from ftserve.store import jobs as job_rows
from ftserve.store import models as model_rows
from ftserve.store.columns import check_fits
from ftserve.store.pages import Page
from ftserve.store.tables import jobs as job_table

# When none of a project's active jobs has an estimated finish yet, try again after this long.
QUOTA_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class CreateContext:
    """What the transport knows about a create request, for recognising retries."""

    idempotency_key: str | None = None
    retry_count: int = 0


class JobService:
    def __init__(
        self, engine: sa.Engine, files: FileService, catalogue: dict[str, CatalogueEntry], dedup_seconds: float,
        providers: ProviderService, lifecycle: Lifecycle, graders: GraderService, max_active: int = 0,
    ):
        self.engine = engine
        self.lifecycle = lifecycle
        self.files = files
        self.catalogue = catalogue
        self.dedup_seconds = dedup_seconds
        self.providers = providers
        self.graders = graders
        self.max_active = max_active

    def create(self, project: str, request: CreateFineTuningJobRequest, context: CreateContext) -> Job:
        """Create a job, or return the job an earlier attempt of the same request created.

        The SDK retries a POST after a timeout or a 5xx without an idempotency key, so without
        `Idempotency-Key` a retry (x-stainless-retry-count > 0) whose body matches a job created
        within the dedup window gets that job back instead of a second one.
        """
        if context.idempotency_key is not None:
            check_fits(job_table.c.idempotency_key, context.idempotency_key, "Idempotency-Key")
        request_hash = _hash(request)
        with self.engine.connect() as conn:
            if context.idempotency_key is not None:
                found = job_rows.find_by_idempotency_key(conn, project, context.idempotency_key)
                if found:
                    return _same_request(found, request_hash)
            elif context.retry_count > 0:
                found_job = job_rows.find_recent_by_hash(conn, project, request_hash, now() - int(self.dedup_seconds))
                if found_job:
                    return found_job
        job = self._new_job(project, request)
        try:
            with self.engine.begin() as conn:
                self._check_quota(conn, project)
                self._hold_files(conn, job)
                self.lifecycle.create(conn, job, request_hash=request_hash, idempotency_key=context.idempotency_key)
        except sa.exc.IntegrityError:
            # Two requests with one Idempotency-Key raced; the other one's job is the answer.
            with self.engine.connect() as conn:
                found = job_rows.find_by_idempotency_key(conn, project, context.idempotency_key or "")
            if found is None:
                raise
            return _same_request(found, request_hash)
        return job

    def _hold_files(self, conn: sa.Connection, job: Job) -> None:
        """The job's files still exist, and stay until it is in: a file being deleted meanwhile either
        waits for the job (and is then refused as in use) or is gone, and the job is refused."""
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if file_id is not None and file_rows.lock_file(conn, job.project, file_id, shared=True) is None:
                raise InvalidRequest(f"File '{file_id}' does not exist.", param=param, code="file_not_found")

    def preview(self, project: str, request: CreateFineTuningJobRequest) -> Plan:
        """What creating this job would send where, without creating it."""
        return self.providers.plan(self._new_job(project, request, check=False))

    def _new_job(self, project: str, request: CreateFineTuningJobRequest, check: bool = True) -> Job:
        check_fits(job_table.c.model, request.model, "model")
        check_fits(job_table.c.suffix, request.suffix or "", "suffix")
        for key, value in (request.metadata or {}).items():
            check_fits(job_table.c.metadata, key + value, f"metadata.{key}")
        route = self.providers.providers.route(request.model)
        base = self._base_model(project, request.model) if route.name is None else request.model
        if route.name is None and request.ftserve and request.ftserve.provider_options:
            raise InvalidRequest(
                f"ftserve.provider_options apply to hosted providers; {request.model} trains on this server.",
                param="ftserve.provider_options",
            )
        if route.name is None and request.integrations and check:
            problem = wandb_runs.unavailable()
            if problem:
                raise InvalidRequest(f"W&B reporting was asked for, but {problem}.", param="integrations")
        method_type, hyperparameters, method_config = _method(request)
        files = [self._check_file(project, request.training_file, "training_file")]
        if request.validation_file is not None:
            files.append(self._check_file(project, request.validation_file, "validation_file"))
            if request.validation_file == request.training_file:
                raise InvalidRequest("validation_file must differ from training_file.", param="validation_file")
        if method_type == "reinforcement":
            self.graders.check(project, method_config["grader"], item_fields=_item_fields(files),
                               param="method.reinforcement.grader", hosted=route.name is not None)
        job = Job(
            id=new_id("ftjob-"),
            project=project,
            created_at=now(),
            model=request.model,
            training_file=request.training_file,
            validation_file=request.validation_file,
            status=JobStatus.VALIDATING_FILES,
            method=method_type,
            hyperparameters=hyperparameters,
            method_config=method_config,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            suffix=request.suffix,
            metadata=request.metadata,
            integrations=[i.model_dump(mode="json", exclude_none=True) for i in request.integrations]
            if request.integrations is not None
            else None,
            # Only what the caller set: a hosted provider must tell a chosen value from a default.
            extensions=request.ftserve.model_dump(mode="json", exclude_unset=True) if request.ftserve else {},
            output_model=fine_tuned_name(base, project, request.suffix),
            provider=route.name,
        )
        if check:  # what the route cannot honour is refused now, never accepted and ignored
            self.providers.check(job, set(request.model_dump(exclude_unset=True)))
        return job

    def _base_model(self, project: str, model: str) -> str:
        """The base the job's model is named after: `model`, or the root of a fine-tuned model's lineage (a child
        of `ft:X:...` is `ft:X:...` too, as at OpenAI)."""
        if model in self.catalogue:
            return model
        with self.engine.connect() as conn:
            found = model_rows.find_model(conn, model)
            if found and (found.project == project or model_rows.is_shared_with(conn, model, project)):
                return root_base(model)
        known = ", ".join(sorted(self.catalogue))
        raise InvalidRequest(
            f"Model '{model}' is not available for fine-tuning. Base models: {known}; "
            "or one of your fine-tuned models.",
            param="model",
            code="model_not_available",
        )

    def _check_file(self, project: str, file_id: str, param: str) -> StoredFile:
        try:
            record = self.files.get(project, file_id)
        except NotFound:
            raise InvalidRequest(f"File '{file_id}' does not exist.", param=param, code="file_not_found") from None
        if record.purpose != FINE_TUNE:
            raise InvalidRequest(
                f"File '{file_id}' has purpose '{record.purpose}'; fine-tuning needs purpose 'fine-tune'.", param=param
            )
        return record

    def get(self, project: str, job_id: str) -> Job:
        with self.engine.connect() as conn:
            job = job_rows.get(conn, job_id, project)
        if job is None:
            raise NotFound(f"Could not find fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return job

    def list(
        self, project: str, *, after: str | None, limit: int, metadata: dict[str, str] | None, metadata_is_null: bool
    ) -> Page[Job]:
        with self.engine.connect() as conn:
            return job_rows.list_page(
                conn, project, after=after, limit=limit, metadata=metadata, metadata_is_null=metadata_is_null
            )

    def cancel(self, project: str, job_id: str) -> Job:
        """Cancel at once; a worker running the job sees it at its next heartbeat and stops. A hosted job
        is due for a poll at once, which passes the cancel on to its provider."""
        return self._move(project, job_id, JobStatus.CANCELLED, self.lifecycle.cancel)

    def pause(self, project: str, job_id: str) -> Job:
        job = self.get(project, job_id)
        if job.provider is not None and not self.providers.providers.get(job.provider).capabilities().pause:
            raise InvalidRequest(
                f"The provider '{job.provider}' cannot pause jobs; cancel the job instead.",
                param="fine_tuning_job_id", code="unsupported_by_provider",
            )
        return self._move(project, job_id, JobStatus.PAUSED, self.lifecycle.pause, job)

    def resume(self, project: str, job_id: str) -> Job:
        self.get(project, job_id)  # an unknown id is a 404 before it is a 429
        with self.engine.connect() as conn:
            self._check_quota(conn, project)
        return self._move(project, job_id, JobStatus.QUEUED, self.lifecycle.resume)

    def _check_quota(self, conn: sa.Connection, project: str) -> None:
        """Refuse one more active job past the project's quota, saying when a slot is likely to free up."""
        if not self.max_active:
            return
        count, soonest = job_rows.active(conn, project)
        if count >= self.max_active:
            wait = min(60.0, max(1.0, (soonest or 0) - time.time())) if soonest else QUOTA_RETRY_SECONDS
            raise RateLimited(
                f"Project {project} already has {count} active fine-tuning jobs, its limit; "
                "try again when one of them has finished.",
                retry_after=wait, code="too_many_active_jobs",
            )

    def _move(self, project: str, job_id: str, target: JobStatus, verb: Callable[[Job], bool],
              job: Job | None = None) -> Job:
        job = job or self.get(project, job_id)
        if not verb(job):
            current = self.get(project, job_id).status
            raise Conflict(f"Cannot move job {job_id} from {current.value} to {target.value}.", param="fine_tuning_job_id")
        return self.get(project, job.id)

    def events(self, project: str, job_id: str, *, after: str | None, limit: int) -> Page[JobEvent]:
        self.get(project, job_id)
        with self.engine.connect() as conn:
            return event_rows.list_events(conn, job_id, after=after, limit=limit)

    def checkpoints(self, project: str, job_id: str, *, after: str | None, limit: int) -> Page[Checkpoint]:
        self.get(project, job_id)
        with self.engine.connect() as conn:
            return event_rows.list_checkpoints(conn, job_id, after=after, limit=limit)


def _item_fields(files: list[StoredFile]) -> set[str] | None:
    """The fields every item of the job's files has, which a grader's `{{item.<field>}}` may name (the grader
    also grades the validation file's items). None when a file was stored before ftserve recorded them."""
    if any(f.item_fields is None for f in files):
        return None
    return set.intersection(*(set(f.item_fields or ()) for f in files))


def _hash(request: CreateFineTuningJobRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_request(found: tuple[Job, str | None], request_hash: str) -> Job:
    job, stored_hash = found
    if stored_hash != request_hash:
        raise InvalidRequest(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return job


def _method(request: CreateFineTuningJobRequest) -> tuple[MethodType, dict[str, Any], dict[str, Any]]:
    """The method type, its requested hyperparameters, and the rest of its block (the grader)."""
    method = request.method
    if method is None or method.type == "supervised":
        if method is not None and request.hyperparameters is not None and method.supervised is not None:
            if method.supervised.hyperparameters is not None:
                raise InvalidRequest(
                    "Send hyperparameters either at the top level (deprecated) or in method.supervised, not both.",
                    param="hyperparameters",
                )
        block = method.supervised.hyperparameters if method and method.supervised else None
        chosen = block or request.hyperparameters
        hyper = chosen.model_dump() if chosen else {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        return "supervised", hyper, {}
    if request.hyperparameters is not None:
        raise InvalidRequest(
            f"The top-level hyperparameters are for supervised jobs; put them in method.{method.type}.hyperparameters.",
            param="hyperparameters",
        )
    if method.type == "dpo":
        dpo = method.dpo.hyperparameters if method.dpo and method.dpo.hyperparameters else DpoHyperparameters()
        return "dpo", dpo.model_dump(), {}
    if method.reinforcement is None:
        raise InvalidRequest("Reinforcement jobs need method.reinforcement with a grader.", param="method.reinforcement")
    reinforcement = method.reinforcement
    rft = reinforcement.hyperparameters or ReinforcementHyperparameters()
    config = reinforcement.model_dump(mode="json", exclude={"hyperparameters"}, exclude_none=True)
    return "reinforcement", rft.model_dump(), config
