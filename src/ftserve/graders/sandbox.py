"""Running a python grader's `grade(sample, item)`: a fresh interpreter per batch, confined by
`sandbox_child.py`, spoken to over its stdin and stdout one JSON line per sample.

One process grades a whole batch (reinforcement training grades 16 or more samples a step, and an interpreter
start costs more than most graders). Each sample has its own CPU and wall-clock time; a sample that kills the
process (a limit enforced by the kernel, a crash) fails alone, and the samples after it go to a new process.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CHILD = str(Path(__file__).with_name("sandbox_child.py"))
MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source
GRACE_SECONDS = 1.0  # the child stops a slow sample itself at wall_seconds; the parent kills it this much later

Failure = Literal["runtime", "invalid", "source", "memory", "timeout", "cpu_time", "killed", "exited", "output",
                  "setup", "disabled"]
# Failures of the code itself (`python_grader_runtime_error`, or `invalid` for a return that is not a number)
# against the sandbox stopping it (`python_grader_server_error`, with the failure as its type).
RUNTIME_FAILURES: frozenset[Failure] = frozenset({"runtime", "source"})


@dataclass(frozen=True)
class PythonLimits:
    """What one python grader may use. CPU and wall-clock time are per sample; memory is the process's."""

    enabled: bool = True
    cpu_seconds: float = 10.0
    wall_seconds: float = 30.0
    memory_mb: int = 512
    start_seconds: float = 10.0
    """Starting the interpreter and confining it, before the source's own module code (which has the
    per-sample limits)."""
    file_mb: int = 64
    """The largest file the grader may write in its scratch directory."""
    max_source_bytes: int = MAX_SOURCE_BYTES
    max_reply_bytes: int = 64 * 1024
    """The most the process may send back for one sample; more is a server error (`output`)."""
    executable: str = sys.executable
    """The interpreter that runs graders; its installation is all the grader may read."""


@dataclass(frozen=True)
class SampleResult:
    score: float | None
    """None when the grader failed: `failure` says how."""
    failure: Failure | None = None
    details: str | None = None
    seconds: float = 0.0


def source_problem(source: str, limits: PythonLimits) -> str | None:
    """Why `source` is refused before anything runs, or None."""
    size = len(source.encode())
    if size > limits.max_source_bytes:
        return f"The python grader's source is {size} bytes; the limit is {limits.max_source_bytes} bytes."
    return None


def grade_batch(source: str, pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                limits: PythonLimits) -> list[SampleResult]:
    """`grade(sample, item)` for each pair, in order. `sample` is OpenAI's dict (output_text, output_json,
    output_tools); `item` the dataset row. Never raises for what the grader does."""
    problem = source_problem(source, limits)
    if problem is not None:
        return [SampleResult(None, "source", problem)] * len(pairs)
    results: list[SampleResult] = []
    while len(results) < len(pairs):
        results += _one_process(source, pairs[len(results):], limits)
    return results


def _one_process(source: str, pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                 limits: PythonLimits) -> list[SampleResult]:
    """Results for a prefix of `pairs` (at least one): all of them, or those before the sample that ended the
    process, that sample's failure included."""
    scratch = tempfile.mkdtemp(prefix="ftserve-grader-")
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [limits.executable, "-I", "-B", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=scratch, env=_environment(scratch), start_new_session=True,
        )
        channel = _Channel(process, limits.max_reply_bytes)
        try:
            header = {"scratch": scratch, "source": source, "limits": {
                "cpu_seconds": limits.cpu_seconds, "wall_seconds": limits.wall_seconds,
                "cpu_total": (limits.cpu_seconds + 1) * (len(pairs) + 1) + limits.start_seconds,
                "memory_bytes": limits.memory_mb * 1024 * 1024, "file_bytes": limits.file_mb * 1024 * 1024,
            }}
            ready = channel.exchange(header, limits.start_seconds + limits.wall_seconds + GRACE_SECONDS)
            if "ready" not in ready:  # the module did not load: every sample would fail the same way
                return [_result(ready, time.monotonic() - started)] * len(pairs)
            results = []
            for sample, item in pairs:
                reply = channel.exchange({"sample": sample, "item": item}, limits.wall_seconds + GRACE_SECONDS)
                results.append(_result(reply, reply.get("seconds", 0.0)))
                if channel.ended:
                    break
            return results
        finally:
            channel.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _environment(scratch: str) -> dict[str, str]:
    """Nothing of the server's environment (no FTSERVE_* settings, no keys): a path, a locale, a home and a
    temp dir in scratch, and numeric libraries kept to one thread."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch,
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _result(message: dict[str, Any], seconds: float) -> SampleResult:
    score = message.get("score")
    if isinstance(score, (int, float)) and "error" not in message:
        return SampleResult(float(score), seconds=seconds)
    failure = message.get("error")
    if failure not in Failure.__args__:  # type: ignore[attr-defined]
        return SampleResult(None, "output", "the grader's process answered out of protocol", seconds)
    details = message.get("details")
    return SampleResult(None, failure, details if isinstance(details, str) else None, seconds)


class _Channel:
    """One JSON line to the process, one back within a deadline. A process that dies, overruns its deadline
    or answers out of protocol is killed, and the answer is its failure."""

    def __init__(self, process: subprocess.Popen[bytes], max_reply: int):
        self.process = process
        self.max_reply = max_reply
        self.buffer = b""
        self.ended = False
        assert process.stdout is not None and process.stdin is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(process.stdout, selectors.EVENT_READ)

    def exchange(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._end(None, started)
        deadline = started + timeout
        while b"\n" not in self.buffer:
            if len(self.buffer) > self.max_reply:
                return self._end({"error": "output", "details": f"the grader sent back more than {self.max_reply} "
                                                                "bytes for one sample"}, started)
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                if time.monotonic() >= deadline:
                    return self._end({"error": "timeout"}, started)
                continue
            chunk = os.read(self.process.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                return self._end(None, started)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            return self._end({"error": "output", "details": "the grader's process answered out of protocol"},
                             started)
        return reply

    def _end(self, failure: dict[str, Any] | None, started: float) -> dict[str, Any]:
        """Kill the process; `failure`, or (None) what its end says about it."""
        self.ended = True
        self._kill()
        code = self.process.wait()
        if failure is None:
            if code == -signal.SIGXCPU:
                failure = {"error": "cpu_time"}
            elif code < 0:
                failure = {"error": "killed", "details": f"the grader's process was killed by "
                                                         f"{signal.Signals(-code).name}"}
            else:
                failure = {"error": "exited", "details": f"the grader's process exited with status {code}"}
        return {**failure, "seconds": time.monotonic() - started}

    def _kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """End of the batch: the process exits when its stdin closes; one that does not is killed."""
        self.selector.close()
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        try:
            self.process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill()
            self.process.wait()
        self.process.stdout.close()  # type: ignore[union-attr]
