"""A person's whole path through the dashboard in a real headless Chromium (tests/browser/workflow.mjs): sign in
with a project key, upload a file with a bad line and read which, upload good files (one in parts, one dropped on
the page) and read their format, examples and tokens, have a bad grader refused and a good one accepted, preview
and create a job on the tiny model, watch it succeed, read the before/after evaluation, chat with the base and the
fine-tuned model side by side, download a GGUF export and delete the model. axe-core checks every page on the way."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.conftest import TINY_MODEL_ID, Databases, serving, settings_for
from tests.integration.test_dashboard import ARTIFACTS, BROWSER, pytestmark  # noqa: F401  (the same skip)
from tests.tasks import chat_examples, jsonl

KEY = "sk-workflow-0000000"
OTHER_KEY = "sk-workflow-other-0"
LARGE_BYTES = 1_300_000  # past the dashboard's PART_BYTES (1 MiB): it goes through /v1/uploads in two parts
GOOD_GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "5", "operation": "eq"}
BAD_GRADER = {**GOOD_GRADER, "operation": "roughly"}


def test_a_person_uploads_trains_compares_and_exports_in_the_dashboard(
        tmp_path: Path, databases: Databases, tiny_catalogue: Path) -> None:
    good = chat_examples(16)
    bad = jsonl(good[:2]) + b'{"messages": [{"role": "user", "content": "no answer"}], "extra": 1}\n' + jsonl(good[2:4])
    large = jsonl(chat_examples(LARGE_BYTES // 100))
    assert len(large) > LARGE_BYTES
    files = {"bad.jsonl": bad, "train.jsonl": jsonl(good), "valid.jsonl": jsonl(chat_examples(4, offset=500)),
             "large.jsonl": large}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    settings = settings_for(tmp_path / "data", databases.new(), api_keys=f"{KEY}=mine,{OTHER_KEY}=theirs",
                            trainer="local", lease_seconds=10.0, catalogue_file=tiny_catalogue)
    with serving(settings) as server:
        client = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        with pytest.raises(BadRequestError) as refused:  # the API's own words for the bad file, to compare
            client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
        expected_refusal = refused.value.body["message"]  # type: ignore[index]  # the error envelope's body
        with pytest.raises(BadRequestError) as refused:
            client.fine_tuning.alpha.graders.validate(grader=BAD_GRADER)  # type: ignore[arg-type]
        expected_grader_refusal = refused.value.body["message"]  # type: ignore[index]

        done = subprocess.run(
            ["node", str(BROWSER / "workflow.mjs"), server.url, TINY_MODEL_ID,
             *(str(tmp_path / name) for name in ("bad.jsonl", "train.jsonl", "valid.jsonl", "large.jsonl")),
             json.dumps(BAD_GRADER), json.dumps(GOOD_GRADER)],
            capture_output=True, text=True, timeout=150, cwd=BROWSER,
            env={**os.environ, "FTSERVE_API_KEY": KEY, "FTSERVE_ARTIFACTS_DIR": str(ARTIFACTS),
                 "FTSERVE_DOWNLOADS_DIR": str(tmp_path / "downloads")},
        )
        seen = json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else {}
        assert done.returncode == 0, f"{done.stderr}\nseen: {seen}"

        assert seen["pageErrors"] == []
        assert {page: found for page, found in seen["accessibility"].items() if found} == {}
        assert "line 3" in expected_refusal and seen["badFileAlert"] == expected_refusal
        assert seen["largeFile"]["progress"] == 1
        large_file = seen["largeFile"]["details"]
        assert [large_file[term] for term in ("Name", "Bytes", "Status", "Format")] == [
            "large.jsonl", str(len(large)), "processed", "chat"]
        assert large_file["Examples"] == f"{LARGE_BYTES // 100:,}"
        # What validation found, as the API reports it; the dropped validation file was uploaded as the picked one.
        for shown, examples in ((seen["trainFile"], 16), (seen["validFile"], 4)):
            found = client.files.retrieve(shown["File"]).ftserve  # type: ignore[attr-defined]  # the extension field
            assert found["format"] == "chat" and found["examples"] == examples
            assert (shown["Format"], shown["Examples"]) == ("chat", str(examples))
            assert shown["Estimated tokens"] == f"{found['estimated_tokens']:,}"
        assert seen["badGraderAlert"] == expected_grader_refusal and not seen["goodGraderAlertShown"]
        assert seen["preview"]["Trained tokens"].isdigit() and int(seen["preview"]["Trained tokens"]) > 0
        assert seen["preview"]["Epochs"] == "2"
        # The dry run prices the tokens the upload counted, once an epoch.
        trained = client.files.retrieve(seen["trainFileId"]).ftserve["estimated_tokens"]  # type: ignore[attr-defined]
        assert int(seen["preview"]["Trained tokens"]) == 2 * trained
        # The hyperparameters as the job will run: given ones as given, the learning rate resolved from "auto".
        assert seen["preview"]["n epochs"] == "2" and seen["preview"]["batch size"] == "4"
        assert float(seen["preview"]["learning rate"]) > 0
        # The memory estimate against the server's limit, both as the dry run gives them.
        assert re.fullmatch(r"\d+\.\d GiB of \d+\.\d GiB", seen["preview"]["Memory"]), seen["preview"]

        job = client.fine_tuning.jobs.retrieve(seen["jobId"])
        assert job.status == "succeeded" and job.model == TINY_MODEL_ID and job.training_file == seen["trainFileId"]
        assert job.validation_file == seen["validFileId"] and job.user_provided_suffix == "browser"  # type: ignore[attr-defined]  # an extra field the SDK keeps
        assert seen["fineTunedModel"] == job.fine_tuned_model
        metrics = [row[0] for row in seen["evaluation"]]
        assert metrics[:2] == ["Loss", "Token accuracy"] and all(len(row) == 3 for row in seen["evaluation"])
        assert seen["checkpointActions"][0] == "Chat" and "Export" in seen["checkpointActions"]
        assert "Share with project" in seen["checkpointActions"]
        assert seen["sharedWith"] == ["theirs"]  # read from the API before the model, and its checkpoints, were deleted
        assert [pane["model"] for pane in seen["sideBySide"]] == [job.fine_tuned_model, TINY_MODEL_ID]
        assert all(pane["answer"] and pane["failure"] is None and pane["live"] == "polite" for pane in seen["sideBySide"])
        assert seen["modelRow"][0] == job.fine_tuned_model and seen["modelRow"][2:] == [job.id, TINY_MODEL_ID]
        gguf = Path(seen["download"])
        assert gguf.suffix == ".gguf" and gguf.read_bytes()[:4] == b"GGUF"
        assert seen["narrowOverflow"] <= 0, seen["narrowTooWide"]
        # The key's project alone: the other project sees none of it.
        other = OpenAI(base_url=server.base_url, api_key=OTHER_KEY, max_retries=0)
        assert other.fine_tuning.jobs.list().data == [] and other.files.list().data == []
        assert all(Path(path).is_file() for path in seen["screenshots"])
        # Deleted from the models page, after the browser's confirmation.
        assert job.fine_tuned_model in seen["deleteQuestion"] and job.fine_tuned_model not in seen["modelsAfterDelete"]
        with pytest.raises(NotFoundError):
            client.models.retrieve(seen["fineTunedModel"])
