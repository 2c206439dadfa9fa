"""Tenant isolation: with keys for projects alpha and beta, beta walks every operation in the app's own
OpenAPI document using alpha's ids, through the official SDK where it has a method.

Every answer about one of alpha's objects is a 404 in OpenAI's envelope, byte for byte the answer an
id that never existed gets, so it does not even tell that the object exists. An id of alpha's named
in a request body (a job's training file, an upload's part) answers exactly as an unknown id does too
(OpenAI answers those with a 400). Beta's lists hold nothing of alpha's, and afterwards alpha finds
everything as it was. An operation in the document without a walk entry fails the test, so a new
endpoint has to say how it keeps projects apart.

Sharing: alpha grants one checkpoint to beta and another to a third project. Shared means beta may
see and use the checkpoint (retrieve, list, infer, train from it); it may not delete it nor read or
change its permissions. The checkpoint granted to the third project stays a 404 for beta.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import openai
import pytest
from openai import OpenAI

from tests.helpers import chat_jsonl, upload, wait_for

pytestmark = pytest.mark.database

MODEL = "SmolLM2-135M-Instruct"
SECRET = f"alpha-secret-{secrets.token_hex(4)}"
MESSAGES = [{"role": "user", "content": "Say hi"}]
Ids = Mapping[str, str]


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Answer:
    """What an SDK `with_raw_response` method, or an httpx call where the SDK has none, got back."""
    try:
        got = method(*args, **kwargs)
    except openai.APIStatusError as error:
        return Answer(error.status_code, error.response.text)
    except (openai.APIConnectionError, httpx.TransportError) as error:  # the server broke off its answer
        return Answer(0, repr(error))
    response = got if isinstance(got, httpx.Response) else got.http_response
    return Answer(response.status_code, response.read().decode(errors="replace"))


@dataclass(frozen=True)
class Probe:
    label: str
    send: Callable[[Ids], Answer]
    kind: Literal["hidden", "like_unknown", "listing"]
    code: str | None = None


def hidden(label: str, send: Callable[[Ids], Answer], code: str | None = None) -> Probe:
    """An operation on alpha's object: a 404, the same as for an id that does not exist."""
    return Probe(label, send, "hidden", code)


def like_unknown(label: str, send: Callable[[Ids], Answer]) -> Probe:
    """A request naming alpha's object in its body: the same 4xx as for an id that does not exist."""
    return Probe(label, send, "like_unknown")


def listing(label: str, send: Callable[[Ids], Answer]) -> Probe:
    """A list (or beta's own new object): a 200 that holds nothing of alpha's."""
    return Probe(label, send, "listing")


@dataclass(frozen=True)
class Own:
    """Beta's own objects, for requests that put alpha's ids inside something beta may use."""

    file: str
    job: str
    checkpoint: str
    upload: str
    webhook: str


ALPHA_FILES = ("file", "result_file", "upload_file")
ALPHA_JOBS = ("job", "paused_job")
ALPHA_MODELS = ("model", "checkpoint")  # alpha's own, not shared with beta
ALPHA_UPLOADS = ("pending_upload", "completed_upload")


def job_args(training_file: str) -> dict[str, Any]:
    return dict(model=MODEL, training_file=training_file, suffix="tenant", metadata={"tenant": SECRET},
                hyperparameters={"n_epochs": 3, "batch_size": 1})


def slow_job_args(training_file: str) -> dict[str, Any]:
    return dict(model=MODEL, training_file=training_file, metadata={"tenant": SECRET},
                hyperparameters={"n_epochs": 50, "batch_size": 1})


def each(
    roles: tuple[str, ...], method: Callable[..., Any], *, code: str | None = None, note: str = "", **kwargs: Any
) -> list[Probe]:
    """`method(<alpha's id>, **kwargs)` for each role, as an operation on alpha's object."""
    return [hidden(role + note, lambda i, r=role: call(method, i[r], **kwargs), code) for role in roles]


def walk(beta: OpenAI, api: httpx.Client, own: Own) -> dict[str, list[Probe]]:
    """Per operation of the OpenAPI document, the requests beta makes with alpha's ids (`i`)."""
    files, uploads, models = beta.files.with_raw_response, beta.uploads.with_raw_response, beta.models.with_raw_response
    parts = beta.uploads.parts.with_raw_response
    jobs, checkpoints = beta.fine_tuning.jobs.with_raw_response, beta.fine_tuning.jobs.checkpoints.with_raw_response
    permissions = beta.fine_tuning.checkpoints.permissions.with_raw_response
    chat, completions = beta.chat.completions.with_raw_response, beta.completions.with_raw_response
    hooks = beta.webhooks.with_raw_response
    graders = beta.fine_tuning.alpha.graders.with_raw_response
    granted = ("checkpoint", "model", "shared")

    def judged_by(model: str) -> dict[str, Any]:
        return {"type": "score_model", "name": "judge", "model": model,
                "input": [{"role": "user", "content": "Score {{sample.output_text}}"}]}
    return {
        "GET /v1/files": [
            listing("beta's files", lambda i: call(files.list)),
            listing("beta's result files", lambda i: call(files.list, purpose="fine-tune-results")),
            hidden("page after alpha's file", lambda i: call(files.list, after=i["file"])),
        ],
        "POST /v1/files": [listing("beta stores its own file", lambda i: call(
            files.create, file=("b.jsonl", chat_jsonl(2)), purpose="fine-tune"))],
        "GET /v1/files/{file_id}": each(ALPHA_FILES, files.retrieve),
        "DELETE /v1/files/{file_id}": each(ALPHA_FILES, files.delete),
        "GET /v1/files/{file_id}/content": each(ALPHA_FILES, files.content),
        "POST /v1/uploads": [listing("beta starts its own upload", lambda i: call(
            uploads.create, bytes=10, filename="b.jsonl", purpose="fine-tune", mime_type="text/jsonl"))],
        "POST /v1/uploads/{upload_id}/parts": each(ALPHA_UPLOADS, parts.create, data=b"{}"),
        "POST /v1/uploads/{upload_id}/complete": [
            *[hidden(role, lambda i, r=role: call(uploads.complete, i[r], part_ids=[i["part"]]))
              for role in ALPHA_UPLOADS],
            like_unknown("alpha's part in beta's upload", lambda i: call(
                uploads.complete, own.upload, part_ids=[i["part"]])),
        ],
        "POST /v1/uploads/{upload_id}/cancel": each(ALPHA_UPLOADS, uploads.cancel),
        "POST /v1/fine_tuning/jobs": [
            like_unknown("training_file", lambda i: call(jobs.create, model=MODEL, training_file=i["file"])),
            like_unknown("validation_file", lambda i: call(
                jobs.create, model=MODEL, training_file=own.file, validation_file=i["file"])),
            *[like_unknown(f"{role} as the base", lambda i, r=role: call(
                jobs.create, model=i[r], training_file=own.file)) for role in ALPHA_MODELS],
            like_unknown("alpha's Idempotency-Key and body", lambda i: call(
                jobs.create, **job_args(i["file"]), extra_headers={"Idempotency-Key": i["idempotency_key"]})),
            like_unknown("a retry of alpha's create", lambda i: call(
                jobs.create, **slow_job_args(i["file"]), extra_headers={"x-stainless-retry-count": "1"})),
        ],
        "POST /v1/fine_tuning/alpha/graders/run": [like_unknown(f"{role} as the judge", lambda i, r=role: call(
            graders.run, grader=judged_by(i[r]), model_sample="yes")) for role in ALPHA_MODELS],
        "POST /v1/fine_tuning/alpha/graders/validate": [like_unknown(f"{role} as the judge", lambda i, r=role: call(
            graders.validate, grader=judged_by(i[r]))) for role in ALPHA_MODELS],
        "GET /v1/fine_tuning/jobs": [
            listing("beta's jobs", lambda i: call(jobs.list, limit=100)),
            listing("by alpha's metadata", lambda i: call(jobs.list, metadata={"tenant": SECRET})),
            hidden("page after alpha's job", lambda i: call(jobs.list, after=i["job"])),
        ],
        "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": each(ALPHA_JOBS, jobs.retrieve),
        "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": each(ALPHA_JOBS, jobs.cancel),
        "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": each(ALPHA_JOBS, jobs.pause),
        "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": each(ALPHA_JOBS, jobs.resume),
        "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events": [
            *each(ALPHA_JOBS, jobs.list_events),
            listing("beta's job", lambda i: call(jobs.list_events, own.job, limit=100)),
            hidden("beta's job after alpha's event", lambda i: call(jobs.list_events, own.job, after=i["event"])),
        ],
        "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": [
            *each(ALPHA_JOBS, checkpoints.list),
            listing("beta's job", lambda i: call(checkpoints.list, own.job)),
            hidden("beta's job after alpha's checkpoint", lambda i: call(
                checkpoints.list, own.job, after=i["checkpoint_id"])),
        ],
        "GET /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": [
            *each(granted, permissions.list),
            hidden("beta's checkpoint after alpha's permission", lambda i: call(
                permissions.list, own.checkpoint, after=i["permission"])),
        ],
        "POST /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": each(
            granted, permissions.create, project_ids=["beta"]),
        "DELETE /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions/{permission_id}": [
            hidden("alpha's grant to gamma", lambda i: call(
                permissions.delete, i["permission"], fine_tuned_model_checkpoint=i["checkpoint"])),
            hidden("alpha's grant to beta", lambda i: call(
                permissions.delete, i["shared_permission"], fine_tuned_model_checkpoint=i["shared"])),
            hidden("alpha's grant under beta's checkpoint", lambda i: call(
                permissions.delete, i["permission"], fine_tuned_model_checkpoint=own.checkpoint)),
        ],
        "GET /v1/models": [listing("beta's models", lambda i: call(models.list))],
        "GET /v1/models/{model}": each(ALPHA_MODELS, models.retrieve, code="model_not_found"),
        "DELETE /v1/models/{model}": each((*ALPHA_MODELS, "shared"), models.delete, code="model_not_found"),
        "POST /v1/chat/completions": [
            *each(ALPHA_MODELS, lambda m: chat.create(model=m, messages=MESSAGES), code="model_not_found"),
            *each(ALPHA_MODELS, lambda m: chat.create(model=m, messages=MESSAGES, stream=True),
                  code="model_not_found", note=" streamed"),
        ],
        "POST /v1/completions": [
            *each(ALPHA_MODELS, lambda m: completions.create(model=m, prompt="hi"), code="model_not_found"),
            *each(ALPHA_MODELS, lambda m: completions.create(model=m, prompt="hi", stream=True),
                  code="model_not_found", note=" streamed"),
        ],
        "POST /v1/webhook_endpoints": [listing("beta's own endpoint", lambda i: call(
            hooks.create, name="beta", url="http://hooks.invalid/beta", event_types=["fine_tuning.job.failed"]))],
        "GET /v1/webhook_endpoints": [
            listing("beta's endpoints", lambda i: call(hooks.list)),
            hidden("page after alpha's endpoint", lambda i: call(hooks.list, after=i["webhook"])),
        ],
        "GET /v1/webhook_endpoints/{webhook_endpoint_id}": each(("webhook",), hooks.retrieve),
        "POST /v1/webhook_endpoints/{webhook_endpoint_id}": each(("webhook",), hooks.update, name="beta's now"),
        "DELETE /v1/webhook_endpoints/{webhook_endpoint_id}": each(("webhook",), hooks.delete),
        "POST /v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret": each(("webhook",), hooks.rotate_secret),
        "POST /v1/webhook_endpoints/{webhook_endpoint_id}/test": each(
            ("webhook",), hooks.test, event_type="fine_tuning.job.succeeded"),
        "GET /v1/webhook_event_types": [listing("event types", lambda i: call(hooks.event_types.list))],
        "GET /v1/ftserve/webhook_endpoints/{webhook_endpoint_id}/deliveries": [
            hidden("alpha's endpoint", lambda i: call(api.get, f"ftserve/webhook_endpoints/{i['webhook']}/deliveries")),
            listing("beta's endpoint", lambda i: call(api.get, f"ftserve/webhook_endpoints/{own.webhook}/deliveries")),
            hidden("beta's endpoint after alpha's delivery", lambda i: call(
                api.get, f"ftserve/webhook_endpoints/{own.webhook}/deliveries", params={"after": i["delivery"]})),
        ],
        "POST /v1/ftserve/fine_tuning/resolve": [
            like_unknown("training_file", lambda i: call(
                api.post, "ftserve/fine_tuning/resolve", json={"model": MODEL, "training_file": i["file"]})),
            like_unknown("model", lambda i: call(
                api.post, "ftserve/fine_tuning/resolve", json={"model": i["model"], "training_file": own.file})),
        ],
        "GET /v1/ftserve/providers": [listing("providers", lambda i: call(api.get, "ftserve/providers"))],
        "GET /v1/ftserve/providers/{name}/models": [
            listing("local models", lambda i: call(api.get, "ftserve/providers/local/models"))],
        "POST /v1/ftserve/deployments": each(
            ALPHA_MODELS, lambda m: api.post("ftserve/deployments", json={"model": m}), code="model_not_found"),
        "POST /v1/ftserve/evaluations": [
            *each(ALPHA_MODELS, lambda m: api.post("ftserve/evaluations", json={"model": m, "file": own.file}),
                  code="model_not_found"),
            hidden("alpha's file", lambda i: call(
                api.post, "ftserve/evaluations", json={"model": MODEL, "file": i["file"]})),
        ],
        "GET /v1/ftserve/export": [
            probe for form in ("adapter", "merged", "gguf") for probe in each(
                ALPHA_MODELS, lambda m, f=form: api.get("ftserve/export", params={"model": m, "format": f}),
                code="model_not_found", note=f" as {form}")
        ],
    }


def operations(server) -> set[str]:  # type: ignore[no-untyped-def]
    document = httpx.get(f"{server.url}/openapi.json").json()
    return {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}


def test_every_operation_has_a_walk_entry(keyed, beta: OpenAI) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client() as api:
        table = walk(beta, api, Own("", "", "", "", ""))
    schema = operations(keyed)
    assert not schema - set(table), "operations with no tenant-isolation walk entry"
    assert not set(table) - schema, "walk entries for operations the app no longer has"


def _alpha_estate(alpha: OpenAI) -> dict[str, str]:
    """One of everything in project alpha, by role."""
    data = b"".join(json.dumps({"messages": [
        {"role": "user", "content": f"{SECRET} {n}"}, {"role": "assistant", "content": str(n)}]}).encode() + b"\n"
        for n in range(4))
    ids = {"file": upload(alpha, data, name=f"{SECRET}.jsonl"), "idempotency_key": f"key-{SECRET}"}
    # A name that never resolves (RFC 2606), so the job's end is a delivery that fails and stays in the log.
    ids["webhook"] = alpha.webhooks.create(name=SECRET, url=f"http://hooks.invalid/{SECRET}",
                                           event_types=["fine_tuning.job.succeeded"]).id
    jobs = alpha.fine_tuning.jobs
    job = jobs.create(**job_args(ids["file"]), extra_headers={"Idempotency-Key": ids["idempotency_key"]})
    paused = jobs.create(**slow_job_args(ids["file"]))
    jobs.pause(paused.id)
    done = wait_for(alpha, job.id)
    assert done.status == "succeeded", done.error
    wait_for(alpha, paused.id, ("paused",), timeout=20)
    steps = jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in steps] == [12, 8, 4]
    ids.update(job=job.id, paused_job=paused.id, model=done.fine_tuned_model, result_file=done.result_files[0],
               checkpoint=steps[1].fine_tuned_model_checkpoint, checkpoint_id=steps[1].id,
               shared=steps[2].fine_tuned_model_checkpoint, event=jobs.list_events(job.id).data[-1].id)
    deliveries = alpha.get(f"/ftserve/webhook_endpoints/{ids['webhook']}/deliveries", cast_to=object)["data"]
    assert [d["event_type"] for d in deliveries] == ["fine_tuning.job.succeeded"]
    ids["delivery"] = deliveries[0]["id"]
    permissions = alpha.fine_tuning.checkpoints.permissions
    ids["permission"] = permissions.create(ids["checkpoint"], project_ids=["gamma"]).data[0].id
    ids["shared_permission"] = permissions.create(ids["shared"], project_ids=["beta"]).data[0].id

    def new_upload() -> str:
        made = alpha.uploads.create(bytes=len(data), filename="up.jsonl", purpose="fine-tune", mime_type="text/jsonl")
        return made.id

    ids["pending_upload"] = new_upload()
    ids["part"] = alpha.uploads.parts.create(ids["pending_upload"], data=data).id
    ids["completed_upload"] = new_upload()
    part = alpha.uploads.parts.create(ids["completed_upload"], data=data).id
    ids["upload_file"] = alpha.uploads.complete(ids["completed_upload"], part_ids=[part]).file.id
    return ids


def _unknown(ids: Ids) -> dict[str, str]:
    """Ids shaped like alpha's that name nothing."""
    def fresh(like: str) -> str:
        tail = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))
        return like[: len(like) - 24] + tail if len(like) > 24 else f"x-{tail}"

    model = ids["model"].rsplit(":", 1)[0] + ":" + fresh("")[-8:]
    unknown = {role: fresh(value) for role, value in ids.items()}
    unknown.update(model=model, checkpoint=f"{model}:ckpt-step-8", shared=f"{model}:ckpt-step-4")
    return unknown


def _normalized(answer: Answer, ids: Ids) -> tuple[int, str]:
    text = answer.text
    for role, value in sorted(ids.items(), key=lambda item: -len(item[1])):
        text = text.replace(value, f"<{role}>")
    return answer.status, text


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _leak(probe: Probe, ids: Ids, unknown: Ids) -> str | None:
    """What is wrong with beta's answer to `probe`, if anything."""
    answer = probe.send(ids)
    if probe.kind == "listing":
        # Everything of alpha's but the checkpoint it shared with beta, which beta may see.
        alpha_values = {value for role, value in ids.items() if role != "shared"}
        shown = set(_strings(json.loads(answer.text))) if answer.status == 200 else set()
        if answer.status == 200 and not shown & alpha_values and SECRET not in answer.text:
            return None
        return f"{answer.status} {answer.text:.300}"
    seen, expected = _normalized(answer, ids), _normalized(probe.send(unknown), unknown)
    error = json.loads(answer.text).get("error") if answer.text.startswith("{") else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"no OpenAI error envelope: {answer.status} {answer.text:.300}"
    if seen != expected:
        return f"{seen!r:.300} for alpha's ids, {expected!r:.300} for unknown ids"
    if probe.kind == "hidden" and (answer.status != 404 or probe.code not in (None, error["code"])):
        return f"{seen!r:.300}, not a 404 {probe.code or ''}"
    if not 400 <= answer.status < 500:
        return f"{seen!r:.300}, not a 4xx"
    return None


def _snapshot(alpha: OpenAI, ids: Ids) -> dict[str, Any]:
    """What alpha can see of its objects."""
    jobs, permissions = alpha.fine_tuning.jobs, alpha.fine_tuning.checkpoints.permissions
    return {
        "files": {r: alpha.files.retrieve(ids[r]).model_dump() for r in ALPHA_FILES},
        "content": {r: alpha.files.content(ids[r]).read() for r in ALPHA_FILES},
        "jobs": {r: jobs.retrieve(ids[r]).model_dump() for r in ALPHA_JOBS},
        "events": {r: [e.id for e in jobs.list_events(ids[r], limit=1000)] for r in ALPHA_JOBS},
        "checkpoints": [c.id for c in jobs.checkpoints.list(ids["job"])],
        "models": {m: alpha.models.retrieve(ids[m]).model_dump() for m in (*ALPHA_MODELS, "shared")},
        "permissions": {m: [p.model_dump() for p in permissions.list(ids[m])] for m in ("checkpoint", "shared")},
        "webhook": alpha.webhooks.retrieve(ids["webhook"]).model_dump(),
    }


def _beta_estate(beta: OpenAI) -> Own:
    file = upload(beta, chat_jsonl(3), name="beta.jsonl")
    job = beta.fine_tuning.jobs.create(model=MODEL, training_file=file, hyperparameters={"n_epochs": 1})
    assert wait_for(beta, job.id).status == "succeeded"
    return Own(
        file=file, job=job.id,
        checkpoint=beta.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint,
        upload=beta.uploads.create(bytes=10, filename="b.jsonl", purpose="fine-tune", mime_type="text/jsonl").id,
        webhook=beta.webhooks.create(name="beta", url="http://hooks.invalid/", event_types=["fine_tuning.job.failed"]).id,
    )


def test_the_other_project_gets_404s_and_changes_nothing(  # type: ignore[no-untyped-def]
    keyed, alpha: OpenAI, beta: OpenAI
) -> None:
    ids = _alpha_estate(alpha)
    unknown = _unknown(ids)
    before = _snapshot(alpha, ids)
    own = _beta_estate(beta)

    with httpx.Client(base_url=keyed.base_url, headers={"Authorization": "Bearer sk-beta-00000000000"}) as api:
        table = walk(beta, api, own)
        leaks = [f"{operation} [{probe.label}]: {leak}" for operation, probes in table.items() for probe in probes
                 if (leak := _leak(probe, ids, unknown))]
    assert not leaks, "\n".join(leaks)
    probes = [p for walked in table.values() for p in walked]
    requests = sum(1 if p.kind == "listing" else 2 for p in probes)
    print(f"\n{len(table)} operations, {len(probes)} probes, {requests} requests as beta")

    # Nothing beta tried reached alpha's objects.
    assert _snapshot(alpha, ids) == before
    assert SECRET.encode() in before["content"]["file"]
    assert {ids["model"], ids["checkpoint"], ids["shared"]} <= {m.id for m in alpha.models.list()}
    assert {ids["job"], ids["paused_job"]} <= {j.id for j in alpha.fine_tuning.jobs.list(limit=1000)}
    completed = alpha.uploads.complete(ids["pending_upload"], part_ids=[ids["part"]])
    assert alpha.files.content(completed.file.id).read() == before["content"]["file"]
    assert alpha.fine_tuning.jobs.cancel(ids["paused_job"]).status == "cancelled"

    # Shared means usable: beta sees the shared checkpoint and gets past the visibility check to the
    # fake trainer's weights, which cannot be served. And isolation holds the other way round.
    assert beta.models.retrieve(ids["shared"]).owned_by == "alpha"
    with pytest.raises(openai.BadRequestError) as error:
        beta.chat.completions.create(model=ids["shared"], messages=MESSAGES)  # type: ignore[arg-type]
    assert error.value.code == "model_not_servable"
    for lookup in (lambda: alpha.files.retrieve(own.file), lambda: alpha.fine_tuning.jobs.retrieve(own.job),
                   lambda: alpha.models.retrieve(own.checkpoint)):
        with pytest.raises(openai.NotFoundError):
            lookup()
