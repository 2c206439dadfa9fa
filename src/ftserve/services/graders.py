"""Use cases of `/fine_tuning/alpha/graders/*`, and the grader check a reinforcement job passes at create.

The graders themselves live in `ftserve.graders`, which knows nothing of the service; what they need of it
comes from here: a judge for model graders (this server's own models, as `/chat/completions` serves them to
the calling project, or a configured OpenAI-compatible provider's), the embedder of the cosine metric, and
the operator's limits on python graders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ftserve.domain.errors import FtserveError, InvalidRequest
from ftserve.graders import Embed, GraderInvalid, Judge, JudgeError, JudgeReply, PythonLimits, check_grader, run_grader
from ftserve.providers.contract import HostedProvider, ProviderError
from ftserve.schemas.inference import ChatCompletionRequest
from ftserve.services.inference import InferenceService


class ServedJudge:
    """A model grader's judge for one project: chat completions through the inference service, on the models
    that project may call (catalogue base models, its own fine-tuned models and those shared with it), waiting
    its turn at the same fairness gate as `/chat/completions`. `NAME/model` asks the configured provider NAME
    instead, when it speaks OpenAI's chat API."""

    def __init__(self, inference: InferenceService, project: str, hosted: dict[str, HostedProvider]):
        self.inference = inference
        self.project = project
        self.hosted = hosted

    def known(self, model: str) -> bool:
        if self._provider(model) is not None:
            return True
        try:
            self.inference.resolve(self.project, model)
        except FtserveError:  # another project's model is as unknown as one that does not exist
            return False
        return True

    def __call__(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> JudgeReply:
        arguments = {
            "seed": sampling.get("seed"), "top_p": sampling.get("top_p"), "temperature": sampling.get("temperature"),
            "max_tokens": sampling.get("max_completions_tokens"),
        }
        arguments = {key: value for key, value in arguments.items() if value is not None}
        provider = self._provider(model)
        if provider is not None:
            return _hosted_reply(provider, model.split("/", 1)[1], messages, arguments)
        try:
            body = ChatCompletionRequest(model=model, messages=messages, **arguments)  # type: ignore[arg-type]  # validated here
            prepared = self.inference.prepare_chat(self.project, body)
            outputs = list(self.inference.run(prepared))
        except ValidationError as error:
            raise JudgeError("server", f"The judge's request is invalid: {error.errors()[0]['msg']}") from None
        except FtserveError as error:
            raise JudgeError("server", error.message) from None
        return JudgeReply(
            text="".join(o.text for o in outputs), model=model, prompt_tokens=prepared.prompt_tokens,
            completion_tokens=max((o.tokens for o in outputs), default=0),
        )

    def _provider(self, model: str) -> HostedProvider | None:
        prefix, slash, _ = model.partition("/")
        provider = self.hosted.get(prefix) if slash else None
        return provider if provider is not None and provider.kind == "openai_compatible" else None


def _hosted_reply(provider: HostedProvider, model: str, messages: list[dict[str, Any]],
                  arguments: dict[str, Any]) -> JudgeReply:
    client = provider.sdk.client  # type: ignore[attr-defined]  # openai_compatible adapters hold an openai SDK
    try:
        with provider.sdk.calling():  # type: ignore[attr-defined]  # as above
            completion = client.chat.completions.create(model=model, messages=messages, **arguments)
    except ProviderError as error:
        raise JudgeError("server", str(error)) from None
    message = completion.choices[0].message if completion.choices else None
    if message is not None and getattr(message, "refusal", None):
        raise JudgeError("refusal", message.refusal)
    usage = completion.usage
    return JudgeReply(
        text=(message.content if message is not None else None) or "", model=completion.model or model,
        prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0,
    )


class ProviderJudges:
    """The judges of a job that trains at a provider: the provider's own models, which ftserve cannot list, so
    any name passes here (the provider says so if it does not know one). Never asked for a reply."""

    def known(self, model: str) -> bool:
        return True

    def __call__(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> JudgeReply:
        raise JudgeError("server", "A hosted job's model graders run at its provider.")


@dataclass(frozen=True)
class GraderSettings:
    """What the operator allows graders (settings `python_grader*`); `embed` is None without an embeddings model."""

    python: PythonLimits
    embed: Embed | None = None


class GraderService:
    def __init__(self, inference: InferenceService, hosted: dict[str, HostedProvider], settings: GraderSettings):
        self.inference = inference
        self.hosted = hosted
        self.settings = settings

    def judge(self, project: str) -> ServedJudge:
        return ServedJudge(self.inference, project, self.hosted)

    def validate(self, project: str, grader: dict[str, Any]) -> dict[str, Any]:
        """The grader as sent, once it has passed every check that needs no dataset item."""
        self.check(project, grader, item_fields=None, param="grader")
        return grader

    def run(self, project: str, grader: dict[str, Any], model_sample: str, item: dict[str, Any]) -> dict[str, Any]:
        """Grade `model_sample` against `item`: OpenAI's `RunGraderResponse` body. A grader that fails while it
        runs (a python exception, a judge's unparsable answer) scores 0 and says why in `metadata.errors`;
        one that cannot run at all is a 400 first."""
        self.check(project, grader, item_fields=None, param="grader")
        judge = self.judge(project)
        outcome = run_grader(grader, model_sample, item, judge=judge, embed=self.settings.embed,
                             python=self.settings.python)
        return outcome.wire()

    def check(self, project: str, grader: dict[str, Any], *, item_fields: set[str] | None, param: str,
              hosted: bool = False) -> None:
        """Refuse a grader that cannot run here, with 400 naming the path inside it under `param`.

        `item_fields`: the fields every dataset item has (None: not known, not checked). `hosted`: the grader
        runs at a provider, which has its own judges, embeddings and python sandbox, so only its shape is checked.
        """
        judge: Judge = ProviderJudges() if hosted else self.judge(project)
        embed_available = hosted or self.settings.embed is not None
        python = PythonLimits(enabled=True) if hosted else self.settings.python
        try:
            check_grader(grader, item_fields=item_fields, judge=judge, embed_available=embed_available, python=python)
        except GraderInvalid as error:
            where = f"{param}.{error.param}" if error.param else param
            raise InvalidRequest(error.message, param=where, code="invalid_grader") from None
