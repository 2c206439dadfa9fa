"""The local trainer: each job runs in its own engine process, `python -m ftserve.engine`.

A child process keeps the service apart from torch: a crash or an out-of-memory kill takes the
job down, not the worker; cancel and pause are a line on the child's stdin; and whatever memory
training took is returned when the child exits. The engine resumes on its own from the last
state it saved in the job's output dir, so a requeued job continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

from ftserve.catalogue import BaseModel, source_of
from ftserve.domain.errors import TrainingFailed
from ftserve.domain.hyperparameters import resolve as resolve_auto
from ftserve.engine.spec import JobSpec, LoraOptions
from ftserve.providers.base import (
    Reporter,
    StopReason,
    TrainingOutcome,
    TrainingRequest,
)
from ftserve.providers.contract import (
    BaseModelInfo,
    Capabilities,
    Change,
    Estimate,
    JobRequest,
    ProviderUnsupported,
    Resolved,
    Staged,
    tokens_of,
)
from ftserve.schemas.fine_tuning import FtserveJobOptions

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# How long a child that was asked to cancel may take to stop before it is killed.
CANCEL_GRACE_SECONDS = 30.0
LOG_TAIL_LINES = 20


class LocalTrainer:
    def __init__(self, catalogue: dict[str, BaseModel], cache_dir: Path, device: str = "auto",
                 python: str = sys.executable, engine_module: str = "ftserve.engine"):
        self.catalogue = catalogue
        self.engine_module = engine_module  # the crash tests run ftserve.testing_engine, which fakes the training
        self.cache_dir = cache_dir
        self.device = device
        self.python = python

    def spec_for(self, request: TrainingRequest) -> JobSpec:
        if request.method not in ("supervised", "dpo"):
            raise TrainingFailed(
                f"The local engine trains supervised and dpo jobs; {request.method} jobs need a hosted provider."
            )
        base = self.catalogue.get(request.model)
        if base is None:
            raise TrainingFailed(
                f"The local engine starts from catalogue models only; {request.model} is not one of "
                f"{', '.join(sorted(self.catalogue))}."
            )
        hp = request.hyperparameters
        options = FtserveJobOptions.model_validate(request.options)  # its defaults are the documented ones
        return JobSpec(
            job_id=request.job_id, method=request.method, model=source_of(base),
            training_file=request.training_file, validation_file=request.validation_file,
            output_dir=request.output_dir, cache_dir=self.cache_dir,
            n_epochs=int(hp["n_epochs"]), batch_size=int(hp["batch_size"]),
            learning_rate=base.learning_rate * float(hp.get("learning_rate_multiplier", 1.0)),
            beta=float(hp.get("beta", 0.1)), seed=request.seed,
            training_type=options.training_type,
            lora=LoraOptions(rank=options.lora_rank, alpha=options.lora_alpha, dropout=options.lora_dropout),
            max_seq_length=options.max_seq_length, warmup_ratio=options.warmup_ratio,
            eval_interval=options.eval_interval, checkpoint_interval=options.checkpoint_interval,
            resume_at_most=request.reported_step,
            device=self.device,  # type: ignore[arg-type]  # Settings.device has the same literal
        )

    def train(self, request: TrainingRequest, reporter: Reporter) -> TrainingOutcome:
        spec = self.spec_for(request)
        request.output_dir.mkdir(parents=True, exist_ok=True)
        spec_path = request.output_dir / "spec.json"
        spec_path.write_text(spec.model_dump_json(indent=2))
        log_path = request.output_dir / "engine.log"
        with log_path.open("ab") as log_file:
            child = subprocess.Popen(
                [self.python, "-m", self.engine_module, str(spec_path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1,
            )
            return _Session(child, reporter, log_path).run()


class LocalProvider:
    """The local engine as a provider: what it trains and the `JobSpec` it would run, without running it.

    Running is the worker's job (claim, lease, `LocalTrainer`), so this implements the planning half
    of the contract only.
    """

    kind = "local"
    name = "local"

    def __init__(self, catalogue: dict[str, BaseModel]):
        self.catalogue = {key: base for key, base in catalogue.items() if base.provider is None}
        self.planner = LocalTrainer(self.catalogue, Path("<models_dir>"))

    def capabilities(self) -> Capabilities:
        return Capabilities(
            methods=("supervised", "dpo"), training_types=("lora", "full"), data="local", serving="ready",
            events=True, checkpoints=True, pause=True,
        )

    def list_base_models(self) -> list[BaseModelInfo]:
        return [BaseModelInfo(base.id, ("supervised", "dpo")) for base in self.catalogue.values()]

    def resolve(self, request: JobRequest, staged: Staged | None = None) -> Resolved:
        hyperparameters = resolve_auto(request.hyperparameters, request.training_examples or 1)
        training = TrainingRequest(
            job_id=request.job_id, model=request.model, method=request.method, hyperparameters=hyperparameters,
            method_config=request.method_config, seed=request.seed or 0, options=request.options,
            training_file=Path(staged.training if staged else "<training_file>"),
            training_examples=request.training_examples,
            validation_file=Path(staged.validation) if staged and staged.validation
            else Path("<validation_file>") if request.validation_file else None,
            output_dir=Path("<artifacts>") / request.job_id,
        )
        try:
            spec = self.planner.spec_for(training)
        except TrainingFailed as error:
            raise ProviderUnsupported(error.message, param="model" if request.method != "reinforcement" else "method") from None
        converted = []
        multiplier = request.hyperparameters.get("learning_rate_multiplier", "auto")
        if multiplier != "auto":
            converted.append(Change(
                "hyperparameters.learning_rate_multiplier", multiplier, "learning_rate", spec.learning_rate,
                f"the multiplier scales the catalogue's learning rate for {request.model}, "
                f"{self.catalogue[request.model].learning_rate:g}",
            ))
        dropped = []
        if request.integrations:
            dropped.append(Change("integrations", request.integrations, None, reason="the local engine does not report to W&B"))
        return Resolved(self.name, spec.model_dump(mode="json"), converted, dropped)

    def estimate(self, request: JobRequest) -> Estimate:
        epochs = resolve_auto(request.hyperparameters, request.training_examples or 1)["n_epochs"]
        return Estimate(
            tokens_of(request.training_file) * int(epochs), int(epochs),
            basis="text of the training file at 4 characters per token, times the epochs; training here costs no fees",
        )


class _Session:
    """One engine child: its events become reporter calls; the reporter's stop requests become commands."""

    def __init__(self, child: subprocess.Popen[str], reporter: Reporter, log_path: Path):
        self.child = child
        self.reporter = reporter
        self.log_path = log_path
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.sent: StopReason | None = None
        threading.Thread(target=self._read, args=(child.stdout,), daemon=True).start()

    def run(self) -> TrainingOutcome:
        try:
            while True:
                try:
                    event = self.events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    event = {}
                if event is None:  # the child closed stdout: it is exiting
                    break
                outcome = self._handle(event) if event else None
                if outcome is not None:
                    return outcome
                lost = self._relay_stop()
                if lost is not None:
                    return lost
        finally:
            self._reap()
        raise TrainingFailed(f"The training engine exited with status {self.child.returncode}. {self._log_tail()}")

    def _handle(self, event: dict[str, Any]) -> TrainingOutcome | None:
        kind = event.get("event")
        if kind == "metrics":
            self.reporter.metrics(event["step"], event["total_steps"], event["metrics"], event.get("tokens_per_second"))
        elif kind == "checkpoint":
            self.reporter.checkpoint(event["step"], event["metrics"], Path(event["path"]))
        elif kind == "message":
            self.reporter.message(event["text"], event.get("level", "info"))
        elif kind == "finished":
            return TrainingOutcome(None, event["trained_tokens"], Path(event["model_dir"]), event["step"],
                                   event.get("evaluation"))
        elif kind == "stopped":
            return TrainingOutcome(event["reason"], event["trained_tokens"], None, event["step"])
        elif kind == "failed":
            raise TrainingFailed(event["message"])
        return None

    def _relay_stop(self) -> TrainingOutcome | None:
        stop = self.reporter.should_stop()
        if stop == "lost":  # another worker owns the job now: stop writing at once
            self.child.kill()
            return TrainingOutcome("lost")
        if stop is not None and self.sent is None:
            self._command(stop)
            self.sent = stop
        return None

    def _command(self, word: str) -> None:
        try:
            assert self.child.stdin is not None
            self.child.stdin.write(word + "\n")
            self.child.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is already gone; its exit is handled by run()

    def _reap(self) -> None:
        if self.child.poll() is None:
            try:
                self.child.wait(CANCEL_GRACE_SECONDS if self.sent == "cancel" else 5.0)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        if self.child.stdin:
            self.child.stdin.close()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                log.warning("engine wrote a line that is not an event: %s", line.rstrip())
        self.events.put(None)

    def _log_tail(self) -> str:
        try:
            lines = deque(self.log_path.read_text(errors="replace").splitlines(), maxlen=LOG_TAIL_LINES)
        except OSError:
            return ""
        return "Last lines of its log:\n" + "\n".join(lines) if lines else ""
