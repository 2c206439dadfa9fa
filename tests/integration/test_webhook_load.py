"""One project's slow webhook receiver costs the others nothing: project alpha floods `/test` at receivers that
trickle their headers forever while alpha's own deliveries to one of them are in flight, and project beta's
requests and webhook deliveries go on as if alpha were not there."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from tests.conftest import LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload, wait_for
from tests.webhook_receiver import Receiver

KEYS = {"alpha": "sk-alpha-0000000000", "beta": "sk-beta-00000000000"}
DEADLINE = 3.0
EVERYTHING = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
              "fine_tuning.job.checkpoint.created"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(trickle_seconds=0.5)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, databases) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """Keyed, with the loopback receivers allowed, a short deadline, and three senders of which one endpoint
    may hold two."""
    settings = settings_for(
        tmp_path_factory.mktemp("webhook-load"), databases.new(), api_keys=",".join(f"{k}={p}" for p, k in KEYS.items()),
        webhook_allow="127.0.0.1", webhook_timeout_seconds=DEADLINE, webhook_senders=3, webhook_endpoint_concurrency=2,
        webhook_retry_seconds=0.2,
    )
    with serving(settings) as live:
        yield live


def client(server: LiveServer, project: str) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=KEYS[project], max_retries=0)


def test_a_flood_of_tests_and_deliveries_to_a_trickling_receiver_delays_no_other_project(
    server: LiveServer, receiver: Receiver,
) -> None:
    alpha, beta = client(server, "alpha"), client(server, "beta")
    slow = alpha.webhooks.create(name="slow", url=receiver.url("trickle-alpha"), event_types=EVERYTHING)
    # More endpoints, for tests only: two tests of each run at once, 44 in all, more than the API's 40 worker
    # threads, so a /test that held a thread while it waited would starve beta's requests.
    probes = [alpha.webhooks.create(name=f"probe-{n}", url=receiver.url(f"trickle-probe-{n}"),
                                    event_types=["fine_tuning.job.cancelled"]) for n in range(21)]
    fast = beta.webhooks.create(name="fast", url=receiver.url("beta"), event_types=["fine_tuning.job.succeeded"])
    try:
        # Alpha's jobs leave a queue of deliveries (each checkpoint, each end) that its receiver never takes.
        training = upload(alpha, chat_jsonl())
        for job in [alpha.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training)
                    for _ in range(2)]:
            assert wait_for(alpha, job.id).status == "succeeded"
        _until(lambda: receiver.trickling("trickle-alpha") == 2, "alpha's deliveries never got under way")

        flood = ThreadPoolExecutor(45)
        with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {KEYS['alpha']}"},
                          timeout=30) as http:
            def test_alpha(endpoint_id: str) -> tuple[str, int, int | None, str | None, float]:
                started = time.time()
                answer = http.post(f"/webhook_endpoints/{endpoint_id}/test", json={"event_type": "fine_tuning.job.failed"})
                code = answer.json().get("status_code") if answer.status_code == 200 else None
                return endpoint_id, answer.status_code, code, answer.headers.get("retry-after"), time.time() - started

            # Three at the slow endpoint (one too many), two at each probe.
            targets = [slow.id] * 3 + [probe.id for probe in probes for _ in range(2)]
            assert len(targets) == 45
            tests = [flood.submit(test_alpha, endpoint_id) for endpoint_id in targets]
            time.sleep(0.5)
            for _ in range(5):  # beta, meanwhile
                started = time.time()
                beta.files.list()
                assert time.time() - started < 1.0
            started = time.time()
            assert beta.webhooks.test(fast.id, event_type="fine_tuning.job.succeeded").status_code == 200
            assert time.time() - started < 1.0
            results = [test.result() for test in tests]
        flood.shutdown()

        # Two tests of an endpoint at a time, the third refused at once; those that ran ended at the deadline and
        # say only that they failed.
        ran = [r for r in results if r[1] == 200]
        assert len(ran) == 44 and all(code == 0 and DEADLINE <= took < DEADLINE + 1 for _, _, code, _, took in ran)
        [refused] = [r for r in results if r[1] != 200]
        assert refused[0] == slow.id and refused[1] == 429 and refused[3] and refused[4] < 1.0

        # Beta's job ends while alpha's deliveries still trickle: its event arrives at once all the same.
        job = beta.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=upload(beta, chat_jsonl()))
        assert wait_for(beta, job.id).status == "succeeded"
        ended = time.time()
        _until(lambda: len(receiver.hits("beta")) == 2, "beta's delivery never arrived")  # the test, then the event
        assert receiver.hits("beta")[-1].at - ended < 2.0
        assert receiver.trickling("trickle-alpha") >= 1

        # Alpha's tries end by the deadline, as "timed out", and never more than two at once.
        log = alpha.get(f"/ftserve/webhook_endpoints/{slow.id}/deliveries", cast_to=object)["data"]
        tried = [d for d in log if d["attempts"]]
        assert tried and all(d["error"] == "timed out" and d["status"] == "pending" for d in tried)
        assert receiver.peak["/trickle-alpha"] <= 2 + 2  # two deliveries and two tests
    finally:
        for endpoint in [slow, *probes]:
            alpha.webhooks.delete(endpoint.id)
        beta.webhooks.delete(fast.id)


def _until(condition: Callable[[], bool], message: str, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, message
        time.sleep(0.02)
