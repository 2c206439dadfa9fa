"""The local trainer: each job runs in its own engine process, `python -m ftserve.engine`.

A child process keeps the service apart from torch: a crash or an out-of-memory kill takes the
job down, not the worker; cancel and pause are a line on the child's stdin; and whatever memory
training took is returned when the child exits. The engine resumes on its own from the last
state it saved in the job's output dir, so a requeued job continues where it stopped.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from ftserve.catalogue import CatalogueEntry, config_of
from ftserve.domain.jobs import MethodType
from ftserve.domain.hyperparameters import resolve as resolve_auto
from ftserve.engine import events, memory
from ftserve.engine.spec import (
    Device,
    JobSpec,
    LoraOptions,
    ModelSource,
    PythonGraderLimits,
    Reinforcement,
    StartFrom,
)
from ftserve.providers.base import Placement, Reporter, TrainingOutcome
from ftserve.providers.engine_session import ChannelLost, Session
from ftserve.providers.engine_staging import StagedChannel, Staging
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Change,
    Estimate,
    JobRequest,
    Parent,
    ProviderKind,
    ProviderUnsupported,
    Resolved,
    Staged,
)
from ftserve.schemas.fine_tuning import FtserveJobOptions

log = logging.getLogger(__name__)

METHODS: tuple[MethodType, ...] = ("supervised", "dpo", "reinforcement")
# Reinforcement's defaults (docs/reinforcement.md): answers sampled per prompt at compute_multiplier 1, the longest
# answer by reasoning_effort, validation rounds per run, and LoRA's learning rate against supervised training's
# (policy gradients are smaller than cross-entropy's: on the default model, 12 steps of the first-word task at
# 2.5x reached a best validation reward of 0.11-0.92 over four seeds, at 5x 0.82-0.96).
GROUP_SIZE = 8
COMPLETION_TOKENS = {"low": 32, "default": 64, "medium": 64, "high": 256}
EVAL_ROUNDS = 10
MAX_AUTO_EVAL_SAMPLES = 32
REINFORCEMENT_LORA_LR_FACTOR = 5.0
# Graders the engine runs itself; a model grader needs a judge the engine process cannot reach.
ENGINE_GRADERS = ("string_check", "text_similarity", "python", "multi")

LOG_TAIL_LINES = 20


def source_of(base: CatalogueEntry) -> ModelSource:
    """Where the engine finds a catalogue model's weights: the catalogue is data, the engine's spec is its own."""
    return ModelSource(
        id=base.id, path=base.path, hub=base.hub, revision=base.revision, package=base.package, gguf_file=base.gguf_file,
    )


class LocalTrainer:
    """Runs a job's `JobSpec` in its own engine process."""

    def __init__(self, python: str = sys.executable, engine_module: str = "ftserve.engine",
                 staging: Staging | None = None, scratch_dir: Path | None = None):
        self.engine_module = engine_module  # the crash tests run ftserve.testing_engine, which fakes the training
        self.python = python
        # With an object store, each run's files are fetched to, and stored from, a directory of its own under
        # `scratch_dir`, removed when the run ends. Without, the engine works in the store's own directory.
        self.staging = staging
        self.scratch_dir = scratch_dir

    def train(self, spec: JobSpec, reporter: Reporter, placement: Placement) -> TrainingOutcome:
        if self.staging is None:
            return self._run(spec, reporter, spec.output_dir)
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="ftserve-run-", dir=self.scratch_dir))
        try:
            try:
                staged = self.staging.prepare(spec, scratch)
            except Exception as error:  # the store could not be reached: not the job's fault, it runs again
                raise ChannelLost(f"the job's files could not be fetched ({type(error).__name__}: {error})") from error
            return self._run(staged, reporter, spec.output_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run(self, spec: JobSpec, reporter: Reporter, log_dir: Path) -> TrainingOutcome:
        """The engine on `spec`, logging into `log_dir` (the worker's output dir, which outlives a scratch one)."""
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec.output_dir / "spec.json"
        spec_path.write_text(spec.model_dump_json(indent=2))
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / "engine.log"
        with log_path.open("ab") as log_file:
            child = subprocess.Popen(
                engine_command(self.python, self.engine_module, spec_path, spec.processes),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1,
            )
            channel = ProcessChannel(child, log_path)
            return Session(channel if self.staging is None else StagedChannel(channel, self.staging), reporter).run()


class LocalProvider:
    """The local engine as a provider: what it trains, and the `JobSpec` a job runs as.

    Running is the worker's job (claim, lease, a `Trainer`), so this implements the planning half of the
    contract: `spec` is what the worker hands its trainer, and `resolve` shows the same spec as the dry run.
    """

    kind: ClassVar[ProviderKind] = "local"
    name = "local"

    def __init__(self, catalogue: dict[str, CatalogueEntry], models_dir: Path, device: Device = "auto",
                 python_graders: PythonGraderLimits = PythonGraderLimits(), memory_limit_gb: float | None = None,
                 cuda: bool | None = None):
        self.catalogue = {key: base for key, base in catalogue.items() if base.provider is None}
        self.models_dir = models_dir
        self.device = device
        self.python_graders = python_graders
        self.memory_limit_gb = memory_limit_gb
        """What a job may use (FTSERVE_TRAIN_MEMORY_GB); None: no estimate is checked here, the engine checks its
        own against the device's memory."""
        self.cuda = device == "cuda" if cuda is None else cuda
        """Whether the engine trains on a GPU (the settings say, for `auto`): bf16 and fused attention, QLoRA."""

    def capabilities(self) -> Capabilities:
        return Capabilities(
            methods=METHODS, training_types=("lora", "qlora", "full") if self.cuda else ("lora", "full"),
            data="local", serving="ready",
            events=True, checkpoints=True, pause=True,
        )

    def list_base_models(self) -> list[BaseModelInfo]:
        return [BaseModelInfo(base.id, METHODS) for base in self.catalogue.values()]

    def hyperparameters(self, request: JobRequest) -> dict[str, Any]:
        """The hyperparameters a local job trains with: each `"auto"` resolved from the training file's size.
        The one place that happens; the worker records the result on the job when training starts."""
        examples = request.training_examples or 1
        hp = resolve_auto(request.hyperparameters, examples, request.method)
        if request.method == "reinforcement":  # validation rounds: about EVAL_ROUNDS a run, on up to 32 prompts
            steps = -(-examples // int(hp["batch_size"])) * int(hp["n_epochs"])
            if hp.get("eval_interval", "auto") == "auto":
                hp["eval_interval"] = max(1, steps // EVAL_ROUNDS)
            if hp.get("eval_samples", "auto") == "auto":
                hp["eval_samples"] = min(MAX_AUTO_EVAL_SAMPLES, max(1, request.validation_examples))
        return hp

    def placement(self, spec: JobSpec, run_id: str) -> Placement:
        """What one attempt of `spec` asks of a machine: a CPU (and, training on CUDA, a GPU) per engine process,
        and the catalogue's memory per process where it gives one."""
        base = self.catalogue.get(spec.model.id)
        processes = spec.processes
        memory = base.train_memory_gb if base is not None else None
        return Placement(run_id, cpus=float(processes), gpus=float(processes) if self.device == "cuda" else 0.0,
                         memory_bytes=int(memory * processes * (1 << 30)) if memory else None)

    def spec(self, request: JobRequest) -> JobSpec:
        """The engine's spec for `request`. Raises `ProviderUnsupported` naming what the local engine cannot train,
        or the field that makes it too big for the memory a job may use."""
        return self._planned(request)[0]

    def _planned(self, request: JobRequest) -> tuple[JobSpec, memory.MemoryEstimate | None]:
        """The engine's spec for `request`, with its memory estimate (None where the model's shape is unknown)."""
        if request.method == "reinforcement":
            if not isinstance(request.method_config.get("grader"), dict):
                raise ProviderUnsupported("A reinforcement job needs method.reinforcement.grader.",
                                          param="method.reinforcement.grader")
            _check_local_grader(request.method_config["grader"])
            if request.method_config.get("response_format") is not None:
                raise ProviderUnsupported(
                    "The local engine samples reinforcement answers without a response_format (its sampler does not "
                    "constrain output); leave it out, or train on an openai_compatible provider that takes it.",
                    param="method.reinforcement.response_format",
                )
        parent = request.parent
        base = self.catalogue.get(parent.base if parent else request.model)
        if base is None:
            raise ProviderUnsupported(
                f"{request.model} was trained from {parent.base}, which is no longer in the catalogue." if parent else
                f"The local engine starts from catalogue models and fine-tuned models of this server; {request.model} "
                f"is not one of them (catalogue: {', '.join(sorted(self.catalogue))}).", param="model",
            )
        if request.output_dir is None:
            raise ValueError("a local job request needs its output_dir")
        hp = self.hyperparameters(request)
        options = FtserveJobOptions.model_validate(request.options)  # its defaults are the documented ones
        if parent is not None:
            options = _continuing(parent, options, request.options)
        max_seq_length = _within_context(base, options.max_seq_length, "max_seq_length" in request.options)
        n_epochs, batch_size = int(hp["n_epochs"]), int(hp["batch_size"])
        learning_rate = base.learning_rate * float(hp.get("learning_rate_multiplier", 1.0))
        if options.training_type == "qlora":
            self._check_qlora()
        if options.packing and request.method != "supervised":
            raise ProviderUnsupported(
                "ftserve.packing packs supervised examples; DPO and reinforcement jobs train unpacked.",
                param="ftserve.packing",
            )
        reinforcement = None
        if request.method == "reinforcement":
            if options.num_processes > 1:
                raise ProviderUnsupported(
                    "The local engine trains reinforcement jobs in one process (each step samples, grades and trains "
                    "on its own answers); leave ftserve.num_processes at 1 for them.", param="ftserve.num_processes",
                )
            if options.training_type != "full":  # full fine-tuning moves every weight: the catalogue's rate stands
                learning_rate *= REINFORCEMENT_LORA_LR_FACTOR
            reinforcement = self._reinforcement(request, hp, options)
        spec = JobSpec(
            job_id=request.job_id, method=request.method, model=source_of(base),
            training_file=request.training_file, validation_file=request.validation_file,
            output_dir=request.output_dir, cache_dir=self.models_dir,
            n_epochs=n_epochs, batch_size=batch_size, learning_rate=learning_rate,
            beta=float(hp.get("beta", 0.1)), seed=request.seed or 0,
            training_type=options.training_type,
            lora=LoraOptions(rank=options.lora_rank, alpha=options.lora_alpha, dropout=options.lora_dropout,
                             target_modules=base.lora_target_modules or "all-linear"),
            max_seq_length=max_seq_length, packing=options.packing, warmup_ratio=options.warmup_ratio,
            eval_interval=options.eval_interval, checkpoint_interval=options.checkpoint_interval,
            device=self.device, processes=options.num_processes, reinforcement=reinforcement,
            start_from=StartFrom(model=parent.name, path=parent.path, training_type=parent.training_type)
            if parent else None,
            gradient_checkpointing=options.gradient_checkpointing is True, memory_limit_gb=self.memory_limit_gb,
        )
        return self._within_memory(spec, base, request, options.gradient_checkpointing)

    def _check_qlora(self) -> None:
        if not self.cuda:
            raise ProviderUnsupported(
                "QLoRA needs a CUDA GPU: this server's engine trains on the CPU, where bitsandbytes' 4-bit weights "
                "have no kernels; use ftserve.training_type 'lora'.", param="ftserve.training_type",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ProviderUnsupported(
                "QLoRA needs bitsandbytes, which is not installed on this server (pip install 'ftserve[gpu]'); "
                "use ftserve.training_type 'lora' until it is.", param="ftserve.training_type",
            )

    def _within_memory(self, spec: JobSpec, base: CatalogueEntry, request: JobRequest,
                       checkpointing: bool | Literal["auto"]) -> tuple[JobSpec, memory.MemoryEstimate | None]:
        """`spec` with gradient checkpointing decided, and its memory estimate; refused, naming the field to
        change, when the estimate is over the memory a job may use even with checkpointing. Rows are taken as long
        as the training file's longest line can make them (`_longest_tokens`): the engine checks again on the
        examples as tokenized."""
        config = config_of(base)
        longest = _longest_tokens(request.training_file)
        if config is None or not memory.readable(config) or longest is None:
            return spec, None
        if spec.reinforcement is not None:
            longest += spec.reinforcement.max_completion_tokens
        job = memory.job_of(spec, longest)
        machine = memory.Machine(half=self.cuda, eager_attention=not self.cuda)
        if self.memory_limit_gb is None:
            return spec, memory.estimate(config, job, machine)
        limit = self.memory_limit_gb
        verdict = memory.plan(config, job, machine, limit, checkpointing)
        if not verdict.fits:
            found = verdict.estimate
            field = memory.culprit(found, limit, spec.training_type, spec.batch_size)
            if checkpointing is False and memory.plan(config, job, machine, limit, True).fits:
                field = "ftserve.gradient_checkpointing"
            raise ProviderUnsupported(memory.over_budget(found, limit, field), param=field)
        chosen = verdict.estimate
        return spec.model_copy(update={"gradient_checkpointing": chosen.gradient_checkpointing}), chosen

    def _reinforcement(self, request: JobRequest, hp: dict[str, Any], options: FtserveJobOptions) -> Reinforcement:
        """OpenAI's reinforcement hyperparameters as GRPO's (docs/reinforcement.md): `compute_multiplier` scales the
        answers sampled per prompt, `reasoning_effort` the longest answer, and `eval_interval`/`eval_samples` are
        the validation rounds."""
        effort = hp.get("reasoning_effort", "default")
        return Reinforcement(
            grader=request.method_config["grader"],
            group_size=max(2, min(64, round(GROUP_SIZE * float(hp.get("compute_multiplier", 1.0))))),
            max_completion_tokens=options.max_completion_tokens or COMPLETION_TOKENS[effort],
            temperature=options.temperature, kl_beta=options.kl_beta,
            eval_interval=int(hp["eval_interval"]), eval_samples=int(hp["eval_samples"]),
            python=self.python_graders,
        )

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        spec = self.spec(request)
        converted = []
        multiplier = request.hyperparameters.get("learning_rate_multiplier", "auto")
        if multiplier != "auto":
            converted.append(Change(
                "hyperparameters.learning_rate_multiplier", multiplier, "learning_rate", spec.learning_rate,
                f"the multiplier scales the catalogue's learning rate for {spec.model.id}, "
                f"{self.catalogue[spec.model.id].learning_rate:g}",
            ))
        # W&B integrations are reported by the worker, and refused at create where it cannot.
        return Resolved(self.name, spec.model_dump(mode="json"), converted, [])

    def estimate(self, request: JobRequest) -> Estimate:
        spec, found = self._planned(request)
        return Estimate(
            request.trained_tokens() * spec.n_epochs, spec.n_epochs,
            basis="text of the training file at 4 characters per token, times the epochs; training here costs no fees"
            + (f"; memory at its peak: {found.basis}" if found else "; memory not estimated (the model's shape is "
               "unknown before its weights load)"),
            memory_gb=found.total_gb if found else None, memory_limit_gb=self.memory_limit_gb,
        )


def _continuing(parent: Parent, options: FtserveJobOptions, asked: dict[str, Any]) -> FtserveJobOptions:
    """A job's options when it continues `parent` (docs/training.md): its training type is the parent's unless it
    asks for another it can start from (a LoRA parent's adapter merges into a full child; a full parent's weights
    take no new adapter, whose child would need the parent's weights to be served), and a LoRA child trains on the
    parent's adapter (on a 4-bit base under QLoRA), whose rank and alpha it keeps."""
    if "training_type" not in asked:
        options = options.model_copy(update={"training_type": parent.training_type})
    allowed = ("lora", "qlora", "full") if parent.training_type == "lora" else ("full",)
    if options.training_type not in allowed:
        raise ProviderUnsupported(
            f"ftserve.training_type is {options.training_type}, but {parent.name} was trained as {parent.training_type}: "
            f"a job continuing it trains as {' or '.join(allowed)} (leave ftserve.training_type out for the parent's).",
            param="ftserve.training_type",
        )
    if options.training_type != "full":
        for key in ("lora_rank", "lora_alpha"):
            if key in asked:
                raise ProviderUnsupported(
                    f"ftserve.{key} cannot be set for a job continuing {parent.name}: it trains on the parent's LoRA "
                    "adapter, whose rank and alpha it keeps.", param=f"ftserve.{key}",
                )
    return options


def _within_context(base: CatalogueEntry, max_seq_length: int, asked: bool) -> int:
    """`max_seq_length` within the model's context: asked for past it, a refusal naming both; the default past
    it (a model shorter than 2048 tokens), the context itself."""
    context = base.context_length or _configured_context(config_of(base) or {})
    if context is None or max_seq_length <= context:
        return max_seq_length
    if not asked:
        return context
    raise ProviderUnsupported(
        f"ftserve.max_seq_length is {max_seq_length}, longer than the {context}-token context of {base.id}; "
        f"ask for at most {context}.", param="ftserve.max_seq_length",
    )


def _configured_context(config: dict[str, Any]) -> int | None:
    """A model's context from its config (a multimodal model's from its text config), if it says."""
    text = config.get("text_config")
    context = config.get("max_position_embeddings") or (text.get("max_position_embeddings")
                                                         if isinstance(text, dict) else None)
    return context if isinstance(context, int) and context > 0 else None


# Characters of a JSONL line counted as a token when the longest row is guessed before tokenizing: generous
# (text runs about 4 a token), since the line's JSON is counted too and a chat template adds tokens of its own.
LINE_CHARACTERS_PER_TOKEN = 2


def _longest_tokens(path: Path) -> int | None:
    """The most tokens one example of a JSONL file can make, guessed from its longest line; None when the file
    cannot be read here (the engine says why, when it reads it)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            longest = max((len(line) for line in lines), default=0)
    except OSError:
        return None
    return max(1, math.ceil(longest / LINE_CHARACTERS_PER_TOKEN))


def _check_local_grader(grader: dict[str, Any]) -> None:
    """Refuses what the local engine cannot grade with: model graders (score_model, label_model), whose judge
    the engine's process cannot reach, and the cosine metric, whose embeddings model lives in the server. The
    grader endpoints run both; hosted providers train with them."""
    subs = grader.get("graders", {}) if grader.get("type") == "multi" else {}
    named = subs.items() if isinstance(subs, dict) else enumerate(subs if isinstance(subs, list) else [subs])
    for key, sub in [("", grader), *((f"graders.{k}.", s) for k, s in named)]:
        if not isinstance(sub, dict):
            continue
        if sub.get("type") not in ENGINE_GRADERS:
            raise ProviderUnsupported(
                f"The local engine grades reinforcement jobs with string_check, text_similarity, python and multi "
                f"graders; a {sub.get('type')} grader needs a hosted provider (or try it with graders/run).",
                param=f"method.reinforcement.grader.{key}type",
            )
        if sub.get("evaluation_metric") == "cosine":
            raise ProviderUnsupported(
                "The local engine has no embeddings model to grade with: text_similarity's cosine metric runs on "
                "graders/run only; pick another metric for a local job.",
                param=f"method.reinforcement.grader.{key}evaluation_metric",
            )


def engine_command(python: str, module: str, spec_path: Path, processes: int = 1) -> list[str]:
    """The command line that runs the engine module on a spec: itself for one process, or torchrun starting
    `processes` of it on this machine (`--standalone`: its rendezvous on a free local port), which train as one
    job (engine/distributed.py). Rank 0's stdin and stdout are the protocol; every process's stderr is the log."""
    if processes == 1:
        return [python, "-m", module, str(spec_path)]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", module, str(spec_path)]


class ProcessChannel:
    """The engine as a child process of the worker: its stdin and stdout are the protocol, stderr its log."""

    def __init__(self, child: subprocess.Popen[str], log_path: Path):
        self.child = child
        self.log_path = log_path

    def lines(self) -> Iterator[str]:
        assert self.child.stdout is not None
        yield from self.child.stdout

    def send(self, word: events.Command) -> None:
        try:
            assert self.child.stdin is not None
            self.child.stdin.write(word + "\n")
            self.child.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is already gone; its exit is handled by the session

    def kill(self) -> None:
        self.child.kill()
        self.child.wait()

    def wait(self, timeout: float) -> int | None:
        try:
            status = self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self.child.stdin:
            self.child.stdin.close()
        return status

    def log_tail(self) -> str:
        return log_tail(self.log_path)


def log_tail(path: Path) -> str:
    """The last lines of an engine's log, introduced for a failure's message; empty when there are none."""
    try:
        lines = deque(path.read_text(errors="replace").splitlines(), maxlen=LOG_TAIL_LINES)
    except OSError:
        return ""
    return "Last lines of its log:\n" + "\n".join(lines) if lines else ""
