"""Models, checkpoint permissions and projects through the official SDK, on a server with API keys:
keys are required, sharing a checkpoint makes it visible to the other project until the grant is
revoked, and deleting a model removes it. That projects cannot otherwise see or touch each other's
objects, on every endpoint, is test_tenant_isolation.py."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.helpers import chat_jsonl, upload, wait_for

MODEL = "SmolLM2-135M-Instruct"


def test_requests_need_a_valid_key(keyed) -> None:  # type: ignore[no-untyped-def]
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as error:
            OpenAI(base_url=keyed.base_url, api_key=key or "x", max_retries=0, default_headers={"Authorization": key}).models.list()
        assert error.value.status_code == 401 and error.value.code == "invalid_api_key"


def test_sharing_a_checkpoint_grants_access_until_revoked(alpha: OpenAI, beta: OpenAI) -> None:
    training = upload(alpha, chat_jsonl(4))
    job = alpha.fine_tuning.jobs.create(model=MODEL, training_file=training, suffix="shared", hyperparameters={"n_epochs": 1})
    done = wait_for(alpha, job.id)
    assert done.status == "succeeded" and ":alpha:shared:" in done.fine_tuned_model and done.organization_id == "alpha"
    checkpoint = alpha.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint

    assert checkpoint not in {m.id for m in beta.models.list()}

    granted = alpha.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["beta"])
    permission = granted.data[0]
    assert permission.project_id == "beta" and permission.id.startswith("cp_")
    listed = alpha.fine_tuning.checkpoints.permissions.list(checkpoint)
    assert [p.id for p in listed] == [permission.id]
    assert beta.models.retrieve(checkpoint).id == checkpoint
    assert checkpoint in {m.id for m in beta.models.list()}
    with pytest.raises(openai.NotFoundError):
        beta.models.delete(checkpoint)  # shared to use, not to delete

    deleted = alpha.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=checkpoint)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        beta.models.retrieve(checkpoint)


def test_delete_model_removes_it_and_base_models_stay(alpha: OpenAI) -> None:
    training = upload(alpha, chat_jsonl(3))
    done = wait_for(alpha, alpha.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 1}).id)
    assert alpha.models.delete(done.fine_tuned_model).deleted is True
    assert done.fine_tuned_model not in {m.id for m in alpha.models.list()}
    with pytest.raises(openai.NotFoundError):
        alpha.models.retrieve(done.fine_tuned_model)
    with pytest.raises(openai.BadRequestError, match="base model"):
        alpha.models.delete(MODEL)
    assert alpha.models.retrieve(MODEL).owned_by == "HuggingFaceTB"


def _chat(client: OpenAI, model: str) -> None:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)


def test_deleting_a_model_deletes_its_checkpoints_their_grants_and_their_files(keyed, alpha: OpenAI,  # type: ignore[no-untyped-def]
                                                                               beta: OpenAI) -> None:
    training = upload(alpha, chat_jsonl(4))
    job = alpha.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 2, "batch_size": 4})
    done = wait_for(alpha, job.id)
    names = [c.fine_tuned_model_checkpoint for c in alpha.fine_tuning.jobs.checkpoints.list(job.id)]
    assert len(names) == 2
    alpha.fine_tuning.checkpoints.permissions.create(names[0], project_ids=["beta"])
    directories = [keyed.runtime.models.artifact("alpha", name) for name in [done.fine_tuned_model, *names]]
    assert all(d is not None and d.is_dir() for d in directories)
    with pytest.raises(openai.BadRequestError, match="no weights"):  # the fake trainer's: found, but not servable
        _chat(beta, names[0])

    forgotten: list[str] = []  # what the inference engines and the export cache are told to let go of
    keyed.runtime.models.on_delete.append(forgotten.append)
    try:
        assert alpha.models.delete(done.fine_tuned_model).deleted is True
    finally:
        keyed.runtime.models.on_delete.remove(forgotten.append)
    assert sorted(forgotten) == sorted([done.fine_tuned_model, *names])
    listed = {m.id for m in alpha.models.list()}
    assert not listed & {done.fine_tuned_model, *names}
    assert alpha.fine_tuning.jobs.checkpoints.list(job.id).data == []
    for name in names:
        with pytest.raises(openai.NotFoundError):
            alpha.models.retrieve(name)
        with pytest.raises(openai.NotFoundError):
            _chat(alpha, name)
    # The project the checkpoint was shared with sees it gone too, and its grant went with it.
    assert names[0] not in {m.id for m in beta.models.list()}
    with pytest.raises(openai.NotFoundError):
        _chat(beta, names[0])
    with pytest.raises(openai.NotFoundError):
        alpha.fine_tuning.checkpoints.permissions.list(names[0])
    assert not any(d.exists() for d in directories if d is not None)


def test_a_checkpoint_model_can_be_deleted_alone(keyed, alpha: OpenAI) -> None:  # type: ignore[no-untyped-def]
    training = upload(alpha, chat_jsonl(4))
    job = alpha.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 2, "batch_size": 4})
    done = wait_for(alpha, job.id)
    first, second = sorted(alpha.fine_tuning.jobs.checkpoints.list(job.id), key=lambda c: c.step_number)
    directory = keyed.runtime.models.artifact("alpha", first.fine_tuned_model_checkpoint)
    assert directory is not None

    assert alpha.models.delete(first.fine_tuned_model_checkpoint).deleted is True
    with pytest.raises(openai.NotFoundError):
        alpha.models.retrieve(first.fine_tuned_model_checkpoint)
    assert not directory.exists()
    assert alpha.models.retrieve(second.fine_tuned_model_checkpoint).id == second.fine_tuned_model_checkpoint
    assert alpha.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    assert [c.id for c in alpha.fine_tuning.jobs.checkpoints.list(job.id)] == [second.id]
