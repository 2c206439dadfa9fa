"""What grading one sample gives back, in the shape of OpenAI's `RunGraderResponse`, and what a model grader
asks of its judge. The API renders an `Outcome` as is; the engine reads its `reward` and `sub_rewards`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass
class Errors:
    """OpenAI's `metadata.errors` flags: a grader that fails scores 0 and says why here."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    @property
    def any(self) -> bool:
        return any(value is True for value in vars(self).values())


@dataclass
class Outcome:
    reward: float
    name: str
    type: str
    errors: Errors = field(default_factory=Errors)
    execution_time: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    token_usage: int | None = None
    sampled_model_name: str | None = None
    sub_rewards: dict[str, float] = field(default_factory=dict)
    model_grader_token_usage_per_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """The `RunGraderResponse` body."""
        return {
            "reward": self.reward,
            "metadata": {
                "name": self.name, "type": self.type, "errors": dict(vars(self.errors)),
                "execution_time": self.execution_time, "scores": self.scores, "token_usage": self.token_usage,
                "sampled_model_name": self.sampled_model_name,
            },
            "sub_rewards": self.sub_rewards,
            "model_grader_token_usage_per_model": self.model_grader_token_usage_per_model,
        }


@dataclass(frozen=True)
class JudgeReply:
    text: str
    model: str
    """The model that answered, as served (`sampled_model_name`)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeError(Exception):
    """The judge model could not answer: `server` (unknown, down, failed) or `refusal` (it declined)."""

    def __init__(self, kind: Literal["server", "refusal"], details: str):
        super().__init__(details)
        self.kind = kind
        self.details = details


class Judge(Protocol):
    """Runs a model grader's prompt: any model ftserve serves, or a configured hosted provider's."""

    def known(self, model: str) -> bool:
        """Whether `model` can be a judge here (checked when a grader is validated or a job created)."""
        ...

    def __call__(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> JudgeReply:
        """`messages` are chat messages with text content; `sampling` is the grader's `sampling_params`
        (seed, top_p, temperature, max_completions_tokens), omitted keys absent. Raises `JudgeError`."""
        ...
