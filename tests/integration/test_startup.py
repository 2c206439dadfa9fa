"""A server starts without torch: importing torch and transformers takes seconds, and a server that has not yet
trained, exported or generated anything has no use for them. The crash harness restarts servers and workers
dozens of times, and an operator restarts them after every upgrade."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_CACHE, _free_port


def test_a_server_answers_without_loading_torch_until_a_model_is_needed(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "FTSERVE_DATA_DIR": str(tmp_path), "FTSERVE_MODELS_DIR": str(MODEL_CACHE)}
    env.pop("FTSERVE_DATABASE_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "ftserve.cli.main", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.1)
        assert httpx.get(f"{base}/v1/models").json()["data"]
        assert httpx.get(f"{base}/v1/fine_tuning/jobs").status_code == 200

        def torch_loaded() -> bool:
            return "libtorch" in Path(f"/proc/{server.pid}/maps").read_text()

        assert not torch_loaded()  # the worker runs too: it trains in a child process
        answer = httpx.post(f"{base}/v1/chat/completions", timeout=300, json={
            "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert answer.status_code == 200, answer.text
        assert torch_loaded()
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_every_name_the_engine_gateway_lists_loads() -> None:
    # The gateway resolves its names on first use, so a misspelt or moved one would fail only when a server first
    # exports, evaluates or generates; this loads each of them now.
    from ftserve.inference import engine_gateway

    listed = {(module, name) for module, names in engine_gateway._HOMES.items() for name in names}
    assert {name for _, name in listed if getattr(engine_gateway, name, None) is None} == set()
    # The type checker reads the same names from the TYPE_CHECKING imports: the two lists must agree.
    tree = ast.parse(Path(engine_gateway.__file__).read_text())
    typed = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module and node.module.startswith("ftserve.") for alias in node.names}
    assert typed == listed
    with pytest.raises(AttributeError):
        engine_gateway.no_such_name  # noqa: B018  # the lookup itself is the check
