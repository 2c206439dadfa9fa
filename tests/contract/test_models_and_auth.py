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
