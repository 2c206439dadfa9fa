"""Trainers by name, as `FTSERVE_TRAINER` selects them."""

from __future__ import annotations

from typing import Callable

from ftserve.catalogue import load_catalogue
from ftserve.config import Settings, TrainerName
from ftserve.providers.base import Trainer
from ftserve.providers.local import LocalTrainer
from ftserve.testing import FakeTrainer

TRAINERS: dict[TrainerName, Callable[[Settings], Trainer]] = {
    "local": lambda settings: LocalTrainer(
        load_catalogue(settings.catalogue_file), settings.resolved_models_dir, settings.device
    ),
    "fake": lambda settings: FakeTrainer(step_seconds=settings.fake_step_seconds),
}


def trainer_for(settings: Settings) -> Trainer | None:
    return TRAINERS[settings.trainer](settings) if settings.trainer else None
