"""Structured logs: with FTSERVE_LOG_FORMAT=json every line is a JSON object, and the lines written while
answering a request or working on a job carry that request's or job's id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openai import OpenAI

from ftserve import logs
from ftserve.config import Settings
from tests.conftest import settings_for, start_server
from tests.helpers import chat_jsonl, upload, wait_for


@contextmanager
def configured(settings: Settings) -> Iterator[io.StringIO]:
    """`logs.configure` as an entry point calls it, writing to a buffer; the logging setup is restored after."""
    root, names = logging.getLogger(), (*logs.UVICORN_LOGGERS, "uvicorn.access")
    saved = (root.handlers[:], root.level,
             [(logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).disabled)
              for n in names])
    out = io.StringIO()
    logs.configure(settings, out)
    try:
        yield out
    finally:
        root.handlers[:], level, loggers = saved
        root.setLevel(level)
        for name, (handlers, propagate, disabled) in zip(names, loggers):
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled


def test_json_lines_carry_the_bound_ids_extra_fields_and_the_exception() -> None:
    log = logging.getLogger("ftserve.test")
    with configured(Settings(log_format="json", log_level="INFO")) as out:
        with logs.bind(job_id="ftjob-1", worker_id="w-1"):
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("step %d failed", 3, extra={"step": 3})
        log.debug("not at this level")
        log.warning("outside any job")
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["level"] == "error" and first["logger"] == "ftserve.test" and first["message"] == "step 3 failed"
    assert (first["job_id"], first["worker_id"], first["step"]) == ("ftjob-1", "w-1", 3)
    assert "ValueError: boom" in first["exc"] and first["ts"].endswith("+00:00")
    assert second["message"] == "outside any job" and "job_id" not in second


def test_text_lines_end_with_the_ids() -> None:
    with configured(Settings(log_format="text")) as out, logs.bind(request_id="req_1"):
        logging.getLogger("ftserve.test").info("hello", extra={"status": 200})
    assert out.getvalue().rstrip().endswith("INFO ftserve.test: hello request_id=req_1")


def test_a_request_and_a_job_run_log_json_lines_with_their_ids(tmp_path: Path, database_url: str | None) -> None:
    settings = settings_for(tmp_path, database_url, log_format="json")
    live, server, thread = start_server(settings)
    try:
        client = OpenAI(base_url=live.base_url, api_key="none", max_retries=0)
        training = upload(client, chat_jsonl(4))
        with configured(settings) as out:
            raw = client.fine_tuning.jobs.with_raw_response.create(model="SmolLM2-135M-Instruct", training_file=training)
            job = raw.parse()
            assert wait_for(client, job.id).status == "succeeded"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        live.runtime.engine.dispose()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is JSON

    in_request = [r for r in lines if r.get("request_id") == raw.headers["x-request-id"]]
    access = [r for r in in_request if r["logger"] == "ftserve.access"]
    assert [(r["method"], r["route"], r["status"]) for r in access] == [("POST", "/v1/fine_tuning/jobs", 200)]
    assert access[0]["duration_ms"] > 0 and "job_id" not in access[0]
    in_job = [r for r in lines if r.get("job_id") == job.id]
    messages = [r["message"] for r in in_job]
    assert messages[:2] == ["claimed the job (validating_files)", "claimed the job (queued)"]
    assert any(m.startswith("training ended at step") and m.endswith("(finished)") for m in messages)
    assert all(r["worker_id"] and "request_id" not in r for r in in_job)
