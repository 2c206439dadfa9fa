"""Streaming validation of fine-tuning JSONL uploads (ftserve.files.jsonl)."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterable

import pytest

from ftserve.domain.errors import InvalidFileFormat
from ftserve.domain.tokens import estimated_tokens, text_length
from ftserve.files.jsonl import DatasetFormat, DatasetSummary, JsonlValidator, validate_example

USER = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT = {"role": "assistant", "content": "Paris"}

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT]}
# The examples of section 5 of the reference, verbatim.
CHAT_TOOLS = {
    "messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_id",
                    "type": "function",
                    "function": {
                        "name": "get_current_weather",
                        "arguments": '{"location": "San Francisco, USA", "format": "celsius"}',
                    },
                }
            ],
        },
    ],
    "parallel_tool_calls": False,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string"},
                        "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["location", "format"],
                },
            },
        }
    ],
}
CHAT_WEIGHTS = {
    "messages": [
        {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
        {"role": "user", "content": "What's the capital of France?"},
        {"role": "assistant", "content": "Paris", "weight": 0},
        {"role": "user", "content": "Can you be more sarcastic?"},
        {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
    ]
}
CHAT_VISION = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]
}
CHAT_TOOL_RESULT = {
    "messages": [
        {"role": "developer", "content": "Use tools.", "name": "ops"},
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
        {"role": "assistant", "content": "It is 42.", "refusal": None},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "strict": True}}],
}
CHAT_LEGACY_FUNCTIONS = {
    "messages": [
        USER,
        {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": "{}"}},
        {"role": "function", "name": "lookup", "content": "Paris"},
        ASSISTANT,
    ],
    "functions": [{"name": "lookup", "description": "Look a fact up", "parameters": {"type": "object"}}],
}
COMPLETION = {"prompt": "2 + 2 =", "completion": " 4"}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "What is the weather in San Francisco?"}]},
    "preferred_output": [{"role": "assistant", "content": "The weather in San Francisco is 70 degrees Fahrenheit."}],
    "non_preferred_output": [{"role": "assistant", "content": "The weather in San Francisco is 21 degrees Celsius."}],
}
REINFORCEMENT = {
    "messages": [{"role": "user", "content": "Count the hydrogen bond donors in CCN(CC)CCC(=O)c1sc(N)nc1C"}],
    "reference_answer": {"donor_bond_counts": 5, "acceptor_bond_counts": 7},
}


def jsonl(*examples: object, end: str = "\n") -> bytes:
    return b"".join(json.dumps(example, ensure_ascii=False).encode() + end.encode() for example in examples)


def validate(chunks: Iterable[bytes], max_line_bytes: int = 64 * 1024 * 1024) -> DatasetSummary:
    validator = JsonlValidator(max_line_bytes=max_line_bytes)
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish()


def failure(chunks: Iterable[bytes], max_line_bytes: int = 64 * 1024 * 1024) -> InvalidFileFormat:
    with pytest.raises(InvalidFileFormat) as caught:
        validate(chunks, max_line_bytes)
    return caught.value


def random_chunks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, start = [], 0
    while start < len(data):
        size = rng.randint(1, 40)
        chunks.append(data[start : start + size])
        start += size
    return chunks


# Files that pass


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        ([CHAT, CHAT_TOOLS, CHAT_WEIGHTS, CHAT_VISION, CHAT_TOOL_RESULT, CHAT_LEGACY_FUNCTIONS], "chat"),
        ([COMPLETION] * 3, "completion"),
        ([PREFERENCE, {**PREFERENCE, "input": {**PREFERENCE["input"], "tools": [], "parallel_tool_calls": True}}], "preference"),
        ([REINFORCEMENT, {"messages": [USER], "tools": CHAT_TOOLS["tools"], "any": "grader variable"}], "reinforcement"),
    ],
    ids=["chat", "completion", "preference", "reinforcement"],
)
def test_good_file_reports_its_format_and_example_count(examples: list[object], expected: DatasetFormat) -> None:
    assert validate([jsonl(*examples)]) == DatasetSummary(format=expected, examples=len(examples),
                                                          estimated_tokens=estimated_tokens(text_length(examples)))


def test_reinforcement_file_accepts_few_shot_lines_with_assistant_turns_and_grader_keys() -> None:
    few_shot = {"messages": [USER, ASSISTANT, USER], "reference_answer": "Paris", "topic": "geography"}
    developer_last = {"messages": [USER, {"role": "developer", "content": "Answer in one word."}],
                      "reference_answer": "x", "tools": CHAT_TOOLS["tools"]}
    summary = validate([jsonl(REINFORCEMENT, few_shot, developer_last)])
    assert summary == DatasetSummary("reinforcement", 3, item_fields=frozenset({"reference_answer"}),
                                     estimated_tokens=estimated_tokens(text_length([REINFORCEMENT, few_shot, developer_last])))


def test_item_fields_are_the_keys_every_reinforcement_line_has_besides_messages_and_tools() -> None:
    lines = [{"messages": [USER], "answer": "Paris", "tools": [], "country": "France", "id": i} for i in range(3)]
    lines.append({"messages": [USER], "answer": "Rome", "id": 4})
    assert validate([jsonl(*lines)]).item_fields == {"answer", "id"}
    assert validate([jsonl(CHAT, CHAT)]).item_fields == frozenset()  # a chat file holds no grader variables


@pytest.mark.parametrize(
    ("messages", "last", "role"),
    [
        ([USER, ASSISTANT], 1, "assistant"),
        ([{"role": "system", "content": "Be brief."}], 0, "system"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
          {"role": "tool", "tool_call_id": "c1", "content": "42"}], 2, "tool"),
    ],
    ids=["assistant", "system", "tool"],
)
def test_a_reinforcement_line_must_end_with_a_user_or_developer_message(
    messages: list[object], last: int, role: str,
) -> None:
    error = failure([jsonl(REINFORCEMENT, {"messages": messages, "reference_answer": 1})])
    assert error.line == 2
    assert error.reason == (f'messages[{last}].role must be one of user, developer: a reinforcement example ends '
                            f'with the message the model answers (got "{role}")')
    assert str(error).startswith("Invalid file format: line 2: messages[")
    # A first line ending in a system message is a reinforcement example too, and says the same.
    if role == "system":
        assert failure([jsonl({"messages": messages})]).line == 1


def test_validate_example_returns_the_kind_of_one_line() -> None:
    assert validate_example(CHAT, 1) == "chat"
    assert validate_example(COMPLETION, 1) == "completion"
    assert validate_example(PREFERENCE, 1) == "preference"
    assert validate_example(REINFORCEMENT, 1) == "reinforcement"
    few_shot = {"messages": [USER, ASSISTANT, USER]}
    assert validate_example(few_shot, 1) == "chat"
    assert validate_example(few_shot, 1, file_format="reinforcement") == "reinforcement"


def test_blank_lines_crlf_bom_and_missing_final_newline_are_accepted() -> None:
    data = b"\xef\xbb\xbf" + jsonl(CHAT, end="\r\n") + b"\r\n  \t\n\n" + jsonl(CHAT_VISION, end="\r\n") + jsonl(CHAT, end="")
    assert validate([data]) == DatasetSummary("chat", 3, estimated_tokens=estimated_tokens(text_length([CHAT, CHAT_VISION, CHAT])))


def test_a_file_of_only_a_bom_and_blank_lines_has_no_examples() -> None:
    for data in [b"", b"\n\n", b"\xef\xbb\xbf", b"  \r\n\t\n"]:
        error = failure([data])
        assert (error.reason, error.line) == ("the file has no examples", None)


# Chunking: bytes may be split anywhere, even inside a UTF-8 character or a "\r\n"

MIXED = b"\xef\xbb\xbf" + jsonl(CHAT, end="\r\n") + b"\n" + jsonl({"messages": [{"role": "user", "content": "Grüße, 東京 🚀"}, ASSISTANT]}) + jsonl(CHAT_TOOLS, end="")
MIXED_SUMMARY = DatasetSummary("chat", 3, estimated_tokens=estimated_tokens(text_length(
    [json.loads(line) for line in MIXED.decode("utf-8-sig").splitlines() if line.strip()])))


def test_splitting_at_every_byte_offset_gives_the_same_summary() -> None:
    expected = MIXED_SUMMARY
    for offset in range(len(MIXED) + 1):
        assert validate([MIXED[:offset], MIXED[offset:]]) == expected, offset


def test_one_byte_at_a_time_and_random_chunks_give_the_same_summary() -> None:
    assert validate(MIXED[i : i + 1] for i in range(len(MIXED))) == MIXED_SUMMARY
    for seed in range(20):
        assert validate(random_chunks(MIXED, seed)) == MIXED_SUMMARY


def test_splitting_a_bad_file_anywhere_gives_the_same_error() -> None:
    bad = MIXED.replace("Grüße".encode(), b"Gr\xfc\xdfe")  # Latin-1, not UTF-8
    whole = failure([bad])
    assert (whole.line, whole.reason) == (3, "invalid UTF-8 at byte 46")
    for offset in range(len(bad) + 1):
        error = failure([bad[:offset], bad[offset:]])
        assert (error.line, error.reason) == (whole.line, whole.reason), offset


# Line limits and memory


def test_a_line_at_the_limit_passes_and_one_byte_more_fails() -> None:
    line = jsonl(COMPLETION, end="")
    limit = len(line)
    padded = line[:-1] + b" }"
    for data in [line, line + b"\n", line + b"\r\n"]:
        assert validate([data], max_line_bytes=limit).examples == 1
        assert validate([data[i : i + 1] for i in range(len(data))], max_line_bytes=limit).examples == 1
    for data in [padded, padded + b"\n", padded + b"\r\n", jsonl(COMPLETION) + padded]:
        for chunks in [[data], [data[i : i + 1] for i in range(len(data))]]:
            error = failure(chunks, max_line_bytes=limit)
            assert error.reason == f"line is longer than {limit} bytes"
            assert error.line == data.count(b"\n", 0, data.rfind(b"}")) + 1


@pytest.mark.parametrize("chunk_size", [1, 1000, 65536])
def test_an_endless_line_fails_as_soon_as_it_passes_the_limit(chunk_size: int) -> None:
    limit = 100_000
    validator = JsonlValidator(max_line_bytes=limit)
    validator.feed(jsonl(CHAT) + b"\n")
    fed = 0
    with pytest.raises(InvalidFileFormat) as caught:
        for chunk in itertools.repeat(b"x" * chunk_size, 10**9 // chunk_size):  # 1 GB if it never stopped
            fed += len(chunk)
            validator.feed(chunk)
    assert caught.value.line == 3
    assert caught.value.reason == f"line is longer than {limit} bytes"
    # Room for one more byte, which might be the "\r" of a "\r\n", and not a chunk more.
    assert fed - chunk_size < limit + 2 <= fed


def test_a_million_tiny_lines_cost_no_more_than_parsing_each_line_alone() -> None:
    data = b'{"prompt":"","completion":"x"}\n' * 10**6
    started = time.process_time()
    summary = validate(data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024))
    ours = time.process_time() - started
    assert summary == DatasetSummary("completion", 10**6, estimated_tokens=10**6 // 4)  # one character of text each
    # The peer, timed in the same run so that a slow or busy machine slows both: `json.loads` on each line and
    # nothing else. The validator took 0.76 of its CPU time here; the earlier per-line parse with options and
    # path strings took about four times the validator's.
    started = time.process_time()
    for line in data.splitlines():
        json.loads(line)
    peer = time.process_time() - started
    assert ours < 2 * peer, f"validator {ours:.1f} s of CPU, json.loads per line {peer:.1f} s"


MEASURE_PEAK = """
import json, tracemalloc
from ftserve.files.jsonl import JsonlValidator
line = json.dumps({chat}).encode() + b"\\n"
data = line * 5_000  # about 2 MB
tracemalloc.start()
validator = JsonlValidator()
for i in range(0, len(data), 65536):
    validator.feed(data[i : i + 65536])
summary = validator.finish()
print(summary.format, summary.examples, tracemalloc.get_traced_memory()[1])
"""


def test_memory_stays_flat_however_many_lines_the_file_has() -> None:
    # In a process of its own: tracemalloc counts every thread's allocations, and the suite's servers run threads.
    done = subprocess.run([sys.executable, "-c", MEASURE_PEAK.replace("{chat}", repr(CHAT_WEIGHTS))],
                          capture_output=True, text=True, check=True, timeout=120)
    file_format, examples, peak = done.stdout.split()
    assert (file_format, int(examples)) == ("chat", 5_000)
    assert int(peak) < 500_000


# Bad lines: the error names the line (counting blank ones) and what is wrong where


def test_errors_are_invalid_file_format_with_the_line_in_the_message() -> None:
    error = failure([jsonl(CHAT) + b"\n" + b"[1, 2]\n"])
    assert error.line == 3
    assert error.reason == "expected a JSON object, got a list"
    assert str(error) == "Invalid file format: line 3: expected a JSON object, got a list"
    assert (error.status_code, error.code, error.param) == (400, "invalid_file_format", "file")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"prompt": "a" "completion": "b"}', "invalid JSON: Expecting ',' delimiter at column 16"),
        (b'{"prompt": "a", ', "invalid JSON: Expecting property name enclosed in double quotes at column 17"),
        (b'{"prompt": NaN, "completion": "b"}', "invalid JSON: NaN is not allowed"),
        (b"[" * 100_000, "invalid JSON: nested too deeply"),
        (b'{"prompt": "caf\xe9"}', "invalid UTF-8 at byte 16"),
        (b'"just a string"', 'expected a JSON object, got "just a string"'),
        (b"42", "expected a JSON object, got 42"),
        (b"null", "expected a JSON object, got null"),
        (b"\xef\xbb\xbf{}", "a byte order mark (BOM) is only allowed at the start of the file"),
    ],
)
def test_lines_that_are_not_utf8_json_objects(raw: bytes, reason: str) -> None:
    error = failure([jsonl(COMPLETION), b"\n", raw, b"\n"])
    assert (error.line, error.reason) == (3, reason)


def chat(*messages: object, **extra: object) -> dict[str, object]:
    return {"messages": [USER, *messages], **extra}


def tool_call(**changes: object) -> dict[str, object]:
    return {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, **changes}]}


ROLES = "system, developer, user, assistant, tool, function"
BAD_LINES = {
    # chat: messages
    "messages not a list": ({"messages": {"role": "user"}}, "messages must be a list (got an object)"),
    "messages empty": ({"messages": []}, "messages must not be empty"),
    "message not an object": (chat("hi", ASSISTANT), 'messages[1] must be an object (got "hi")'),
    "role missing": (chat({"content": "x"}, ASSISTANT), "messages[1].role is required"),
    "role unknown": (chat({"role": "bot", "content": "x"}, ASSISTANT), f'messages[1].role must be one of {ROLES} (got "bot")'),
    "content missing": ({"messages": [{"role": "user"}, ASSISTANT]}, "messages[0].content is required"),
    "content a number": (chat({"role": "system", "content": 3}, ASSISTANT), "messages[1].content must be a string or a list of content parts (got 3)"),
    "content parts empty": (chat({"role": "user", "content": []}, ASSISTANT), "messages[1].content must not be empty"),
    "part type unknown": (chat({"role": "user", "content": [{"type": "audio"}]}, ASSISTANT), 'messages[1].content[0].type must be one of text, image_url (got "audio")'),
    "image in a system message": (chat({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, ASSISTANT), 'messages[1].content[0].type must be "text" (got "image_url")'),
    "image in an assistant message": (chat({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}), 'messages[1].content[0].type must be "text" (got "image_url")'),
    "image url missing": (chat({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, ASSISTANT), "messages[1].content[0].image_url.url is required"),
    "image detail unknown": (chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]}, ASSISTANT), 'messages[1].content[0].image_url.detail must be one of auto, low, high (got "max")'),
    "text part without text": (chat({"role": "assistant", "content": [{"type": "text"}]}), "messages[1].content[0].text is required"),
    "unknown message key": (chat({"role": "assistant", "contnet": "x"}), 'messages[1]: unknown key "contnet" for an assistant message (allowed: role, content, tool_calls, function_call, refusal, name, weight)'),
    "name not a string": (chat({"role": "assistant", "content": "x", "name": 1}), "messages[1].name must be a string (got 1)"),
    # chat: assistant rules
    "weight 2": (chat({**ASSISTANT, "weight": 2}), "messages[1].weight must be 0 or 1 (got 2)"),
    "weight true": (chat({**ASSISTANT, "weight": True}), "messages[1].weight must be 0 or 1 (got true)"),
    "weight 1.0": (chat({**ASSISTANT, "weight": 1.0}), "messages[1].weight must be 0 or 1 (got 1.0)"),
    "weight on a user message": ({"messages": [{**USER, "weight": 1}, ASSISTANT]}, "messages[0].weight is only allowed on assistant messages (this is a user message)"),
    "assistant with nothing": (chat({"role": "assistant", "content": ""}), "messages[1] is an assistant message without content, tool_calls or function_call"),
    "assistant with only a refusal": (chat({"role": "assistant", "content": None, "refusal": "no"}), "messages[1] is an assistant message without content, tool_calls or function_call"),
    "refusal a number": (chat({**ASSISTANT, "refusal": 1}), "messages[1].refusal must be a string or null (got 1)"),
    "tool_calls an object": (chat({"role": "assistant", "tool_calls": {"id": "c1"}}), "messages[1].tool_calls must be a list (got an object)"),
    "tool call without id": (chat({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}), "messages[1].tool_calls[0].id is required"),
    "tool call of another type": (chat(tool_call(type="code")), 'messages[1].tool_calls[0].type must be "function" (got "code")'),
    "tool call arguments an object": (chat(tool_call(function={"name": "f", "arguments": {}})), "messages[1].tool_calls[0].function.arguments must be a string (got an object)"),
    "function_call without arguments": (chat({"role": "assistant", "function_call": {"name": "f"}}), "messages[1].function_call.arguments is required"),
    "tool call arguments not JSON": (chat(tool_call(function={"name": "f", "arguments": '{"a": 1'})), "messages[1].tool_calls[0].function.arguments is invalid JSON: Expecting ',' delimiter at column 8"),
    "tool call arguments a list": (chat(tool_call(function={"name": "f", "arguments": "[1]"})), "messages[1].tool_calls[0].function.arguments must be a JSON object in a string (got a list in a string)"),
    "function_call arguments NaN": (chat({"role": "assistant", "function_call": {"name": "f", "arguments": '{"a": NaN}'}}), "messages[1].function_call.arguments is invalid JSON: NaN is not allowed"),
    # chat: tool and function messages
    "tool message without tool_call_id": (chat(tool_call(), {"role": "tool", "content": "42"}, ASSISTANT), "messages[2].tool_call_id is required"),
    "function message without name": (chat({"role": "function", "content": "42"}, ASSISTANT), "messages[1].name is required"),
    "function content a list": (chat({"role": "function", "name": "f", "content": []}, ASSISTANT), "messages[1].content must be a string or null (got a list)"),
    # chat: top level
    "unknown chat keys": (chat(ASSISTANT, metadata={}, id=1), 'unknown keys "metadata", "id" for a chat example (allowed: messages, tools, parallel_tool_calls, functions)'),
    "tools an object": (chat(ASSISTANT, tools={}), "tools must be a list (got an object)"),
    "tool of another type": (chat(ASSISTANT, tools=[{"type": "retrieval", "function": {"name": "f"}}]), 'tools[0].type must be "function" (got "retrieval")'),
    "tool without name": (chat(ASSISTANT, tools=[{"type": "function", "function": {"description": "d"}}]), "tools[0].function.name is required"),
    "tool parameters a string": (chat(ASSISTANT, tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]), 'tools[0].function.parameters must be an object (got "{}")'),
    "parallel_tool_calls a string": (chat(ASSISTANT, parallel_tool_calls="yes"), 'parallel_tool_calls must be true or false (got "yes")'),
    "functions empty": (chat(ASSISTANT, functions=[]), "functions must not be empty"),
    "legacy function with strict": (chat(ASSISTANT, functions=[{"name": "f", "strict": True}]), 'functions[0]: unknown key "strict" for a function (allowed: name, description, parameters)'),
    # reinforcement: only messages and tools are checked
    "reinforcement tools wrong": ({"messages": [USER], "tools": [{"type": "function"}]}, "tools[0].function is required"),
    # completion
    "completion without prompt": ({"completion": "x"}, "prompt is required"),
    "completion empty": ({"prompt": "p", "completion": ""}, "completion must not be empty"),
    "completion a number": ({"prompt": "p", "completion": 4}, "completion must be a string (got 4)"),
    "completion with extra key": ({**COMPLETION, "weight": 1}, 'unknown key "weight" for a completion example (allowed: prompt, completion)'),
    # preference
    "old preference names": ({"input": PREFERENCE["input"], "preferred_completion": "a", "non_preferred_completion": "b"}, 'preferred_completion and non_preferred_completion are old field names; a preference example has "input", "preferred_output" and "non_preferred_output"'),
    "one old preference name": ({**PREFERENCE, "preferred_completion": "a"}, 'preferred_completion is an old field name; a preference example has "input", "preferred_output" and "non_preferred_output"'),
    "preference without input": ({k: v for k, v in PREFERENCE.items() if k != "input"}, "input is required"),
    "preference input a list": ({**PREFERENCE, "input": []}, "input must be an object (got a list)"),
    "preference input extra key": ({**PREFERENCE, "input": {**PREFERENCE["input"], "functions": []}}, 'input: unknown key "functions" for a preference input (allowed: messages, tools, parallel_tool_calls)'),
    "preference input message bad": ({**PREFERENCE, "input": {"messages": [{"role": "user", "content": None}]}}, "input.messages[0].content must be a string or a list of content parts (got null)"),
    "preference without non_preferred_output": ({k: v for k, v in PREFERENCE.items() if k != "non_preferred_output"}, "non_preferred_output is required"),
    "no non-preferred output": ({**PREFERENCE, "non_preferred_output": []}, "non_preferred_output must hold exactly 1 assistant message (got 0)"),
    "two preferred outputs": ({**PREFERENCE, "preferred_output": [ASSISTANT, ASSISTANT]}, "preferred_output must hold exactly 1 assistant message (got 2)"),
    "preferred output from the user": ({**PREFERENCE, "non_preferred_output": [USER]}, 'non_preferred_output[0].role must be "assistant" (got "user")'),
    "preferred output weight": ({**PREFERENCE, "preferred_output": [{**ASSISTANT, "weight": 5}]}, "preferred_output[0].weight must be 0 or 1 (got 5)"),
    "extra preference key": ({**PREFERENCE, "prompt": "p"}, 'unknown key "prompt" for a preference example (allowed: input, preferred_output, non_preferred_output)'),
    # unknown shapes
    "unknown shape": ({"question": "q", "answer": "a"}, 'unrecognized example (keys found: "question", "answer"); expected "messages" (chat or reinforcement), "prompt" and "completion" (completion), or "input", "preferred_output" and "non_preferred_output" (preference)'),
    "empty object": ({}, 'unrecognized example (keys found: none); expected "messages" (chat or reinforcement), "prompt" and "completion" (completion), or "input", "preferred_output" and "non_preferred_output" (preference)'),
}


@pytest.mark.parametrize(("example", "reason"), BAD_LINES.values(), ids=BAD_LINES.keys())
def test_bad_line_is_reported_with_its_number_and_what_is_wrong_where(example: object, reason: str) -> None:
    # The first line sets the file's format; validation of the bad line must fail before that matters.
    error = failure([jsonl(CHAT) + b"\r\n" + jsonl(example)])
    assert (error.line, error.reason) == (3, reason)


def test_half_a_surrogate_pair_is_refused_and_a_whole_pair_is_a_character() -> None:
    error = failure([jsonl(COMPLETION) + b'{"prompt": "\\udc00 x", "completion": "y"}\n'])
    assert (error.line, error.reason) == (2, "\\udc00 is half of a UTF-16 surrogate pair alone, not a character")
    assert validate([b'{"prompt": "\\ud83d\\ude80", "completion": "\\\\ud800 is text"}\n']).examples == 1


def test_a_bad_line_after_the_last_newline_is_reported_by_finish() -> None:
    validator = JsonlValidator()
    validator.feed(jsonl(COMPLETION) + b'{"prompt": "p", "completion": ""}')
    with pytest.raises(InvalidFileFormat) as caught:
        validator.finish()
    assert (caught.value.line, caught.value.reason) == (2, "completion must not be empty")


# One file, one format


@pytest.mark.parametrize(
    ("first", "later", "reason"),
    [
        (CHAT, PREFERENCE, "is a preference example, but the file started with chat examples (line 2)"),
        (CHAT, REINFORCEMENT, "has no assistant message to train on, but the file started with chat examples (line 2), and each needs one"),
        (COMPLETION, CHAT, "is a chat example, but the file started with completion examples (line 2)"),
        (PREFERENCE, COMPLETION, "is a completion example, but the file started with preference examples (line 2)"),
        (REINFORCEMENT, PREFERENCE, "is a preference example, but the file started with reinforcement examples (line 2)"),
    ],
)
def test_a_line_of_another_kind_than_the_first_example_fails(first: object, later: object, reason: str) -> None:
    error = failure([b"\n" + jsonl(first, first, first) + b"  \n" + jsonl(later)])
    assert (error.line, error.reason) == (6, reason)


def test_a_chat_line_in_a_chat_file_may_not_carry_grader_variables() -> None:
    error = failure([jsonl(CHAT, {**CHAT, "reference_answer": "Paris"})])
    assert error.line == 2
    assert error.reason.startswith('unknown key "reference_answer" for a chat example')


def test_a_chat_file_where_every_assistant_message_has_weight_zero_is_rejected() -> None:
    line = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]}\n'
    validator = JsonlValidator()
    validator.feed(line * 3)
    with pytest.raises(InvalidFileFormat, match="no example has an assistant message to train on"):
        validator.finish()
    validator = JsonlValidator()
    validator.feed(line + b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    assert validator.finish().examples == 2
