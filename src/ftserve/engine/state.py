"""Resumable training state: the trainable weights, optimizer, schedule, step and RNG, saved atomically.

A state lives in `state/step-N` under the job's output dir. It is written under a temporary
name, flushed to disk and renamed when complete, so an engine killed mid-save leaves the earlier
states intact. The two newest are kept: if the newest cannot be read back (a disk that lost
unsynced writes, a torn copy), training resumes from the one before it.

A state holds only tensors and plain values (dicts, lists, tuples, strings, numbers), and is read back with
`weights_only=True`: the data dir may be a shared mount, and unpickling anything else could run code in
the engine. A file that names any other object is refused, not loaded.
"""

from __future__ import annotations

import numbers
import os
import pickle
import re
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
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor


def save(output_dir: Path, step: int, trained_tokens: int, weights: dict[str, torch.Tensor],
         optimizer: dict[str, Any], scheduler: dict[str, Any], extra: dict[str, Any], reported: list[str]) -> Path:
    """Keep a state: the whole trainable weights and the optimizer's and schedule's state dicts (a job trained
    across processes gathers its shards first, so any number of processes saves the same layout)."""
    contents = {
        "step": step, "trained_tokens": trained_tokens,
        "weights": {name: tensor.detach().cpu() for name, tensor in weights.items()},
        "optimizer": optimizer, "scheduler": scheduler,
        "rng": torch.get_rng_state(), "extra": plain(extra), "reported": list(reported),
    }
    root = output_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):  # left by an engine killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".step-{step}.tmp"
    staging.mkdir()
    torch.save(contents, staging / FILE)
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


def read(path: Path) -> Saved:
    """The state saved in `path`; refused (`UnsafeState`) if it names anything but tensors and plain values."""
    try:
        saved = torch.load(path / FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise UnsafeState(
            f"{path / FILE} holds more than tensors and plain values"
            + (f" ({named.group(1)})" if named else "") + "; it is refused, since loading it could run code"
        ) from None
    return Saved(saved["step"], saved["trained_tokens"], saved["extra"], saved.get("reported", []),
                 saved["weights"], saved["optimizer"], saved["scheduler"], saved["rng"])


def restore(saved: Saved, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Put a read state back into the run's weights, optimizer, schedule and random generator."""
    with torch.no_grad():
        for name, tensor in weights.items():
            tensor.copy_(saved.weights[name])
    optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    torch.set_rng_state(saved.rng)


class UnsafeState(ValueError):
    """A saved state that names objects other than tensors and plain values."""


def plain(value: Any) -> Any:
    """`value` as `weights_only` loading accepts it: tensors, and dicts, lists and tuples of them and of plain
    values. A recipe's own state may hold numpy numbers (a metric); anything else is a bug, told of at save."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"a training state cannot hold {type(value).__name__}: only tensors and plain values load safely")
