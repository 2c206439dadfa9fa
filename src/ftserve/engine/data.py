"""Turning JSONL examples into token ids, with the loss mask built from rendered prefixes.

The mask marks the tokens an example trains: each assistant message whose `weight` is not 0,
its end-of-turn token included. It is found by rendering the conversation up to just before an
assistant message (with the generation prompt) and up to just after it: the characters between
the two renders are that message, whatever the chat template looks like, so templates without
generation markers work too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE = -100


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
        self._template_knows_tool_list = "tools" in template

    # Supervised: chat and prompt/completion examples.

    def sft(self, example: dict[str, Any]) -> Sequence:
        if "messages" in example:
            return self.chat(example)
        return self.completion(example)

    def chat(self, example: dict[str, Any]) -> Sequence:
        tools = self._tools(example)
        messages = self._with_tools(self._messages(example["messages"]), tools)
        trained = [m.get("weight", 1) != 0 for m in example["messages"]]
        if len(messages) > len(trained):  # a system message describing the tools came first
            trained.insert(0, False)
        full = self._render(messages, tools)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or not trained[i]:
                continue
            start = self._render(messages[:i], tools, generation_prompt=True)
            end = self._render(messages[: i + 1], tools)
            if not (end.startswith(start) and full.startswith(end)):
                raise DataError(
                    f"messages[{i}]: the chat template does not render this conversation as a series of "
                    "prefixes, so the assistant tokens cannot be located"
                )
            spans.append((len(start), len(end)))
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
        prompt = self._render(messages, tools, generation_prompt=True)
        sides = []
        for key in ("preferred_output", "non_preferred_output"):
            full = self._render(messages + self._messages(example[key]), tools)
            if not full.startswith(prompt):
                raise DataError(f"{key}: the chat template does not render the answer after the prompt")
            sides.append(self._tokenize(full, [(len(prompt), len(full))]))
        return Pair(*sides)

    # Pieces.

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        kwargs = {"tools": tools} if tools and self._template_knows_tool_list else {}
        rendered = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs,  # type: ignore[arg-type]  # tools only
        )
        return str(rendered)

    def _tokenize(self, text: str, spans: list[tuple[int, int]], special_tokens: bool = False) -> Sequence:
        encoded = self.tokenizer(
            text, add_special_tokens=special_tokens, return_offsets_mapping=True, truncation=False
        )
        ids = encoded["input_ids"][: self.max_length]
        offsets = encoded["offset_mapping"][: self.max_length]
        labels = [
            token if any(lo <= start < hi for lo, hi in spans) else IGNORE
            for token, (start, _end) in zip(ids, offsets)
        ]
        return Sequence(ids, labels)

    def _messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages in the plain shape every chat template understands."""
        return [self._message(m) for m in messages]

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text, in order
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        plain: dict[str, Any] = {"role": message["role"], "content": content or ""}
        calls = message.get("tool_calls") or (
            [{"type": "function", "function": message["function_call"]}] if message.get("function_call") else []
        )
        if calls and self._template_knows_tools:
            plain["tool_calls"] = calls
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
