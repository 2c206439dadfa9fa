"""Resumable training state: the trainable weights, optimizer, schedule, step and RNG, saved atomically.

A state lives in `state/step-N` under the job's output dir. It is written under a temporary
name and renamed when complete, so an engine killed mid-save leaves the previous state intact.
Only the newest state is kept.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FILE = "state.pt"


@dataclass(frozen=True)
class Saved:
    step: int
    trained_tokens: int
    extra: dict[str, Any]


def save(output_dir: Path, step: int, trained_tokens: int, weights: dict[str, torch.Tensor],
         optimizer: torch.optim.Optimizer, scheduler: Any, extra: dict[str, Any]) -> Path:
    root = output_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".step-{step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    torch.save(
        {
            "step": step, "trained_tokens": trained_tokens,
            "weights": {name: tensor.detach().cpu() for name, tensor in weights.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "extra": extra,
        },
        staging / FILE,
    )
    target = root / f"step-{step}"
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for old in root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest(output_dir: Path) -> Path | None:
    done = [p for p in (output_dir / "state").glob("step-*") if (p / FILE).exists()]
    return max(done, key=lambda p: int(p.name.removeprefix("step-")), default=None)


def load(path: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any) -> Saved:
    saved = torch.load(path / FILE, map_location="cpu", weights_only=False)
    with torch.no_grad():
        for name, tensor in weights.items():
            tensor.copy_(saved["weights"][name])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return Saved(saved["step"], saved["trained_tokens"], saved["extra"])
