"""A real Ray cluster on this machine, for the executor's tests: a head that runs nothing (no CPUs), and worker nodes,
each a `ray start --block` process in a session of its own, so a test can kill one node whole (its raylet, its
actors and their engines), as a machine that goes away."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
# A dead node is noticed in a couple of seconds rather than Ray's default half a minute.
ENV = {**os.environ, "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
       "RAY_health_check_initial_delay_ms": "0", "RAY_USAGE_STATS_ENABLED": "0"}
COMMON = ["--disable-usage-stats", "--object-store-memory", str(80 << 20), "--block"]


@dataclass
class RayCluster:
    logs: Path
    port: int = 0
    head: subprocess.Popen[bytes] | None = None
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = _free_port()
        self.head = self._spawn("head", ["--head", "--port", str(self.port), "--num-cpus", "0",
                                         "--include-dashboard=false"])

    def add_node(self, cpus: int = 1) -> subprocess.Popen[bytes]:
        """A worker node; returns once the cluster counts its CPUs."""
        before = self.cpus()
        node = self._spawn(f"node-{len(self.nodes) + 1}", ["--address", self.address, "--num-cpus", str(cpus)])
        self.nodes.append(node)
        deadline = time.time() + 120
        while self.cpus() < before + cpus:
            assert node.poll() is None and time.time() < deadline, f"the Ray node did not join; see {self.logs}"
            time.sleep(0.5)
        return node

    def kill_node(self, node: subprocess.Popen[bytes]) -> None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()

    def alive_nodes(self) -> list[dict[str, object]]:
        """The nodes Ray counts alive, with their resources, from a driver of its own."""
        script = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                  "print(json.dumps([n for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return list(json.loads(out.stdout.strip().splitlines()[-1]))

    def cpus(self) -> float:
        try:
            return sum(float(n["Resources"].get("CPU", 0)) for n in self.alive_nodes())  # type: ignore[attr-defined]
        except AssertionError:
            return 0.0

    def stop(self) -> None:
        for process in [*self.nodes, *([self.head] if self.head else [])]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen([RAY, "start", *args, *COMMON], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
