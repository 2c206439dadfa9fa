"""The `ftserve` command line as a user runs it: against a live server (the fake trainer), and offline for
`data validate`. What is checked is what the user sees: the output, and the exit code."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from openai import OpenAI
from typer.testing import CliRunner, Result

from ftserve.cli.main import app, main
from ftserve.engine.models import load_tokenizer
from tests.conftest import MODEL_CACHE, LiveServer
from tests.helpers import chat_jsonl, wait_for

MODEL = "SmolLM2-135M-Instruct"


def ftserve(*args: str, server: LiveServer | None = None) -> Result:
    """`ftserve ARGS`, run in-process, talking to `server`."""
    options = ["--base-url", server.base_url] if server else []
    return CliRunner().invoke(app, [*args, *options], env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None})


def dataset(tmp_path: Path, data: bytes, name: str = "train.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    return OpenAI(base_url=live.base_url, api_key="none", max_retries=0)


def created_job(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return next(word for word in result.stdout.split() if word.startswith("ftjob-"))


# Files and models.


def test_an_uploaded_file_is_listed_until_it_is_removed(live: LiveServer, tmp_path: Path) -> None:
    uploaded = ftserve("files", "upload", dataset(tmp_path, chat_jsonl(3), "cli-upload.jsonl"), server=live)
    assert uploaded.exit_code == 0, uploaded.output
    file_id = next(word for word in uploaded.stdout.split() if word.startswith("file-"))

    listed = ftserve("files", "list", server=live)
    assert file_id in listed.stdout and "cli-upload.jsonl" in listed.stdout

    assert ftserve("files", "rm", file_id, server=live).exit_code == 0
    assert file_id not in ftserve("files", "list", server=live).stdout


def test_models_list_shows_the_base_model(live: LiveServer) -> None:
    listed = ftserve("models", "list", server=live)
    assert listed.exit_code == 0 and MODEL in listed.stdout


# Jobs.


def test_a_job_created_with_follow_shows_its_steps_and_ends_succeeded(live: LiveServer, tmp_path: Path) -> None:
    result = ftserve(
        "jobs", "create", "--model", MODEL, "--training-file", dataset(tmp_path, chat_jsonl(8)),
        "--epochs", "2", "--batch-size", "2", "--suffix", "cli", "--follow", "--interval", "0.05", server=live,
    )
    assert result.exit_code == 0, result.output
    job_id = created_job(result)
    out = result.stdout
    assert "Step 8/8: training loss=" in out  # each metrics event, printed as it arrived (output is not a terminal)
    assert "8/8" in out and "epoch 2/2" in out and "train loss" in out  # the progress bar's last state
    assert f"{live.url}/dashboard/#/jobs/{job_id}" in out
    assert "Succeeded" in out and f"ft:{MODEL}:default:cli:" in out


def test_following_a_cancelled_job_exits_3(live: LiveServer, client: OpenAI, tmp_path: Path) -> None:
    job_id = created_job(ftserve(
        "jobs", "create", "--model", MODEL, "--training-file", dataset(tmp_path, chat_jsonl(10)),
        "--epochs", "50", "--batch-size", "1", server=live,
    ))
    wait_for(client, job_id, ("running",))
    assert ftserve("jobs", "pause", job_id, server=live).stdout.strip() in (f"{job_id}: pausing", f"{job_id}: paused")
    wait_for(client, job_id, ("paused",))
    assert ftserve("jobs", "resume", job_id, server=live).exit_code == 0
    wait_for(client, job_id, ("running",))
    assert ftserve("jobs", "cancel", job_id, server=live).exit_code == 0

    followed = ftserve("jobs", "follow", job_id, "--interval", "0.05", server=live)
    assert followed.exit_code == 3, followed.output
    assert "Cancelled" in followed.stdout


def test_jobs_list_filters_by_status_and_get_shows_a_job(live: LiveServer, client: OpenAI, tmp_path: Path) -> None:
    job_id = created_job(ftserve(
        "jobs", "create", "--model", MODEL, "--training-file", dataset(tmp_path, chat_jsonl(4)), "--epochs", "1",
        server=live,
    ))
    wait_for(client, job_id)

    assert job_id in ftserve("jobs", "list", "--status", "succeeded", server=live).stdout
    assert job_id not in ftserve("jobs", "list", "--status", "failed", server=live).stdout
    shown = ftserve("jobs", "get", job_id, server=live)
    assert "succeeded" in shown.stdout and f"/dashboard/#/jobs/{job_id}" in shown.stdout
    assert json.loads(ftserve("jobs", "get", job_id, "--json", server=live).stdout)["id"] == job_id


def test_chat_answers_one_message_and_holds_a_conversation(live: LiveServer) -> None:
    once = ftserve("chat", MODEL, "--message", "What is the capital of France?", "--temperature", "0",
                   "--max-tokens", "8", server=live)
    assert once.exit_code == 0, once.output
    assert "Paris" in once.stdout

    talk = CliRunner().invoke(app, ["chat", MODEL, "--base-url", live.base_url, "--max-tokens", "4"],
                              input="Hello\nHow are you?\n\n")
    assert talk.exit_code == 0, talk.output
    assert talk.stdout.count(f"{MODEL} > ") == 2  # two answers, then the empty line ends it


# Errors.


def test_an_api_error_is_one_line_without_a_traceback(live: LiveServer) -> None:
    result = ftserve("jobs", "get", "ftjob-nope", server=live)
    assert result.exit_code == 1
    assert result.stderr.startswith("ftserve: ") and "ftjob-nope" in result.stderr
    assert "Traceback" not in result.output


def test_an_unreachable_server_is_named(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(app, ["models", "list", "--base-url", f"http://127.0.0.1:{port}/v1"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"ftserve: cannot reach http://127.0.0.1:{port}/v1/models")
    assert "Traceback" not in result.output


def test_serve_refuses_a_public_address_without_api_keys(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FTSERVE_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err


def test_a_short_api_key_stops_the_server_without_printing_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    monkeypatch.setenv("FTSERVE_API_KEYS", "sk-long-enough-0000000=a,sk-abc123=b")
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path))
    with socket.socket() as taken:  # were the key let through, the server would stop at once, not serve
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    out, err = capsys.readouterr()
    assert "1 API key(s) shorter than 16 characters" in err and "sk-abc123" not in out + err


def test_invalid_settings_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FTSERVE_LEASE_SECONDS", "-1")
    assert main(["worker"]) == 2
    assert "ftserve: invalid settings" in capsys.readouterr().err


# `data validate`: offline, the server's validator and the engine's tokenizer.


def validate(*args: str) -> Result:
    return CliRunner().invoke(app, ["data", "validate", *args], env={"FTSERVE_MODELS_DIR": str(MODEL_CACHE)})


@pytest.mark.engine
def test_validate_names_every_bad_line_and_exits_1(tmp_path: Path) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    path = dataset(tmp_path, f'{good}\n{{"messages": [\n{good}\n{{"prompt": "a", "completion": "b"}}\n'.encode())
    result = validate(path)
    assert result.exit_code == 1
    assert "line 2: invalid JSON" in result.stdout
    assert "line 4: is a completion example, but the file started with chat examples (line 1)" in result.stdout
    assert "line 1" not in result.stdout.replace("(line 1)", "") and "line 3" not in result.stdout


@pytest.mark.engine
def test_validate_counts_tokens_as_the_tokenizer_does(tmp_path: Path, default_model_dir: Path) -> None:
    conversations = [
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Ultramarine, a deep blue."}],
    ]
    path = dataset(tmp_path, "\n".join(json.dumps({"messages": m}) for m in conversations).encode())
    tokenizer = load_tokenizer(default_model_dir)
    counts = [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]) for m in conversations]

    result = validate(path, "--epochs", "3")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert "2 chat examples, valid for a supervised job" in result.stdout
    assert rows["tokens"][1] == f"{sum(counts):,}"
    assert rows["per"][2:7] == [str(min(counts)), "/", f"{sum(counts) / 2:.1f}", "/", str(max(counts))]
    assert rows["trained"][2] == f"{sum(counts) * 3:,}"
    assert "estimate" in result.stdout
    assert rows["memory"][1].startswith("~") and rows["memory"][2:4] == ["GiB", "of"]  # engine/memory.py's figure


@pytest.mark.engine
def test_validate_drops_examples_whose_answer_lies_past_max_seq_length(tmp_path: Path) -> None:
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    long = {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "Done"}]}
    result = validate(dataset(tmp_path, f"{json.dumps(short)}\n{json.dumps(long)}\n".encode()), "--max-seq-length", "64")
    assert result.exit_code == 0, result.output
    assert "skipped 1 example(s)" in result.stdout and "line 2" in result.stdout  # the engine's own warning
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["dropped"][1] == "1" and rows["examples"][2] == "1"
