"""Resumable training state: the trainable weights, optimizer, schedule, step and RNG, saved atomically.

A state lives in `state/step-N` under the job's output dir. It is written under a temporary
name, flushed to disk and renamed when complete, so an engine killed mid-save leaves the earlier
states intact. The two newest are kept: if the newest cannot be read back (a disk that lost
unsynced writes, a torn copy), training resumes from the one before it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FILE = "state.pt"
KEEP = 2


@dataclass(frozen=True)
class Saved:
    step: int
    trained_tokens: int
    extra: dict[str, Any]
    reported: list[str]
    """The metrics and checkpoint events reported up to this step, as protocol lines, replayed on resume."""


def save(output_dir: Path, step: int, trained_tokens: int, weights: dict[str, torch.Tensor],
         optimizer: torch.optim.Optimizer, scheduler: Any, extra: dict[str, Any], reported: list[str]) -> Path:
    root = output_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):  # left by an engine killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".step-{step}.tmp"
    staging.mkdir()
    torch.save(
        {
            "step": step, "trained_tokens": trained_tokens,
            "weights": {name: tensor.detach().cpu() for name, tensor in weights.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "extra": extra, "reported": reported,
        },
        staging / FILE,
    )
    _sync(staging / FILE)
    target = root / f"step-{step}"
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    _sync(root)
    for old in saved_states(output_dir)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def saved_states(output_dir: Path) -> list[Path]:
    """The complete states under `output_dir`, newest first."""
    done = [p for p in (output_dir / "state").glob("step-*") if (p / FILE).exists()]
    return sorted(done, key=step_of, reverse=True)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any) -> Saved:
    saved = torch.load(path / FILE, map_location="cpu", weights_only=False)
    with torch.no_grad():
        for name, tensor in weights.items():
            tensor.copy_(saved["weights"][name])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return Saved(saved["step"], saved["trained_tokens"], saved["extra"], saved.get("reported", []))
