"""Use cases of `/chat/completions` and `/completions`: check a request, then answer it with a served model.

A request is prepared first (model resolved, prompt rendered and counted, every argument
checked), so that anything wrong is a 400 before a stream starts. It then goes to the generation
engine (vLLM, or the transformers loop) when the gate gives it a turn, in the caller's thread; the
API runs it off the event loop.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ftserve.catalogue import CatalogueEntry
from ftserve.domain.errors import FtserveError, InvalidRequest
from ftserve.files.storage import BlobStore
from ftserve.inference import engine_gateway as engine
from ftserve.inference.gate import Cancelled, FairGate
from ftserve.inference.interface import Engine, Generation, Sampling, Target, TokenLogprob
from ftserve.inference.pool import ModelPool, Text, artifact_kind, manifest
from ftserve.providers.local import source_of
from ftserve.schemas.inference import ChatCompletionRequest, CompletionRequest, FinishReason, Sampled
from ftserve.services.files import FINE_TUNE, FileService

if TYPE_CHECKING:
    from ftserve.inference.engine_gateway import Scores


class ModelNotServable(FtserveError):
    """This model has no weights that can be served."""

    status_code = 400
    type = "invalid_request_error"
    code = "model_not_servable"


@dataclass(frozen=True)
class Prepared:
    project: str
    model: str
    target: Target
    text: Text
    prompts: list[list[int]]
    sampling: Sampling
    n: int
    seed: int | None
    tools: bool
    echo: list[str]
    logprobs: int | None = None
    response_format: dict[str, Any] | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a served model (settings `inference_*`)."""

    default_max_tokens: int
    """Tokens an answer may have when the request sets no max_tokens."""
    max_choices: int
    """Prompts times `n`."""
    max_prompt_bytes: int
    """The prompt text's bytes, checked before it is tokenized."""
    per_project: int
    """Requests one project may have waiting for or running on a model."""
    queue: int
    """Requests waiting for a model, all projects together."""


@dataclass(frozen=True)
class Output:
    """Part of one choice's answer; the last part of a choice has its finish reason."""

    index: int
    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


class InferenceService:
    def __init__(self, resolve: Callable[[str, str], Target], pool: ModelPool, engine: Engine, files: FileService,
                 blobs: BlobStore, limits: Limits, slots: int = 1):
        self.resolve = resolve
        self.pool = pool
        self.engine = engine
        self.files = files
        self.blobs = blobs
        self.limits = limits
        self.gate = FairGate(limits.per_project, limits.queue, slots)

    def evaluate(self, project: str, model: str, file_id: str, max_examples: int | None) -> Scores:
        """Score a served model on an uploaded fine-tuning file, as a job's before/after evaluation does."""
        target = self.resolve(project, model)
        record = self.files.get(project, file_id)
        if record.purpose != FINE_TUNE or record.format not in ("chat", "completion", "preference"):
            raise InvalidRequest(
                f"File {file_id} is not a chat, prompt/completion or preference file uploaded for fine-tuning.", param="file"
            )
        examples = engine.read_examples(self.blobs.local(record.storage_key), max_examples)
        text = self.pool.text(target)

        def answers(prompts: list[list[int]], limits: list[int]) -> list[str]:
            """Greedy answers to every prompt, sent to the engine together, each cut at its own limit."""
            generation = Generation(target, prompts, Sampling(max_tokens=max(limits), temperature=0.0))
            ids: dict[int, list[int]] = {}
            for chunk in self.engine.generate(generation, lambda: False):
                ids.setdefault(chunk.index, []).extend(chunk.token_ids)
            return [str(text.tokenizer.decode(ids.get(i, [])[:limit], skip_special_tokens=True))
                    for i, limit in enumerate(limits)]

        # Loss and accuracy need the weights in this process. The greedy answers come from the engine, all sent
        # together, unless the engine is the transformers loop on those same weights (which batches them itself).
        separate = self.engine.name != "transformers"
        with self.gate.turn(project), self.pool.session(target) as loaded:
            try:
                return engine.score(loaded, text.tokenizer, text.encoder, examples, answers=answers if separate else None)
            except engine.DataError as error:
                raise InvalidRequest(f"File {file_id}: {error}", param="file") from error

    def prepare_chat(self, project: str, body: ChatCompletionRequest) -> Prepared:
        _refuse_unsupported(body, self.engine)
        self._check_size(1, body.n or 1, len(body.model_dump_json(include={"messages", "tools", "functions"})),
                         "messages")
        target = self.resolve(project, body.model)
        text = self.pool.text(target)
        tools = _tools(body)
        messages = [_plain_message(m.model_dump(exclude_none=True), i) for i, m in enumerate(body.messages)]
        prompt = text.encoder.prompt(messages, tools)
        limit = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return self._prepared(project, body, target, text, [prompt], limit, tools=bool(tools), echo=[],
                              logprobs=logprobs, response_format=_response_format(body.response_format))

    def prepare_completion(self, project: str, body: CompletionRequest) -> Prepared:
        for name, value, default in (("best_of", body.best_of, 1), ("suffix", body.suffix, None)):
            if value is not None and value != default:
                raise InvalidRequest(f"'{name}' is not supported by ftserve's local models.", param=name)
        if body.logprobs is not None and "logprobs" not in self.engine.supports:
            raise InvalidRequest(f"'logprobs' needs the vLLM engine; this server generates with {self.engine.name}.",
                                 param="logprobs")
        if isinstance(body.prompt, str):
            count, size = 1, len(body.prompt.encode())
        elif body.prompt and all(isinstance(p, int) for p in body.prompt):
            count, size = 1, 0  # token ids: their count is checked against the context below, and the body limit bounds it
        else:
            count = len(body.prompt)
            size = sum(len(p.encode()) for p in body.prompt if isinstance(p, str))
        self._check_size(count, body.n or 1, size, "prompt")
        target = self.resolve(project, body.model)
        text = self.pool.text(target)
        prompts: list[list[int]]
        # all() has checked every item, which mypy cannot narrow through: hence the casts.
        if isinstance(body.prompt, str):
            prompts = [text.tokenizer(body.prompt, add_special_tokens=True)["input_ids"]]
        elif body.prompt and all(isinstance(p, str) for p in body.prompt):
            prompts = [text.tokenizer(p, add_special_tokens=True)["input_ids"] for p in cast("list[str]", body.prompt)]
        elif body.prompt and all(isinstance(p, int) for p in body.prompt):
            prompts = [cast("list[int]", list(body.prompt))]
        else:
            prompts = [list(p) for p in cast("list[list[int]]", body.prompt)]
        if not prompts or not all(prompts):
            raise InvalidRequest("'prompt' must not be empty.", param="prompt")
        vocab = len(text.tokenizer)
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise InvalidRequest(f"'prompt' holds a token id outside the model's vocabulary (0..{vocab - 1}).", param="prompt")
        # One sequence of ids decodes to one string (only a batch gives a list).
        echo = [cast(str, text.tokenizer.decode(p, skip_special_tokens=True)) for p in prompts] if body.echo else []
        return self._prepared(project, body, target, text, prompts, body.max_tokens, tools=False, echo=echo,
                              logprobs=body.logprobs)

    def _check_size(self, prompts: int, n: int, size: int, param: str) -> None:
        """Refuse a request too large to answer, before its text is tokenized."""
        if size > self.limits.max_prompt_bytes:
            raise InvalidRequest(f"The prompt is {size} bytes; this server takes at most {self.limits.max_prompt_bytes} "
                                 "bytes of prompt text per request.", param=param, code="prompt_too_large")
        if prompts * n > self.limits.max_choices:
            raise InvalidRequest(
                f"This request asks for {prompts * n} answers ({prompts} prompt(s) x n={n}); this server gives at "
                f"most {self.limits.max_choices} per request.",
                param="prompt" if prompts > self.limits.max_choices else "n", code="too_many_choices",
            )

    def _prepared(self, project: str, body: Sampled, target: Target, text: Text, prompts: list[list[int]],
                  limit: int | None, *, tools: bool, echo: list[str], logprobs: int | None = None,
                  response_format: dict[str, Any] | None = None) -> Prepared:
        longest = max(map(len, prompts))
        room = text.context_length - longest
        param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
        if room < 1:
            raise InvalidRequest(
                f"This model's maximum context length is {text.context_length} tokens; the prompt has {longest}.",
                param=param, code="context_length_exceeded",
            )
        if limit is not None and limit > room:
            raise InvalidRequest(
                f"This model's maximum context length is {text.context_length} tokens. The prompt has {longest} "
                f"tokens, leaving room for {room}, but {limit} were requested.",
                param="max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens",
                code="context_length_exceeded",
            )
        vocab = len(text.tokenizer)
        bias = {}
        for key, value in (body.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= vocab:
                raise InvalidRequest(f"logit_bias: {key!r} is not a token id of this model (0..{vocab - 1}).", param="logit_bias")
            bias[int(key)] = value
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        sampling = Sampling(
            max_tokens=limit or min(self.limits.default_max_tokens, room),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=stop, presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0, logit_bias=bias,
        )
        self.gate.check(project)  # a 429 now, before a stream starts
        return Prepared(project, body.model, target, text, prompts, sampling, body.n or 1, body.seed, tools, echo,
                        logprobs, response_format)

    def run(self, prepared: Prepared, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Output]:
        """Generate every choice in turn (choice i of prompt p has index p·n + i), when the gate gives the request
        its turn on the model."""
        try:
            with self.gate.turn(prepared.project, cancelled):
                yield from self._generate(prepared, cancelled)
        except Cancelled:  # the client went away while the request waited
            return

    def _generate(self, prepared: Prepared, cancelled: Callable[[], bool]) -> Iterator[Output]:
        generation = Generation(prepared.target, prepared.prompts, prepared.sampling, prepared.n, prepared.seed,
                                prepared.logprobs, prepared.response_format)
        started: set[int] = set()
        held: dict[int, list[Output]] = {}  # with tools: a choice's parts until its end, to find its calls
        for chunk in self.engine.generate(generation, cancelled):
            if prepared.echo and chunk.index not in started:
                yield Output(chunk.index, prepared.echo[chunk.index // prepared.n], 0)
            started.add(chunk.index)
            output = Output(chunk.index, chunk.text, chunk.tokens, chunk.finish_reason, logprobs=chunk.logprobs)
            if not prepared.tools:
                yield output
                continue
            held.setdefault(chunk.index, []).append(output)
            if chunk.finish_reason:
                yield _with_tool_calls(held.pop(chunk.index))


def _with_tool_calls(parts: list[Output]) -> Output:
    """A whole answer, its `<tool_call>` blocks returned as tool calls (the way training wrote them)."""
    last = parts[-1]
    text = "".join(p.text for p in parts)
    logprobs = tuple(lp for p in parts for lp in p.logprobs)
    calls = []
    for match in TOOL_CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
            name, arguments = call["name"], call.get("arguments", {})
        except (ValueError, KeyError, TypeError):
            continue  # not a well-formed call: leave it in the text
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function", "function": {
            "name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    if calls and last.finish_reason == "stop":
        rest = TOOL_CALL.sub("", text).strip()
        return Output(last.index, rest, last.tokens, "tool_calls", calls, logprobs)
    return Output(last.index, text, last.tokens, last.finish_reason, logprobs=logprobs)


def _response_format(given: dict[str, Any] | None) -> dict[str, Any] | None:
    """The format to constrain answers to (None: plain text), checked for the fields OpenAI requires."""
    if given is None or given.get("type") in (None, "text"):
        return None
    if given.get("type") == "json_object":
        return {"type": "json_object"}
    schema = given.get("json_schema")
    if given.get("type") != "json_schema":
        raise InvalidRequest("response_format.type must be 'text', 'json_object' or 'json_schema'.",
                             param="response_format.type")
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        raise InvalidRequest("response_format.json_schema must be an object with a 'name' (and a 'schema').",
                             param="response_format.json_schema")
    if not isinstance(schema.get("schema", {}), dict):
        raise InvalidRequest("response_format.json_schema.schema must be a JSON Schema object.",
                             param="response_format.json_schema.schema")
    return {"type": "json_schema", "json_schema": schema}


def _refuse_unsupported(body: ChatCompletionRequest, generator: Engine) -> None:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    if body.logprobs and "logprobs" not in generator.supports:
        raise InvalidRequest(f"'logprobs' needs the vLLM engine; this server generates with {generator.name}.",
                             param="logprobs")
    wants_format = body.response_format and body.response_format.get("type") not in (None, "text")
    if wants_format and "response_format" not in generator.supports:
        raise InvalidRequest(f"response_format other than 'text' needs the vLLM engine; this server generates with "
                             f"{generator.name}.", param="response_format")
    if body.modalities and set(body.modalities) != {"text"}:
        raise InvalidRequest("Only the 'text' modality is supported.", param="modalities")
    if body.audio:
        raise InvalidRequest("Audio output is not supported.", param="audio")
    choice = body.tool_choice if body.tool_choice is not None else body.function_call
    if choice is not None and choice not in ("auto", "none"):
        raise InvalidRequest(
            "tool_choice may be 'auto' or 'none': a local model cannot be forced to call a tool.", param="tool_choice"
        )


def _tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    if body.tool_choice == "none" or body.function_call == "none":
        return None
    tools = body.tools or [{"type": "function", "function": f} for f in body.functions or []]
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
            raise InvalidRequest("Each tool must be {'type': 'function', 'function': {'name': ..., ...}}.",
                                 param=f"tools[{i}]")
    return tools or None


def _plain_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"ftserve's models read text only; messages[{index}].content[{j}] is {part.get('type')!r}.",
                    param=f"messages[{index}].content[{j}]",
                )
    if message["role"] == "developer":  # the newer name for the system role
        message = {**message, "role": "system"}
    return message


def resolver(catalogue: dict[str, CatalogueEntry], find: Callable[[str, str], Path | None]) -> Callable[[str, str], Target]:
    """Name -> what to run: a catalogue base model, or a fine-tuned model the project can see.

    `find(project, name)` gives a visible fine-tuned model's artifact directory (404 when not visible).
    """
    def resolve(project: str, name: str) -> Target:
        if name in catalogue:
            if catalogue[name].provider is not None:
                raise ModelNotServable(f"The model '{name}' lives at the provider '{catalogue[name].provider}'; "
                                       "call it there.", param="model")
            return Target(name, source_of(catalogue[name]))
        directory = find(project, name)
        kind = artifact_kind(directory) if directory else None
        if directory is None or kind is None:
            raise ModelNotServable(f"The model '{name}' has no weights to serve (was it made by the fake trainer?).",
                                   param="model")
        base_id = manifest(directory).get("base_model")
        if base_id not in catalogue:
            raise ModelNotServable(f"The model '{name}' was trained from '{base_id}', which is no longer in the catalogue.",
                                   param="model")
        return Target(name, source_of(catalogue[base_id]), directory, kind)

    return resolve
