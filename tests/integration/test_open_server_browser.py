"""An open server (no API keys) against pages in a real headless Chromium (tests/browser/open_server.mjs): its own
dashboard still uploads, another site's multipart form stores nothing, and a DNS-rebound name gets 421.
tests/contract/test_open_server.py checks the same rules header by header; this checks what a browser sends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import LiveServer

BROWSER = Path(__file__).parent.parent / "browser"

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None
    or not (BROWSER / "node_modules" / "playwright-core").is_dir(),
    reason="needs /usr/bin/chromium, Node.js and tests/browser/node_modules, as tests/integration/test_dashboard.py",
)


def test_a_browser_reaches_the_open_server_only_from_its_own_pages(live: LiveServer) -> None:
    client = OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    before = {f.filename for f in client.files.list()}
    done = subprocess.run(["node", str(BROWSER / "open_server.mjs"), live.url], capture_output=True, text=True,
                          timeout=60, cwd=BROWSER, env=os.environ)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])

    assert seen["pageErrors"] == [] and seen["sameOriginUpload"] == 200 and seen["listed"]
    assert seen["crossSiteForm"] == {"status": 403, "code": "cross_origin_request"}
    assert seen["rebound"] == {"status": 421, "code": "misdirected_request"}
    added = {f.filename for f in client.files.list()} - before
    assert added == {"dashboard.jsonl"}  # the dashboard's upload, and not the other site's
