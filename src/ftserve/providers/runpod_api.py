"""RunPod: a fine-tuning job is one request to a serverless endpoint running `runpod-workers/llm-fine-tuning`.

RunPod has no managed fine-tuning API. That worker runs Axolotl on whatever config a request's
`input.args` holds, so the native request here is an Axolotl config. The adapter calls the
endpoint's REST API (`/run`, `/status`, `/cancel`: the paths the `runpod` SDK's `Endpoint` calls)
with httpx rather than through the SDK, which pulls in a web server and an SSH client.

Data goes onto the endpoint's network volume through RunPod's S3-compatible API, and the worker
reads it by path. The worker writes the weights to `fine-tuning/<run_id>` on that volume (and to
the Hugging Face Hub with `hub_model_id`); serving them is yours, e.g. with vLLM.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import httpx
from pydantic import SecretStr, model_validator

from ftserve.providers import errors
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Connection,
    Estimate,
    JobRequest,
    Options,
    ProviderError,
    ProviderKind,
    RemoteError,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    map_status,
    no_reinforcement,
)
from ftserve.providers.plan import options_of, text_estimate
from ftserve.providers.runpod_axolotl import AXOLOTL_EPOCHS, MAX_TTL_HOURS, RunpodOptions, axolotl_args, axolotl_rows
from ftserve.providers.staging import Bucket, digest, stage

# The statuses of a serverless job: runpod/endpoint/helpers.py names the final ones, RunPod's
# "Job states" page adds IN_QUEUE and IN_PROGRESS.
STATUSES: dict[str, RemoteStatus] = {
    "IN_QUEUE": "queued",
    "IN_PROGRESS": "running",
    "COMPLETED": "succeeded",
    "FAILED": "failed",
    # Past the request's executionTimeout or ttl: RunPod stopped it, nobody cancelled it.
    "TIMED_OUT": "failed",
    "CANCELLED": "cancelled",
}

MASK = "***"
HTTP_TIMEOUT_SECONDS = 30.0
QUEUE_ALLOWANCE_HOURS = 24
WORKER_OUTPUT = "fine-tuning"  # the worker's output dir on the volume: fine-tuning/<run_id> (its utils.py)
WEIGHT_SUFFIXES = (".safetensors", ".bin")

class RunpodConnection(Connection):
    api_key: SecretStr
    endpoint_id: str
    """A serverless endpoint running the runpod-workers/llm-fine-tuning image, with a network volume."""
    base_url: str = "https://api.runpod.ai/v2"
    hf_token: SecretStr
    """Required: the worker logs in to the Hugging Face Hub on every job (handler.py) and fails without one."""
    wandb_api_key: SecretStr | None = None
    s3_endpoint_url: str
    """The volume's datacenter S3 API, e.g. https://s3api-eur-is-1.runpod.io."""
    s3_region: str | None = None
    """The datacenter id (EUR-IS-1); read from an s3api-<datacenter>.runpod.io URL when unset."""
    s3_bucket: str
    """The network volume id."""
    s3_access_key_id: str
    s3_secret_access_key: SecretStr
    volume_mount: str = "/runpod-volume"
    """Where the worker mounts the volume (its BASE_VOLUME)."""

    @model_validator(mode="after")
    def _region_known(self) -> RunpodConnection:
        if self.s3_region is None and _datacenter(self.s3_endpoint_url) is None:
            raise ValueError("set s3_region: it cannot be read from s3_endpoint_url")
        return self

    @property
    def region(self) -> str:
        return self.s3_region or _datacenter(self.s3_endpoint_url) or ""


class RunpodProvider:
    kind: ClassVar[ProviderKind] = "runpod"
    Connection = RunpodConnection
    Options = RunpodOptions
    LACKS: ClassVar[dict[str, str]] = {
        "list": "RunPod's serverless API cannot list an endpoint's jobs; ftserve's own job list is the record.",
        "events": "RunPod has no job events; the worker's Axolotl log is in the endpoint's logs in the RunPod "
                  "console, and metrics reach W&B when the job sets a wandb integration.",
        "checkpoints": "RunPod has no checkpoint API; Axolotl writes checkpoint-<step> folders beside the weights.",
        "pause": "RunPod has no pause for a serverless job; cancel it and start a new one.",
        "deploy": "RunPod does not serve what the fine-tuning worker trains; serve the weights yourself "
                  "(e.g. a vLLM worker reading the Hub repo or the volume).",
    }

    def __init__(self, name: str, connection: RunpodConnection, *, client: httpx.Client | None = None,
                 s3: Any = None):
        self.name = name
        self.connection = connection
        self._client = client
        self._s3_client = s3
        self.volume = Bucket(connection.s3_bucket, self._s3)

    # What the provider can do

    def capabilities(self) -> Capabilities:
        return capabilities_of(self, methods=("supervised", "dpo"), training_types=("lora", "qlora", "full"), data="s3",
                               serving="external")

    def list_base_models(self) -> list[BaseModelInfo]:
        # Axolotl trains any causal language model on the Hugging Face Hub; there is no catalogue to list.
        return []

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        if request.method == "reinforcement":
            raise no_reinforcement(
                "RunPod's llm-fine-tuning worker trains supervised and dpo jobs: the Axolotl it runs takes GRPO "
                "rewards only as Python functions installed in its image, which an OpenAI grader cannot become."
            )
        options = options_of(request, RunpodOptions, self.kind)
        run_id = run_id_of(request.job_id)
        plan = axolotl_args(request, options, staged, has_wandb_key=self.connection.wandb_api_key is not None,
                            output_dir=f"{self.connection.volume_mount}/{WORKER_OUTPUT}/{run_id}")
        timeout_hours = options.execution_timeout_hours
        return plan.resolved(self.name, {
            "input": {
                # The worker reads only run_id, credentials and args; these two label the request.
                "user_id": "ftserve",
                "model_id": options.hub_model_id or run_id,
                "run_id": run_id,
                "credentials": self._credentials(masked=True),
                "args": plan.native,
            },
            # ttl counts from submission and deletes a job's data even while it runs, so it covers the run too.
            "policy": {
                "executionTimeout": _ms(timeout_hours),
                "ttl": _ms(min(MAX_TTL_HOURS, timeout_hours + QUEUE_ALLOWANCE_HOURS)),
            },
        })

    def estimate(self, request: JobRequest) -> Estimate:
        return text_estimate(request, AXOLOTL_EPOCHS, "Axolotl", "RunPod bills GPU-seconds and has no estimate API")

    # The job's lifecycle

    def stage_data(self, request: JobRequest) -> Staged:
        def upload(path: Path, param: str) -> str:
            data = axolotl_rows(path, request.method, param)
            key = f"ftserve/{digest(data)}.jsonl"
            self.volume.put_once(key, data)
            return f"{self.connection.volume_mount}/{key}"
        return stage(request, upload)

    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        # RunPod's /run takes no idempotency key: a record on the volume, by run_id, remembers the job.
        run_id = run_id_of(request.job_id)
        earlier = self.volume.read_json(_run_key(run_id))
        if earlier is not None:
            return self.get(earlier["id"])
        native = self.resolve(request, staged).native
        body = {**native, "input": {**native["input"], "credentials": self._credentials(masked=False)}}
        job = _job(self._http("POST", "run", body))
        args = native["input"]["args"]
        record = {"id": job.id, "run_id": run_id, "model": args.get("hub_model_id") or args["output_dir"]}
        self.volume.write_json(_run_key(run_id), record)
        self.volume.write_json(_job_key(job.id), record)
        return job

    def get(self, remote_id: str) -> RemoteJob:
        job = _job(self._http("GET", f"status/{remote_id}"))
        return self._finished(job) if job.status == "succeeded" else job

    def cancel(self, remote_id: str) -> RemoteJob:
        return _job(self._http("POST", f"cancel/{remote_id}"))

    # The pieces

    def _credentials(self, *, masked: bool) -> dict[str, str]:
        # The worker puts both into the environment unconditionally, so both must be strings.
        def shown(secret: SecretStr | None) -> str:
            if secret is None:
                return ""
            return MASK if masked else secret.get_secret_value()
        return {"wandb_api_key": shown(self.connection.wandb_api_key), "hf_token": shown(self.connection.hf_token)}

    def _finished(self, job: RemoteJob) -> RemoteJob:
        """A COMPLETED job with its model, or failed if the worker wrote no weights.

        The worker reports COMPLETED whenever its handler returns, and it does not check Axolotl's exit status.
        """
        record = self.volume.read_json(_job_key(job.id))
        if record is None:  # not submitted by ftserve: no record says where its weights are
            return job
        prefix = f"{WORKER_OUTPUT}/{record['run_id']}/"
        listing = self._s3("list_objects_v2", Bucket=self.connection.s3_bucket, Prefix=prefix, Delimiter="/")
        if not any(item["Key"].endswith(WEIGHT_SUFFIXES) for item in listing.get("Contents", [])):
            return replace(job, status="failed", error=RemoteError(
                "no_weights",
                f"RunPod reports the job COMPLETED, but the worker wrote no weights to "
                f"{self.connection.volume_mount}/{prefix}; Axolotl's error is in the endpoint's logs.",
            ))
        return replace(job, model=record["model"], serving="external")

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.connection.base_url.rstrip('/')}/{self.connection.endpoint_id}/{path}"
        headers = {"Authorization": f"Bearer {self.connection.api_key.get_secret_value()}"}
        if self._client is None:
            self._client = httpx.Client(timeout=HTTP_TIMEOUT_SECONDS)
        who = f"RunPod {method} /{path}"
        with errors.translated(who, errors.http):
            response = self._client.request(method, url, json=body, headers=headers)
        if response.status_code >= 400:
            code = response.status_code
            expired = " (RunPod keeps a job for 30 minutes after it ends)" if code == 404 else ""
            message, _ = errors.body_message(response.content, response.reason_phrase)
            raise errors.answered(who, code, message + expired)
        try:
            payload = response.json()
        except ValueError as error:
            raise ProviderError(f"{who} answered something not JSON: {response.text[:200]}",
                                retryable=True, status=response.status_code) from error
        if not isinstance(payload, dict):
            raise ProviderError(f"{who} answered {payload!r}, not a job")
        return payload

    def _s3(self, operation: str, **params: Any) -> Any:
        with errors.translated(f"RunPod's network volume ({operation})", errors.aws):
            return getattr(self._volume(), operation)(**params)

    def _volume(self) -> Any:
        if self._s3_client is None:
            import boto3  # type: ignore[import-untyped]  # boto3 ships no type hints; heavy, so imported on first use
            from botocore.config import Config  # type: ignore[import-untyped]  # as above

            self._s3_client = boto3.client(
                "s3", endpoint_url=self.connection.s3_endpoint_url, region_name=self.connection.region,
                aws_access_key_id=self.connection.s3_access_key_id,
                aws_secret_access_key=self.connection.s3_secret_access_key.get_secret_value(),
                config=Config(s3={"addressing_style": "path"}),  # the bucket is a volume id, not a host name
            )
        return self._s3_client


def run_id_of(job_id: str) -> str:
    """The worker's run_id for a job: its output folder's name, so only characters safe in a path."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", job_id)


def _job(payload: dict[str, Any]) -> RemoteJob:
    job_id, raw = payload.get("id"), payload.get("status")
    if not isinstance(job_id, str) or not isinstance(raw, str):
        raise ProviderError(f"RunPod answered without a job id and status: {json.dumps(payload)[:300]}")
    status = map_status(STATUSES, raw)
    error = _error(payload, raw) if status == "failed" else None
    return RemoteJob(id=job_id, status=status, provider_status=raw, error=error, raw=payload)


def _error(payload: dict[str, Any], raw: str) -> RemoteError:
    text = payload.get("error")
    if not text:
        return RemoteError(raw.lower(), "RunPod stopped the job at its execution timeout or ttl."
                           if raw == "TIMED_OUT" else f"RunPod reports the job {raw} without a message.")
    # The runpod worker library reports a handler's exception as a JSON string (rp_job.run_job).
    try:
        details = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        details = None
    if isinstance(details, dict) and details.get("error_message"):
        return RemoteError(raw.lower(), str(details["error_message"]))
    return RemoteError(raw.lower(), str(text))


def _datacenter(url: str) -> str | None:
    match = re.fullmatch(r"s3api-([a-z0-9-]+)\.runpod\.io", urlparse(url).hostname or "")
    return match.group(1).upper() if match else None


def _ms(hours: float) -> int:
    return int(hours * 3_600_000)


def _run_key(run_id: str) -> str:
    return f"ftserve/runs/{run_id}.json"


def _job_key(remote_id: str) -> str:
    return f"ftserve/jobs/{remote_id}.json"
