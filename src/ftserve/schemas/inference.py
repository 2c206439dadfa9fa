"""Wire types of `/chat/completions` and `/completions`, as OpenAI's spec 2.3.0 defines them (text only).

Requests refuse arguments nobody defined. Arguments OpenAI defines but a local model cannot honour
(audio, other modalities; log-probabilities and structured output on the transformers engine) are
refused by name when they ask for something, and accepted when they ask for the default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from ftserve.schemas.common import Omitted, Request, Wire

Stop = str | Annotated[list[str], Field(max_length=4)] | SkipJsonSchema[None]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
N = Annotated[int, Field(ge=1, le=16)]


class MessageFunctionCall(BaseModel):
    """A call an earlier assistant turn made, as the prompt renders it."""

    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class MessageToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | SkipJsonSchema[None] = None
    type: Literal["function"] = "function"
    function: MessageFunctionCall


class ChatMessage(BaseModel):
    """A message as the SDK sends it; keys that only matter to other features (refusal, annotations) pass."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | SkipJsonSchema[None] = None
    tool_calls: list[MessageToolCall] | SkipJsonSchema[None] = None
    function_call: MessageFunctionCall | SkipJsonSchema[None] = None
    tool_call_id: str | SkipJsonSchema[None] = None


class StreamOptions(Request):
    include_usage: bool = False
    include_obfuscation: bool | SkipJsonSchema[None] = None


class Sampled(Request):
    """Arguments both endpoints share."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = None
    temperature: Temperature | SkipJsonSchema[None] = None
    top_p: TopP | SkipJsonSchema[None] = None
    n: N | SkipJsonSchema[None] = None
    stop: Stop = None
    seed: int | SkipJsonSchema[None] = None
    presence_penalty: Penalty | SkipJsonSchema[None] = None
    frequency_penalty: Penalty | SkipJsonSchema[None] = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | SkipJsonSchema[None] = None
    stream: bool | SkipJsonSchema[None] = None
    stream_options: StreamOptions | SkipJsonSchema[None] = None
    user: str | SkipJsonSchema[None] = None


class ChatCompletionRequest(Sampled):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = None
    tools: list[dict[str, Any]] | SkipJsonSchema[None] = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | SkipJsonSchema[None] = None
    parallel_tool_calls: bool | SkipJsonSchema[None] = None
    functions: list[dict[str, Any]] | SkipJsonSchema[None] = None
    function_call: Literal["none", "auto"] | dict[str, Any] | SkipJsonSchema[None] = None
    # Accepted and not acted on: they change bookkeeping at OpenAI, not the answer.
    metadata: dict[str, str] | SkipJsonSchema[None] = None
    store: bool | SkipJsonSchema[None] = None
    service_tier: str | SkipJsonSchema[None] = None
    safety_identifier: str | SkipJsonSchema[None] = None
    prompt_cache_key: str | SkipJsonSchema[None] = None
    # Answered by the vLLM engine; refused by name by the transformers loop.
    logprobs: bool | SkipJsonSchema[None] = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | SkipJsonSchema[None] = None
    response_format: dict[str, Any] | SkipJsonSchema[None] = None
    # Refused when they ask for more than plain text.
    modalities: list[str] | SkipJsonSchema[None] = None
    audio: dict[str, Any] | SkipJsonSchema[None] = None
    reasoning_effort: str | SkipJsonSchema[None] = None


class CompletionRequest(Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | SkipJsonSchema[None] = None
    best_of: int | SkipJsonSchema[None] = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | SkipJsonSchema[None] = None
    suffix: str | SkipJsonSchema[None] = None


class Usage(Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(Wire):
    name: str
    arguments: str


class ToolCall(Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(Wire):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: Omitted[list[ToolCall]] = None


FinishReason = Literal["stop", "length", "tool_calls"]


class TopLogprob(Wire):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Wire):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(Wire):
    """The legacy shape `/completions` answers `logprobs: k` with."""

    text_offset: list[int]
    token_logprobs: list[float]
    tokens: list[str]
    top_logprobs: list[dict[str, float]]


class ChatChoice(Wire):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ToolCallDelta(Wire):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(Wire):
    """What a chunk adds to its choice: only the keys that changed are sent."""

    role: Omitted[Literal["assistant"]] = None
    content: Omitted[str] = None
    tool_calls: Omitted[list[ToolCallDelta]] = None


class ChatChunkChoice(Wire):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Wire):
    """One server-sent event of a streamed chat completion; `usage` is sent (null until the last chunk)
    only when `stream_options.include_usage` asks for it."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(Wire):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(Wire):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ftserve's extensions, under /v1/ftserve.


class EvaluationRequest(Request):
    model: str
    file: str
    max_examples: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = None


class Evaluation(Wire):
    object: Literal["ftserve.evaluation"] = "ftserve.evaluation"
    model: str
    file: str
    examples: int
    generated: int
    loss: float
    token_accuracy: float
    exact_match: float
    preference_accuracy: float | None = None
