"""Shared fixtures: a database per test session (SQLite, or PostgreSQL when FTSERVE_TEST_DATABASE_URL
names a server), and live ftserve servers on free ports that the official SDK talks to."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
import uvicorn
from openai import OpenAI

from ftserve.api.app import create_app
from ftserve.catalogue import load_catalogue
from ftserve.config import Settings
from ftserve.engine.spec import ModelSource
from ftserve.providers.local import source_of
from ftserve.services.runtime import Runtime, build
from tests.helpers import upload, wait_for
from tests.tasks import chat_examples, jsonl
from ftserve.worker import in_thread


class Databases:
    """Hands out databases: None means SQLite under the data dir; with FTSERVE_TEST_DATABASE_URL set,
    each call makes a fresh PostgreSQL database (servers that share a database must share storage
    too, so every server and runtime in the suite gets its own), all dropped at the end."""

    def __init__(self, server: str | None):
        self.server = server
        self.created: list[str] = []
        self.admin = sa.create_engine(server, isolation_level="AUTOCOMMIT") if server else None

    def new(self) -> str | None:
        if self.admin is None or self.server is None:
            return None
        name = f"ftserve_test_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return sa.engine.make_url(self.server).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    handed = Databases(os.environ.get("FTSERVE_TEST_DATABASE_URL"))
    yield handed
    handed.drop_all()


@pytest.fixture
def database_url(databases: Databases) -> str | None:
    return databases.new()


# Base models converted from GGUF are cached here once and shared by every test and run.
MODEL_CACHE = Path(os.environ.get("FTSERVE_TEST_MODEL_CACHE", Path(__file__).parent.parent / ".cache" / "models")).resolve()


def settings_for(data_dir: Path, database_url: str | None, **overrides: object) -> Settings:
    # The transformers loop answers unless a test asks for vLLM (tests/integration/test_vllm.py): it needs no
    # process of its own, and its greedy answers are what the other tests' expectations were written on.
    values: dict[str, object] = {"data_dir": data_dir, "database_url": database_url, "trainer": "fake",
                                 "models_dir": MODEL_CACHE, "inference_engine": "transformers",
                                 "fake_step_seconds": 0.02, "worker_poll_seconds": 0.1, "lease_seconds": 3.0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class LiveServer:
    url: str
    runtime: Runtime

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(settings: Settings, *, with_worker: bool = True) -> tuple[LiveServer, uvicorn.Server, threading.Thread]:
    runtime = build(settings)
    port = _free_port()
    config = uvicorn.Config(create_app(runtime, beside=in_thread(runtime) if with_worker else None), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("ftserve test server did not start")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", runtime), server, thread


@contextmanager
def serving(settings: Settings, *, with_worker: bool = True) -> Iterator[LiveServer]:
    """A live server for the block; stopped, and its database let go, when the block ends."""
    live, server, thread = start_server(settings, with_worker=with_worker)
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        live.runtime.engine.dispose()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    """An open server (no API keys) with an embedded worker running the fake trainer."""
    with serving(settings_for(tmp_path_factory.mktemp("open"), databases.new())) as live:
        yield live


@pytest.fixture(scope="session")
def keyed(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    """A server with keys for two projects, `alpha` and `beta`."""
    settings = settings_for(
        tmp_path_factory.mktemp("keyed"), databases.new(), api_keys="sk-alpha-0000000000=alpha,sk-beta-00000000000=beta",
    )
    with serving(settings) as live:
        yield live


@pytest.fixture
def alpha(keyed: LiveServer) -> OpenAI:
    """The official SDK as project alpha of the `keyed` server."""
    return OpenAI(base_url=keyed.base_url, api_key="sk-alpha-0000000000", max_retries=0)


@pytest.fixture
def beta(keyed: LiveServer) -> OpenAI:
    """The official SDK as project beta of the `keyed` server."""
    return OpenAI(base_url=keyed.base_url, api_key="sk-beta-00000000000", max_retries=0)


@dataclass(frozen=True)
class Learned:
    """One real LoRA job on the default model that learned the task of tests/tasks.py, on a server whose worker
    runs the real engine. Every test that needs "a model that learned" shares it, and none of them changes it."""

    server: LiveServer
    client: OpenAI
    job: Any
    """The succeeded job, as the SDK returns it."""


# The shared job's shape: 96 examples in batches of 8 for 3 epochs is 36 steps, validated every 4 and at epoch ends.
LEARNED_EXAMPLES, LEARNED_BATCH, LEARNED_EPOCHS, LEARNED_EVAL_INTERVAL = 96, 8, 3, 4
LEARNED_VALIDATION = {"count": 12, "offset": 1000}


@pytest.fixture(scope="session")
def learned(tmp_path_factory: pytest.TempPathFactory, databases: Databases, default_model_dir: Path,
            tiny_catalogue: Path) -> Iterator[Learned]:
    # The tiny model is in its catalogue too, for tests on this server whose subject is not what training teaches.
    settings = settings_for(tmp_path_factory.mktemp("learned"), databases.new(), trainer="local", lease_seconds=10.0,
                            catalogue_file=tiny_catalogue)
    with serving(settings) as live:
        client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
        training = upload(client, jsonl(chat_examples(LEARNED_EXAMPLES)))
        validation = upload(client, jsonl(chat_examples(**LEARNED_VALIDATION)), name="valid.jsonl")
        created = client.fine_tuning.jobs.create(
            model="SmolLM2-135M-Instruct", training_file=training, validation_file=validation, suffix="items", seed=5,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": LEARNED_EPOCHS, "batch_size": LEARNED_BATCH, "learning_rate_multiplier": 5}}},
            extra_body={"ftserve": {"eval_interval": LEARNED_EVAL_INTERVAL}},
        )
        done = wait_for(client, created.id, timeout=1800)
        assert done.status == "succeeded", done.error
        yield Learned(live, client, done)


@pytest.fixture(scope="session")
def default_model() -> ModelSource:
    """The default base model, as the engine's spec names it."""
    return source_of(load_catalogue()["SmolLM2-135M-Instruct"])


@pytest.fixture(scope="session")
def default_model_dir(default_model: ModelSource) -> Path:
    """The default model as safetensors (converted from its GGUF file on first use)."""
    from ftserve.engine.models import local_dir

    return local_dir(default_model, MODEL_CACHE)


# A stand-in for the default model in tests whose subject is the engine's mechanics (saved state, resume, stop,
# kills), not what training teaches: the same architecture and tokenizer, 2 small layers, random weights.
# It trains a step in milliseconds where the default model takes seconds. Tests of learning keep the real one.
TINY_MODEL_ID = "SmolLM2-tiny"
TINY_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16}


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir: Path) -> Path:
    target = MODEL_CACHE / TINY_MODEL_ID
    if (target / "config.json").exists():
        return target
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(default_model_dir)
    for key, value in TINY_SHAPE.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    staging = target.with_name(f".{TINY_MODEL_ID}-{uuid.uuid4().hex[:6]}")
    AutoModelForCausalLM.from_config(config).save_pretrained(staging)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (default_model_dir / name).exists():
            shutil.copy(default_model_dir / name, staging / name)
    staging.rename(target)
    return target


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> ModelSource:
    return ModelSource(id=TINY_MODEL_ID, path=tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A catalogue file (FTSERVE_CATALOGUE_FILE) that adds the tiny model beside the built-in ones."""
    path = tmp_path_factory.mktemp("catalogue") / "models.json"
    path.write_text(json.dumps([{"id": TINY_MODEL_ID, "path": str(tiny_model_dir), "learning_rate": 0.002}]))
    return path
