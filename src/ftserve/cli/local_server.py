"""A server for a command that needs one: the one at the base URL if it answers, else `ftserve serve` started
as a child process on a free local port, with its embedded worker, and stopped afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import typer
from rich.console import Console

from ftserve.cli.client import server_root

START_SECONDS = 180.0
# How long a stopping server may take: a job in training saves its state first.
STOP_SECONDS = 60.0


def healthy(root: str) -> bool:
    try:
        return httpx.get(f"{root}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def server_at(base_url: str, data_dir: Path, console: Console, *, keep: bool = False) -> Iterator[str]:
    """The base URL of a healthy server: `base_url`'s, or that of one started here with `data_dir`."""
    if healthy(server_root(base_url)):
        console.print(f"Using the server at {server_root(base_url)}")
        yield base_url
        return
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    log_path = data_dir / "server.log"
    console.print(f"No server answers at {server_root(base_url)}: starting one at {root} "
                  f"(data in {data_dir}, log in {log_path})")
    with log_path.open("ab") as log:
        # A session of its own: Ctrl-C reaches this process only, which then stops the server in order.
        child = subprocess.Popen(
            [sys.executable, "-m", "ftserve.cli.main", "serve", "--port", str(port), "--log-level", "warning"],
            env={**os.environ, "FTSERVE_DATA_DIR": str(data_dir)}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_healthy(child, root, log_path)
        yield f"{root}/v1"
    finally:
        if keep and child.poll() is None:
            console.print(f"The server keeps running at {root} (process {child.pid}; `kill {child.pid}` stops it)")
        else:
            _stop(child)


def _wait_until_healthy(child: subprocess.Popen[bytes], root: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not healthy(root):
        if child.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            _stop(child)
            typer.echo("ftserve: the server did not start:\n" + "\n".join(tail), err=True)
            raise typer.Exit(1)
        time.sleep(0.25)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)  # uvicorn shuts down in order: the worker puts a running job back
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
