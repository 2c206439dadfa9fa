"""A reinforcement run's checkpoints: each validation round's model is a candidate, and only the 3 with the best
`valid_reward_mean` stay, as at OpenAI. They are reported when training ends, so a checkpoint that falls out of the
best is removed before anyone could have been told of it. Torch-free: the fake trainers keep theirs the same way."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEEP_CHECKPOINTS = 3
# The before/after evaluation answers at most this many validation prompts.
MAX_EVALUATED = 64


class Candidates:
    """Best valid_reward_mean first; a later step wins a tie (it trained longer)."""

    def __init__(self, root: Path, kept: list[dict[str, Any]] | None = None):
        self.root = root
        self.kept = _best(kept or [])
        """Each {step, metrics}, best first; part of the run's resumable state."""

    def offer(self, step: int, metrics: dict[str, float], save: Callable[[Path], object]) -> None:
        self.kept = _best(self.kept + [{"step": step, "metrics": metrics}])
        if any(c["step"] == step for c in self.kept):
            save(self.path(step))
        self.prune()

    def prune(self) -> None:
        """Removes candidate directories no longer among the best (a resumed run may have left some)."""
        wanted = {self.path(c["step"]).name for c in self.kept}
        for directory in self.root.glob("checkpoint-*"):
            if directory.name not in wanted:
                shutil.rmtree(directory, ignore_errors=True)

    def path(self, step: int) -> Path:
        return self.root / f"checkpoint-{step}"

    def in_order(self) -> list[tuple[int, dict[str, float], Path]]:
        """The kept checkpoints by step, as the run reports them at its end."""
        return [(c["step"], c["metrics"], self.path(c["step"])) for c in sorted(self.kept, key=lambda c: c["step"])]


def _best(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = sorted(candidates, key=lambda c: (c["metrics"]["valid_reward_mean"], c["step"]), reverse=True)
    return ranked[:KEEP_CHECKPOINTS]
