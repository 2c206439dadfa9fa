"""A job's files on the machine that runs its engine, when the blob store is not a directory that machine shares.

Before the engine starts, `prepare` lays the job out in a scratch directory the way the store keys it: the training
and validation files and the model it continues from, if any (on the worker's own machine, its copies are used in
place), and the newest resumable state saved under the job's output prefix, so an attempt on any machine resumes
where the last one stopped. As the engine reports, `publish` stores what each event names before the event goes on
to the worker: the state on `StateSaved`, the checkpoint on `Checkpoint`, the model on `Finished`. What the database
records is then in the store.

A `Workspace` holds only its store, which pickles without its connection: the worker builds one, and a process on
another machine (a Ray node) gets a copy and stages its job there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ftserve.engine import events
from ftserve.engine.spec import JobSpec
from ftserve.files.storage import BlobStore, inside

# The engine's layout under its output dir (engine/state.py, engine/models.py): resumable states are
# `state/step-N`, each written aside and renamed; checkpoints are `checkpoint-N`, models `model`.
STATE = "state"
STATE_NAME = re.compile(r"step-(\d+)")
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")
STORE_TRIES = 3


@dataclass
class _Job:
    key: str
    """The job's output prefix in the store, `artifacts/<job id>`."""
    out: Path
    """The engine's output dir on this machine."""
    reported_out: Path
    """The output dir the worker gave; paths in published events are rewritten under it."""
    stored: set[str] = field(default_factory=set)
    """Keys this run stored (or found stored): not stored again."""


class Workspace:
    """Stages one job at a time: `prepare` it, then `publish` its events. Each machine (or Ray actor) uses its own.

    `on_worker`: it runs on the worker's own machine, whose local copies of the job's files (`store.local`, made
    when the worker read the job) are used in place rather than fetched again. Elsewhere every input is fetched,
    even where a path of the same name happens to exist."""

    def __init__(self, store: BlobStore, *, on_worker: bool = False):
        self.store = store
        self.on_worker = on_worker
        self._job: _Job | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"store": self.store, "on_worker": self.on_worker}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["store"], on_worker=bool(state["on_worker"]))  # type: ignore[misc, arg-type]

    def prepare(self, spec: JobSpec, scratch: Path) -> JobSpec:
        """`spec` with its files in `scratch` on this machine, and the newest state saved for it restored there.
        `spec`'s paths are the worker's (`local` copies of its inputs, the `workdir` of its output prefix)."""
        key = self.store.key_of(spec.output_dir)
        out = inside(scratch, key)
        out.mkdir(parents=True, exist_ok=True)
        self._restore_state(key, out)
        self._job = _Job(key, out, spec.output_dir)
        changes: dict[str, object] = {"output_dir": out, "training_file": self._input(spec.training_file, scratch)}
        if spec.validation_file is not None:
            changes["validation_file"] = self._input(spec.validation_file, scratch)
        if spec.start_from is not None:  # the model the job continues: always fetched (the worker keeps no copy)
            parent = inside(scratch, self.store.key_of(spec.start_from.path))
            self.store.get(self.store.key_of(spec.start_from.path), parent)
            changes["start_from"] = spec.start_from.model_copy(update={"path": parent})
        return spec.model_copy(update=changes)

    def publish(self, event: events.Event) -> events.Event:
        """Stores what `event` names, and gives it back with its paths as the worker knows them."""
        match event:
            case events.StateSaved():
                self._store_state(event.step)
            case events.Checkpoint():
                return event.model_copy(update={"path": self._store_dir(event.path)})
            case events.Finished():
                return event.model_copy(update={"model_dir": self._store_dir(event.model_dir)})
        return event

    # Before the engine starts

    def _input(self, path: Path, scratch: Path) -> Path:
        if self.on_worker and path.exists():  # the worker's copy (keys are written once)
            return path
        key = self.store.key_of(path)
        target = inside(scratch, key)
        self.store.get(key, target)
        return target

    def _restore_state(self, key: str, out: Path) -> None:
        saved = [name for name in self.store.children(f"{key}/{STATE}") if STATE_NAME.fullmatch(name)]
        if not saved:
            return
        newest = max(saved, key=lambda name: int(name.removeprefix("step-")))
        target = out / STATE / newest
        if not target.exists():
            self.store.get(f"{key}/{STATE}/{newest}", target)

    # As the engine reports

    def _store_state(self, step: int) -> None:
        job = self._running()
        # Checkpoints the engine keeps without reporting yet (a reinforcement run's best validation rounds) go
        # first: the state names them, so it must not be stored without them. Those it dropped since, go.
        local = {p.name for p in job.out.glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()}
        for name in sorted(local):
            self._store_dir(job.out / name)
        for key in sorted(job.stored):
            name = key.removeprefix(job.key + "/")
            if CHECKPOINT_NAME.fullmatch(name) and name not in local:
                self.store.delete(key)
                job.stored.discard(key)
        name = f"step-{step}"
        source = job.out / STATE / name
        # The engine runs ahead of its reports: while this state is stored it may save the same step again (a pause
        # right after a periodic save replaces the directory), or save a newer state and drop this one, whose report
        # follows and is stored then.
        for attempt in range(STORE_TRIES):
            try:
                self.store.put(source, f"{job.key}/{STATE}/{name}")
                break
            except Exception:
                if not source.exists():
                    return
                if attempt == STORE_TRIES - 1:
                    raise
        # The engine keeps its newest few states; the store keeps the same ones.
        kept = {p.name for p in (job.out / STATE).iterdir()}
        for old in self.store.children(f"{job.key}/{STATE}"):
            if STATE_NAME.fullmatch(old) and old not in kept:
                self.store.delete(f"{job.key}/{STATE}/{old}")

    def _store_dir(self, path: Path) -> Path:
        """Stores a checkpoint or model directory once. One already in the store stays as it is (a resumed run
        repeats steps, and what was recorded the first time may already be served), as the engine keeps one
        already on disk."""
        job = self._running()
        relative = self._relative(job, path)
        if relative is None:
            return path
        key = f"{job.key}/{relative}"
        if key not in job.stored:
            local = job.out / relative
            if local.exists() and not self.store.exists(key):
                self.store.put(local, key)
            job.stored.add(key)
        return job.reported_out / relative

    def _relative(self, job: _Job, path: Path) -> str | None:
        """`path` relative to the job's output dir: this run's, or an earlier run's elsewhere, whose paths come
        back when the engine replays what it reported before its saved state."""
        if path.is_relative_to(job.out):
            return path.relative_to(job.out).as_posix() or None
        parts, prefix = path.parts, tuple(job.key.split("/"))
        for start in range(len(parts) - len(prefix), -1, -1):
            if parts[start:start + len(prefix)] == prefix:
                return "/".join(parts[start + len(prefix):]) or None
        return None

    def _running(self) -> _Job:
        if self._job is None:
            raise RuntimeError("publish before prepare: the workspace has no job")
        return self._job
