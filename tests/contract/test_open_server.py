"""What a web page and a guesser can do to a server: the open server answers only loopback names and its own
pages' writes, and wrong keys are throttled per address. Short keys stopping the server: tests/integration/test_cli.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from ftserve.api.app import create_app
from ftserve.services.runtime import build
from tests.conftest import LiveServer, serving, settings_for

FORM = {"purpose": (None, "fine-tune")}
JSONL = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'


def file_ids(client: OpenAI) -> set[str]:
    return {f.id for f in client.files.list()}


def upload(live: LiveServer, **headers: str) -> httpx.Response:
    return httpx.post(f"{live.base_url}/files", headers=headers,
                      files={**FORM, "file": ("page.jsonl", JSONL, "application/jsonl")})


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.nip.io", "10.0.0.5:8000"])
def test_the_open_server_refuses_a_host_that_is_not_loopback(host: str, live: LiveServer) -> None:
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 arrives with its own Host."""
    answer = httpx.get(f"{live.base_url}/files", headers={"host": host})
    assert answer.status_code == 421
    assert answer.json()["error"]["code"] == "misdirected_request" and "FTSERVE_ALLOWED_HOSTS" in answer.text


@pytest.mark.parametrize("host", ["localhost:1", "127.0.0.1", "127.9.9.9:80", "[::1]:8000", "LOCALHOST", "app.localhost"])
def test_loopback_names_are_served(host: str, live: LiveServer) -> None:
    assert httpx.get(f"{live.base_url}/files", headers={"host": host}).status_code == 200


def test_a_cross_origin_form_post_stores_nothing(live: LiveServer) -> None:
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    before = file_ids(client)
    host = httpx.URL(live.url).netloc.decode()
    for headers in (
        {"origin": "http://evil.example", "sec-fetch-site": "cross-site"},  # a browser's form from another site
        {"origin": "http://evil.example"},  # an older browser, without Sec-Fetch-*
        {"origin": "null"},  # a sandboxed frame or a file:// page
        {"sec-fetch-site": "same-site"},  # another port or subdomain of the same site
        {"origin": f"http://{host.split(':')[0]}:1"},  # the same machine, another port
    ):
        answer = upload(live, **headers)
        assert answer.status_code == 403, headers
        assert answer.json()["error"]["code"] == "cross_origin_request"
    assert file_ids(client) == before
    # Reads are not refused: a cross-origin page cannot read the answer anyway, and links keep working.
    assert httpx.get(f"{live.base_url}/files", headers={"origin": "http://evil.example"}).status_code == 200


def test_the_servers_own_pages_and_clients_without_browser_headers_can_write(live: LiveServer) -> None:
    host = httpx.URL(live.url).netloc.decode()
    assert upload(live, origin=f"http://{host}", **{"sec-fetch-site": "same-origin"}).status_code == 200
    assert upload(live).status_code == 200  # the SDK, curl


def test_a_server_with_keys_does_not_check_host(keyed: LiveServer) -> None:
    answer = httpx.get(f"{keyed.base_url}/files", headers={"host": "api.example.com",
                                                          "authorization": "Bearer sk-alpha-0000000000"})
    assert answer.status_code == 200


def test_wrong_keys_from_one_address_are_throttled_and_the_right_key_waits_too(tmp_path: Path) -> None:
    """20 wrong keys a minute per address by default (one back every 3 s): the 21st wrong one is a 429 with
    Retry-After, and until the allowance refills so is every request from that address, the right key included:
    were the right key let through, a guesser would still learn it at full speed. Requests without a key guess
    nothing and are not counted (the dashboard's first request has none)."""
    settings = settings_for(tmp_path, None, api_keys="sk-right-key-000000000=p")
    with serving(settings, with_worker=False) as server:
        for _ in range(25):
            assert httpx.get(f"{server.base_url}/files").status_code == 401
        wrong = OpenAI(base_url=server.base_url, api_key="sk-wrong-key-0000000", max_retries=0)
        statuses = []
        for _ in range(21):
            try:
                wrong.files.list()
            except openai.APIStatusError as error:
                statuses.append(error.status_code)
        assert statuses == [401] * 20 + [429]
        refused = httpx.get(f"{server.base_url}/files", headers={"authorization": "Bearer sk-right-key-000000000"})
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 3
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        right = OpenAI(base_url=server.base_url, api_key="sk-right-key-000000000", max_retries=2)
        assert right.files.list().data == []  # the SDK waits the Retry-After and is let in


def test_a_guesser_cannot_escape_the_throttle_by_moving_within_its_ipv6_block(tmp_path: Path) -> None:
    runtime = build(settings_for(tmp_path, None, api_keys="sk-right-key-000000000=p", auth_failures_per_minute=3))
    app = create_app(runtime)

    def status(address: str) -> int:
        client = TestClient(app, base_url="http://127.0.0.1:8000", client=(address, 40000))
        return client.get("/v1/files", headers={"authorization": "Bearer sk-wrong-key-0000000"}).status_code

    assert [status(f"2001:db8::{n}") for n in range(1, 5)] == [401, 401, 401, 429]  # one /64
    assert status("2001:db8:0:1::1") == 401  # the next /64 is someone else
    assert [status(f"::ffff:192.0.2.{n}") for n in range(1, 5)] == [401] * 4  # IPv4 clients of a dual-stack listener
    runtime.engine.dispose()


def test_allowed_hosts_reopens_names_on_the_open_server(tmp_path: Path) -> None:
    runtime = build(settings_for(tmp_path, None, allowed_hosts="ftserve.lan, Box.Example:8000"))
    http = TestClient(create_app(runtime))
    for host, status in (("ftserve.lan", 200), ("ftserve.lan:8000", 200), ("box.example", 200),
                         ("localhost:8000", 200), ("other.lan", 421)):
        assert http.get("/v1/files", headers={"host": host}).status_code == status, host
    runtime.engine.dispose()
