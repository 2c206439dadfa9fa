"""The database schema, in SQLAlchemy Core. Alembic migrations under `migrations/` build it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _json() -> sa.JSON:
    # none_as_null: a missing value is SQL NULL, so `metadata=null` filters with IS NULL.
    return sa.JSON(none_as_null=True)


def _seq() -> sa.Column:
    # An increasing integer gives lists a stable order and cursors something to compare.
    return sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True)


files = sa.Table(
    "files",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False, index=True),
    sa.Column("filename", sa.String(1024), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_details", sa.Text),
    sa.Column("format", sa.String(32)),
    sa.Column("examples", sa.Integer),
    sa.Column("storage_key", sa.String(256), nullable=False),
    # The keys besides messages and tools that every example has: what a reinforcement grader's {{item.*}} may name.
    sa.Column("item_fields", _json()),
    sa.Column("estimated_tokens", sa.BigInteger),
)

uploads = sa.Table(
    "uploads",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False, index=True),
    sa.Column("filename", sa.String(1024), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("mime_type", sa.String(256), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("file_expires_after", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("file_id", sa.String(64)),
)

upload_parts = sa.Table(
    "upload_parts",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("upload_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("storage_key", sa.String(256), nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("model", sa.String(512), nullable=False),
    sa.Column("training_file", sa.String(64), nullable=False),
    sa.Column("validation_file", sa.String(64)),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("hyperparameters", _json(), nullable=False),
    sa.Column("method_config", _json(), nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("suffix", sa.String(64)),
    sa.Column("metadata", _json()),
    sa.Column("integrations", _json()),
    sa.Column("extensions", _json(), nullable=False),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("estimated_finish", sa.BigInteger),
    sa.Column("output_model", sa.String(1024), nullable=False),
    sa.Column("fine_tuned_model", sa.String(1024)),
    sa.Column("trained_tokens", sa.BigInteger),
    sa.Column("result_files", _json(), nullable=False),
    sa.Column("error", _json()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("worker_id", sa.String(128)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("request_hash", sa.String(64), index=True),
    sa.Column("idempotency_key", sa.String(256)),
    # Hosted jobs: the configured provider, what it last reported, and when the worker polls it next.
    sa.Column("provider", sa.String(128)),
    sa.Column("remote", _json()),
    sa.Column("poll_at", sa.Float, index=True),
    # Progress, as the lifecycle reads it: resuming a job whose files were never checked checks them first; the
    # first start is not a restart; a worker death counts as an attempt only if that attempt saved no newer state.
    sa.Column("files_validated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("started_at", sa.BigInteger),
    sa.Column("saved_step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempt_saved_step", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("project", "idempotency_key", name="uq_jobs_idempotency_key"),
)

job_events = sa.Table(
    "job_events",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("data", _json()),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("name", sa.String(1024), nullable=False, unique=True),
    sa.Column("step_number", sa.Integer, nullable=False),
    sa.Column("metrics", _json(), nullable=False),
    sa.Column("path", sa.String(1024)),
    sa.Column("remote_model", sa.String(1024)),
)

fine_tuned_models = sa.Table(
    "fine_tuned_models",
    metadata,
    _seq(),
    sa.Column("name", sa.String(1024), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False, index=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("base_model", sa.String(512), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("path", sa.String(1024)),
    # A hosted job's model lives at its provider, under the provider's own id.
    sa.Column("provider", sa.String(128)),
    sa.Column("remote_model", sa.String(1024)),
)

checkpoint_permissions = sa.Table(
    "checkpoint_permissions",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("model_name", sa.String(1024), nullable=False, index=True),
    sa.Column("owner_project", sa.String(128), nullable=False),
    sa.Column("project_id", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("model_name", "project_id", name="uq_permission_model_project"),
)

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False, index=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("event_types", _json(), nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("previous_secret", sa.String(128)),
    sa.Column("previous_secret_until", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# One row per event and endpoint: the outbox the worker delivers from, and the delivery log.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    _seq(),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("endpoint_id", sa.String(64), nullable=False, index=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Due time of the next try; a worker pushes it ahead while it tries, so a crashed worker's try is redone.
    sa.Column("next_attempt_at", sa.Float, index=True),
    # Who holds the try under way: only the holder records its result, so a try that outlived its hold can't undo a later one.
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("last_attempt_at", sa.BigInteger),
    sa.Column("response_status_code", sa.Integer),
    sa.Column("error", sa.Text),
)
