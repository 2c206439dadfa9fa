"""Jobs placed on a Ray cluster (`FTSERVE_EXECUTOR=ray`): the worker keeps the job, a Ray node runs its engine.

The worker claims the job, holds its lease and heartbeats, exactly as with the local executor; the database stays
the truth. Instead of a child process it creates one Ray actor per attempt, named after the job id and its run number
(how many times the job has started), so asking twice for the same run finds the actor already there rather than
starting a second one. The actor
asks Ray for the job's CPUs, GPUs and memory, stages the job's files on its node (`Staging`), starts the engine
there, and relays its protocol: events out, `cancel`/`pause`/`shutdown` in. Nothing but the actor's messages crosses
between the worker and the node, so with an object store (`FTSERVE_BLOB_STORE=s3`) they share no directory.

The actor belongs to the worker that created it: if the worker dies, Ray ends the actor and its engine, and the
reaper requeues the job as for a local child. If the node dies, the session sees the actor gone and the worker hands
the job back (`ChannelLost`); the next attempt stages the state last saved to the store and resumes from it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftserve.engine import events
from ftserve.engine.spec import JobSpec
from ftserve.providers.base import Placement, Reporter, TrainingOutcome
from ftserve.providers.engine_session import Channel, ChannelLost, Session
from ftserve.providers.engine_staging import StagedChannel, Staging
from ftserve.providers.local import ProcessChannel, engine_command

log = logging.getLogger(__name__)

NAMESPACE = "ftserve"
READ_WAIT_SECONDS = 1.0
PR_SET_PDEATHSIG = 1


class EngineRun:
    """A Ray actor: one run of one job on the node Ray placed it on, relaying its engine's protocol. Its methods run
    in threads of their own (a threaded actor), so `read` may wait for lines while `send` delivers a pause."""

    def __init__(self, spec_json: str, staging: Staging | None, engine_module: str):
        spec = JobSpec.model_validate_json(spec_json)
        self.scratch = Path(tempfile.mkdtemp(prefix="ftserve-run-"))
        if staging is not None:  # else the node sees the worker's data dir at the same path
            spec = staging.prepare(spec, self.scratch)
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        spec_path = spec.output_dir / "spec.json"
        spec_path.write_text(spec.model_dump_json(indent=2))
        log_path = spec.output_dir / "engine.log"
        with log_path.open("ab") as log_file:
            # The engine dies with this actor's process: a node whose raylet is gone leaves no engine writing on.
            child = subprocess.Popen(
                engine_command(sys.executable, engine_module, spec_path, spec.processes),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True, bufsize=1,
                preexec_fn=_die_with_parent,
            )
        process = ProcessChannel(child, log_path)
        # Published on the node before the worker hears of it: a state or model the database records is stored.
        self.channel: Channel = process if staging is None else StagedChannel(process, staging)
        self.lines: queue.Queue[str | None | ChannelLost] = queue.Queue()
        threading.Thread(target=self._relay, daemon=True).start()

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def read(self, wait: float) -> list[str] | None:
        """The lines written since the last read (waiting up to `wait` seconds for one), None once the engine's
        stdout has closed and every line was read. Raises `ChannelLost` when what it saved could not be stored."""
        batch: list[str] = []
        try:
            line = self.lines.get(timeout=wait)
            while True:
                if line is None or isinstance(line, ChannelLost):
                    if batch:  # the end is reported on the next read
                        self.lines.put(line)
                        return batch
                    if line is None:
                        return None
                    raise line
                batch.append(line)
                line = self.lines.get_nowait()
        except queue.Empty:
            return batch

    def send(self, word: events.Command) -> None:
        self.channel.send(word)

    def wait(self, timeout: float) -> int | None:
        return self.channel.wait(timeout)

    def kill(self) -> None:
        self.channel.kill()

    def log_tail(self) -> str:
        return self.channel.log_tail()

    def close(self) -> None:
        """The run is over: its engine is stopped and the node's scratch copy of the job goes."""
        if self.channel.wait(0) is None:
            self.channel.kill()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _relay(self) -> None:
        try:
            for line in self.channel.lines():
                self.lines.put(line)
        except ChannelLost as lost:
            self.lines.put(lost)
            return
        self.lines.put(None)


def _die_with_parent() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ActorChannel:
    """The `Channel` of an engine run by an `EngineRun` actor."""

    def __init__(self, actor: Any):
        self.actor = actor

    def lines(self) -> Iterator[str]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        while True:
            try:
                batch = ray.get(self.actor.read.remote(READ_WAIT_SECONDS))
            except RayActorError as error:
                raise ChannelLost(f"the Ray actor running the engine is gone ({type(error).__name__})") from error
            except RayTaskError as error:
                if isinstance(error.cause, ChannelLost):
                    raise error.cause from error
                raise
            if batch is None:
                return
            yield from batch

    def send(self, word: events.Command) -> None:
        self._call("send", word)

    def kill(self) -> None:
        import ray

        self._call("kill")
        ray.kill(self.actor, no_restart=True)

    def wait(self, timeout: float) -> int | None:
        return self._call("wait", timeout)

    def log_tail(self) -> str:
        return self._call("log_tail") or ""

    def _call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except RayActorError:
            return None  # the actor is gone: nothing to send, wait for or kill


class RayTrainer:
    """Runs each job's engine in an `EngineRun` actor on the Ray cluster at `address`."""

    def __init__(self, address: str, staging: Staging | None, engine_module: str = "ftserve.engine",
                 namespace: str = NAMESPACE):
        self.address = address
        self.staging = staging
        self.engine_module = engine_module
        self.namespace = namespace
        self._lock = threading.Lock()

    def train(self, spec: JobSpec, reporter: Reporter, placement: Placement) -> TrainingOutcome:
        actor = self._actor(spec, placement)
        try:
            node = self._placed(actor, reporter)
            if not isinstance(node, str):  # stopped while it waited for a node
                return node
            reporter.message(f"Running on Ray node {node} as {placement.run_id}")
            return Session(ActorChannel(actor), reporter).run()
        finally:
            self._end(actor)

    def _actor(self, spec: JobSpec, placement: Placement) -> Any:
        import ray

        self._connect()
        options: dict[str, Any] = {
            "name": placement.run_id, "namespace": self.namespace, "get_if_exists": True,
            "num_cpus": placement.cpus, "num_gpus": placement.gpus, "max_restarts": 0, "max_concurrency": 4,
        }
        if placement.memory_bytes:
            options["memory"] = placement.memory_bytes
        # The worker's environment travels with the actor (FTSERVE_* knobs the engine reads, such as the fake
        # engine's), never its credentials: the store's are in `staging`.
        env = {key: value for key, value in os.environ.items() if key.startswith("FTSERVE_FAKE_ENGINE_")}
        if env:
            options["runtime_env"] = {"env_vars": env}
        remote = ray.remote(EngineRun)
        return remote.options(**options).remote(spec.model_dump_json(), self.staging, self.engine_module)

    def _placed(self, actor: Any, reporter: Reporter) -> str | TrainingOutcome:
        """The id of the node the actor started on, once Ray has found one with the resources; until then the job
        waits (its lease held), and a cancel, pause or shutdown ends the wait."""
        import ray
        from ray.exceptions import RayActorError

        started = actor.node.remote()
        while not ray.wait([started], timeout=READ_WAIT_SECONDS)[0]:
            stop = reporter.should_stop()
            if stop is not None:
                return TrainingOutcome(stop)
        try:
            return str(ray.get(started))
        except RayActorError as error:
            raise ChannelLost(f"the Ray actor could not start the engine: {error}") from error

    def _end(self, actor: Any) -> None:
        import ray

        try:
            ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone with its node
            log.debug("the Ray actor was already gone", exc_info=True)

    def _connect(self) -> None:
        import ray

        with self._lock:
            if not ray.is_initialized():
                ray.init(address=self.address, namespace=self.namespace, log_to_driver=False,
                         configure_logging=False)
