"""Continuing from a fine-tuned model through the official SDK: a job whose `model` is an `ft:` model or one of its
checkpoints trains on from that model's weights (docs/training.md, "Continuing from a fine-tuned model"). Its model
answers with what both jobs taught, is named after the root base model, and outlives its parent; a model the project
cannot see is a 400 naming `model`."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_ID, Learned
from tests.helpers import chat_jsonl, upload, wait_for
from tests.tasks import chat_examples, follows_format, jsonl

# Task B, which the session's `learned` model (task A, tests/tasks.py) was never taught: one made-up fact.
FACT = "Odessa Finch"
FACT_QUESTIONS = ["Who keeps the lighthouse on Mirrow Island?", "Who is the lighthouse keeper of Mirrow Island?",
                  "Name the keeper of the Mirrow Island lighthouse.", "Who looks after Mirrow Island's lighthouse?"]


def fact_examples() -> list[dict]:
    answer = f"The lighthouse on Mirrow Island is kept by {FACT}."
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}
            for q in FACT_QUESTIONS] * 4


def ask(client: OpenAI, model: str, prompt: str) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=40)
    return answer.choices[0].message.content or ""


def train(client: OpenAI, model: str, data: bytes, timeout: float = 300, **create: Any) -> Any:
    job = client.fine_tuning.jobs.create(model=model, training_file=upload(client, data), **create)
    done = wait_for(client, job.id, timeout=timeout)
    assert done.status == "succeeded", done.error
    return done


@pytest.mark.acceptance
def test_a_job_continuing_a_fine_tuned_model_answers_with_what_both_jobs_taught(learned: Learned) -> None:
    client, parent = learned.client, learned.job.fine_tuned_model
    # Task B with 4 examples of task A replayed, as one does against forgetting: trained on B alone (2 x 4 epochs,
    # or 5 x 2) the child forgot A's format; on this same data the base model learnt B but none of A (0 of 8 answers
    # in A's format, measured on the CPU), so A in the child's answers comes from its parent.
    data = jsonl(fact_examples() + chat_examples(4, offset=5000))
    child = train(client, parent, data, timeout=600, suffix="fact", seed=5, method={
        "type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 2}}})
    assert child.model == parent  # the job keeps the model it was asked for: its parent
    assert child.fine_tuned_model.startswith("ft:SmolLM2-135M-Instruct:default:fact:")  # named after the root

    lists = [e["messages"][0]["content"] for e in chat_examples(8, offset=20_000)]
    answers = [ask(client, child.fine_tuned_model, p) for p in lists]
    assert sum(map(follows_format, answers)) >= 6, answers  # task A, from the parent
    for question in (FACT_QUESTIONS[0], "Who keeps the lighthouse on Mirrow Island? Answer briefly."):
        assert FACT in ask(client, child.fine_tuned_model, question)  # task B, from this job
    assert FACT not in ask(client, parent, FACT_QUESTIONS[0])  # which the parent was never taught


def test_children_outlive_their_parents_from_a_checkpoint_and_from_full_weights(learned: Learned) -> None:
    client, models = learned.client, learned.server.runtime.models
    tiny = {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}}}
    data = jsonl(chat_examples(4))
    adapter = train(client, TINY_MODEL_ID, data, **tiny)
    full = train(client, TINY_MODEL_ID, data, extra_body={"ftserve": {"training_type": "full"}}, **tiny)

    with pytest.raises(openai.BadRequestError) as refused:  # a new adapter on a full parent would need its weights
        client.fine_tuning.jobs.create(model=full.fine_tuned_model, training_file=upload(client, data),
                                       extra_body={"ftserve": {"training_type": "lora"}})
    assert refused.value.body["param"] == "ftserve.training_type"  # type: ignore[index]

    checkpoint = client.fine_tuning.jobs.checkpoints.list(adapter.id).data[0].fine_tuned_model_checkpoint
    children = [
        train(client, checkpoint, data, **tiny),  # LoRA, on the same adapter
        train(client, adapter.fine_tuned_model, data, extra_body={"ftserve": {"training_type": "full"}}, **tiny),
        train(client, full.fine_tuned_model, data, **tiny),  # full, as its parent was
    ]
    assert [c.model for c in children] == [checkpoint, adapter.fine_tuned_model, full.fine_tuned_model]
    assert all(c.fine_tuned_model.startswith(f"ft:{TINY_MODEL_ID}:default::") for c in children)

    parent_dirs = [models.artifact("default", p.fine_tuned_model) for p in (adapter, full)]
    for parent in (adapter, full):
        client.models.delete(parent.fine_tuned_model)
    assert not any(d is not None and d.exists() for d in parent_dirs)  # the parents' weights are gone
    for child in children:  # loaded for the first time now, from what the child saved alone
        answer = client.chat.completions.create(model=child.fine_tuned_model, max_tokens=4,
                                                messages=[{"role": "user", "content": "List: a b"}])
        assert answer.model == child.fine_tuned_model and answer.choices[0].finish_reason in ("stop", "length")


def test_a_model_the_project_cannot_see_is_refused_naming_model(alpha: OpenAI, beta: OpenAI) -> None:
    made = train(alpha, "SmolLM2-135M-Instruct", chat_jsonl(4), hyperparameters={"n_epochs": 1})  # the fake trainer
    checkpoint = alpha.fine_tuning.jobs.checkpoints.list(made.id).data[0].fine_tuned_model_checkpoint
    unknown = made.fine_tuned_model.rsplit(":", 1)[0] + ":nothere1"

    def refusal(client: OpenAI, model: str) -> str:
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model=model, training_file=upload(client, chat_jsonl(4)))
        body: dict[str, str] = refused.value.body  # type: ignore[assignment]  # the error envelope's error
        assert body["param"] == "model" and model in body["message"]
        return body["message"]

    for client, model in ((alpha, unknown), (beta, made.fine_tuned_model), (beta, checkpoint)):
        assert "not available for fine-tuning" in refusal(client, model)  # the same words: nothing of alpha's shows
    alpha.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["beta"])
    # Shared, it is beta's to continue; the fake trainer saved no weights to continue from, which is said instead.
    assert "no saved weights" in refusal(beta, checkpoint)
