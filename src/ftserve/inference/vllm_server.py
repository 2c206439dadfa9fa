"""One vLLM OpenAI server, run and watched by ftserve: started on first use, stopped when idle,
restarted with back-off after it dies.

vLLM runs in its own interpreter (its own virtualenv, where its pins on transformers and torch do
not meet ours), so ftserve talks to it over HTTP on loopback only. The process leads its own
process group, which holds vLLM's engine-core children too: stopping or reaping it signals the group,
so no child outlives it. It is started through a few lines (`LAUNCHER`) that stop the group when the
process that started it is gone, so a killed ftserve leaves no vLLM behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ftserve.domain.errors import EngineUnavailable

log = logging.getLogger(__name__)

# The name the model directory is served under; adapters are served under their model names.
BASE = "base"
# Runs vLLM's OpenAI server as `python -m` would, beside a thread that ends the process group (vLLM and its
# engine-core children) once ftserve, its parent, is gone: reparented processes see another parent id.
LAUNCHER = """
import os, runpy, signal, sys, threading, time
parent = os.getppid()
def orphaned():
    while os.getppid() == parent:
        time.sleep(1)
    os.killpg(0, signal.SIGTERM)
threading.Thread(target=orphaned, daemon=True).start()
sys.argv[0] = "vllm.entrypoints.openai.api_server"
runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
"""
# After a death, the next start waits 1 s, then 2, 4, ... up to this, while each start dies within STEADY_SECONDS.
MAX_BACK_OFF_SECONDS = 30.0
STEADY_SECONDS = 60.0


@dataclass(frozen=True)
class VllmOptions:
    python: Path
    """An interpreter that can `import vllm`."""
    log_dir: Path
    max_batch: int = 16
    """Sequences one server decodes together (vLLM's --max-num-seqs)."""
    max_loras: int = 4
    """Adapters one batch may mix (--max-loras); more are swapped in and out of that many slots."""
    max_lora_rank: int = 16
    kv_cache_gb: float = 1.0
    """On the CPU, memory for the KV cache (VLLM_CPU_KVCACHE_SPACE); GPUs size it themselves."""
    idle_seconds: float = 600.0
    start_timeout: float = 300.0
    extra_args: tuple[str, ...] = ()


class VllmServer:
    """vLLM's server for one model directory (a base model with adapters, or a full fine-tune)."""

    def __init__(self, key: str, model_dir: Path, options: VllmOptions, *, lora: bool):
        self.key = key
        self.model_dir = model_dir
        self.options = options
        self.lora = lora
        # A key for vLLM's /v1 routes, so that other users of this machine cannot reach the models on its port.
        self.headers = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}
        self.adapters: dict[str, Path] = {}
        """Adapters loaded into the running process, by model name (empty again after a restart)."""
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._url = ""
        self._ready = False
        self._deaths = 0  # in a row, each soon after the start before it
        self._died_at = 0.0
        self._ready_at = 0.0
        self._in_flight = 0
        self._last_used = time.monotonic()
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        """The server's URL, started first when it is not running; it is not stopped as idle while in use."""
        with self._lock:
            self._in_flight += 1
        try:
            yield self.url()
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_used = time.monotonic()

    def url(self) -> str:
        with self._lock:
            self._stopped = False
            if not self.running:
                self._reap()
                self._start()
            if not self._ready:
                self._wait_ready()
            return self._url

    def watch(self) -> None:
        """Called every second or so: restart a server that died (after its back-off), stop one left idle."""
        with self._lock:
            if self._stopped or self._process is None:
                return
            if not self.running:
                self._reap()
                if time.monotonic() >= self._died_at + self._back_off():
                    try:
                        self._start()
                        self._wait_ready()
                    except EngineUnavailable as error:
                        log.warning("vLLM for %s did not come back: %s", self.key, error)
            elif self._in_flight == 0 and time.monotonic() - self._last_used > self.options.idle_seconds:
                log.info("vLLM for %s stops: idle for %.0f s", self.key, self.options.idle_seconds)
                self.stop()

    def fail(self) -> None:
        """vLLM answered that its engine failed, which it does not recover from: end the process, which is then
        started again as after a crash (with back-off)."""
        with self._lock:
            if self._process is not None:
                _signal_group(self._process, signal.SIGKILL)

    def refused(self, url: str) -> None:
        """A connection to `url` was refused: the process behind it is gone or going. End it for sure (waiting
        for it), so that the next `url()` starts another rather than handing out the same address."""
        with self._lock:
            if self._url != url or self._process is None:
                return  # already replaced
            _signal_group(self._process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=30)

    @property
    def log_path(self) -> Path:
        return self._log_path()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            process, self._process = self._process, None
            self._ready = False
            self.adapters.clear()
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=15)
        if process is not None:
            _signal_group(process, signal.SIGKILL)  # children the leader left behind

    # Under the lock.

    def _reap(self) -> None:
        """Forget a process that died, and count the death towards the back-off."""
        if self._process is None:
            return
        code = self._process.poll()
        _signal_group(self._process, signal.SIGKILL)
        log.warning("vLLM for %s exited with %s; see %s", self.key, code, self._log_path())
        self._process = None
        self._ready = False
        self.adapters.clear()
        self._died_at = time.monotonic()
        # A server that ran a while before it died starts over at the shortest wait.
        self._deaths = self._deaths + 1 if self._died_at - self._ready_at < STEADY_SECONDS else 1

    def _back_off(self) -> float:
        return 0.0 if not self._deaths else min(MAX_BACK_OFF_SECONDS, 2.0 ** (self._deaths - 1))

    def _start(self) -> None:
        wait = self._died_at + self._back_off() - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        port = _free_port()
        command = [str(self.options.python), "-c", LAUNCHER,
                   "--model", str(self.model_dir), "--served-model-name", BASE,
                   "--host", "127.0.0.1", "--port", str(port),
                   "--max-num-seqs", str(self.options.max_batch),
                   # Sampling defaults come from each request, as in the transformers loop, not from the model's files.
                   "--generation-config", "vllm"]
        if self.lora:
            command += ["--enable-lora", "--max-loras", str(self.options.max_loras),
                        "--max-lora-rank", str(self.options.max_lora_rank)]
        command += list(self.options.extra_args)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
               "VLLM_API_KEY": self.headers["Authorization"].removeprefix("Bearer "),  # not on the command line
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(self.options.kv_cache_gb)))}
        env.pop("PYTHONPATH", None)  # ftserve's paths are not vLLM's
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log_path(), "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            out.flush()
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        self._url = f"http://127.0.0.1:{port}"
        self._ready = False
        log.info("vLLM for %s starting (pid %s, port %s)", self.key, self._process.pid, port)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                self._reap()
                raise EngineUnavailable(f"The generation engine for {self.key} exited while starting; "
                                        f"its log is {self._log_path()}.")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self._url}/health", timeout=2).status_code == 200:
                    self._ready = True
                    self._ready_at = time.monotonic()
                    return
            time.sleep(0.5)
        self.stop()
        self._stopped = False
        raise EngineUnavailable(f"The generation engine for {self.key} did not start within "
                                f"{self.options.start_timeout:.0f} s; its log is {self._log_path()}.")

    def _log_path(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.key)
        return self.options.log_dir / f"vllm-{safe}.log"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
