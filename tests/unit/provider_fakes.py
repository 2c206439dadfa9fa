"""Each hosted adapter against its recorded provider, behind one shape, so the contract suite asks them all the same.

A `Fake` builds its adapter on the real client library and arranges what the provider answers to
`get` and `cancel` of one remote job: a recorded state, a recorded refusal, or no answer at all.
Together, Fireworks and RunPod answer through respx; Bedrock through botocore's Stubber.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
import respx
from botocore.parsers import create_parser
from botocore.validate import ParamValidator

from ftserve.providers.contract import HostedProvider

RECORDINGS = Path(__file__).parents[1] / "recordings"


def recorded(provider: str, name: str, **changes: Any) -> dict[str, Any]:
    return {**json.loads((RECORDINGS / provider / name).read_text()), **changes}


class Fake:
    """One provider's recorded answers for the job `remote`."""

    name: str
    remote: str
    failure: tuple[str, str]
    """The failed recording's error: its code, and a phrase of the provider's own message."""
    operations: dict[str, bool]
    """Which optional operations the provider has (events, checkpoints, pause, deploy)."""

    def __init__(self, stack: ExitStack):
        self.stack = stack
        self.provider: HostedProvider = self.build()

    def build(self) -> HostedProvider: ...
    def answers(self, state: str) -> None:
        """`get` answers the recording of `state`: running, cancelled, failed, or a status never seen (unknown)."""
    def cancels(self) -> None:
        """`cancel` is accepted, and `get` then answers the cancelled recording."""
    def refuses(self, status: int) -> str:
        """`get` is refused with `status`; returns the provider's own message."""
        raise NotImplementedError
    def unreachable(self) -> None:
        """`get` gets no answer."""
    def garbles(self) -> bool:
        """`get` is answered 200 with a gateway's HTML page; False where the fake cannot answer so."""
        return False
    def requests(self) -> int | None:
        """How many HTTP requests reached the fake provider (None where the fake cannot count them)."""
        return None


class _Respx(Fake):
    base: str
    get_path: str
    cancel_path: str
    STATES: dict[str, tuple[str, dict[str, Any]]]
    """Each state `answers` knows: the recording, and what the fake changes in it."""

    def __init__(self, stack: ExitStack):
        self.router = stack.enter_context(respx.mock(base_url=self.base, assert_all_called=False,
                                                     assert_all_mocked=True))
        super().__init__(stack)

    def reply(self, name: str, http_status: int = 200, **changes: Any) -> httpx.Response:
        return httpx.Response(http_status, json=recorded(self.name, name, **changes))

    def answers(self, state: str) -> None:
        name, changes = self.STATES[state]
        self.on_get(self.reply(name, **changes))

    def cancels(self) -> None:
        self.router.post(self.cancel_path).mock(return_value=self.reply("cancel.json"))
        self.answers("cancelled")

    def on_get(self, response: httpx.Response) -> None:
        self.route = self.router.get(self.get_path).mock(return_value=response)

    def unreachable(self) -> None:
        self.router.get(self.get_path).mock(side_effect=httpx.ConnectError("connection refused"))

    def garbles(self) -> bool:
        self.on_get(httpx.Response(200, text="<html><body>502 Bad Gateway</body></html>",
                                   headers={"content-type": "text/html"}))
        return True

    def requests(self) -> int | None:
        return self.route.call_count


class TogetherFake(_Respx):
    name, base = "together", "https://api.together.test"
    remote = "ft-3b2a7c1e-8d4f-4e1a-9c55-2f0b6d7e9a10"
    get_path, cancel_path = f"/v1/fine-tunes/{remote}", f"/v1/fine-tunes/{remote}/cancel"
    failure = ("error", "must end with an assistant message")
    operations = {"events": True, "checkpoints": True, "pause": False, "deploy": True}
    STATES = {"running": ("retrieve_running.json", {}), "cancelled": ("retrieve_cancelled.json", {}),
              "failed": ("retrieve_error.json", {}), "unknown": ("retrieve_running.json", {"status": "paused_by_ops"})}

    def build(self) -> HostedProvider:
        from ftserve.providers.together_api import TogetherConnection, TogetherProvider

        return TogetherProvider("together", TogetherConnection(api_key="test-key", base_url=self.base))

    def refuses(self, status: int) -> str:
        name = f"error_{status}.json"
        self.on_get(self.reply(name, status))
        return recorded(self.name, name)["error"]["message"]


class FireworksFake(_Respx):
    name, base = "fireworks", "https://api.fireworks.ai/v1/accounts/acct"
    job = "ftjob-q7xlm2rt9vbn4kpz8hcw3syd"
    remote = f"accounts/acct/supervisedFineTuningJobs/{job}"
    get_path, cancel_path = f"/supervisedFineTuningJobs/{job}", f"/supervisedFineTuningJobs/{job}:cancel"
    failure = ("INVALID_ARGUMENT", "the last message must be from the assistant")
    operations = {"events": False, "checkpoints": True, "pause": False, "deploy": True}
    STATES = {"running": ("sft_running.json", {}), "cancelled": ("sft_cancelled.json", {}),
              "failed": ("sft_failed.json", {}), "unknown": ("sft_running.json", {"state": "JOB_STATE_MIGRATING"})}

    def build(self) -> HostedProvider:
        from ftserve.providers.fireworks_api import FireworksProvider

        return FireworksProvider("fireworks", FireworksProvider.Connection(api_key="fw-test", account_id="acct"))

    def refuses(self, status: int) -> str:
        name = f"error_{status}.json"
        self.on_get(self.reply(name, status))
        return recorded(self.name, name)["message"]


class RunpodFake(_Respx):
    name, base = "runpod", "https://api.runpod.ai/v2/ep-ft1"
    remote = "c80ffee4-f315-4e25-a146-0f3d98cf024b-e1"
    get_path, cancel_path = f"/status/{remote}", f"/cancel/{remote}"
    failure = ("failed", "Enviornment variable WANDB_API_KEY not found. Please set it before running the script.")
    operations = {"events": False, "checkpoints": False, "pause": False, "deploy": False}
    STATES = {"running": ("status_in_progress.json", {}), "cancelled": ("status_cancelled.json", {}),
              "failed": ("status_failed.json", {}), "unknown": ("status_in_progress.json", {"status": "THROTTLED"})}
    ERRORS = {500: {"error": "internal error"}, 429: recorded("runpod", "error_429.json"),
              400: recorded("runpod", "error_400.json")}

    def build(self) -> HostedProvider:
        from ftserve.providers.runpod_api import RunpodConnection, RunpodProvider

        connection = RunpodConnection(
            api_key="rp_live_key", endpoint_id="ep-ft1", hf_token="hf_secret", s3_bucket="vol",
            s3_endpoint_url="https://s3api-eur-is-1.runpod.io", s3_access_key_id="a", s3_secret_access_key="b")
        return RunpodProvider("runpod", connection, s3=_NoVolume())

    def refuses(self, status: int) -> str:
        self.on_get(httpx.Response(status, json=self.ERRORS[status]))
        return str(self.ERRORS[status]["error"])


class _NoVolume:
    """Stands in for RunPod's volume where a test must not touch it."""

    def __getattr__(self, operation: str) -> Any:
        raise AssertionError(f"unexpected S3 call: {operation}")


BEDROCK = botocore.session.get_session().get_service_model("bedrock")


def output_shape(client: Any, method: str) -> Any:
    return BEDROCK.operation_model(client.meta.method_to_api_mapping[method]).output_shape


def bedrock_answer(client: Any, method: str, name: str) -> dict[str, Any]:
    """A recorded response body, validated against and parsed with botocore's model of `method`."""
    body = json.loads((RECORDINGS / "bedrock" / f"{name}.json").read_text())
    shape = output_shape(client, method)
    report = ParamValidator().validate(body, shape)
    assert not report.has_errors(), report.generate_report()
    parsed = create_parser("rest-json").parse(
        {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()}, shape)
    parsed.pop("ResponseMetadata", None)
    return parsed



class BedrockFake(Fake):
    name = "bedrock"
    remote = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/amazon.nova-micro-v1:0:128k/q7m2x9k4p1za"
    failure = ("bedrock_job_failed", "alternate between user and assistant")
    operations = {"events": False, "checkpoints": False, "pause": False, "deploy": True}
    STATES = {"running": "get_job_in_progress", "cancelled": "get_job_stopped", "failed": "get_job_failed",
              "unknown": "get_job_new_status"}
    ERRORS = {500: "error_internal", 429: "error_throttling", 400: "error_validation"}

    def build(self) -> HostedProvider:
        import boto3
        from botocore.stub import Stubber

        from ftserve.providers.bedrock_api import BedrockConnection, BedrockProvider

        self.client = boto3.client("bedrock", region_name="us-east-1", aws_access_key_id="a",
                                   aws_secret_access_key="b")
        self.stub = self.stack.enter_context(Stubber(self.client))
        self.stack.callback(self.stub.assert_no_pending_responses)
        connection = BedrockConnection(region="us-east-1", role_arn="arn:aws:iam::123456789012:role/ft",
                                       s3_bucket="b")
        return BedrockProvider("bedrock", connection, client=self.client, s3=_NoVolume())

    def _respond(self, method: str, name: str, **expected: Any) -> None:
        self.stub.add_response(method, bedrock_answer(self.client, method, name), expected)

    def answers(self, state: str) -> None:
        self._respond("get_model_customization_job", self.STATES[state], jobIdentifier=self.remote)

    def cancels(self) -> None:
        self.stub.add_response("stop_model_customization_job", {}, {"jobIdentifier": self.remote})
        self._respond("get_model_customization_job", "get_job_stopping", jobIdentifier=self.remote)
        self.answers("cancelled")

    def refuses(self, status: int) -> str:
        wire = recorded(self.name, f"{self.ERRORS[status]}.json")
        self.stub.add_client_error("get_model_customization_job", service_error_code=wire["headers"]["x-amzn-ErrorType"],
                                   service_message=wire["body"]["message"], http_status_code=status,
                                   expected_params={"jobIdentifier": self.remote})
        return str(wire["body"]["message"])

    def unreachable(self) -> None:
        from botocore.exceptions import EndpointConnectionError

        def refuse(**_: Any) -> None:
            raise EndpointConnectionError(endpoint_url="https://bedrock.us-east-1.amazonaws.com")

        self.stub.deactivate()  # the failure comes before any answer, stubbed or not
        self.client.meta.events.register("before-call.bedrock.GetModelCustomizationJob", refuse)


FAKES: dict[str, type[Fake]] = {
    "together": TogetherFake, "fireworks": FireworksFake, "bedrock": BedrockFake, "runpod": RunpodFake,
}


@contextmanager
def fake(name: str) -> Iterator[Fake]:
    with ExitStack() as stack:
        yield FAKES[name](stack)


@pytest.fixture(params=sorted(FAKES))
def hosted(request: pytest.FixtureRequest) -> Iterator[Fake]:
    with fake(request.param) as built:
        yield built


# What ProviderService's planning reads of files and blobs (`job_request`): a file's storage key and example
# count, and a key's local path. Tests that plan jobs without the file service hand it these.


@dataclass(frozen=True)
class PlannedFile:
    storage_key: str
    examples: int
    estimated_tokens: int | None = None  # as a file stored before uploads were counted: the dry run counts it


class PlanningFiles:
    """The two files a job names, as `job_request` reads them."""

    def get(self, project: str, file_id: str) -> PlannedFile:
        return PlannedFile(f"files/{file_id}.jsonl", 8)


class PlanningBlobs:
    def __init__(self, root: Path):
        self.root = root

    def local(self, key: str) -> Path:
        return self.root / key

    def workdir(self, key: str) -> Path:
        return self.root / key
