"""After a real job succeeds, its model is usable at once: served on /v1/chat/completions in the format it
learned, scored against its base, exported in three formats that load back and match the served
model, and gone when deleted. The session's one LoRA job on the default model (`learned` in conftest) is
shared by every test here; the deletion test deletes a small model of its own."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ftserve.engine.export import VLLM_MODULES
from tests.conftest import TINY_MODEL_ID, Learned, LiveServer
from tests.helpers import upload, wait_for
from tests.tasks import chat_examples, follows_format, jsonl

pytestmark = pytest.mark.engine

BASE = "SmolLM2-135M-Instruct"
# A llama's linear modules, every one of which LoRA targets by default; vLLM loads them by these names.
LLAMA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
PROBES = ["List: kiwi, lemon, mango, nectarine", "List: red, green, blue"]


@pytest.fixture(scope="module")
def server(learned: Learned) -> LiveServer:
    return learned.server


@pytest.fixture(scope="module")
def client(learned: Learned) -> OpenAI:
    return learned.client


@pytest.fixture(scope="module")
def job(learned: Learned) -> Any:
    return learned.job


def ask(client: OpenAI, model: str, prompt: str, **extra: Any) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=40, **extra)
    return answer.choices[0].message.content or ""


def test_the_fine_tuned_model_answers_in_the_trained_format(client: OpenAI, job: Any) -> None:
    prompts = [e["messages"][0]["content"] for e in chat_examples(8, offset=20_000)]
    tuned = [ask(client, job.fine_tuned_model, p) for p in prompts]
    base = [ask(client, BASE, p) for p in prompts]
    assert sum(map(follows_format, tuned)) >= 6, tuned
    assert sum(map(follows_format, base)) <= 1, base

    stream = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": prompts[0]}],
                                            temperature=0, max_tokens=40, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == tuned[0]


def test_base_and_adapter_requests_interleave_on_one_base(client: OpenAI, job: Any, server: LiveServer) -> None:
    # Greedy answers, asked in turn: each model answers as it did, whichever ran just before it. (How often the
    # fine-tuned one follows the format is the test above; one answer on its own would be a coin with bias.)
    prompt = chat_examples(1, offset=30_000)[0]["messages"][0]["content"]
    turns = [(ask(client, job.fine_tuned_model, prompt), ask(client, BASE, prompt)) for _ in range(2)]
    assert turns[0] == turns[1]
    tuned, base = turns[0]
    assert tuned != base and not follows_format(base)
    loaded = server.runtime.inference.pool.loaded()
    # (The session's server may hold other tests' models beside these, on their own bases.)
    assert BASE in loaded["bases"] and job.fine_tuned_model in loaded["fine_tuned"]
    assert 0 < loaded["fine_tuned_bytes"][job.fine_tuned_model] < 20 << 20  # an adapter, not a second copy


def test_checkpoint_models_are_served(client: OpenAI, job: Any) -> None:
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    earliest = min(checkpoints, key=lambda c: c.step_number)
    assert ask(client, earliest.fine_tuned_model_checkpoint, PROBES[1])


def test_the_job_shows_its_before_and_after_evaluation(client: OpenAI, job: Any) -> None:
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    [event] = [e for e in events if e.type == "metrics" and "evaluation" in (e.data or {})]
    report = event.data["evaluation"]  # type: ignore[index]
    base, tuned = report["base"], report["fine_tuned"]
    assert report["examples"] == 12 and report["generated"] == 12
    assert tuned["loss"] < base["loss"] / 3
    assert tuned["token_accuracy"] > base["token_accuracy"] + 0.2
    # The base model never answers in the format; a model this small learns the format long before it
    # learns to count, so exact answers stay rare after three epochs.
    assert base["exact_match"] == 0 and tuned["exact_match"] >= base["exact_match"]
    assert "base → fine-tuned" in event.message

    names = {client.files.retrieve(f).filename: f for f in job.result_files}
    assert set(names) == {"step_metrics.csv", "evaluation.json"}
    assert json.loads(client.files.content(names["evaluation.json"]).read()) == report


def test_the_evaluation_endpoint_scores_any_served_model(client: OpenAI, job: Any) -> None:
    scores = {
        model: client.post("/ftserve/evaluations", body={"model": model, "file": job.validation_file}, cast_to=object)
        for model in (BASE, job.fine_tuned_model)
    }
    base, tuned = scores[BASE], scores[job.fine_tuned_model]
    assert base["object"] == "ftserve.evaluation" and base["examples"] == 12  # type: ignore[index]
    assert tuned["loss"] < base["loss"] / 3 and tuned["token_accuracy"] > base["token_accuracy"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.post("/ftserve/evaluations", body={"model": BASE, "file": "file-missing"}, cast_to=object)


def served_logits(server: LiveServer, model: str, prompt: str) -> torch.Tensor:
    """Next-token logits of the served model, straight from the server's pool."""
    inference = server.runtime.inference
    target = inference.resolve("default", model)
    text = inference.pool.text(target)
    ids = torch.tensor([text.encoder.prompt([{"role": "user", "content": prompt}])])
    with inference.pool.session(target) as loaded, torch.no_grad():
        return loaded(input_ids=ids).logits[0, -1].float()


def logits_of(model: PreTrainedModel, server: LiveServer, job: Any, prompt: str) -> torch.Tensor:
    text = server.runtime.inference.pool.text(server.runtime.inference.resolve("default", job.fine_tuned_model))
    ids = torch.tensor([text.encoder.prompt([{"role": "user", "content": prompt}])])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float()


def cli_export(server: LiveServer, model: str, out: Path, *options: str) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "ftserve.cli.main", "export", model, "--out", str(out), "--base-url", server.base_url, *options],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def test_the_adapter_export_is_what_vllm_loads_and_matches_the_served_model(server: LiveServer, job: Any,
                                                                            tmp_path: Path, default_model_dir: Path) -> None:
    from peft import PeftModel

    adapter = cli_export(server, job.fine_tuned_model, tmp_path, "--format", "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) <= VLLM_MODULES and not config.get("modules_to_save")
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
    assert names and not any("embed_tokens" in n or "lm_head" in n for n in names)

    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(adapter)).eval()
    for prompt in PROBES:
        assert torch.allclose(logits_of(loaded, server, job, prompt), served_logits(server, job.fine_tuned_model, prompt), atol=1e-4)


def test_the_merged_export_is_a_plain_hugging_face_model_that_matches(server: LiveServer, job: Any, tmp_path: Path) -> None:
    merged = cli_export(server, job.fine_tuned_model, tmp_path, "--format", "merged")
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert not (merged / "adapter_config.json").exists()
    for prompt in PROBES:
        assert torch.allclose(logits_of(model, server, job, prompt), served_logits(server, job.fine_tuned_model, prompt), atol=1e-3)


# Logits differ from the served model's by the rounding of the weights. The largest difference, over some
# 49k logits a position, is an outlier statistic: for q8_0 it measured 1.01 in one CI run and under 1.0 in
# others, so its bound leaves room. The mean is the tight check; it depends on the trained weights, which
# differ a little between CPUs (bf16 kernels): for q8_0 it measured 0.214 on an AMD EPYC CI machine.
@pytest.mark.parametrize(("quantization", "largest", "mean"), [("f16", 0.1, 0.02), ("q8_0", 2.0, 0.3)])
def test_the_gguf_export_loads_back_and_matches(server: LiveServer, job: Any, tmp_path: Path,
                                                quantization: str, largest: float, mean: float) -> None:
    path = cli_export(server, job.fine_tuned_model, tmp_path, "--format", "gguf", "--quantization", quantization)
    assert path.suffix == ".gguf"
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    for prompt in PROBES:
        ours, served = logits_of(model, server, job, prompt), served_logits(server, job.fine_tuned_model, prompt)
        assert (ours - served).abs().max() < largest
        assert (ours - served).abs().mean() < mean
        assert int(ours.argmax()) == int(served.argmax())


def test_exports_of_the_wrong_kind_are_refused(client: OpenAI, server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/ftserve/export", params={"model": BASE, "format": "adapter"})
    assert response.status_code == 400 and "base model" in response.json()["error"]["message"]
    response = httpx.get(f"{server.base_url}/ftserve/export", params={"model": BASE, "format": "zip"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "format"


LLAMA_CPP = Path(__file__).parent.parent / "llama_cpp"


@pytest.mark.skipif(shutil.which("node") is None or not (LLAMA_CPP / "node_modules" / "node-llama-cpp").is_dir(),
                    reason="llama.cpp's prebuilt npm build is not installed (make installs it into tests/llama_cpp)")
def test_llama_cpp_chats_with_the_gguf_export_in_the_trained_format(server: LiveServer, job: Any, tmp_path: Path) -> None:
    path = cli_export(server, job.fine_tuned_model, tmp_path, "--format", "gguf", "--quantization", "q8_0")
    done = subprocess.run(["node", str(LLAMA_CPP / "chat.mjs"), str(path), *PROBES],
                          capture_output=True, text=True, timeout=300, cwd=LLAMA_CPP)
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line)["reply"] for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(replies) == len(PROBES)
    # The shape the model learned; llama.cpp's q8_0 arithmetic may pick a different word inside it.
    assert all(re.match(r"Items: \d+ \| first=.+ \| last=.+", reply) for reply in replies), replies


def test_deleting_the_model_stops_serving_it_and_removes_its_files(client: OpenAI, server: LiveServer,
                                                                  tmp_path: Path) -> None:
    # A one-step job of its own, on the tiny stand-in for the default model: the shared model stays for the other
    # tests, and the subject here is what deletion removes, not what training taught.
    created = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=upload(client, jsonl(chat_examples(8))),
                                             hyperparameters={"n_epochs": 1, "batch_size": 8})
    job = wait_for(client, created.id, timeout=600)
    assert job.status == "succeeded", job.error
    assert ask(client, job.fine_tuned_model, PROBES[0])
    exports_dir = server.runtime.blobs.root / "exports"
    others = set(exports_dir.iterdir()) if exports_dir.is_dir() else set()  # the shared model's, which stay
    adapter = cli_export(server, job.fine_tuned_model, tmp_path, "--format", "adapter")
    # A model this small has few linear modules, which PEFT names in full; the export names them as vLLM does.
    assert set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == LLAMA_MODULES
    model_dir = server.runtime.models.artifact("default", job.fine_tuned_model)
    assert model_dir is not None and model_dir.is_dir()
    exports = list(set(exports_dir.iterdir()) - others)
    assert exports
    last = max(client.fine_tuning.jobs.checkpoints.list(job.id).data, key=lambda c: c.step_number)

    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        ask(client, job.fine_tuned_model, PROBES[0])
    assert job.fine_tuned_model not in server.runtime.inference.pool.loaded()["fine_tuned"]  # the adapter went
    assert not any(p.exists() for p in exports)
    assert all(p.exists() for p in others)
    # The job's checkpoint models go with it, and the directory the last of them shares with the final model.
    with pytest.raises(openai.NotFoundError):
        ask(client, last.fine_tuned_model_checkpoint, PROBES[0])
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert not model_dir.exists()
    assert not (model_dir.parent / "state").exists()  # resumable state went when the job succeeded

    with pytest.raises(openai.BadRequestError):
        client.models.delete(BASE)
    assert ask(client, BASE, PROBES[0])


def test_cli_evaluate_prints_scores(server: LiveServer, job: Any, tmp_path: Path) -> None:
    local = tmp_path / "held_out.jsonl"
    local.write_bytes(jsonl(chat_examples(4, offset=3000)))
    done = subprocess.run(
        [sys.executable, "-m", "ftserve.cli.main", "evaluate", BASE, str(local), "--base-url", server.base_url],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["examples"] == 4 and 0 <= scores["exact_match"] <= 1 and scores["loss"] > 0


