"""Domain records -> OpenAI wire objects."""

from __future__ import annotations

from ftserve.domain.files import StoredFile, Upload
from ftserve.domain.jobs import Checkpoint, Job, JobEvent, JobStatus
from ftserve.schemas import files as wf
from ftserve.schemas import fine_tuning as wj


def file(record: StoredFile) -> wf.OpenAIFile:
    return wf.OpenAIFile(
        id=record.id, bytes=record.bytes, created_at=record.created_at, expires_at=record.expires_at,
        filename=record.filename, purpose=record.purpose, status=record.status,
        status_details=record.status_details,
        ftserve=wf.FtserveFileInfo(format=record.format, examples=record.examples,
                                   estimated_tokens=record.estimated_tokens)
        if record.format is not None and record.examples is not None else None,
    )


def upload(record: Upload, file_record: StoredFile | None = None) -> wf.Upload:
    return wf.Upload(
        id=record.id, created_at=record.created_at, filename=record.filename, bytes=record.bytes,
        purpose=record.purpose, status=record.status, expires_at=record.expires_at,
        file=file(file_record) if file_record else None,
    )


def job(record: Job) -> wj.FineTuningJob:
    hyper = dict(record.hyperparameters)
    method_block = {"hyperparameters": hyper, **record.method_config}
    return wj.FineTuningJob(
        id=record.id,
        created_at=record.created_at,
        error=wj.JobError(code=record.error.code, message=record.error.message, param=record.error.param)
        if record.error
        else None,
        fine_tuned_model=record.fine_tuned_model if record.status == JobStatus.SUCCEEDED else None,
        finished_at=record.finished_at,
        hyperparameters=wj.JobHyperparameters(
            batch_size=hyper.get("batch_size", "auto"),
            learning_rate_multiplier=hyper.get("learning_rate_multiplier", "auto"),
            n_epochs=hyper.get("n_epochs", "auto"),
        ),
        model=record.model,
        organization_id=record.project,
        result_files=record.result_files,
        status=record.status.value,
        trained_tokens=record.trained_tokens,
        training_file=record.training_file,
        validation_file=record.validation_file,
        integrations=record.integrations,
        seed=record.seed,
        estimated_finish=record.estimated_finish if record.status == JobStatus.RUNNING else None,
        method=wj.Method.model_validate({"type": record.method, record.method: method_block}),
        metadata=record.metadata,
        user_provided_suffix=record.suffix,
        ftserve=_extension(record),
    )


def event(record: JobEvent) -> wj.FineTuningJobEvent:
    return wj.FineTuningJobEvent(
        id=record.id, created_at=record.created_at, level=record.level, message=record.message,
        type=record.type, data=record.data if record.data is not None else {},
    )


def checkpoint(record: Checkpoint) -> wj.FineTuningJobCheckpoint:
    return wj.FineTuningJobCheckpoint(
        id=record.id, created_at=record.created_at, fine_tuned_model_checkpoint=record.fine_tuned_model_checkpoint,
        step_number=record.step_number,
        # The spec's metrics only: a reinforcement checkpoint's rewards are in its step's metrics event.
        metrics=wj.CheckpointMetrics(**{k: v for k, v in record.metrics.items() if k in wj.CheckpointMetrics.model_fields}),
        fine_tuning_job_id=record.job_id,
    )


def _extension(record: Job) -> wj.FtserveJobInfo | None:
    if not record.extensions and record.provider is None:
        return None
    info = wj.FtserveJobInfo.model_validate(record.extensions)
    if record.provider is not None:
        remote = record.remote or {}
        info.provider = wj.ProviderState(
            name=record.provider, job_id=remote.get("id"), status=remote.get("status"),
            provider_status=remote.get("provider_status"), fine_tuned_model=remote.get("model"),
            serving=remote.get("serving"),
        )
    return info
