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
from pydantic import Field, SecretStr, model_validator

from ftserve.domain.errors import InvalidFileFormat, InvalidRequest
from ftserve.providers import errors
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Change,
    Connection,
    Estimate,
    JobRequest,
    Options,
    ProviderError,
    ProviderKind,
    ProviderUnsupported,
    RemoteError,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    capabilities_of,
    map_status,
)
from ftserve.providers.plan import Mapped, Plan, dropped, options_of, text_estimate
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

# Axolotl requires a learning rate and has no default to multiply, so OpenAI's 1x is the rate
# commonly used for each kind of run.
BASE_LEARNING_RATE = {"lora": 2e-4, "full": 1e-5}
AXOLOTL_EPOCHS = 1  # Axolotl's num_epochs default
MASK = "***"
HTTP_TIMEOUT_SECONDS = 30.0
# A job's data, queued or running, is deleted this long after submission at most (RunPod's ttl limit).
MAX_TTL_HOURS = 7 * 24
QUEUE_ALLOWANCE_HOURS = 24
WORKER_OUTPUT = "fine-tuning"  # the worker's output dir on the volume: fine-tuning/<run_id> (its utils.py)
WEIGHT_SUFFIXES = (".safetensors", ".bin")

# Axolotl keys that ftserve's fields own: `provider_options.runpod.axolotl` may not set them.
OWNED: dict[str, str] = {
    "base_model": "model",
    "datasets": "training_file",
    "test_datasets": "validation_file",
    "val_set_size": "validation_file",
    "rl": "method",
    "rl_beta": "method.dpo.hyperparameters.beta",
    "num_epochs": "hyperparameters.n_epochs",
    "batch_size": "hyperparameters.batch_size",
    "micro_batch_size": "hyperparameters.batch_size or provider_options.runpod.micro_batch_size",
    "gradient_accumulation_steps": "provider_options.runpod.gradient_accumulation_steps",
    "learning_rate": "hyperparameters.learning_rate_multiplier",
    "seed": "seed",
    "adapter": "ftserve.training_type",
    "lora_r": "ftserve.lora_rank",
    "lora_alpha": "ftserve.lora_alpha",
    "lora_dropout": "ftserve.lora_dropout",
    "lora_target_linear": "provider_options.runpod.lora_target_modules",
    "lora_target_modules": "provider_options.runpod.lora_target_modules",
    "load_in_4bit": "provider_options.runpod.load_in_4bit",
    "lr_scheduler": "provider_options.runpod.lr_scheduler",
    "sequence_len": "ftserve.max_seq_length",
    "warmup_ratio": "ftserve.warmup_ratio",
    "warmup_steps": "ftserve.warmup_ratio",
    "eval_steps": "ftserve.eval_interval",
    "save_steps": "ftserve.checkpoint_interval",
    "hub_model_id": "provider_options.runpod.hub_model_id",
    "wandb_project": "integrations",
    "wandb_name": "integrations",
    "wandb_entity": "integrations",
    "output_dir": "the worker, which writes to fine-tuning/<run_id> on the volume",
    "run_name": "the worker",
    "runpod_job_id": "the worker",
}


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


class RunpodOptions(Options):
    hub_model_id: str | None = None
    """Push the weights to this Hugging Face repo (the connection's hf_token needs write access)."""
    micro_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    lora_target_modules: list[str] | None = None
    """Unset: every linear layer (Axolotl's lora_target_linear)."""
    load_in_4bit: bool | None = None
    """QLoRA: a 4-bit base model under a LoRA adapter."""
    lr_scheduler: str | None = None
    execution_timeout_hours: float = Field(24, gt=0, le=MAX_TTL_HOURS)
    """RunPod stops a request after its endpoint's execution timeout, 10 minutes unless this overrides it."""
    axolotl: dict[str, Any] = Field(default_factory=dict)
    """Further Axolotl config keys, sent as they are; keys ftserve's own fields set are refused."""


# The caller's fields that go to Axolotl under its own names, or nowhere.
COMMON: dict[str, Mapped] = {
    "hyperparameters.n_epochs": Mapped("num_epochs", "Axolotl's name for the epochs"),
    "hyperparameters.beta": Mapped("rl_beta", "Axolotl's name for DPO's beta"),
    "ftserve.max_seq_length": Mapped("sequence_len", "Axolotl's name for the longest sequence in tokens"),
    "ftserve.eval_interval": Mapped("eval_steps", "Axolotl's name for the steps between evaluations"),
    "ftserve.checkpoint_interval": Mapped("save_steps", "Axolotl's name for the steps between checkpoints"),
    "ftserve.warmup_ratio": Mapped("warmup_ratio"),
    "seed": Mapped("seed"),
    "suffix": dropped("the worker names its output by run_id; to name a Hub repo, set provider_options.runpod.hub_model_id"),
    "metadata": dropped("a RunPod request has no metadata"),
}


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
        return capabilities_of(self, methods=("supervised", "dpo"), training_types=("lora", "full"), data="s3",
                               serving="external")

    def list_base_models(self) -> list[BaseModelInfo]:
        # Axolotl trains any causal language model on the Hugging Face Hub; there is no catalogue to list.
        return []

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        if request.method not in ("supervised", "dpo"):
            raise ProviderUnsupported(
                f"RunPod's llm-fine-tuning worker trains supervised and dpo jobs, not {request.method}."
            )
        options = options_of(request, RunpodOptions, self.kind)
        plan = Plan(request, where="input.args.")
        _data(plan, staged)
        _adapter(plan, options)
        plan.map(COMMON)
        _batch(plan, options)
        training_type = request.options.get("training_type", "lora")
        base = BASE_LEARNING_RATE[training_type]
        if plan.learning_rate("learning_rate", base, "Axolotl", f"the usual {training_type} rate, as Axolotl "
                              "has no default:") is None:
            plan.put("learning_rate", base)  # Axolotl requires one
        _wandb(plan, has_key=self.connection.wandb_api_key is not None)
        _provider_options(plan, options)
        run_id = run_id_of(request.job_id)
        plan.put("output_dir", f"{self.connection.volume_mount}/{WORKER_OUTPUT}/{run_id}")
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
            data = _as_axolotl_reads(path, request.method, param)
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


# The Axolotl config, piece by piece.


def _data(plan: Plan, staged: Staged | None) -> None:
    request = plan.request
    plan.put("base_model", request.model)
    plan.put("datasets", [_dataset(request, staged.training if staged else "<training_file>")])
    if request.validation_file is not None:
        path = staged.validation if staged and staged.validation else "<validation_file>"
        # A JSON file loads as one "train" split, which is the split to evaluate on.
        plan.put("test_datasets", [{**_dataset(request, path), "split": "train"}])
    if request.method == "dpo":
        plan.put("rl", "dpo")


def _dataset(request: JobRequest, path: str) -> dict[str, Any]:
    if request.method == "dpo":
        # stage_data lifts each row's input.messages to messages; the outputs keep OpenAI's names.
        return {"path": path, "ds_type": "json", "type": "chat_template.default", "field_messages": "messages",
                "field_chosen": "preferred_output", "field_rejected": "non_preferred_output"}
    return {"path": path, "ds_type": "json", "type": "chat_template", "field_messages": "messages"}


def _adapter(plan: Plan, options: RunpodOptions) -> None:
    given = plan.request.options
    lora = {k: given[k] for k in ("lora_rank", "lora_alpha", "lora_dropout") if k in given}
    if given.get("training_type") == "full":
        if options.load_in_4bit:
            raise InvalidRequest("provider_options.runpod.load_in_4bit trains a QLoRA adapter; "
                                 "it cannot go with ftserve.training_type 'full'.",
                                 param="ftserve.provider_options.runpod.load_in_4bit")
        plan.put("adapter", None, source="ftserve.training_type", given="full",
                 reason="Axolotl runs a full fine-tune when no adapter is set")
        for key, value in lora.items():
            plan.drop(f"ftserve.{key}", value, "a full fine-tune has no LoRA adapter")
        return
    adapter = "qlora" if options.load_in_4bit else "lora"
    if "training_type" in given:
        plan.put("adapter", adapter, source="ftserve.training_type", given="lora",
                 reason="Axolotl's adapter setting" + (" (QLoRA with load_in_4bit)" if adapter == "qlora" else ""))
    else:
        plan.put("adapter", adapter)
    if "lora_rank" in lora:
        plan.put("lora_r", lora["lora_rank"], source="ftserve.lora_rank", given=lora["lora_rank"],
                 reason="Axolotl's name for the LoRA rank")
    for key in ("lora_alpha", "lora_dropout"):
        if key in lora:
            plan.put(key, lora[key])
    if options.lora_target_modules is not None:
        plan.put("lora_target_modules", options.lora_target_modules)
    else:
        plan.put("lora_target_linear", True)
    if options.load_in_4bit:
        plan.put("load_in_4bit", True)


def _batch(plan: Plan, options: RunpodOptions) -> None:
    batch = plan.given("hyperparameters.batch_size")
    accumulation = options.gradient_accumulation_steps
    if batch is None:
        if options.micro_batch_size is not None:
            plan.put("micro_batch_size", options.micro_batch_size)
        if accumulation is not None:
            plan.put("gradient_accumulation_steps", accumulation)
        return
    if options.micro_batch_size is not None:
        raise InvalidRequest(
            "Set either hyperparameters.batch_size or provider_options.runpod.micro_batch_size, not both: "
            "Axolotl's batch is micro_batch_size x gradient_accumulation_steps.",
            param="ftserve.provider_options.runpod.micro_batch_size",
        )
    accumulation = accumulation or 1
    if batch % accumulation:
        raise InvalidRequest(
            f"hyperparameters.batch_size {batch} is not a multiple of "
            f"provider_options.runpod.gradient_accumulation_steps {accumulation}.",
            param="ftserve.provider_options.runpod.gradient_accumulation_steps",
        )
    plan.put("micro_batch_size", batch // accumulation, source="hyperparameters.batch_size", given=batch,
             reason=f"Axolotl's batch is micro_batch_size x gradient_accumulation_steps ({accumulation}) "
                    "on the endpoint's one GPU")
    plan.put("gradient_accumulation_steps", accumulation)


def _wandb(plan: Plan, *, has_key: bool) -> None:
    integrations = plan.request.integrations or []
    for integration in integrations:
        wandb = integration.get("wandb") or {}
        if not has_key:
            raise InvalidRequest("A wandb integration needs the RunPod provider's wandb_api_key, "
                                 "which this server does not configure.", param="integrations")
        settings = {f"wandb_{key}": wandb[key] for key in ("project", "name", "entity") if wandb.get(key)}
        plan.native.update(settings)
        plan.converted.append(Change("integrations", integrations, "input.args.wandb_project", settings,
                                     "Axolotl reports to W&B through its wandb_* settings"))
        if wandb.get("tags"):
            plan.drop("integrations.wandb.tags", wandb["tags"], "Axolotl has no W&B tags setting")


def _provider_options(plan: Plan, options: RunpodOptions) -> None:
    if options.hub_model_id is not None:
        plan.put("hub_model_id", options.hub_model_id)
    if options.lr_scheduler is not None:
        plan.put("lr_scheduler", options.lr_scheduler)
    for key, value in options.axolotl.items():
        if key in OWNED:
            raise InvalidRequest(
                f"provider_options.runpod.axolotl.{key} is set from {OWNED[key]}; set it there instead.",
                param=f"ftserve.provider_options.runpod.axolotl.{key}",
            )
        plan.put(key, value)


def run_id_of(job_id: str) -> str:
    """The worker's run_id for a job: its output folder's name, so only characters safe in a path."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", job_id)


def _as_axolotl_reads(path: Path, method: str, param: str) -> bytes:
    """The file as Axolotl reads it: chat rows as they are; preference rows with input.messages lifted to messages.

    Axolotl's chat_template.default DPO type reads the prompt from a top-level field only.
    """
    data = path.read_bytes()
    if method != "dpo":
        return data
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(json.dumps({"messages": row["input"]["messages"], "preferred_output": row["preferred_output"],
                                    "non_preferred_output": row["non_preferred_output"]}, ensure_ascii=False))
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidFileFormat(f"not an OpenAI preference row ({error})", line=number, param=param) from error
    return ("\n".join(rows) + "\n").encode("utf-8")


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
