"""The one settings object, read from the environment at the edge and passed down."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TrainerName = Literal["local", "fake", "fake-engine"]

DEFAULT_PROJECT = "default"
# Keys shorter than this stop the server at start: a short key is a guessable one.
MIN_KEY_LENGTH = 16


class Settings(BaseSettings):
    """Everything ftserve reads from its environment (`FTSERVE_*`)."""

    model_config = SettingsConfigDict(env_prefix="FTSERVE_", frozen=True, hide_input_in_errors=True)  # keys stay out of errors

    data_dir: Path = Field(Path(".ftserve"), description="Where the database, files and artifacts live.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Unset: SQLite under the data dir. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db.",
    )
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="API keys mapped to projects, written `key=project,key2=project2` "
        "(a key without `=project` belongs to the `default` project). Unset: the server is open.",
    )
    trainer: TrainerName | None = Field(
        "local",
        description="Which trainer runs jobs: `local` (the training engine, in a child process per job), "
        "`fake` (instant, deterministic, trains nothing; for trying the API), or `fake-engine` (the local "
        "trainer's child process and protocol around an engine that trains nothing; for crash tests).",
    )
    catalogue_file: Path | None = Field(
        None, description="A JSON file of extra base models (local directories or hub ids) beside the built-in ones."
    )
    models_dir: Path | None = Field(
        None, description="Where base models converted from GGUF are cached as safetensors. Unset: `models` in the data dir."
    )
    blob_store: Literal["local", "s3"] = Field(
        "local", description="Where files, checkpoints, models and exports are kept: `local`, under the data dir; "
        "`s3`, in an S3-compatible object store (`s3_bucket`, docs/storage.md), so that servers and workers on "
        "other machines share no directory.",
    )
    s3_bucket: str | None = Field(None, description="The bucket of the `s3` blob store (it must exist).")
    s3_prefix: str = Field("", description="A prefix for every object ftserve writes to the bucket (`ftserve/`).")
    s3_endpoint_url: str | None = Field(
        None, description="The S3 endpoint of a store other than AWS (MinIO, Ceph, R2...): `http://minio:9000`. "
        "Unset: AWS S3.",
    )
    s3_region: str | None = Field(None, description="The bucket's region. Unset: boto3's usual configuration.")
    s3_access_key_id: SecretStr | None = Field(
        None, description="The store's access key id. Unset: boto3's usual credential chain (AWS_* variables, "
        "shared config files, an instance or pod role).",
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="The secret of `s3_access_key_id`.")
    blob_cache_dir: Path | None = Field(
        None, description="With the `s3` store, where local copies of blobs (training files, models being served "
        "or exported) and the scratch of running jobs are kept. Unset: `cache` in the data dir.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the local engine trains and models are served: CUDA when present."
    )
    train_memory_gb: float | None = Field(
        None, gt=0, description="Memory a local job may use to train, in GiB: a job whose memory estimate is over it "
        "(with gradient checkpointing, where that helps) is refused at create, naming what to lower. Unset: the GPU's "
        "total memory when the engine trains on CUDA, else the machine's RAM.",
    )
    inference_engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="What generates text: `vllm` (its OpenAI server, one process per base model with traffic, "
        "run and watched by ftserve), `transformers` (ftserve's own loop in the server process, one request at a time), "
        "or `auto`: vLLM wherever it is installed (`vllm_python`), the transformers loop otherwise."
    )
    vllm_python: Path | None = Field(
        None, description="The Python interpreter of the virtualenv vLLM is installed in. Unset: ftserve's own "
        "interpreter when it can import vllm, else `.venv-vllm/bin/python` beside ftserve's virtualenv (where "
        "`make` installs it)."
    )
    vllm_max_batch: int = Field(
        16, ge=1, description="Requests one vLLM server generates at once (its --max-num-seqs); more wait their turn "
        "in ftserve's queue."
    )
    vllm_max_loras: int = Field(4, ge=1, description="Adapters one vLLM batch may mix (--max-loras).")
    vllm_max_lora_rank: int = Field(
        16, ge=1, description="The largest LoRA rank vLLM serves (--max-lora-rank); 16 is ftserve's default rank. vLLM "
        "computes every adapter at this rank, so a larger setting slows all of them."
    )
    vllm_kv_cache_gb: float = Field(
        1.0, gt=0, description="On the CPU, memory for each vLLM server's KV cache, in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    vllm_idle_seconds: float = Field(
        600.0, gt=0, description="A vLLM server with no requests for this long stops; the next request starts it again."
    )
    vllm_start_timeout_seconds: float = Field(
        300.0, gt=0, description="How long a request waits for a vLLM server to start before it fails with 503."
    )
    vllm_args: str = Field(
        "", description="More arguments for every vLLM server, as on its command line (`--gpu-memory-utilization 0.5`)."
    )
    inference_cache_mb: int = Field(
        2048, ge=0, description="Memory for fine-tuned weights held for serving (adapters and full models), "
        "least recently used first out. Base models stay loaded."
    )
    inference_max_tokens: int = Field(
        1024, ge=1, description="Tokens a completion may generate when the request sets no max_tokens."
    )
    inference_max_choices: int = Field(
        16, ge=1, description="Answers one chat or completions request may ask for: its prompts times `n`. More is "
        "refused with 400 naming `prompt` (or `n`), before anything is tokenized."
    )
    inference_max_per_project: int = Field(
        8, ge=1, description="Chat, completions and evaluation requests one project may have waiting for or running on "
        "a model; one more is refused with 429 and Retry-After. Projects take turns, the one served least recently first."
    )
    inference_max_queue: int = Field(
        64, ge=1, description="Requests waiting for a model, all projects together; one more is refused with 429."
    )
    inference_max_prompt_bytes: int = Field(
        1024 * 1024, ge=1024, description="Prompt text one chat or completions request may send, in bytes (its "
        "messages and tools, or its prompts), checked before anything is tokenized; more is refused with 400."
    )
    python_graders: bool = Field(
        True, description="Run python graders (`/v1/fine_tuning/alpha/graders/run` and reinforcement jobs). Off: a "
        "python grader is refused when it is validated or a job names it, for servers that must not run callers' code."
    )
    python_grader_cpu_seconds: float = Field(
        10.0, gt=0, description="CPU time a python grader may use on one sample; past it that sample scores 0 with "
        "`python_grader_server_error` of type `cpu_time`."
    )
    python_grader_wall_seconds: float = Field(
        30.0, gt=0, description="Time a python grader may take on one sample, waiting included; past it the sample scores 0 "
        "with `python_grader_server_error` of type `timeout`."
    )
    python_grader_memory_mb: int = Field(
        512, ge=16, description="Memory the process that runs a python grader may use, in MiB (type `memory` past it)."
    )
    grader_embeddings_model: Path | None = Field(
        None, description="A local model directory (transformers, safetensors) whose mean-pooled last hidden state "
        "is the embedding text_similarity's `cosine` metric compares. Unset: a cosine grader is refused."
    )
    max_file_bytes: int = Field(
        512 * 1024**2, ge=1, description="The largest file `POST /v1/files` accepts (512 MB, as at OpenAI); "
        "a larger one is refused with 413 and nothing is stored. Larger files go through `/v1/uploads`.",
    )

    max_line_bytes: int = Field(
        4 * 1024**2, ge=1024, description="The longest line a fine-tuning JSONL file may hold (4 MiB, room for a "
        "128k-token conversation); a longer one is refused with 400 naming the line, read no further than the limit.",
    )
    project_storage_bytes: int = Field(
        0, ge=0, description="Bytes of files and unfinished uploads one project may keep (job results included); "
        "an upload past it is refused with 413 and nothing is stored. 0: no quota.",
    )

    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Hosted providers by name, as JSON: `{\"together\": {\"api_key\": \"...\"}, "
        "\"remote-lab\": {\"kind\": \"openai_compatible\", \"base_url\": \"https://lab.example/v1\", \"api_key\": \"...\"}}`. "
        "A job whose model starts with `NAME/` runs there. `kind` defaults to the name (`remote-*` is openai_compatible); "
        "the other keys are the provider's connection settings (docs/providers.md).",
    )
    providers_file: Path | None = Field(
        None, description="A JSON file of more providers, in the same shape, for keys kept out of the environment."
    )
    reconcile_min_seconds: float = Field(
        5.0, gt=0, description="How soon the worker first polls a hosted job, and again after anything changed."
    )
    reconcile_max_seconds: float = Field(
        300.0, gt=0, description="The longest the worker waits between polls of a hosted job that shows no change."
    )

    worker_name: str | None = Field(
        None, description="How this process's worker names itself in job events and logs, followed by a random "
        "suffix. Unset: the host name.",
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Where a worker runs a local job's engine: `local`, a child process on the worker's "
        "machine; `ray`, an actor on the Ray cluster at `ray_address`, given the job's CPUs, GPUs and memory "
        "(docs/cluster.md). With `ray`, set `blob_store=s3` unless every node sees the data dir at the same path.",
    )
    ray_address: str = Field(
        "auto", description="The Ray cluster the `ray` executor places jobs on: `host:port` of its head (as "
        "`ray start --head` prints), `ray://host:10001` for Ray Client, or `auto`: the cluster this machine belongs to.",
    )
    worker_poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for work.")
    lease_seconds: float = Field(30.0, gt=0, description="A worker that misses its heartbeat this long loses its job.")
    fake_step_seconds: float = Field(0.2, ge=0, description="How long each step of the fake trainer takes.")
    create_dedup_seconds: float = Field(
        900.0, ge=0, description="How long a retried job create without an Idempotency-Key is recognised."
    )
    max_attempts: int = Field(
        3, ge=1, description="A job whose worker dies (stops renewing its lease) this many times without making "
        "progress fails with `worker_lost` instead of running again. A death after the attempt saved newer resumable "
        "state does not count, nor does a worker that shuts down cleanly.",
    )
    shutdown_grace_seconds: float = Field(
        60.0, gt=0, description="How long a stopping server or worker waits for its running job to save its state "
        "and go back to the queue.",
    )

    rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests each project may make per minute (a token bucket of this size, refilled "
        "evenly); over it, 429 with Retry-After. 0: no limit.",
    )
    max_active_jobs: int = Field(
        0, ge=0, description="Fine-tuning jobs a project may have in flight (validating, queued, running, pausing "
        "or paused); one more is refused with 429 and Retry-After. 0: no limit.",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="The largest request body outside file uploads (which have "
        "their own limits); a larger one is refused with 413.",
    )

    webhook_retry_seconds: float = Field(
        10.0, gt=0, description="How soon a webhook delivery that failed is tried again; the wait doubles after "
        "each failure, up to 3 hours.",
    )
    webhook_give_up_seconds: float = Field(
        86400.0, gt=0, description="How long after its event a webhook delivery is still retried (a day).",
    )

    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="The whole time one webhook try may take (connecting, sending, and the receiver's "
        "status line and headers); past it the try fails as timed out.",
    )
    webhook_senders: int = Field(
        8, ge=1, description="Deliveries one worker sends at once; each endpoint gets at most "
        "`webhook_endpoint_concurrency` of them, so a slow receiver cannot hold up the others.",
    )
    webhook_endpoint_concurrency: int = Field(
        2, ge=1, description="Deliveries and tests in flight to one webhook endpoint at once, per process.",
    )
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Internal webhook targets allowed in spite of the address checks, "
        "comma-separated host names or CIDRs (`hooks.internal,10.0.0.0/8`). Unset: a webhook URL that names or resolves "
        "to a loopback, private, link-local, unique-local, multicast or metadata address is refused.",
    )

    log_format: Literal["text", "json"] = Field(
        "text", description="How the server and workers log to stderr: `text` for reading, `json` (one object a line, "
        "with request and job ids as fields) for a log collector.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="The least severe level logged.")
    metrics: bool = Field(
        True, description="Serve Prometheus metrics at `GET /metrics`: open without API keys, only to `metrics_key` "
        "with them (docs/observability.md).",
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="A port on which a process that runs a worker also serves its metrics, for "
        "`ftserve worker`, which has no HTTP server. Unset: none.",
    )

    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names a server without API keys answers besides loopback ones "
        "(`localhost`, `127.0.0.1`, `[::1]`), comma-separated. A request for any other Host is refused with 421, "
        "so a web page cannot reach an open server through DNS rebinding. Ignored when keys are configured.",
    )
    auth_failures_per_minute: int = Field(
        20, ge=1, description="Requests with a wrong API key (a missing one is not counted) one client address, or "
        "IPv6 /64, may make per minute; past it, every request from it gets 429 with Retry-After until one is back.",
    )
    metrics_key: str | None = Field(
        None, description="A key for `GET /metrics` alone, for a Prometheus scraper. With API keys configured, "
        "/metrics answers only this key; without keys it is open, like the rest of the server.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            key, _, project = item.partition("=")
            keys[key.strip()] = project.strip() or DEFAULT_PROJECT
        return keys

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, value: dict[str, str]) -> dict[str, str]:
        short = [key for key in value if len(key) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(f"{len(short)} API key(s) shorter than {MIN_KEY_LENGTH} characters (one starts "
                             f"'{short[0][:3]}…'); short keys can be guessed. Use long random keys, such as "
                             "`python -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(24))'`.")
        return value

    @field_validator("metrics_key")
    @classmethod
    def _long_metrics_key(cls, value: str | None) -> str | None:
        if value is not None and len(value) < MIN_KEY_LENGTH:
            raise ValueError(f"the metrics key is shorter than {MIN_KEY_LENGTH} characters; use a long random key")
        return value

    @field_validator("webhook_allow", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _store_named(self) -> Settings:
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("blob_store=s3 needs s3_bucket (FTSERVE_S3_BUCKET), the bucket to keep blobs in")
        if self.blob_store == "s3" and importlib.util.find_spec("boto3") is None:
            raise ValueError("blob_store=s3 needs boto3: pip install 'ftserve[cluster]'")
        return self

    @property
    def resolved_blob_cache_dir(self) -> Path:
        return (self.blob_cache_dir or self.data_dir / "cache").resolve()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @property
    def resolved_vllm_python(self) -> Path | None:
        """The interpreter that runs vLLM (None: vLLM is not installed where ftserve looks)."""
        if self.vllm_python is not None:
            return self.vllm_python
        if importlib.util.find_spec("vllm") is not None:
            return Path(sys.executable)
        beside = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
        return beside if beside.exists() else None

    @property
    def engine_on_cuda(self) -> bool:
        """Whether the local engine trains on a GPU: `cuda`, or `auto` on a machine with an NVIDIA GPU."""
        return self.device == "cuda" or (self.device == "auto" and gpu_memory_gb() is not None)

    @property
    def resolved_train_memory_gb(self) -> float:
        """`train_memory_gb`, else the GPU's memory when the engine trains on one, else the machine's RAM."""
        if self.train_memory_gb is not None:
            return self.train_memory_gb
        gpu = gpu_memory_gb() if self.device != "cpu" else None
        found = gpu if gpu is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
        return round(found, 1)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ftserve.db').resolve()}"


@functools.cache
def gpu_memory_gb() -> float | None:
    """The first NVIDIA GPU's total memory in GiB, as `nvidia-smi` reports it; None without one. Asked of the
    driver's tool rather than of torch, which the service process does not load."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        answer = subprocess.run([tool, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return int(answer[0]) / 1024 if answer else None  # MiB
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
