"""Turning JSONL examples into token ids, with the loss mask found by rendering the conversation.

The mask marks the tokens an example trains: each assistant message whose `weight` is not 0, and the
end-of-turn token the chat template closes it with. Nothing else: not the generation prompt, not what a
template adds around an answer (Qwen3's empty `<think>` block in the last turn), not the newline after the
end-of-turn token. A message is found by rendering the whole conversation twice, once with the message as it
is and once with its content replaced by a probe: where the two renders differ is the message, wherever the
template puts it. Prefix renders are not enough: many templates render a turn differently depending on what
follows it (Qwen3's last turn, Mistral's system prompt and tool list placed before the last user message,
Phi-3's end-of-text token after the last turn).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

IGNORE = -100
# Stands in for a message's content to find where the template puts it: a noncharacter, which no text has.
PROBE = "\ufdd0"


class DataError(Exception):
    """An example the engine cannot train on; the message names the file and line."""


@dataclass(frozen=True)
class Sequence:
    """One tokenized sequence: `labels` is `IGNORE` where no loss falls."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class Pair:
    """One preference example: the same prompt with the preferred and the non-preferred answer."""

    chosen: Sequence
    rejected: Sequence

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Examples and their line numbers, with lines as the upload's validator counts them: a line ends at
    "\n" only (text mode would also end one at a lone "\r"), and the file may open with a UTF-8 BOM."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line.strip():
                yield number, json.loads(line)


class Encoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        self._template_knows_tools = "tool_calls" in template
        # The `tools` variable itself, not a message's 'tools' key (Phi-4-mini reads the tools from the system message).
        self._template_knows_tool_list = re.search(r"""(?<!['"])\btools\b(?!['"])""", template) is not None
        self._template_knows_tool_role = self._renders_tool_results()
        self._end_of_turn = self._closing_token()

    # Supervised: chat and prompt/completion examples.

    def sft(self, example: dict[str, Any]) -> Sequence:
        if "messages" in example:
            return self.chat(example)
        return self.completion(example)

    def chat(self, example: dict[str, Any]) -> Sequence:
        tools = self._tools(example)
        messages = self._with_tools(self._messages(example["messages"]), tools)
        # Assistant messages keep their order (only system and tool messages are added or merged).
        weights = iter([m.get("weight", 1) != 0 for m in example["messages"] if m["role"] == "assistant"])
        assistants = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        full = self._render(messages, tools)
        spans = [self._span(full, messages, i, tools) for i in assistants if next(weights)]
        return self._tokenize(full, spans)

    def completion(self, example: dict[str, Any]) -> Sequence:
        prompt, completion = example["prompt"], example["completion"]
        eos = self.tokenizer.eos_token or ""
        text = prompt + completion + eos
        return self._tokenize(text, [(len(prompt), len(text))], special_tokens=True)

    # Prompts and answers as a served model sees and writes them.

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of a conversation rendered up to the assistant's turn, tools described as in training."""
        rendered = self._render(self._with_tools(self._messages(messages), tools), tools, generation_prompt=True)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def answer(self, message: dict[str, Any]) -> str:
        """An assistant message as the model writes it: its text, tool calls rendered the way training saw them."""
        return str(self._message(message)["content"])

    def held_out(self, example: dict[str, Any]) -> tuple[list[int], str]:
        """The prompt of an example and the reference answer to compare a generation with.

        Chat: everything before the last assistant message, and that message. Prompt/completion: the
        prompt and the completion. Preference: the input and the preferred output.
        """
        if "prompt" in example and "completion" in example:
            return self.tokenizer(example["prompt"], add_special_tokens=True)["input_ids"], example["completion"]
        if "input" in example:
            messages, tools = example["input"]["messages"], self._tools(example["input"])
            return self.prompt(messages, tools), self.answer(example["preferred_output"][-1])
        messages = example["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return self.prompt(messages[:last], self._tools(example)), self.answer(messages[last])

    # Preference: the answer tokens of each side are trained, the shared prompt is not.

    def preference(self, example: dict[str, Any]) -> Pair:
        tools = self._tools(example["input"])
        messages = self._with_tools(self._messages(example["input"]["messages"]), tools)
        sides = []
        for key in ("preferred_output", "non_preferred_output"):
            whole = messages + self._messages(example[key])
            full = self._render(whole, tools)
            spans = [self._span(full, whole, i, tools) for i in range(len(messages), len(whole))
                     if whole[i]["role"] == "assistant"]
            sides.append(self._tokenize(full, spans))
        return Pair(*sides)

    # Pieces.

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        kwargs = {"tools": tools} if tools and self._template_knows_tool_list else {}
        try:
            rendered = self.tokenizer.apply_chat_template(
                # enable_thinking=False: Qwen3's prompt then ends with the empty <think> block that its template
                # writes into a conversation's last turn, so a served model is asked the way it was trained.
                messages, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=False,
                **kwargs,  # type: ignore[arg-type]  # tools only
            )
        except TemplateError as error:
            raise DataError(f"the model's chat template refuses this conversation: {error}") from error
        return str(rendered)

    def _span(self, full: str, messages: list[dict[str, Any]], i: int, tools: list[dict[str, Any]] | None) -> tuple[int, int]:
        """Where messages[i] lies in `full`, the conversation's render, with the end-of-turn token after it."""
        closing = self._end_of_turn
        try:
            probed = self._render([*messages[:i], {"role": messages[i]["role"], "content": PROBE}, *messages[i + 1:]], tools)
        except DataError:
            # The template refuses the probe in this place (Mistral's counts a message with tool calls apart
            # from the user/assistant alternation): the message starts where the generation prompt ends.
            prompt = self._render(messages[:i], tools, generation_prompt=True)
            end = full.find(closing, len(prompt)) if closing else -1
            if not full.startswith(prompt) or end < 0:
                raise DataError(f"messages[{i}]: the chat template renders this conversation in a way that hides "
                                "where the assistant message is, so its tokens cannot be trained") from None
            return len(prompt), end + len(closing or "")
        start = _common_prefix(full, probed)
        end = len(full) - _common_prefix(full[start:][::-1], probed[start:][::-1])
        rest = full[end:]
        if closing and rest.lstrip().startswith(closing):
            end += len(rest) - len(rest.lstrip()) + len(closing)
        return start, end

    def _renders_tool_results(self) -> bool:
        """Whether the template shows a tool message (Gemma 3's refuses the role; Phi-3.5's leaves it out)."""
        call = {"id": "probe0001", "type": "function", "function": {"name": "f", "arguments": {}}}  # Mistral: 9 characters
        exchange: list[dict[str, Any]] = [{"role": "user", "content": "?"},
                                          {"role": "assistant", "content": "", "tool_calls": [call]},
                                          {"role": "tool", "tool_call_id": "probe0001", "content": PROBE}]
        try:
            rendered = self.tokenizer.apply_chat_template(exchange, tokenize=False)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001  # any refusal means the same: no tool role
            return False
        return PROBE in str(rendered)

    def _closing_token(self) -> str | None:
        """The special token the template ends an assistant turn with (<|im_end|>, <|eot_id|>, <end_of_turn>, ...)."""
        try:
            rendered = str(self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": PROBE}], tokenize=False))
        except Exception:  # noqa: BLE001  # a template that cannot render a plain exchange: the eos token
            return self.tokenizer.eos_token
        after = rendered[rendered.index(PROBE) + len(PROBE):] if PROBE in rendered else ""
        special = set(self.tokenizer.all_special_ids)
        for token in self.tokenizer(after, add_special_tokens=False)["input_ids"]:
            if token in special:
                return str(self.tokenizer.convert_ids_to_tokens(token))
        return self.tokenizer.eos_token

    def _tokenize(self, text: str, spans: list[tuple[int, int]], special_tokens: bool = False) -> Sequence:
        encoded = self.tokenizer(
            text, add_special_tokens=special_tokens, return_offsets_mapping=True, truncation=False
        )
        ids = encoded["input_ids"][: self.max_length]
        offsets = encoded["offset_mapping"][: self.max_length]
        # A token that overlaps a span trains: SentencePiece tokens carry the space before a word ("▁Hello"),
        # which a template may write before the message (Mistral's " " + content).
        labels = [
            token if any(start < hi and end > lo for lo, hi in spans) else IGNORE
            for token, (start, end) in zip(ids, offsets)
        ]
        return Sequence(ids, labels)

    def _messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages in the plain shape every chat template understands."""
        plain = [self._message(m) for m in messages]
        if self._template_knows_tool_role:
            return plain
        # No tool role: the results come back in a user turn, one for a run of them (Gemma 3 needs turns to alternate).
        merged: list[dict[str, Any]] = []
        for message in plain:
            if message["role"] != "tool":
                merged.append(message)
                continue
            result = "<tool_response>\n" + str(message["content"]) + "\n</tool_response>"
            if merged and merged[-1].get("tool_results"):
                merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n" + result}
            else:
                merged.append({"role": "user", "content": result, "tool_results": True})
        return [{key: value for key, value in m.items() if key != "tool_results"} for m in merged]

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text, in order
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        plain: dict[str, Any] = {"role": message["role"], "content": content or ""}
        calls = message.get("tool_calls") or (
            [{"type": "function", "function": message["function_call"]}] if message.get("function_call") else []
        )
        if calls and self._template_knows_tools:
            # Arguments as an object: OpenAI sends a JSON string, which templates written for Hugging Face's
            # convention (Qwen2.5, Llama 3, Mistral) `tojson` again into a quoted, escaped string.
            plain["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _arguments(c)}} for c in calls]
        elif calls:
            rendered = "\n".join(
                "<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": _arguments(c)}) + "\n</tool_call>"
                for c in calls
            )
            plain["content"] = (plain["content"] + "\n" if plain["content"] else "") + rendered
        if message["role"] == "function":
            plain["role"] = "tool"
        if "tool_call_id" in message and self._template_knows_tools:
            plain["tool_call_id"] = message["tool_call_id"]
        return plain

    def _tools(self, example: dict[str, Any]) -> list[dict[str, Any]] | None:
        tools = example.get("tools") or [{"type": "function", "function": f} for f in example.get("functions", [])]
        return tools or None

    def _with_tools(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Describe the tools in a system message when the chat template has no place for them."""
        if not tools or self._template_knows_tool_list:
            return messages
        listing = "You can call these tools:\n<tools>\n" + "\n".join(json.dumps(t) for t in tools) + "\n</tools>"
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "content": messages[0]["content"] + "\n\n" + listing}, *messages[1:]]
        return [{"role": "system", "content": listing}, *messages]


def _arguments(call: dict[str, Any]) -> Any:
    arguments = call["function"].get("arguments", "{}")
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return arguments


def _common_prefix(a: str, b: str) -> int:
    """How many characters a and b start with in common."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
