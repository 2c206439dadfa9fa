"""Each family in the catalogue, verified offline on a tiny random-weight model of its architecture with its real
tokenizer and chat template (tests/families), through the real engine:

- the loss mask of a fixed conversation is exactly the trained assistant's tokens and the end-of-turn token,
  compared token by token with a mask found by hand (the known answer text located in the template's render);
- SFT on chat, tool-call and weighted examples, and DPO, train (finite losses, the right number of steps), with
  the catalogue's LoRA target modules;
- the fine-tuned adapter serves through the generation engine (the transformers loop), and its adapter and
  merged exports give the served model's logits and greedy answer.

GGUF and llama.cpp are tests/integration/test_family_gguf.py's; `merged` here is the merged export per family.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ftserve.catalogue import load_catalogue
from ftserve.engine import dpo, sft
from ftserve.engine.data import IGNORE, DataError, Encoder
from ftserve.engine.events import Finished, Metrics
from ftserve.engine.export import export_adapter, export_merged
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, LoraOptions, ModelSource
from ftserve.inference.interface import Generation, Sampling, Target
from ftserve.inference.pool import ModelPool
from ftserve.inference.transformers_engine import TransformersEngine
from tests.conftest import MODEL_CACHE
from tests.families import FAMILIES, Family, build, missing

pytestmark = pytest.mark.engine

TRAINED_ANSWER = "Rome is the capital."
UNTRAINED_ANSWER = "Paris, I think."  # weight 0
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer questions about capitals."},
    {"role": "user", "content": "Which city is the capital of France?"},
    {"role": "assistant", "content": UNTRAINED_ANSWER, "weight": 0},
    {"role": "user", "content": "And the capital of Italy?"},
    {"role": "assistant", "content": TRAINED_ANSWER},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CALL: dict[str, Any] = {"messages": [
    {"role": "user", "content": "What is the weather in Oslo?"},
    # OpenAI's shape: arguments as a JSON string; an id of 9 characters, which Mistral's template demands.
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call00001", "content": "4C, rain"},
    {"role": "assistant", "content": "It is 4C and raining in Oslo."},
], "tools": TOOLS}
PREFERENCE: dict[str, Any] = {"input": {"messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Greet me."}]},
              "preferred_output": [{"role": "assistant", "content": "Hello!"}],
              "non_preferred_output": [{"role": "assistant", "content": "No."}]}
STEPS = 2  # 4 examples, 2 a step, 1 epoch


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    chosen = FAMILIES[request.param]
    reason = missing(chosen)
    if reason:
        pytest.skip(f"{chosen.name}: {reason}")
    return chosen


@pytest.fixture(scope="module")
def base(family: Family) -> ModelSource:
    return ModelSource(id=f"family-{family.name}", path=build(family))


@pytest.fixture(scope="module")
def tokenizer(base: ModelSource) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(base.path)


def spec(tmp: Path, family: Family, base: ModelSource, method: str, rows: list[dict]) -> JobSpec:
    data = tmp / f"{method}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    targets = load_catalogue()[family.catalogue_ids[0]].lora_target_modules
    assert targets, family.name
    return JobSpec(job_id=f"ftjob-{family.name}-{method}", method=method, model=base,  # type: ignore[arg-type]
                   training_file=data, output_dir=tmp / method, cache_dir=MODEL_CACHE, n_epochs=1, batch_size=2,
                   learning_rate=1e-3, seed=3, lora=LoraOptions(target_modules=targets), max_seq_length=512)


@dataclass(frozen=True)
class Trained:
    sink: MemorySink
    model_dir: Path


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory, family: Family, base: ModelSource) -> Trained:
    rows = [{"messages": CONVERSATION}, TOOL_CALL] * 2
    sink = MemorySink()
    sft.run(spec(tmp_path_factory.mktemp(f"sft-{family.name}"), family, base, "supervised", rows), sink)
    return Trained(sink, sink.of(Finished)[0].model_dir)


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory, base: ModelSource, supervised: Trained) -> Path:
    """The fine-tuned family model, merged into a plain Hugging Face directory (GGUF starts from here)."""
    assert base.path is not None
    return export_merged(base.path, supervised.model_dir, tmp_path_factory.mktemp("merged") / "model")


def hand_mask(tokenizer: PreTrainedTokenizerBase, text: str, answers: list[str], end: str) -> list[bool]:
    """Trained positions found by hand: the tokens that cover each answer's text in the render, in order, and
    the end-of-turn token, which must come right after."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [False] * len(ids)
    at = 0
    for answer in answers:
        start = text.index(answer, at)
        at = start + len(answer)
        covering = [p for p, (lo, hi) in enumerate(offsets) if lo < at and hi > start]
        for p in covering:
            mask[p] = True
        after = covering[-1] + 1
        assert ids[after] == tokenizer.convert_tokens_to_ids(end), tokenizer.convert_ids_to_tokens(ids[after - 1:after + 2])
        mask[after] = True
    return mask


def test_the_loss_mask_is_exactly_the_trained_answer_and_its_end_of_turn_token(
        family: Family, tokenizer: PreTrainedTokenizerBase) -> None:
    sequence = Encoder(tokenizer, 4096).chat({"messages": CONVERSATION})
    plain = [{key: value for key, value in m.items() if key != "weight"} for m in CONVERSATION]
    rendered = str(tokenizer.apply_chat_template(plain, tokenize=False))
    assert sequence.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    expected = hand_mask(tokenizer, rendered, [TRAINED_ANSWER], family.end_of_turn)
    assert [label != IGNORE for label in sequence.labels] == expected
    assert all(label in (IGNORE, token) for label, token in zip(sequence.labels, sequence.input_ids))
    assert UNTRAINED_ANSWER in rendered  # the weight-0 answer is in the input, untrained
    if not family.system:
        assert "You answer questions about capitals." in rendered  # folded into the first user turn


def test_tool_calls_train_as_the_template_writes_them_and_tool_results_stay_in_the_prompt(
        family: Family, tokenizer: PreTrainedTokenizerBase) -> None:
    sequence = Encoder(tokenizer, 4096).chat(TOOL_CALL)
    whole = tokenizer.decode(sequence.input_ids)
    trained = tokenizer.decode([t for t, label in zip(sequence.input_ids, sequence.labels) if label != IGNORE])
    assert "get_weather" in trained and "Oslo" in trained and "raining in Oslo." in trained
    assert '\\"' not in trained  # arguments as an object, not a JSON string encoded again
    assert "4C, rain" in whole and "4C, rain" not in trained  # the result reaches the model, untrained
    assert "The weather in a city now" in whole  # so does the tool list
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert sum(label == end for label in sequence.labels) == 2  # each assistant turn ends trained


def test_preference_pairs_train_only_each_answer_and_its_end_of_turn_token(
        family: Family, tokenizer: PreTrainedTokenizerBase) -> None:
    pair = Encoder(tokenizer, 4096).preference(PREFERENCE)
    for side, answer in ((pair.chosen, "Hello!"), (pair.rejected, "No.")):
        rendered = tokenizer.decode(side.input_ids, skip_special_tokens=False)
        text = str(tokenizer.apply_chat_template(
            [*PREFERENCE["input"]["messages"], {"role": "assistant", "content": answer}], tokenize=False))
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == side.input_ids, rendered
        assert [label != IGNORE for label in side.labels] == hand_mask(tokenizer, text, [answer], family.end_of_turn)


def test_supervised_training_on_chat_tool_calls_and_weights_runs_its_steps(supervised: Trained) -> None:
    steps = {e.step: e.metrics["train_loss"] for e in supervised.sink.of(Metrics) if "train_loss" in e.metrics}
    assert list(steps) == list(range(1, STEPS + 1))
    assert all(math.isfinite(loss) and loss > 0 for loss in steps.values())
    assert supervised.sink.of(Finished)[0].step == STEPS


def test_dpo_trains(tmp_path: Path, family: Family, base: ModelSource) -> None:
    sink = MemorySink()
    rows = [PREFERENCE, {**PREFERENCE, "input": {"messages": PREFERENCE["input"]["messages"][1:]}}] * 2
    dpo.run(spec(tmp_path, family, base, "dpo", rows), sink)
    losses = [e.metrics["train_loss"] for e in sink.of(Metrics) if "train_loss" in e.metrics]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert sink.of(Finished)[0].step == 2


def test_the_fine_tuned_model_serves_and_its_exports_answer_the_same(
        tmp_path: Path, family: Family, base: ModelSource, supervised: Trained, merged: Path) -> None:
    pool = ModelPool(MODEL_CACHE, device="cpu")
    target = Target(f"ft:{base.id}:test", base, supervised.model_dir, "adapter")
    prompt = pool.text(target).encoder.prompt(CONVERSATION[:4])
    chunks = list(TransformersEngine(pool).generate(
        Generation(target, [prompt], Sampling(max_tokens=8, temperature=0.0)), lambda: False))
    served = [token for chunk in chunks for token in chunk.token_ids]
    assert served and chunks[-1].finish_reason in ("stop", "length")

    with pool.session(target) as model, torch.no_grad():
        served_logits = model(torch.tensor([prompt])).logits[0, -1]
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(plain(torch.tensor([prompt])).logits[0, -1], served_logits, atol=1e-4, rtol=1e-4)
        greedy = plain.generate(torch.tensor([prompt]), max_new_tokens=len(served), do_sample=False)[0, len(prompt):]
    assert greedy.tolist()[:len(served)] == served

    adapter = export_adapter(supervised.model_dir, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(load_catalogue()[family.catalogue_ids[0]].lora_target_modules or ())
    exported = Target(f"ft:{base.id}:exported", base, adapter, "adapter")  # on the base the pool holds already
    with pool.session(exported) as model, torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([prompt])).logits[0, -1], served_logits, atol=1e-4, rtol=1e-4)


def test_a_conversation_the_template_refuses_fails_with_the_templates_own_words() -> None:
    mistral = FAMILIES["mistral"]
    if missing(mistral):
        pytest.skip(f"mistral: {missing(mistral)}")
    encoder = Encoder(AutoTokenizer.from_pretrained(build(mistral)), 4096)
    calls = [{**call, "id": "call_0123456789"} for call in TOOL_CALL["messages"][1]["tool_calls"]]  # OpenAI's length
    messages = [TOOL_CALL["messages"][0], {**TOOL_CALL["messages"][1], "tool_calls": calls},
                {**TOOL_CALL["messages"][2], "tool_call_id": "call_0123456789"}, TOOL_CALL["messages"][3]]
    with pytest.raises(DataError, match="chat template refuses this conversation: Tool call IDs should be"):
        encoder.chat({"messages": messages, "tools": TOOLS})
