"""The fakes on a reinforcement job: the instant trainer (FTSERVE_TRAINER=fake) and the engine stand-in
(fake-engine) report what engine/grpo.py does, the same for both, run the job's grader for real, and keep the
three best validation rounds as checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftserve.domain.errors import TrainingFailed
from ftserve.engine import events
from ftserve.engine.artifacts import MANIFEST
from ftserve.engine.sink import MemorySink
from ftserve.engine.spec import JobSpec, ModelSource, Reinforcement
from ftserve.providers.base import StopReason
from ftserve.testing import FakeTrainer
from ftserve.testing_engine import run as run_engine
from ftserve.engine.candidates import KEEP_CHECKPOINTS

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}
MENTIONS = {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "operation": "ilike"}
MULTI = {"type": "multi", "name": "answer", "graders": {"exact": EXACT, "mentions": MENTIONS},
         "calculate_output": "0.5 * exact + 0.5 * mentions"}
RAISES = {"type": "python", "name": "broken", "source": "def grade(sample, item):\n    return 1 / 0\n"}
PER_STEP = ("train_reward_mean", "train_reward_std", "train_loss", "grader_errors", "completion_tokens_mean",
            "sample_seconds", "grade_seconds", "train_seconds")


class Recorder:
    """A reporter that keeps what the trainer reports."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}
        self.checkpoints: list[tuple[int, dict[str, float], Path | None]] = []
        self.messages: list[tuple[str, str]] = []

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float],
                tokens_per_second: float | None = None) -> None:
        self.steps[step] = metrics

    def checkpoint(self, step: int, metrics: dict[str, float], path: Path | None) -> None:
        self.checkpoints.append((step, metrics, path))

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append((text, level))

    def started(self, step: int, total_steps: int) -> None:
        pass

    def state_saved(self, step: int) -> None:
        pass

    def should_stop(self) -> StopReason | None:
        return None


def prompts(n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"Name city {i}."}], "answer": f"City {i}"} for i in range(n)]


def rft_spec(tmp_path: Path, grader: dict[str, Any], *, validation: bool = True, epochs: int = 3,
             **settings: Any) -> JobSpec:
    tmp_path.mkdir(parents=True, exist_ok=True)
    training, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    training.write_text("".join(json.dumps(row) + "\n" for row in prompts(8)))
    valid.write_text("".join(json.dumps(row) + "\n" for row in prompts(3)))
    config = tmp_path / "cache" / "tiny" / "config.json"  # what the fake engine's adapters are shaped after
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}))
    return JobSpec(
        job_id="ftjob-rft", method="reinforcement", model=ModelSource(id="tiny", path=tmp_path), training_file=training,
        validation_file=valid if validation else None, output_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
        n_epochs=epochs, batch_size=2, learning_rate=1e-5, seed=5, lora=dict(rank=2),  # type: ignore[arg-type]  # validated
        reinforcement=Reinforcement(grader=grader, **{"eval_interval": 2, "eval_samples": 2, **settings}),
    )


def fake_trainer(spec: JobSpec) -> tuple[Recorder, Any]:
    recorder = Recorder()
    outcome = FakeTrainer(step_seconds=0.0).train(spec, recorder)
    return recorder, outcome


def fake_engine(spec: JobSpec, sink: MemorySink | None = None) -> MemorySink:
    sink = sink or MemorySink()
    run_engine(spec, sink, step_seconds=0.0, stall_at=None)
    return sink


def kept_on_disk(spec: JobSpec) -> set[int]:
    return {int(p.name.removeprefix("checkpoint-")) for p in spec.output_dir.glob("checkpoint-*")}


def best_three(valid: dict[int, float]) -> set[int]:
    """As grpo ranks them: best validation reward first, a later step winning a tie."""
    return {step for step, _ in sorted(valid.items(), key=lambda item: (item[1], item[0]), reverse=True)[:3]}


def test_the_fake_trainer_reports_rewards_each_step_and_validation_at_the_interval(tmp_path: Path) -> None:
    recorder, outcome = fake_trainer(rft_spec(tmp_path, MULTI, eval_interval=5))
    assert sorted(recorder.steps) == list(range(1, 13))  # 8 prompts / batch 2 x 3 epochs
    for step, metrics in recorder.steps.items():
        assert set(PER_STEP) <= set(metrics)
        assert {"sub_rewards.exact", "sub_rewards.mentions"} <= set(metrics) and "kl" not in metrics
        assert metrics["grader_errors"] == 0 and 0 <= metrics["train_reward_mean"] <= 1
        validated = {"valid_reward_mean", "valid_sub_rewards.exact", "valid_sub_rewards.mentions"} <= set(metrics)
        assert validated == (step in (5, 10, 12)), step  # every eval_interval steps, and the last
    rewards = [recorder.steps[step]["train_reward_mean"] for step in sorted(recorder.steps)]
    assert rewards[-1] > rewards[0]  # a curve that rises
    assert outcome.evaluation == {"examples": 3, "generated": 3, "metric": "reward",
                                  "base": {"reward_mean": pytest.approx(0.15)},
                                  "fine_tuned": {"reward_mean": outcome.evaluation["fine_tuned"]["reward_mean"]}}
    assert outcome.evaluation["fine_tuned"]["reward_mean"] > 0.7
    assert outcome.model_dir.name == "model"


def test_the_same_job_gives_the_same_reports_on_both_fakes(tmp_path: Path) -> None:
    recorder, outcome = fake_trainer(rft_spec(tmp_path / "a", MULTI, kl_beta=0.05))
    sink = fake_engine(rft_spec(tmp_path / "b", MULTI, kl_beta=0.05))
    timings = {"grade_seconds", "train_seconds"}
    engine_steps = {e.step: e.metrics for e in sink.of(events.Metrics)}
    assert {step: {k: v for k, v in m.items() if k not in timings} for step, m in recorder.steps.items()} == \
        {step: {k: v for k, v in m.items() if k not in timings} for step, m in engine_steps.items()}
    assert all("kl" in m for m in engine_steps.values())
    assert [(step, m["valid_reward_mean"]) for step, m, _ in recorder.checkpoints] == \
        [(c.step, c.metrics["valid_reward_mean"]) for c in sink.of(events.Checkpoint)]
    assert sink.of(events.Finished)[0].evaluation == outcome.evaluation


@pytest.mark.parametrize("fake", ["trainer", "engine"])
def test_the_three_best_validation_rounds_are_kept_and_reported_at_the_end(tmp_path: Path, fake: str) -> None:
    spec = rft_spec(tmp_path, MULTI, eval_interval=1)
    if fake == "trainer":
        recorder, _ = fake_trainer(spec)
        valid = {step: m["valid_reward_mean"] for step, m in recorder.steps.items()}
        reported = [(step, metrics, path) for step, metrics, path in recorder.checkpoints]
    else:
        sink = fake_engine(spec)
        valid = {e.step: e.metrics["valid_reward_mean"] for e in sink.of(events.Metrics)}
        reported = [(c.step, c.metrics, c.path) for c in sink.of(events.Checkpoint)]
        assert isinstance(sink.events[-2], events.Checkpoint)  # after the last step's report, before Finished
    assert len(valid) == 12 and len(set(valid.values())) > 3
    best = best_three(valid)
    assert best != {10, 11, 12}  # the newest are not simply the best: the ranking is what is tested
    assert [step for step, _, _ in reported] == sorted(best) and kept_on_disk(spec) == best
    for step, metrics, path in reported:
        assert metrics["step"] == step and metrics["valid_reward_mean"] == valid[step]
        assert path is not None and path.is_dir()


def test_a_paused_fake_engine_keeps_the_same_checkpoints_as_a_run_straight_through(tmp_path: Path) -> None:
    straight = rft_spec(tmp_path / "straight", MULTI, eval_interval=1)
    reported = [c.step for c in fake_engine(straight).of(events.Checkpoint)]
    paused = rft_spec(tmp_path / "paused", MULTI, eval_interval=1)
    first = fake_engine(paused, MemorySink(stop_after_step=7))
    assert first.of(events.Stopped)[0].step == 7 and not first.of(events.Checkpoint)
    second = fake_engine(paused)
    assert second.of(events.Started)[0].step == 7
    assert [c.step for c in second.of(events.Checkpoint)] == reported and kept_on_disk(paused) == kept_on_disk(straight)


def test_without_a_validation_file_a_checkpoint_closes_each_epoch(tmp_path: Path) -> None:
    recorder, outcome = fake_trainer(rft_spec(tmp_path / "trainer", EXACT, validation=False))
    assert [step for step, _, _ in recorder.checkpoints] == [4, 8, 12]
    assert not any("valid_reward_mean" in m for m in recorder.steps.values()) and outcome.evaluation is None
    assert not any(key.startswith("sub_rewards.") for key in recorder.steps[1])  # one grader: no sub-rewards
    sink = fake_engine(rft_spec(tmp_path / "engine", EXACT, validation=False))
    assert [c.step for c in sink.of(events.Checkpoint)] == [4, 8, 12]
    assert sink.of(events.Finished)[0].model_dir.name == "checkpoint-12"


def test_a_grader_that_fails_on_every_row_shows_in_grader_errors(tmp_path: Path) -> None:
    recorder, outcome = fake_trainer(rft_spec(tmp_path / "trainer", RAISES, epochs=1, eval_interval=4, group_size=4))
    # Each step: 2 prompts x 4 answers, every one failing.
    assert len(recorder.steps) == 4
    assert all(m["grader_errors"] == 8 and m["train_reward_mean"] == 0 for m in recorder.steps.values())
    assert recorder.steps[4]["valid_reward_mean"] == 0 and outcome.evaluation["fine_tuned"]["reward_mean"] == 0
    warnings = [text for text, level in recorder.messages if level == "warn"]
    assert len(warnings) == 1 and "failed on 8 of 8 samples at step 1" in warnings[0]
    assert "python_grader_runtime_error" in warnings[0] and "ZeroDivisionError" in warnings[0]
    sink = fake_engine(rft_spec(tmp_path / "engine", RAISES, epochs=1, eval_interval=4, group_size=4))
    assert all(e.metrics["grader_errors"] == 8 for e in sink.of(events.Metrics))
    assert [e.text for e in sink.of(events.Message) if e.level == "warn"] == warnings


def test_a_formula_that_cannot_be_computed_fails_every_sample_as_in_the_engine(tmp_path: Path) -> None:
    # The engine does not refuse such a grader (create does): each sample's grading fails, as here.
    unknown = {**MULTI, "calculate_output": "exact + missing"}
    recorder, _ = fake_trainer(rft_spec(tmp_path, unknown, validation=False))
    assert all(m["grader_errors"] == 16 and m["train_reward_mean"] == 0 for m in recorder.steps.values())
    assert "formula_parse_error" in recorder.messages[0][0]


@pytest.mark.parametrize(("change", "message"), [
    ({"reinforcement": None}, "a reinforcement job needs its grader"),
    ({"training_file": Path("/dev/null")}, "training file: the file has no examples"),
])
def test_what_the_engine_refuses_both_fakes_refuse_in_its_words(tmp_path: Path, change: dict[str, Any],
                                                                  message: str) -> None:
    spec = rft_spec(tmp_path, EXACT).model_copy(update=change)
    with pytest.raises(TrainingFailed, match=message):
        fake_trainer(spec)
    sink = fake_engine(spec)
    assert [e.message for e in sink.of(events.Failed)] == [message] and not sink.of(events.Metrics)


def test_a_supervised_job_on_the_fake_engine_still_keeps_its_epoch_checkpoints(tmp_path: Path) -> None:
    spec = rft_spec(tmp_path, EXACT).model_copy(update={"method": "supervised", "reinforcement": None})
    sink = fake_engine(spec)
    assert [c.step for c in sink.of(events.Checkpoint)] == [4, 8, 12]
    finished = sink.of(events.Finished)[0]
    assert finished.model_dir.name == "checkpoint-12" and (finished.model_dir / MANIFEST).exists()
    assert finished.evaluation is not None and "loss" in finished.evaluation["base"]
