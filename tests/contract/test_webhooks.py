"""Webhooks, end to end: endpoints managed with the official SDK's `client.webhooks`, events delivered to a real
HTTP receiver when jobs end, signatures checked with the `standardwebhooks` package and the SDK's `unwrap`,
failed deliveries retried with the same id, and the delivery log."""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
import standardwebhooks
from openai import OpenAI

from tests.conftest import LiveServer, _free_port, serving, settings_for
from tests.helpers import chat_jsonl, upload, wait_for

JOB_ENDS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server that records what it gets, by path (one path per endpoint, so tests don't see each
    other's deliveries), and answers `failures[path]` 500s before it answers 200."""

    root: str
    got: list[Received] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.root}/{path}"

    def events(self, path: str, type: str, job_id: str) -> list[Received]:
        return [r for r in self.got if r.path == f"/{path}" and r.event["type"] == type and r.event["data"]["id"] == job_id]

    def wait(self, path: str, type: str, job_id: str, count: int = 1, timeout: float = 30) -> list[Received]:
        deadline = time.time() + timeout
        while len(self.events(path, type, job_id)) < count:
            assert time.time() < deadline, f"{type} for {job_id} never arrived at /{path}"
            time.sleep(0.05)
        return self.events(path, type, job_id)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    port = _free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            body = self.rfile.read(int(self.headers["content-length"]))
            receiver.got.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            failing = receiver.failures.get(self.path, 0) > 0
            receiver.failures[self.path] = receiver.failures.get(self.path, 0) - failing
            self.send_response(500 if failing else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield receiver
    server.shutdown()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory, databases) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """A server whose failed deliveries are retried within a second, and jobs long enough to cancel."""
    settings = settings_for(tmp_path_factory.mktemp("hooks"), databases.new(), webhook_retry_seconds=0.2,
                            fake_step_seconds=0.05, webhook_allow="127.0.0.1")  # the receivers here are on loopback
    with serving(settings) as live:
        yield live


@pytest.fixture
def client(hooked: LiveServer) -> OpenAI:
    return OpenAI(base_url=hooked.base_url, api_key="none", max_retries=0)


def verified(received: Received, secret: str) -> dict[str, Any]:
    """The payload, after both the standardwebhooks package and the SDK accept its signature."""
    payload = standardwebhooks.Webhook(secret).verify(received.body, received.headers)
    event = OpenAI(api_key="none", webhook_secret=secret).webhooks.unwrap(received.body, received.headers)
    assert event.id == payload["id"] == received.headers["webhook-id"]
    return payload


def test_a_job_that_ends_is_announced_once_signed_with_the_endpoint_secret(client: OpenAI, receiver: Receiver) -> None:
    endpoint = client.webhooks.create(name="ci", url=receiver.url("ends"),
                                      event_types=[*JOB_ENDS, "fine_tuning.job.checkpoint.created"])
    other = client.webhooks.create(name="other", url=receiver.url("other"), event_types=JOB_ENDS)
    assert endpoint.signing_secret.startswith("whsec_")
    assert endpoint.signing_secret_hint.endswith(endpoint.signing_secret[-4:])
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(client, chat_jsonl()),
                                         hyperparameters={"n_epochs": 2})
    assert wait_for(client, job.id).status == "succeeded"

    [done] = receiver.wait("ends", "fine_tuning.job.succeeded", job.id)
    payload = verified(done, endpoint.signing_secret)
    assert payload["object"] == "event" and payload["data"] == {"id": job.id}
    assert abs(int(done.headers["webhook-timestamp"]) - time.time()) < 60
    checkpoints = receiver.wait("ends", "fine_tuning.job.checkpoint.created", job.id, count=2)
    listed = {c.id for c in client.fine_tuning.jobs.checkpoints.list(job.id)}
    assert {verified(c, endpoint.signing_secret)["data"]["checkpoint_id"] for c in checkpoints} == listed
    # The other endpoint gets the same event under its own key, which does not verify the first one's.
    [copy] = receiver.wait("other", "fine_tuning.job.succeeded", job.id)
    assert verified(copy, other.signing_secret)["id"] == payload["id"]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other.signing_secret).verify(done.body, done.headers)
    time.sleep(0.5)
    assert len(receiver.events("ends", "fine_tuning.job.succeeded", job.id)) == 1
    assert not receiver.events("other", "fine_tuning.job.checkpoint.created", job.id)
    log = client.get(f"/ftserve/webhook_endpoints/{endpoint.id}/deliveries", cast_to=object)
    succeeded = [d for d in log["data"] if d["event_type"] == "fine_tuning.job.succeeded"]
    assert [(d["status"], d["attempts"], d["response_status_code"]) for d in succeeded] == [("delivered", 1, 200)]
    assert succeeded[0]["event_id"] == done.headers["webhook-id"]


def test_a_cancelled_job_is_announced(client: OpenAI, receiver: Receiver) -> None:
    endpoint = client.webhooks.create(name="cancels", url=receiver.url("cancels"), event_types=JOB_ENDS)
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(client, chat_jsonl(40)),
                                         hyperparameters={"n_epochs": 10})
    client.fine_tuning.jobs.cancel(job.id)
    [cancelled] = receiver.wait("cancels", "fine_tuning.job.cancelled", job.id)
    assert verified(cancelled, endpoint.signing_secret)["type"] == "fine_tuning.job.cancelled"
    time.sleep(0.5)
    assert [r.event["type"] for r in receiver.got if r.path == "/cancels"] == ["fine_tuning.job.cancelled"]


@pytest.mark.database
def test_a_failed_delivery_is_retried_with_the_same_id_until_it_is_taken(client: OpenAI, receiver: Receiver) -> None:
    endpoint = client.webhooks.create(name="flaky", url=receiver.url("flaky"), event_types=["fine_tuning.job.succeeded"])
    receiver.failures["/flaky"] = 2
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(client, chat_jsonl()))
    wait_for(client, job.id)
    tries = receiver.wait("flaky", "fine_tuning.job.succeeded", job.id, count=3)
    assert len({t.headers["webhook-id"] for t in tries}) == 1
    assert len({t.body for t in tries}) == 1
    for attempt in tries:  # each try is signed afresh, and each verifies
        verified(attempt, endpoint.signing_secret)
    deadline = time.time() + 10
    while (delivery := client.get(f"/ftserve/webhook_endpoints/{endpoint.id}/deliveries",
                                  cast_to=object)["data"][0])["status"] == "pending":
        assert time.time() < deadline
        time.sleep(0.05)
    assert (delivery["status"], delivery["attempts"], delivery["response_status_code"]) == ("delivered", 3, 200)


def test_an_unreachable_endpoint_shows_in_the_delivery_log(client: OpenAI) -> None:
    endpoint = client.webhooks.create(name="gone", url=f"http://127.0.0.1:{_free_port()}/", event_types=JOB_ENDS)
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(client, chat_jsonl()))
    wait_for(client, job.id)
    deadline = time.time() + 20
    while True:
        [delivery] = client.get(f"/ftserve/webhook_endpoints/{endpoint.id}/deliveries", cast_to=object)["data"]
        if delivery["attempts"] >= 2:
            break
        assert time.time() < deadline, delivery
        time.sleep(0.1)
    assert delivery["status"] == "pending" and delivery["next_attempt_at"] is not None
    # Coarse on purpose: a closed port reads like any other failure to connect.
    assert delivery["error"] == "could not deliver" and delivery["response_status_code"] is None
    client.webhooks.delete(endpoint.id)


def test_a_rotation_that_keeps_the_old_secret_signs_with_both(client: OpenAI, receiver: Receiver) -> None:
    endpoint = client.webhooks.create(name="rotating", url=receiver.url("rotating"),
                                      event_types=["fine_tuning.job.succeeded"])
    rotated = client.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
    assert rotated.signing_secret != endpoint.signing_secret
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(client, chat_jsonl()))
    wait_for(client, job.id)
    [done] = receiver.wait("rotating", "fine_tuning.job.succeeded", job.id)
    assert len(done.headers["webhook-signature"].split()) == 2
    verified(done, endpoint.signing_secret)
    verified(done, rotated.signing_secret)
    # Without the grace period, the old secret stops at once.
    again = client.webhooks.rotate_secret(endpoint.id)
    assert client.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded").status_code == 200
    [sample] = receiver.events("rotating", "fine_tuning.job.succeeded", "ftjob-test")
    verified(sample, again.signing_secret)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(rotated.signing_secret).verify(sample.body, sample.headers)


def test_endpoints_are_managed_like_openais(client: OpenAI, receiver: Receiver) -> None:
    endpoint = client.webhooks.create(name="manage", url=receiver.url("manage"), event_types=["fine_tuning.job.failed"])
    assert client.webhooks.retrieve(endpoint.id).url == receiver.url("manage")
    assert endpoint.id in [e.id for e in client.webhooks.list()]
    assert "signing_secret" not in client.get(f"/webhook_endpoints/{endpoint.id}", cast_to=object)
    updated = client.webhooks.update(endpoint.id, name="renamed", event_types=JOB_ENDS)
    assert (updated.name, updated.event_types, updated.url) == ("renamed", JOB_ENDS, receiver.url("manage"))
    assert set(JOB_ENDS) <= set(client.webhooks.event_types.list().data)
    result = client.webhooks.test(endpoint.id, event_type="fine_tuning.job.failed")
    assert (result.status_code, result.success) == (200, True)
    [sample] = receiver.events("manage", "fine_tuning.job.failed", "ftjob-test")
    assert verified(sample, endpoint.signing_secret)["type"] == "fine_tuning.job.failed"
    assert client.webhooks.delete(endpoint.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(endpoint.id)


@pytest.mark.parametrize("body, param", [
    ({"name": "x", "url": "ftp://example.com/", "event_types": JOB_ENDS}, "url"),
    ({"name": "x", "url": "not a url", "event_types": JOB_ENDS}, "url"),
    ({"name": "x", "url": "http://[::1/", "event_types": JOB_ENDS}, "url"),
    ({"name": "x", "url": "http://127.0.0.1/", "event_types": ["fine_tuning.job.exploded"]}, "event_types"),
    ({"name": "x", "url": "http://127.0.0.1/", "event_types": []}, "event_types"),
    ({"url": "http://127.0.0.1/", "event_types": JOB_ENDS}, "name"),
])
def test_a_bad_endpoint_is_refused_naming_the_field(client: OpenAI, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.post("/webhook_endpoints", body=body, cast_to=object)
    assert refused.value.body["param"] == param, refused.value.body  # type: ignore[index]


@pytest.mark.database
def test_the_schema_the_migrations_build_is_the_one_the_code_uses(tmp_path: Path, database_url: str | None) -> None:
    """Alembic finds nothing to add: every table and column the code declares, the migrations made."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from ftserve.services.runtime import build
    from ftserve.store.tables import metadata

    runtime = build(settings_for(tmp_path, database_url))
    with runtime.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    runtime.engine.dispose()
    assert [d for d in differences if d[0] in ("add_table", "add_column", "remove_column")] == []


@pytest.mark.database
def test_a_try_is_held_by_one_worker_and_a_late_result_cannot_undo_a_later_one(
    tmp_path: Path, database_url: str | None,
) -> None:
    """Two workers share the outbox: while one holds a try the other gets nothing, and once the hold has run
    out and the other has taken over, the first one's late result is not recorded."""
    from ftserve.domain.webhooks import Endpoint
    from ftserve.services.runtime import build
    from ftserve.store import webhooks as rows

    runtime = build(settings_for(tmp_path, database_url))
    try:
        with runtime.engine.begin() as conn:
            rows.insert_endpoint(conn, Endpoint("we_1", "p", "n", "http://127.0.0.1:9/", JOB_ENDS, "whsec_AAAA", 0, 0))
            rows.enqueue(conn, "p", "fine_tuning.job.failed", {"id": "ftjob-1"}, 100)
        with runtime.engine.begin() as conn:
            delivery, _ = rows.claim_due(conn, 200.0, 260.0, "first", 2)
            assert rows.claim_due(conn, 200.0, 260.0, "second", 2) is None  # held
            assert rows.claim_due(conn, 261.0, 321.0, "second", 2)[0].id == delivery.id  # the hold ran out
        with runtime.engine.begin() as conn:
            assert rows.record_attempt(conn, delivery.id, "second", at=262, status_code=200, error=None,
                                       delivered=True, next_attempt_at=None)
            assert not rows.record_attempt(conn, delivery.id, "first", at=263, status_code=500, error="HTTP 500",
                                           delivered=False, next_attempt_at=300.0)
            [logged] = rows.list_deliveries(conn, "we_1", after=None, limit=10).items
        assert (logged.status, logged.attempts, logged.response_status_code) == ("delivered", 1, 200)
    finally:
        runtime.engine.dispose()


@pytest.mark.database
def test_an_endpoint_with_its_share_of_tries_in_flight_is_passed_over(tmp_path: Path, database_url: str | None) -> None:
    """The claim skips an endpoint whose tries, held by any worker, are at the limit, and takes the next endpoint's
    delivery instead, even a later one; once a try is recorded (or its hold runs out) the endpoint gets the next."""
    from ftserve.domain.webhooks import Endpoint
    from ftserve.services.runtime import build
    from ftserve.store import webhooks as rows

    runtime = build(settings_for(tmp_path, database_url))
    try:
        with runtime.engine.begin() as conn:
            for endpoint, project in (("we_slow", "alpha"), ("we_fast", "beta")):
                rows.insert_endpoint(conn, Endpoint(endpoint, project, "n", "http://127.0.0.1:9/", JOB_ENDS, "whsec_AAAA", 0, 0))
            for n in range(3):
                rows.enqueue(conn, "alpha", "fine_tuning.job.failed", {"id": f"ftjob-{n}"}, 100 + n)
            rows.enqueue(conn, "beta", "fine_tuning.job.failed", {"id": "ftjob-beta"}, 150)
        with runtime.engine.begin() as conn:
            first, _ = rows.claim_due(conn, 200.0, 260.0, "worker-1", 2)
            second, _ = rows.claim_due(conn, 200.0, 260.0, "worker-2", 2)
            third, endpoint = rows.claim_due(conn, 200.0, 260.0, "worker-1", 2)
            assert (first.endpoint_id, second.endpoint_id, endpoint.id) == ("we_slow", "we_slow", "we_fast")
            assert rows.claim_due(conn, 200.0, 260.0, "worker-3", 2) is None  # alpha's third waits its turn
            rows.record_attempt(conn, first.id, "worker-1", at=201, status_code=200, error=None, delivered=True,
                                next_attempt_at=None)
            assert rows.claim_due(conn, 202.0, 262.0, "worker-3", 2)[1].id == "we_slow"
    finally:
        runtime.engine.dispose()


INSIDE = [
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://127.0.0.1:5432/", "http://[::1]/",
    "http://localhost:8000/", "http://hooks.localhost/", "http://localhost./", "http://2130706433/",
    "http://0x7f000001/", "http://0x7f.1/", "http://127.1/", "http://[::ffff:127.0.0.1]/", "http://10.0.0.1/",
    "http://172.16.5.4/", "http://192.168.0.1/", "http://100.64.0.1/", "http://[fc00::1]/", "http://[fe80::1]/",
    "http://224.0.0.1/", "http://0.0.0.0/", "http://255.255.255.255/",
]
CREDENTIALS = ["http://user:pass@example.com/", "https://token@hooks.example.com/"]


@pytest.mark.parametrize("url", INSIDE + CREDENTIALS)
def test_a_url_inside_the_network_or_with_credentials_is_refused_at_registration_and_update(
    alpha: OpenAI, url: str,
) -> None:
    """On the shared keyed server, which allows no internal targets."""
    with pytest.raises(openai.BadRequestError) as refused:
        alpha.webhooks.create(name="probe", url=url, event_types=JOB_ENDS)
    assert refused.value.body["param"] == "url", refused.value.body  # type: ignore[index]
    message = refused.value.body["message"]  # type: ignore[index]
    assert ("public addresses" in message) or ("user name or password" in message and url in CREDENTIALS), message
    # A public address is taken; changing it to the internal one is refused, and leaves it as it was.
    endpoint = alpha.webhooks.create(name="probe", url="http://93.184.216.34/hook", event_types=["fine_tuning.job.failed"])
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            alpha.webhooks.update(endpoint.id, url=url)
        assert refused.value.body["param"] == "url"  # type: ignore[index]
        assert alpha.webhooks.retrieve(endpoint.id).url == "http://93.184.216.34/hook"
    finally:
        alpha.webhooks.delete(endpoint.id)
