"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core from
tests/browser): a person signs in with a key, finds a running job, watches its loss chart grow, reads
its evaluation, cancels it, and finds the uploaded file with its validation status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from openai import OpenAI

from ftserve.engine.evaluate import Scores, report
from ftserve.services.clock import now
from ftserve.store import events as event_rows
from ftserve.services.lifecycle import evaluation_message
from tests.conftest import Databases, LiveServer, serving, settings_for
from tests.helpers import chat_jsonl, upload, wait_for

BROWSER = Path(__file__).parent.parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("FTSERVE_ARTIFACTS_DIR", Path(__file__).parent.parent / "artifacts"))
KEY = "sk-dashboard-000000"
OTHER_KEY = "sk-other-project-00"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("node") is None or not (BROWSER / "node_modules" / "playwright-core").is_dir(),
    reason="needs /usr/bin/chromium (apt-get install chromium), Node.js, and tests/browser/node_modules (make installs both)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[LiveServer]:
    """A keyed server whose fake steps are slow enough for a person, or a browser, to watch."""
    settings = settings_for(tmp_path_factory.mktemp("dashboard"), databases.new(),
                            api_keys=f"{KEY}=dash,{OTHER_KEY}=other", fake_step_seconds=0.3)
    with serving(settings) as live:
        yield live


def add_evaluation(server: LiveServer, job_id: str, output_dir: Path) -> dict[str, object]:
    """The fake trainer scores nothing, so the test records the event a real evaluation ends with, as the worker does."""
    body = report(output_dir, Scores(5, 2.31, 0.41, 0.0, 5), Scores(5, 0.72, 0.83, 0.6, 5))
    with server.runtime.engine.begin() as conn:
        event_rows.append(conn, job_id, now(), evaluation_message(body), type="metrics", data={"evaluation": body})
    return body


def add_rewards(server: LiveServer, job_id: str) -> None:
    """Mean rewards by step, as a reinforcement job reports them, on a finished job (on a running one, the worker's
    reporter would take them for steps already done)."""
    with server.runtime.engine.begin() as conn:
        for step, train, valid in ((198, 0.2, 0.1), (199, 0.5, 0.4)):
            data = {"step": step, "total_steps": 200, "train_reward_mean": train, "valid_reward_mean": valid}
            event_rows.append(conn, job_id, now(), f"Step {step}/200", type="metrics", data=data)


def test_a_person_watches_a_job_train_in_the_dashboard_and_cancels_it(server: LiveServer, tmp_path: Path) -> None:
    client = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    training = upload(client, chat_jsonl(20))
    validation = upload(client, chat_jsonl(5), name="valid.jsonl")
    elsewhere = upload(OpenAI(base_url=server.base_url, api_key=OTHER_KEY, max_retries=0), chat_jsonl(3))
    # 200 steps of 0.3 s: still running when the browser cancels it, some ten seconds in.
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=training, validation_file=validation,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 1, "n_epochs": 10}}},
    )
    add_evaluation(server, job.id, tmp_path)
    rewarded = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training)
    client.fine_tuning.jobs.cancel(rewarded.id)
    wait_for(client, rewarded.id, timeout=10)
    add_rewards(server, rewarded.id)

    done = subprocess.run(
        ["node", str(BROWSER / "dashboard.mjs"), server.url, job.id, training, rewarded.id],
        capture_output=True, text=True, timeout=90, cwd=BROWSER,
        env={**os.environ, "FTSERVE_API_KEY": KEY, "FTSERVE_ARTIFACTS_DIR": str(ARTIFACTS)},
    )
    seen = json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else {}
    assert done.returncode == 0, f"{done.stderr}\nseen: {seen}"

    assert seen["pageErrors"] == []
    assert {page: found for page, found in seen["accessibility"].items() if found} == {}
    assert seen["landedOn"] == f"{server.url}/dashboard/"
    assert seen["wrongKeyMessage"] == "Incorrect API key provided."
    assert seen["listedStatus"] in ("validating_files", "queued", "running") and seen["hiddenBySucceededFilter"]
    assert seen["jobUrl"] == f"{server.url}/dashboard/#/jobs/{job.id}"
    first, later = seen["chartPoints"]
    assert 0 < first < later < 200 and seen["validLine"]
    assert seen["rewardChartHidden"]  # a supervised job reports no rewards
    assert seen["rewardChart"] == {"points": "2", "lines": 2, "label": "Mean reward by step: 2 steps plotted, "
                                   "training reward (mean) 0.5 at step 199."}
    assert seen["evaluation"] == [["Loss", "2.3100", "0.7200"], ["Token accuracy", "41.0 %", "83.0 %"],
                                  ["Exact match", "0.0 %", "60.0 %"]]
    assert seen["runningStatus"] == "running" and seen["enabledWhileRunning"] == ["Cancel", "Pause"]
    assert seen["finalStatus"] == "cancelled" and seen["enabledWhenCancelled"] == []
    assert seen["deepLinkTitle"] == job.id
    missing = httpx.get(f"{server.base_url}/fine_tuning/jobs/ftjob-missing", headers={"authorization": f"Bearer {KEY}"})
    assert seen["missingJobAlert"] == missing.json()["error"]["message"]
    file_id, filename, purpose, _, status, *_ = seen["fileCells"]
    assert (file_id, filename, purpose, status) == (training, "train.jsonl", "fine-tune", "processed")
    assert training in seen["fileIds"] and elsewhere not in seen["fileIds"]  # another project's file stays its own
    assert seen["signedOut"]
    assert all(Path(path).is_file() for path in seen["screenshots"])

    cancelled = wait_for(client, job.id, timeout=5)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
