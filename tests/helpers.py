"""Small builders the tests share."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from openai import OpenAI

TERMINAL = ("succeeded", "failed", "cancelled")


def chat_jsonl(n: int = 10) -> bytes:
    lines = [
        {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def preference_jsonl(n: int = 10) -> bytes:
    lines = [
        {
            "input": {"messages": [{"role": "user", "content": f"Say {i}"}]},
            "preferred_output": [{"role": "assistant", "content": str(i)}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


def upload(client: OpenAI, data: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]


def wait_for(client: OpenAI, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 60) -> Any:
    deadline = time.time() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.time() > deadline:
            raise AssertionError(f"job {job_id} stayed {job.status}, never reached {statuses}")
        time.sleep(0.05)
