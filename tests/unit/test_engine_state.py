"""A training state is read back with `weights_only=True`: what the engine saves loads, a state written
before this rule loads, and a file that would run code when unpickled is refused without running it."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ftserve.engine import state


def training(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer, Any]:
    """The pieces `Run` saves: trainable weights, AdamW and a LambdaLR schedule, after one step."""
    torch.manual_seed(seed)
    weights: dict[str, torch.Tensor] = {"layer.weight": torch.nn.Parameter(torch.randn(4, 4))}
    optimizer = torch.optim.AdamW(weights.values(), lr=1e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    weights["layer.weight"].sum().backward()
    optimizer.step()
    scheduler.step()
    return weights, optimizer, scheduler


def test_a_saved_state_loads_back_with_every_recipes_extra(tmp_path: Path) -> None:
    weights, optimizer, scheduler = training()
    reference = torch.randn(3, 2)
    extra = {"reference": reference,  # DPO's reference log-probabilities
             "candidates": [{"step": 4, "metrics": {"valid_reward_mean": np.float64(0.5)}}]}  # GRPO's kept rounds
    saved = state.save(tmp_path, 4, 100, weights, optimizer.state_dict(), scheduler.state_dict(), extra,
                       ['{"type": "metrics"}'])

    fresh, fresh_optimizer, fresh_scheduler = training(seed=1)
    loaded = state.read(saved)
    state.restore(loaded, fresh, fresh_optimizer, fresh_scheduler)
    assert (loaded.step, loaded.trained_tokens, loaded.reported) == (4, 100, ['{"type": "metrics"}'])
    assert torch.equal(fresh["layer.weight"], weights["layer.weight"])
    assert torch.equal(loaded.extra["reference"], reference)
    assert loaded.extra["candidates"] == [{"step": 4, "metrics": {"valid_reward_mean": 0.5}}]
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_a_state_saved_before_weights_only_loading_still_resumes(tmp_path: Path) -> None:
    weights, optimizer, scheduler = training()
    (tmp_path / "step-2").mkdir()
    torch.save({  # the layout earlier versions wrote, unconverted
        "step": 2, "trained_tokens": 50, "weights": {n: t.detach() for n, t in weights.items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
        "extra": {"candidates": [{"step": 2, "metrics": {"valid_reward_mean": 0.25}}]}, "reported": [],
    }, tmp_path / "step-2" / state.FILE)
    loaded = state.read(tmp_path / "step-2")
    state.restore(loaded, *training(seed=1))
    assert (loaded.step, loaded.extra["candidates"][0]["step"]) == (2, 2)


class Planted:
    """What someone who can write to a shared data dir could leave as a state: unpickling it calls `open`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return builtins.open, (str(self.marker), "w")


def test_a_state_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "step-9").mkdir()
    torch.save({"step": 9, "extra": Planted(marker)}, tmp_path / "step-9" / state.FILE)
    with pytest.raises(state.UnsafeState, match=r"more than tensors and plain values.*; it is refused"):
        state.read(tmp_path / "step-9")
    assert not marker.exists()
    torch.load(tmp_path / "step-9" / state.FILE, weights_only=False)  # what loading it used to do
    assert marker.exists()


def test_saving_an_object_that_would_not_load_back_fails_at_once(tmp_path: Path) -> None:
    weights, optimizer, scheduler = training()
    with pytest.raises(TypeError, match="cannot hold Planted"):
        state.save(tmp_path, 1, 1, weights, optimizer.state_dict(), scheduler.state_dict(),
                   {"oops": Planted(tmp_path / "x")}, [])
    assert state.saved_states(tmp_path) == []
