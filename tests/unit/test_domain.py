"""The job state machine, auto hyperparameters and model names."""

from __future__ import annotations

import json
import time

import pytest

from ftserve.config import Settings
from ftserve.domain.hyperparameters import auto_epochs, resolve
from ftserve.domain.jobs import TERMINAL, JobStatus, can_move
from ftserve.domain.naming import checkpoint_name, fine_tuned_name, root_base
from ftserve.domain.webhooks import Retry, new_secret, signature_header


@pytest.mark.parametrize(
    "source,target,allowed",
    [
        (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, True),
        (JobStatus.QUEUED, JobStatus.RUNNING, True),
        (JobStatus.RUNNING, JobStatus.SUCCEEDED, True),
        (JobStatus.RUNNING, JobStatus.PAUSING, True),
        (JobStatus.PAUSING, JobStatus.PAUSED, True),
        (JobStatus.PAUSED, JobStatus.QUEUED, True),
        (JobStatus.PAUSED, JobStatus.CANCELLED, True),
        (JobStatus.QUEUED, JobStatus.SUCCEEDED, False),
        (JobStatus.PAUSED, JobStatus.RUNNING, False),
        (JobStatus.SUCCEEDED, JobStatus.CANCELLED, False),
        (JobStatus.CANCELLED, JobStatus.QUEUED, False),
    ],
)
def test_transitions(source: JobStatus, target: JobStatus, allowed: bool) -> None:
    assert can_move(source, target) is allowed


def test_terminal_states_are_final() -> None:
    for source in TERMINAL:
        assert not any(can_move(source, target) for target in JobStatus)


def test_auto_epochs_follow_dataset_size() -> None:
    assert auto_epochs(10) == 10 and auto_epochs(1) == 25 and auto_epochs(100) == 3 and auto_epochs(50_000) == 1
    resolved = resolve({"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": "auto"}, 100)
    assert resolved == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}


def test_model_names() -> None:
    name = fine_tuned_name("org/Base-1B", "My Project", "initial_tuning")
    assert name.startswith("ft:org/Base-1B:my-project:initial-tuning:") and len(name.rsplit(":", 1)[1]) == 8
    assert fine_tuned_name("b", "p", None).split(":")[3] == ""
    assert checkpoint_name(name, 20) == f"{name}:ckpt-step-20"
    # A continued job's model is named after the root of the lineage, found in its parent's name.
    tagged = fine_tuned_name("qwen2.5:0.5b", "p", "s")
    assert [root_base(n) for n in (name, checkpoint_name(name, 20), tagged, "org/Base-1B")] == [
        "org/Base-1B", "org/Base-1B", "qwen2.5:0.5b", "org/Base-1B"]


def test_api_keys_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTSERVE_API_KEYS", "sk-a-0000000000000=alpha, sk-b-0000000000000")
    assert Settings().api_keys == {"sk-a-0000000000000": "alpha", "sk-b-0000000000000": "default"}


def test_failed_webhook_deliveries_back_off_and_stop_after_a_day() -> None:
    retry = Retry(first=10, cap=3 * 3600, give_up=24 * 3600)
    created, now, waits = 1_000_000.0, 1_000_000.0, []
    attempts = 1
    while (following := retry.next_attempt(created, attempts, now)) is not None:
        waits.append(following - now)
        now, attempts = following, attempts + 1
    assert waits[:5] == [10, 20, 40, 80, 160]
    assert max(waits) == 3 * 3600
    assert now - created <= 24 * 3600 < now - created + 3 * 3600  # the last try came within the final wait of a day
    assert 15 <= attempts <= 25


def test_a_webhook_signature_is_what_standard_webhooks_verifies() -> None:
    import standardwebhooks

    secret = new_secret()
    body = b'{"id":"evt_1","type":"fine_tuning.job.succeeded"}'
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(time.time())),
               "webhook-signature": signature_header([secret], "evt_1", int(time.time()), body)}
    assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)
    headers["webhook-signature"] = signature_header([new_secret()], "evt_1", int(time.time()), body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body, headers)
