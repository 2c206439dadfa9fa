"""OpenAI's grader types (`method.reinforcement.grader`, `/fine_tuning/alpha/graders/*`) and the grader
endpoints' bodies. These only parse; `ftserve.graders` checks and runs what they hold."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from ftserve.schemas.common import Omitted, Request, Wire


class PromptCacheBreakpoint(Request):
    mode: Literal["explicit"] = "explicit"


class InputTextContent(Request):
    type: Literal["input_text"] = "input_text"
    text: str
    prompt_cache_breakpoint: Omitted[PromptCacheBreakpoint] = None


class OutputTextContent(Request):
    type: Literal["output_text"]
    text: str


class InputImageContent(Request):
    type: Literal["input_image"]
    image_url: str
    detail: Omitted[str] = None


class AudioData(Request):
    data: str
    format: Literal["mp3", "wav"]


class InputAudioContent(Request):
    type: Literal["input_audio"]
    input_audio: AudioData


ContentItem = str | InputTextContent | OutputTextContent | InputImageContent | InputAudioContent


class EvalItem(Request):
    role: Literal["user", "assistant", "system", "developer"]
    content: ContentItem | list[ContentItem]
    type: Omitted[Literal["message"]] = None


class GraderStringCheck(Request):
    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class GraderTextSimilarity(Request):
    type: Literal["text_similarity"] = "text_similarity"
    name: str
    input: str
    reference: str
    evaluation_metric: Literal[
        "cosine", "fuzzy_match", "bleu", "gleu", "meteor",
        "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
    ]


class GraderPython(Request):
    type: Literal["python"]
    name: str
    source: str
    image_tag: Omitted[str] = None


class SamplingParams(Request):
    seed: int | None = None
    top_p: float | None = 1
    temperature: float | None = None
    max_completions_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = "medium"


class GraderScoreModel(Request):
    type: Literal["score_model"]
    name: str
    model: str
    sampling_params: Omitted[SamplingParams] = None
    input: list[EvalItem]
    range: Omitted[list[float]] = None


class GraderLabelModel(Request):
    type: Literal["label_model"]
    name: str
    model: str
    input: list[EvalItem]
    labels: list[str]
    passing_labels: list[str]


SubGrader = GraderStringCheck | GraderTextSimilarity | GraderPython | GraderScoreModel | GraderLabelModel


class GraderMulti(Request):
    type: Literal["multi"] = "multi"
    name: str
    # The spec types this as one grader; OpenAI's guide sends a map of name -> grader and its API
    # reference an array. All three are accepted and echoed as sent.
    graders: SubGrader | dict[str, SubGrader] | list[SubGrader]
    calculate_output: str


Grader = GraderStringCheck | GraderTextSimilarity | GraderPython | GraderScoreModel | GraderMulti

# What a request's `grader` is parsed as. The spec's top-level union lacks label_model, which OpenAI allows only
# inside a multi grader; it is parsed here (and left out of the OpenAPI document) so that the grader check can
# refuse it with a message saying so, rather than a union's "should be 'string_check'".
GraderAsSent = Grader | SkipJsonSchema[GraderLabelModel]


class RunGraderRequest(Request):
    grader: GraderAsSent
    model_sample: str
    item: Omitted[dict[str, Any]] = None


class GraderErrors(Wire):
    formula_parse_error: bool
    sample_parse_error: bool
    truncated_observation_error: bool
    unresponsive_reward_error: bool
    invalid_variable_error: bool
    other_error: bool
    python_grader_server_error: bool
    python_grader_server_error_type: str | None
    python_grader_runtime_error: bool
    python_grader_runtime_error_details: str | None
    model_grader_server_error: bool
    model_grader_refusal_error: bool
    model_grader_parse_error: bool
    model_grader_server_error_details: str | None


class RunGraderMetadata(Wire):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class RunGraderResponse(Wire):
    reward: float
    metadata: RunGraderMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]


class ValidateGraderRequest(Request):
    grader: GraderAsSent


class ValidateGraderResponse(Wire):
    grader: Omitted[Grader] = None
