"""The engine, in-process, on tiny datasets: reproducible losses, exact resume after a pause, the last three
epochs kept as checkpoints, full fine-tuning, on the tiny stand-in for the default model (tests/conftest.py),
since their subject is the engine's mechanics. What the real default model learns (SFT and DPO) is tested
through the API, in tests/contract/test_local_training.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftserve.engine import __main__ as engine_main
from ftserve.engine import sft
from ftserve.engine.evaluate import BASELINE_FILE
from ftserve.engine.events import (
    Checkpoint, Command, Failed, Finished, Message, Metrics, Started, StateSaved, Stopped,
)
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, ModelSource
from tests.conftest import MODEL_CACHE
from tests.tasks import chat_examples, jsonl

pytestmark = pytest.mark.engine


def spec(tmp: Path, model: ModelSource, name: str, *, examples: bytes, **overrides: object) -> JobSpec:
    data = tmp / f"{name}.jsonl"
    data.write_bytes(examples)
    values: dict[str, object] = dict(
        job_id=f"ftjob-{name}", method="supervised", model=model, training_file=data,
        output_dir=tmp / name, cache_dir=MODEL_CACHE,
        n_epochs=4, batch_size=4, learning_rate=1e-3, seed=7,
    )
    values.update(overrides)
    return JobSpec(**values)  # type: ignore[arg-type]


def losses(sink: MemorySink) -> dict[int, float]:
    return {e.step: e.metrics["train_loss"] for e in sink.of(Metrics)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model: ModelSource,
                  tiny_model_dir: Path) -> tuple[JobSpec, MemorySink]:
    job = spec(tmp_path_factory.mktemp("runs"), tiny_model, "whole", examples=jsonl(chat_examples(8)))
    sink = MemorySink()
    sft.run(job, sink)
    return job, sink


def test_a_run_trains_keeps_the_last_three_epochs_and_reports_its_tokens(uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    job, sink = uninterrupted
    steps = losses(sink)
    assert list(steps) == list(range(1, 9))
    assert steps[8] < steps[1]  # it learns; how well the real model learns is for tests/contract/test_local_training.py
    checkpoints = sink.of(Checkpoint)
    assert [c.step for c in checkpoints] == [4, 6, 8]  # epochs 2, 3 and 4 of 4
    for checkpoint in checkpoints:
        assert (checkpoint.path / "adapter_model.safetensors").exists()
        assert checkpoint.metrics["train_loss"] == steps[checkpoint.step]
    finished = sink.of(Finished)[0]
    assert finished.model_dir == checkpoints[-1].path
    assert finished.trained_tokens > 0 and finished.trained_tokens % 4 == 0  # four epochs of the same tokens


def test_the_same_seed_gives_the_same_losses(tmp_path: Path, tiny_model: ModelSource,
                                             uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    _, first = uninterrupted
    again = MemorySink(stop_after_step=3, stop="cancel")
    sft.run(spec(tmp_path, tiny_model, "again", examples=jsonl(chat_examples(8))), again)
    assert list(losses(again).values()) == [losses(first)[s] for s in (1, 2, 3)]
    assert again.of(Stopped)[0].reason == "cancel"
    other = MemorySink(stop_after_step=2, stop="cancel")
    sft.run(spec(tmp_path, tiny_model, "other", examples=jsonl(chat_examples(8)), seed=8), other)
    assert losses(other)[2] != losses(first)[2]


def test_gradient_checkpointing_trains_with_the_same_losses(tmp_path: Path, tiny_model: ModelSource,
                                                            uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    _, plain = uninterrupted
    recomputed = MemorySink(stop_after_step=4, stop="cancel")
    sft.run(spec(tmp_path, tiny_model, "checkpointed", examples=jsonl(chat_examples(8)), gradient_checkpointing=True),
            recomputed)
    assert list(losses(recomputed).values()) == pytest.approx([losses(plain)[s] for s in (1, 2, 3, 4)], rel=1e-4)


def test_a_job_over_its_memory_fails_before_its_first_step(tmp_path: Path, tiny_model: ModelSource) -> None:
    sink = MemorySink()
    assert engine_main.run(spec(tmp_path, tiny_model, "too-big", examples=jsonl(chat_examples(8)),
                                memory_limit_gb=0.5), sink) == 1
    assert sink.of(Metrics) == [] and not (tmp_path / "too-big" / "model").exists()
    failed = sink.of(Failed)[0].message
    assert failed.startswith("The job would need about ") and "more than the 0.5 GiB it may use" in failed


def test_pause_then_resume_continues_exactly_where_it_stopped(tmp_path: Path, tiny_model: ModelSource,
                                                               uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    _, whole = uninterrupted
    job = spec(tmp_path, tiny_model, "paused", examples=jsonl(chat_examples(8)))
    paused = MemorySink(stop_after_step=3)
    sft.run(job, paused)
    stopped = paused.of(Stopped)[0]
    assert (stopped.reason, stopped.step) == ("pause", 3)
    assert paused.events[-2:] == [StateSaved(step=3), stopped]  # the service sees the pause saved step 3
    resumed = MemorySink()
    sft.run(job, resumed)
    assert "Resuming from step 3" in [m.text for m in resumed.of(Message)]
    assert resumed.of(Started)[0].step == 3
    # Right after it starts, the engine reports again steps 1-3 as the state holds them, for a worker that died
    # before writing them; then it trains on from step 4.
    after_start = resumed.events[resumed.events.index(resumed.of(Started)[0]) + 1:]
    assert after_start[:3] == [m.model_copy(update={"tokens_per_second": None}) for m in paused.of(Metrics)]
    assert [m.step for m in resumed.of(Metrics)] == list(range(1, 9))
    for step, loss in losses(resumed).items():
        assert loss == pytest.approx(losses(whole)[step], abs=1e-4)
    assert resumed.of(Finished)[0].trained_tokens == whole.of(Finished)[0].trained_tokens


def test_an_unreadable_state_is_skipped_for_the_one_before_it(tmp_path: Path, tiny_model: ModelSource,
                                                              uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    _, whole = uninterrupted
    job = spec(tmp_path, tiny_model, "torn", examples=jsonl(chat_examples(8)), checkpoint_interval=2)
    cancelled = MemorySink(stop_after_step=5, stop="cancel")
    sft.run(job, cancelled)
    assert [s.step for s in cancelled.of(StateSaved)] == [2, 4]  # a cancel saves nothing more
    states = sorted(p.name for p in (job.output_dir / "state").iterdir())
    assert states == ["step-2", "step-4"]  # the two newest are kept
    newest = job.output_dir / "state" / "step-4" / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn, as by a disk that lost writes

    resumed = MemorySink()
    sft.run(job, resumed)
    texts = [m.text for m in resumed.of(Message)]
    assert any(t.startswith("The state saved at step-4 could not be read") for t in texts)
    assert "Resuming from step 2" in texts
    assert [m.step for m in resumed.of(Metrics)] == list(range(1, 9))  # 1 and 2 as state step-2 holds them
    for step, loss in losses(resumed).items():  # the same run as one never interrupted
        assert loss == pytest.approx(losses(whole)[step], abs=1e-4)


class StopOnThirdAsk(MemorySink):
    """Asks to cancel from the third time the engine looks: inside its scoring of the base model."""

    asked = 0

    def requested_stop(self) -> Command | None:
        self.asked += 1
        return "cancel" if self.asked >= 3 else None


def test_a_stop_while_the_base_model_is_scored_ends_the_run_at_once(tmp_path: Path, tiny_model: ModelSource,
                                                                     tiny_model_dir: Path) -> None:
    # An engine whose server was killed kept scoring the base model for minutes on a loaded machine before it
    # looked for the stop, training beside its own replacement.
    valid = tmp_path / "valid.jsonl"
    valid.write_bytes(jsonl(chat_examples(4, 100)))
    job = spec(tmp_path, tiny_model, "stopped", examples=jsonl(chat_examples(8))).model_copy(
        update={"validation_file": valid})
    sink = StopOnThirdAsk()
    sft.run(job, sink)
    assert [(s.reason, s.step) for s in sink.of(Stopped)] == [("cancel", 0)]
    assert not sink.of(Metrics)
    assert not [m.text for m in sink.of(Message) if m.text.startswith("Base model on")]
    assert not (job.output_dir / BASELINE_FILE).exists()  # nothing half-scored is kept for the next attempt


def test_full_fine_tuning_trains_every_weight_and_saves_a_whole_model(tmp_path: Path, tiny_model: ModelSource,
                                                                      tiny_model_dir: Path) -> None:
    job = spec(tmp_path, tiny_model, "full", examples=jsonl(chat_examples(8)), training_type="full",
               n_epochs=2)
    sink = MemorySink()
    sft.run(job, sink)
    steps = losses(sink)
    assert steps[4] < steps[1]
    model_dir = sink.of(Finished)[0].model_dir
    assert not (model_dir / "adapter_model.safetensors").exists()
    trained = load_file(model_dir / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    changed = [name for name in base if name in trained and not torch.equal(base[name], trained[name])]
    assert len(changed) > len(base) // 2
