"""A job's workspace on a machine that shares no directory with the worker (files/workspace.py), against moto's S3
server: what the engine saves is in the store before the worker hears of it, and an attempt on a fresh machine
starts from the job's files and its newest saved state, fetched from the store."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from ftserve.engine import events
from ftserve.engine.spec import JobSpec, ModelSource, StartFrom
from ftserve.files.s3_store import S3BlobStore, S3Location
from ftserve.files.workspace import Workspace
from tests.object_store import moto_s3, s3_location  # noqa: F401  # fixtures

JOB = "ftjob-ws"
TRAINING = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def worker_store(s3_location: S3Location, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(s3_location, tmp_path / "worker-cache")


def worker_spec(store: S3BlobStore) -> JobSpec:
    """The spec as the worker makes it (job_request): a local copy of the training file, the output's workdir."""
    with store.writer("files/file-t") as out:
        out.write(TRAINING)
    return JobSpec(job_id=JOB, method="supervised", model=ModelSource(id="tiny"),
                   training_file=store.local("files/file-t"), output_dir=store.workdir(f"artifacts/{JOB}"),
                   cache_dir=Path("/models"), n_epochs=1, batch_size=1, learning_rate=1e-4)


def on_another_machine(workspace: Workspace, worker_cache: Path) -> Workspace:
    """The workspace as a Ray node gets it (pickled), where nothing of the worker's cache exists."""
    shutil.rmtree(worker_cache, ignore_errors=True)
    return pickle.loads(pickle.dumps(workspace))


def save_state(spec: JobSpec, step: int, keep: int = 2) -> None:
    """What the engine does: `state/step-N` written, the older ones beyond `keep` removed."""
    state = spec.output_dir / "state" / f"step-{step}"
    state.mkdir(parents=True)
    (state / "state.json").write_text(f'{{"step": {step}}}')
    for old in sorted((spec.output_dir / "state").glob("step-*"), key=lambda p: int(p.name[5:]))[:-keep]:
        shutil.rmtree(old)


def save_model(directory: Path, marker: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(marker)
    return directory


def test_state_is_stored_as_it_is_saved_and_restored_on_a_fresh_machine(
        worker_store: S3BlobStore, tmp_path: Path) -> None:
    spec = worker_spec(worker_store)
    workspace = on_another_machine(Workspace(worker_store), tmp_path / "worker-cache")
    staged = workspace.prepare(spec, tmp_path / "node-1")
    assert staged.training_file.read_bytes() == TRAINING and staged.training_file.is_relative_to(tmp_path / "node-1")
    assert staged.output_dir == tmp_path / "node-1" / "artifacts" / JOB
    assert not (staged.output_dir / "state").exists()  # nothing saved yet: the job starts at step 0

    for step in (2, 4, 6):
        save_state(staged, step)
        assert workspace.publish(events.StateSaved(step=step)) == events.StateSaved(step=step)
        # Stored before the event goes on; the store keeps what the engine keeps.
        kept = [f"step-{s}" for s in (2, 4, 6) if step - 2 <= s <= step]
        assert worker_store.children(f"artifacts/{JOB}/state") == kept
    checkpoint = workspace.publish(events.Checkpoint(step=4, metrics={"step": 4},
                                                     path=save_model(staged.output_dir / "checkpoint-4", "4")))
    assert isinstance(checkpoint, events.Checkpoint)
    assert checkpoint.path == spec.output_dir / "checkpoint-4"  # as the worker knows it
    assert worker_store.key_of(checkpoint.path) == f"artifacts/{JOB}/checkpoint-4"
    assert worker_store.exists(f"artifacts/{JOB}/checkpoint-4")

    # The node is lost. The next attempt, on another machine, starts from the newest state in the store.
    again = on_another_machine(Workspace(worker_store), tmp_path / "worker-cache")
    restored = again.prepare(spec, tmp_path / "node-2")
    assert [p.name for p in (restored.output_dir / "state").iterdir()] == ["step-6"]
    assert (restored.output_dir / "state" / "step-6" / "state.json").read_text() == '{"step": 6}'
    assert restored.training_file.read_bytes() == TRAINING

    # It replays what it reported before that state, paths of the first machine included: the checkpoint stored
    # then is what stays (a repeated step may save it again, and the first one may already be served).
    save_model(restored.output_dir / "checkpoint-4", "4 again")
    replayed = again.publish(events.Checkpoint(step=4, metrics={"step": 4}, path=staged.output_dir / "checkpoint-4"))
    assert isinstance(replayed, events.Checkpoint) and replayed.path == spec.output_dir / "checkpoint-4"
    with worker_store.open(f"artifacts/{JOB}/checkpoint-4/adapter_config.json") as stored:
        assert stored.read() == b"4"

    finished = again.publish(events.Finished(step=8, trained_tokens=80,
                                             model_dir=save_model(restored.output_dir / "model", "final")))
    assert isinstance(finished, events.Finished) and finished.model_dir == spec.output_dir / "model"
    assert (worker_store.local(f"artifacts/{JOB}/model") / "adapter_config.json").read_text() == "final"


def test_checkpoints_kept_unreported_go_with_the_state_and_leave_when_dropped(
        worker_store: S3BlobStore, tmp_path: Path) -> None:
    # A reinforcement run keeps its best validation rounds as directories, reported only at its end; its
    # state names them, so a resumed run needs them in the store.
    spec = worker_spec(worker_store)
    workspace = Workspace(worker_store, on_worker=True)
    staged = workspace.prepare(spec, tmp_path / "scratch")
    assert staged.training_file == spec.training_file  # the worker's own copy, not fetched again
    save_model(staged.output_dir / "checkpoint-2", "2")
    save_model(staged.output_dir / "checkpoint-3.tmp", "being written")
    save_state(staged, 2)
    workspace.publish(events.StateSaved(step=2))
    assert worker_store.children(f"artifacts/{JOB}") == ["checkpoint-2", "state"]
    shutil.rmtree(staged.output_dir / "checkpoint-2")  # no longer among the best
    save_model(staged.output_dir / "checkpoint-4", "4")
    save_state(staged, 4)
    workspace.publish(events.StateSaved(step=4))
    assert worker_store.children(f"artifacts/{JOB}") == ["checkpoint-4", "state"]


def test_the_model_a_job_continues_is_fetched_onto_the_machine_that_runs_it(
        worker_store: S3BlobStore, tmp_path: Path) -> None:
    worker_store.put(save_model(tmp_path / "parent-model", "parent"), "artifacts/ftjob-parent/model")
    spec = worker_spec(worker_store).model_copy(update={"start_from": StartFrom(
        model="ft:tiny:default::parent", path=worker_store.workdir("artifacts/ftjob-parent/model"), training_type="lora")})
    for workspace in (Workspace(worker_store, on_worker=True),
                      on_another_machine(Workspace(worker_store), tmp_path / "worker-cache")):
        scratch = tmp_path / f"node-{workspace.on_worker}"
        staged = workspace.prepare(spec, scratch)
        assert staged.start_from is not None and staged.start_from.path.is_relative_to(scratch)
        assert (staged.start_from.path / "adapter_config.json").read_text() == "parent"
