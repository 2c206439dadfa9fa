"""The reinforcement recipe (engine/grpo.py) in-process, on the tiny stand-in for the default model
(tests/conftest.py), since the subject here is its mechanics: the same seed gives the same run, a paused run
resumes at the step it stopped and ends as one never interrupted, the best validation rounds become the
checkpoints, and a python grader runs in its sandbox from the engine. What the default model learns by
reinforcement is tested through the API, in tests/integration/test_reinforcement.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ftserve.engine import grpo
from ftserve.engine.events import Checkpoint, Finished, Message, Metrics, Started, Stopped
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, ModelSource, Reinforcement
from tests.conftest import MODEL_CACHE
from tests.tasks import jsonl, reinforcement_examples

pytestmark = pytest.mark.engine

# Against a random model's answers, fuzzy_match scores vary within each group: every step has something to learn.
SIMILAR = {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
           "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
# 8 prompts in steps of 2 for 2 epochs is 8 steps; validation rounds at 2, 4, 6 and 8, of which 3 are kept.
PROMPTS, BATCH, EPOCHS, GROUP, EVAL_INTERVAL = 8, 2, 2, 4, 2
STEPS = PROMPTS // BATCH * EPOCHS
ROUNDS = [2, 4, 6, 8]
TIMINGS = ("sample_seconds", "grade_seconds", "train_seconds")


def spec(tmp: Path, model: ModelSource, name: str, *, grader: dict[str, Any] = SIMILAR, validation: bool = True,
         seed: int = 7, epochs: int = EPOCHS, prompts: list[dict] | None = None) -> JobSpec:
    training, valid = tmp / f"{name}-train.jsonl", tmp / f"{name}-valid.jsonl"
    training.write_bytes(jsonl(prompts or reinforcement_examples(PROMPTS)))
    valid.write_bytes(jsonl(reinforcement_examples(4, offset=1000)))
    return JobSpec(
        job_id=f"ftjob-{name}", method="reinforcement", model=model, training_file=training,
        validation_file=valid if validation else None, output_dir=tmp / name, cache_dir=MODEL_CACHE,
        n_epochs=epochs, batch_size=BATCH, learning_rate=2e-3, seed=seed,
        reinforcement=Reinforcement(grader=grader, group_size=GROUP, max_completion_tokens=8,
                                    eval_interval=EVAL_INTERVAL, eval_samples=4),
    )


def untimed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def steps(sink: MemorySink) -> dict[int, dict[str, float]]:
    """Each step's metrics as reported, less the timings."""
    return {e.step: untimed(e.metrics) for e in sink.of(Metrics)}


def checkpoints(sink: MemorySink) -> list[tuple[int, dict[str, float]]]:
    return [(c.step, untimed(c.metrics)) for c in sink.of(Checkpoint)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model: ModelSource) -> tuple[JobSpec, MemorySink]:
    job = spec(tmp_path_factory.mktemp("grpo"), tiny_model, "whole")
    sink = MemorySink()
    grpo.run(job, sink)
    return job, sink


def test_a_run_reports_rewards_and_keeps_its_three_best_validation_rounds(
        uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    job, sink = uninterrupted
    reported = steps(sink)
    assert list(reported) == list(range(1, STEPS + 1))
    for metrics in reported.values():
        assert 0 < metrics["train_reward_mean"] < 1 and metrics["train_reward_std"] > 0
        assert metrics["grader_errors"] == 0 and 1 <= metrics["completion_tokens_mean"] <= 8
    valid = {s: m["valid_reward_mean"] for s, m in reported.items() if "valid_reward_mean" in m}
    assert list(valid) == ROUNDS
    # The random model's greedy answers (blank lines) score alike, so ties decide here, later steps first; how
    # rounds that differ are ranked is tested on the fakes (tests/unit/test_fake_trainers.py), with the same code.
    best = sorted(ROUNDS, key=lambda s: (valid[s], s), reverse=True)[:3]
    kept = sink.of(Checkpoint)
    assert [c.step for c in kept] == sorted(best)  # reported at the end, in step order
    for checkpoint in kept:
        assert (checkpoint.path / "adapter_model.safetensors").exists()
        assert checkpoint.metrics["valid_reward_mean"] == valid[checkpoint.step]
    assert sorted(p.name for p in job.output_dir.glob("checkpoint-*")) == sorted(f"checkpoint-{s}" for s in best)
    finished = sink.of(Finished)[0]
    assert finished.evaluation is not None
    assert finished.evaluation["metric"] == "reward" and finished.evaluation["examples"] == 4
    # The evaluation's fine-tuned score is the last model's on the same 4 prompts the last round answered.
    assert finished.evaluation["fine_tuned"]["reward_mean"] == pytest.approx(valid[STEPS], abs=1e-6)


def test_the_same_seed_gives_the_same_run(tmp_path: Path, tiny_model: ModelSource,
                                          uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    _, first = uninterrupted
    again = MemorySink()
    grpo.run(spec(tmp_path, tiny_model, "again"), again)
    assert steps(again) == steps(first)
    assert checkpoints(again) == checkpoints(first)
    assert again.of(Finished)[0].evaluation == first.of(Finished)[0].evaluation

    other = MemorySink(stop_after_step=1, stop="cancel")
    grpo.run(spec(tmp_path, tiny_model, "other", seed=8), other)
    assert steps(other)[1] != steps(first)[1]


def test_pause_then_resume_continues_at_the_same_step_as_a_run_never_paused(
        tmp_path: Path, tiny_model: ModelSource, uninterrupted: tuple[JobSpec, MemorySink]) -> None:
    _, whole = uninterrupted
    job = spec(tmp_path, tiny_model, "paused")
    paused = MemorySink(stop_after_step=3)  # after a validation round's candidate (2) was saved, before the next
    grpo.run(job, paused)
    assert [(s.reason, s.step) for s in paused.of(Stopped)] == [("pause", 3)]
    assert not paused.of(Checkpoint)  # candidates are reported only when training ends

    resumed = MemorySink()
    grpo.run(job, resumed)
    assert "Resuming from step 3" in [m.text for m in resumed.of(Message)]
    assert resumed.of(Started)[0].step == 3
    assert not [m.text for m in resumed.of(Message) if m.text.startswith("Base model on")]  # measured once, kept
    assert steps(resumed) == steps(whole)  # 1-3 replayed as the state holds them, then the same steps on
    assert checkpoints(resumed) == checkpoints(whole)
    assert resumed.of(Finished)[0].evaluation == whole.of(Finished)[0].evaluation


def test_a_python_grader_runs_in_its_sandbox_from_the_engine(tmp_path: Path, tiny_model: ModelSource) -> None:
    # `partial` is each item's own field: a reward of exactly 0.25 on every answer can only come from this source
    # having run on the items (a grader that failed would score 0 and count in grader_errors).
    source = ("def grade(sample, item):\n"
              "    return 1.0 if sample['output_text'] == item['answer'] else item['partial']\n")
    prompts = [{**row, "partial": 0.25} for row in reinforcement_examples(4)]
    python = {"type": "python", "name": "first word", "source": source}
    sink = MemorySink()
    grpo.run(spec(tmp_path, tiny_model, "python", grader=python, validation=False, epochs=1, prompts=prompts), sink)
    reported = steps(sink)
    assert list(reported) == [1, 2]
    for metrics in reported.values():
        assert (metrics["train_reward_mean"], metrics["train_reward_std"], metrics["grader_errors"]) == (0.25, 0, 0)

    raises = {"type": "python", "name": "broken", "source": "def grade(sample, item):\n    return 1 / 0\n"}
    failing = MemorySink(stop_after_step=1, stop="cancel")
    grpo.run(spec(tmp_path, tiny_model, "raises", grader=raises, validation=False, epochs=1, prompts=prompts), failing)
    assert steps(failing)[1]["grader_errors"] == BATCH * GROUP  # every answer of the step
    assert steps(failing)[1]["train_reward_mean"] == 0
