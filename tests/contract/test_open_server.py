"""What a web page, a guesser and an operator's typo can do to a server: the open server answers only loopback
names and its own pages' writes, wrong keys are throttled per address, and short keys stop the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

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


def test_wrong_keys_from_one_address_are_throttled_and_the_right_key_still_works_after(tmp_path: Path) -> None:
    """20 wrong keys a minute per address by default (one back every 3 s): the 21st wrong one is a 429 with Retry-After, and until the
    allowance refills so is every request from that address, the right key included, so a guesser learns nothing."""
    settings = settings_for(tmp_path, None, api_keys="sk-right-key-000000000=p")
    with serving(settings, with_worker=False) as server:
        wrong = OpenAI(base_url=server.base_url, api_key="sk-wrong-key-0000000", max_retries=0)
        statuses = []
        for _ in range(21):
            try:
                wrong.files.list()
            except Exception as error:  # noqa: BLE001 - the SDK's error carries the status we count
                statuses.append(getattr(error, "status_code", None))
        assert statuses[:20] == [401] * 20 and statuses[20] == 429
        refused = httpx.get(f"{server.base_url}/files", headers={"authorization": "Bearer sk-right-key-000000000"})
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 3
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        right = OpenAI(base_url=server.base_url, api_key="sk-right-key-000000000", max_retries=2)
        assert right.files.list().data == []  # the SDK waits the Retry-After and is let in


def test_a_short_api_key_stops_the_server_at_start_without_printing_the_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ftserve.cli.main", "serve", "--port", "1"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "FTSERVE_API_KEYS": "sk-abc123=p", "FTSERVE_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "shorter than 16 characters" in done.stderr and "sk-abc123" not in done.stderr + done.stdout
