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

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import httpx
from pydantic import Field, SecretStr, ValidationError, model_validator

from ftserve.domain.errors import InvalidFileFormat, InvalidRequest
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Change,
    Connection,
    Deployment,
    Estimate,
    JobRequest,
    Options,
    ProviderError,
    ProviderKind,
    ProviderUnsupported,
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteJob,
    RemoteStatus,
    Resolved,
    Staged,
    chosen,
    map_status,
    tokens_of,
)

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


class RunpodProvider:
    kind: ClassVar[ProviderKind] = "runpod"
    Connection = RunpodConnection
    Options = RunpodOptions

    def __init__(self, name: str, connection: RunpodConnection, *, client: httpx.Client | None = None,
                 s3: Any = None):
        self.name = name
        self.connection = connection
        self._client = client
        self._s3_client = s3

    # What the provider can do

    def capabilities(self) -> Capabilities:
        return Capabilities(methods=("supervised", "dpo"), training_types=("lora", "full"), data="s3",
                            serving="external")

    def list_base_models(self) -> list[BaseModelInfo]:
        # Axolotl trains any causal language model on the Hugging Face Hub; there is no catalogue to list.
        return []

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        if request.method not in ("supervised", "dpo"):
            raise ProviderUnsupported(
                f"RunPod's llm-fine-tuning worker trains supervised and dpo jobs, not {request.method}."
            )
        options = self._options(request)
        plan = _Plan(request, options)
        plan.data(staged)
        plan.adapter()
        plan.hyperparameters()
        plan.common_options()
        plan.openai_fields(has_wandb_key=self.connection.wandb_api_key is not None)
        plan.provider_options()
        run_id = run_id_of(request.job_id)
        plan.args["output_dir"] = f"{self.connection.volume_mount}/{WORKER_OUTPUT}/{run_id}"
        timeout_hours = options.execution_timeout_hours
        native = {
            "input": {
                # The worker reads only run_id, credentials and args; these two label the request.
                "user_id": "ftserve",
                "model_id": options.hub_model_id or run_id,
                "run_id": run_id,
                "credentials": self._credentials(masked=True),
                "args": plan.args,
            },
            # ttl counts from submission and deletes a job's data even while it runs, so it covers the run too.
            "policy": {
                "executionTimeout": _ms(timeout_hours),
                "ttl": _ms(min(MAX_TTL_HOURS, timeout_hours + QUEUE_ALLOWANCE_HOURS)),
            },
        }
        return Resolved(provider=self.name, native=native, converted=plan.converted, dropped=plan.dropped)

    def estimate(self, request: JobRequest) -> Estimate:
        epochs = chosen(request, "n_epochs")
        basis = "the training file at about 4 characters per token"
        if epochs is None:
            epochs, basis = AXOLOTL_EPOCHS, basis + ", for Axolotl's default of 1 epoch"
        return Estimate(
            trained_tokens=tokens_of(request.training_file) * int(epochs), epochs=int(epochs),
            basis=basis + "; RunPod bills GPU-seconds and has no estimate API",
        )

    # The job's lifecycle

    def stage_data(self, request: JobRequest) -> Staged:
        training = self._upload(_as_axolotl_reads(request.training_file, request.method, "training_file"))
        validation = None
        if request.validation_file is not None:
            validation = self._upload(_as_axolotl_reads(request.validation_file, request.method, "validation_file"))
        return Staged(training=training, validation=validation)

    def submit(self, request: JobRequest, staged: Staged) -> RemoteJob:
        # RunPod's /run takes no idempotency key: a record on the volume, by run_id, remembers the job.
        run_id = run_id_of(request.job_id)
        earlier = self._read_record(_run_key(run_id))
        if earlier is not None:
            return self.get(earlier["id"])
        native = self.resolve(request, staged).native
        body = {**native, "input": {**native["input"], "credentials": self._credentials(masked=False)}}
        job = _job(self._http("POST", "run", body))
        args = native["input"]["args"]
        record = {"id": job.id, "run_id": run_id, "model": args.get("hub_model_id") or args["output_dir"]}
        self._write_record(_run_key(run_id), record)
        self._write_record(_job_key(job.id), record)
        return job

    def get(self, remote_id: str) -> RemoteJob:
        job = _job(self._http("GET", f"status/{remote_id}"))
        return self._finished(job) if job.status == "succeeded" else job

    def list(self, limit: int = 20) -> list[RemoteJob]:
        raise ProviderUnsupported(
            "RunPod's serverless API cannot list an endpoint's jobs; ftserve's own job list is the record."
        )

    def cancel(self, remote_id: str) -> RemoteJob:
        return _job(self._http("POST", f"cancel/{remote_id}"))

    def events(self, remote_id: str, after: str | None = None) -> list[RemoteEvent]:
        raise ProviderUnsupported(
            "RunPod has no job events; the worker's Axolotl log is in the endpoint's logs in the RunPod console, "
            "and metrics reach W&B when the job sets a wandb integration."
        )

    def checkpoints(self, remote_id: str) -> list[RemoteCheckpoint]:
        raise ProviderUnsupported(
            "RunPod has no checkpoint API; Axolotl writes checkpoint-<step> folders beside the weights on the volume."
        )

    def pause(self, remote_id: str) -> RemoteJob:
        raise ProviderUnsupported("RunPod has no pause for a serverless job; cancel it and start a new one.")

    def resume(self, remote_id: str) -> RemoteJob:
        raise ProviderUnsupported("RunPod has no resume for a serverless job; cancel it and start a new one.")

    def deploy(self, model: str) -> Deployment:
        raise ProviderUnsupported(
            "RunPod does not serve what the fine-tuning worker trains; serve the weights yourself "
            "(e.g. a vLLM worker reading the Hub repo or the volume)."
        )

    # The pieces

    def _options(self, request: JobRequest) -> RunpodOptions:
        try:
            return RunpodOptions.model_validate(request.provider_options)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidRequest(f"ftserve.provider_options.runpod.{where}: {first['msg']}",
                                 param=f"ftserve.provider_options.runpod.{where}") from error

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
        record = self._read_record(_job_key(job.id))
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
        try:
            response = self._client.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise ProviderError(f"RunPod did not answer {method} /{path}: {error}",
                                retryable=isinstance(error, httpx.TransportError)) from error
        if response.status_code >= 400:
            code = response.status_code
            expired = " (RunPod keeps a job for 30 minutes after it ends)" if code == 404 else ""
            raise ProviderError(f"RunPod answered {method} /{path} with {code}: {_message(response)}{expired}",
                                retryable=code in (408, 429) or code >= 500, status=code)
        try:
            payload = response.json()
        except ValueError as error:
            raise ProviderError(f"RunPod answered {method} /{path} with something not JSON: {response.text[:200]}",
                                retryable=True, status=response.status_code) from error
        if not isinstance(payload, dict):
            raise ProviderError(f"RunPod answered {method} /{path} with {payload!r}, not a job")
        return payload

    def _upload(self, data: bytes) -> str:
        """The volume path of `data`, uploaded under its hash unless the volume has it already."""
        key = f"ftserve/{hashlib.sha256(data).hexdigest()}.jsonl"
        try:
            self._s3("head_object", Bucket=self.connection.s3_bucket, Key=key)
        except ProviderError as error:
            if error.status != 404:
                raise
            self._s3("put_object", Bucket=self.connection.s3_bucket, Key=key, Body=data)
        return f"{self.connection.volume_mount}/{key}"

    def _read_record(self, key: str) -> dict[str, Any] | None:
        try:
            answer = self._s3("get_object", Bucket=self.connection.s3_bucket, Key=key)
        except ProviderError as error:
            if error.status == 404:
                return None
            raise
        return json.loads(answer["Body"].read())

    def _write_record(self, key: str, record: dict[str, Any]) -> None:
        self._s3("put_object", Bucket=self.connection.s3_bucket, Key=key, Body=json.dumps(record).encode(),
                 ContentType="application/json")

    def _s3(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # boto3 is heavy, and needed only here

        try:
            return getattr(self._volume(), operation)(**params)
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            details = error.response.get("Error", {})
            raise ProviderError(
                f"RunPod's network volume refused {operation}: {details.get('Message') or details.get('Code')}",
                retryable=status is not None and (status == 429 or status >= 500), status=status,
            ) from error
        except BotoCoreError as error:
            raise ProviderError(f"RunPod's network volume did not answer {operation}: {error}",
                                retryable=True) from error

    def _volume(self) -> Any:
        if self._s3_client is None:
            import boto3
            from botocore.config import Config

            self._s3_client = boto3.client(
                "s3", endpoint_url=self.connection.s3_endpoint_url, region_name=self.connection.region,
                aws_access_key_id=self.connection.s3_access_key_id,
                aws_secret_access_key=self.connection.s3_secret_access_key.get_secret_value(),
                config=Config(s3={"addressing_style": "path"}),  # the bucket is a volume id, not a host name
            )
        return self._s3_client


@dataclass
class _Plan:
    """The Axolotl config for one job, built field by field, with what was converted or dropped on the way."""

    request: JobRequest
    options: RunpodOptions
    args: dict[str, Any] = field(default_factory=dict)
    converted: list[Change] = field(default_factory=list)
    dropped: list[Change] = field(default_factory=list)

    @property
    def training_type(self) -> str:
        return self.request.options.get("training_type", "lora")

    def put(self, key: str, value: Any, *, source: str | None = None, given: Any = None, reason: str = "") -> None:
        """Set an Axolotl key; with `source`, the caller's field that was renamed or rescaled into it."""
        self.args[key] = value
        if source is not None:
            self.converted.append(Change(source, given, f"input.args.{key}", value, reason))

    def drop(self, source: str, given: Any, reason: str) -> None:
        self.dropped.append(Change(source, given, None, reason=reason))

    def data(self, staged: Staged | None) -> None:
        self.put("base_model", self.request.model)
        self.put("datasets", [self._dataset(staged.training if staged else "<training_file>")])
        if self.request.validation_file is not None:
            path = staged.validation if staged and staged.validation else "<validation_file>"
            # A JSON file loads as one "train" split, which is the split to evaluate on.
            self.put("test_datasets", [{**self._dataset(path), "split": "train"}])
        if self.request.method == "dpo":
            self.put("rl", "dpo")

    def _dataset(self, path: str) -> dict[str, Any]:
        if self.request.method == "dpo":
            # stage_data lifts each row's input.messages to messages; the outputs keep OpenAI's names.
            return {"path": path, "ds_type": "json", "type": "chat_template.default", "field_messages": "messages",
                    "field_chosen": "preferred_output", "field_rejected": "non_preferred_output"}
        return {"path": path, "ds_type": "json", "type": "chat_template", "field_messages": "messages"}

    def adapter(self) -> None:
        lora = {k: self.request.options[k] for k in ("lora_rank", "lora_alpha", "lora_dropout")
                if k in self.request.options}
        if self.training_type == "full":
            if self.options.load_in_4bit:
                raise InvalidRequest("provider_options.runpod.load_in_4bit trains a QLoRA adapter; "
                                     "it cannot go with ftserve.training_type 'full'.",
                                     param="ftserve.provider_options.runpod.load_in_4bit")
            self.put("adapter", None, source="ftserve.training_type", given="full",
                     reason="Axolotl runs a full fine-tune when no adapter is set")
            for key, value in lora.items():
                self.drop(f"ftserve.{key}", value, "a full fine-tune has no LoRA adapter")
            return
        adapter = "qlora" if self.options.load_in_4bit else "lora"
        if "training_type" in self.request.options:
            self.put("adapter", adapter, source="ftserve.training_type", given="lora",
                     reason="Axolotl's adapter setting" + (" (QLoRA with load_in_4bit)" if adapter == "qlora" else ""))
        else:
            self.put("adapter", adapter)
        if "lora_rank" in lora:
            self.put("lora_r", lora["lora_rank"], source="ftserve.lora_rank", given=lora["lora_rank"],
                     reason="Axolotl's name for the LoRA rank")
        for key in ("lora_alpha", "lora_dropout"):
            if key in lora:
                self.put(key, lora[key])
        if self.options.lora_target_modules is not None:
            self.put("lora_target_modules", self.options.lora_target_modules)
        else:
            self.put("lora_target_linear", True)
        if self.options.load_in_4bit:
            self.put("load_in_4bit", True)

    def hyperparameters(self) -> None:
        request = self.request
        epochs = chosen(request, "n_epochs")
        if epochs is not None:
            self.put("num_epochs", epochs, source="hyperparameters.n_epochs", given=epochs,
                     reason="Axolotl's name for the epochs")
        self._batch(chosen(request, "batch_size"))
        base = BASE_LEARNING_RATE[self.training_type]
        multiplier = chosen(request, "learning_rate_multiplier")
        if multiplier is None:
            self.put("learning_rate", base)  # Axolotl requires one
        else:
            self.put("learning_rate", multiplier * base, source="hyperparameters.learning_rate_multiplier",
                     given=multiplier,
                     reason=f"Axolotl takes an absolute rate: the multiplier x {base:g}, the usual "
                            f"{self.training_type} rate this adapter treats as 1x (Axolotl has no default)")
        beta = chosen(request, "beta") if request.method == "dpo" else None
        if beta is not None:
            self.put("rl_beta", beta, source="hyperparameters.beta", given=beta, reason="Axolotl's name for DPO's beta")

    def _batch(self, batch: int | None) -> None:
        options = self.options
        accumulation = options.gradient_accumulation_steps
        if batch is None:
            if options.micro_batch_size is not None:
                self.put("micro_batch_size", options.micro_batch_size)
            if accumulation is not None:
                self.put("gradient_accumulation_steps", accumulation)
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
        self.put("micro_batch_size", batch // accumulation, source="hyperparameters.batch_size", given=batch,
                 reason=f"Axolotl's batch is micro_batch_size x gradient_accumulation_steps ({accumulation}) "
                        "on the endpoint's one GPU")
        self.put("gradient_accumulation_steps", accumulation)

    def common_options(self) -> None:
        renamed = {
            "max_seq_length": ("sequence_len", "Axolotl's name for the longest sequence in tokens"),
            "eval_interval": ("eval_steps", "Axolotl's name for the steps between evaluations"),
            "checkpoint_interval": ("save_steps", "Axolotl's name for the steps between checkpoints"),
        }
        for key, (native, reason) in renamed.items():
            if key in self.request.options:
                value = self.request.options[key]
                self.put(native, value, source=f"ftserve.{key}", given=value, reason=reason)
        if "warmup_ratio" in self.request.options:
            self.put("warmup_ratio", self.request.options["warmup_ratio"])

    def openai_fields(self, *, has_wandb_key: bool) -> None:
        request = self.request
        if request.seed is not None:
            self.put("seed", request.seed)
        if request.suffix is not None:
            self.drop("suffix", request.suffix, "the worker names its output by run_id; to name a Hub repo, "
                                                "set provider_options.runpod.hub_model_id")
        if request.metadata:
            self.drop("metadata", request.metadata, "a RunPod request has no metadata")
        for integration in request.integrations or []:
            wandb = integration.get("wandb") or {}
            if not has_wandb_key:
                raise InvalidRequest("A wandb integration needs the RunPod provider's wandb_api_key, "
                                     "which this server does not configure.", param="integrations")
            settings = {f"wandb_{key}": wandb[key] for key in ("project", "name", "entity") if wandb.get(key)}
            self.args.update(settings)
            self.converted.append(Change("integrations", request.integrations, "input.args.wandb_project", settings,
                                         "Axolotl reports to W&B through its wandb_* settings"))
            if wandb.get("tags"):
                self.drop("integrations.wandb.tags", wandb["tags"], "Axolotl has no W&B tags setting")

    def provider_options(self) -> None:
        options = self.options
        if options.hub_model_id is not None:
            self.put("hub_model_id", options.hub_model_id)
        if options.lr_scheduler is not None:
            self.put("lr_scheduler", options.lr_scheduler)
        for key, value in options.axolotl.items():
            if key in OWNED:
                raise InvalidRequest(
                    f"provider_options.runpod.axolotl.{key} is set from {OWNED[key]}; set it there instead.",
                    param=f"ftserve.provider_options.runpod.axolotl.{key}",
                )
            self.args[key] = value


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


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error") or body.get("message")
        if isinstance(error, dict):
            error = error.get("message")
        if error:
            return str(error)
    return json.dumps(body)[:500]


def _datacenter(url: str) -> str | None:
    match = re.fullmatch(r"s3api-([a-z0-9-]+)\.runpod\.io", urlparse(url).hostname or "")
    return match.group(1).upper() if match else None


def _ms(hours: float) -> int:
    return int(hours * 3_600_000)


def _run_key(run_id: str) -> str:
    return f"ftserve/runs/{run_id}.json"


def _job_key(remote_id: str) -> str:
    return f"ftserve/jobs/{remote_id}.json"
