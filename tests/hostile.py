"""A corpus of hostile training files, each with what ftserve must say about it.

`REFUSED` maps a name to a `Bad` file: its bytes (built on demand, as a few are tens of MB), the line
the error must name (None where the reason is about the whole file), words of the reason, and where it
is caught: `upload` (a 400 from `POST /files`) or `job` (the upload is valid JSONL, but a job of
`method` on it fails while validating its files). `ACCEPTED` are files that look odd but are valid,
and must be taken and train; they do not count as bad.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BOM = b"\xef\xbb\xbf"
USER = {"role": "user", "content": "What is 2 + 2?"}
ASSISTANT = {"role": "assistant", "content": "4"}
CHAT = {"messages": [USER, ASSISTANT]}
COMPLETION = {"prompt": "2 + 2 =", "completion": " 4"}
PREFERENCE = {
    "input": {"messages": [USER]},
    "preferred_output": [{"role": "assistant", "content": "4"}],
    "non_preferred_output": [{"role": "assistant", "content": "5"}],
}
ROLES = "system, developer, user, assistant, tool, function"
LINE_LIMIT = 4 * 1024 * 1024  # the longest line a server takes by default (FTSERVE_MAX_LINE_BYTES)
TINY_LINE = b'{"prompt":"","completion":"x"}\n'


@dataclass(frozen=True)
class Bad:
    build: Callable[[], bytes]
    line: int | None
    reason: str
    stage: Literal["upload", "job"] = "upload"
    method: Literal["supervised", "dpo"] = "supervised"


def line(example: object) -> bytes:
    return json.dumps(example, ensure_ascii=False).encode() + b"\n"


def lines(*examples: object) -> bytes:
    return b"".join(map(line, examples))


def chat(*messages: object, **extra: object) -> dict[str, object]:
    return {"messages": [USER, *messages], **extra}


def after_good(raw: bytes, good: object = CHAT) -> Callable[[], bytes]:
    """A good first line, then `raw`: the bad line is line 2."""
    return lambda: line(good) + raw


def second(example: object, good: object = CHAT) -> Callable[[], bytes]:
    return after_good(line(example), good)


def tool_call(arguments: object, key: str = "tool_calls") -> dict[str, object]:
    function = {"name": "get_weather", "arguments": arguments}
    if key == "function_call":
        return {"role": "assistant", "function_call": function}
    return {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": function}]}


def nested(depth: int, leaf: str = '"x"') -> str:
    return '{"a": ' * depth + leaf + "}" * depth


WRONG_SHAPE = 'unrecognized example (keys found: '

REFUSED: dict[str, Bad] = {
    # Encoding
    "latin-1 text": Bad(after_good('{"prompt": "café", "completion": "x"}\n'.encode("latin-1"), COMPLETION), 2, "invalid UTF-8 at byte 16"),
    "stray continuation byte": Bad(lambda: b'{"prompt": "\x80", "completion": "x"}\n', 1, "invalid UTF-8 at byte 13"),
    "overlong encoding": Bad(lambda: b'{"prompt": "\xc0\xaf", "completion": "x"}\n', 1, "invalid UTF-8"),
    "UTF-8-encoded surrogate": Bad(lambda: b'{"prompt": "\xed\xa0\x80", "completion": "x"}\n', 1, "invalid UTF-8"),
    "code point past U+10FFFF": Bad(lambda: b'{"prompt": "\xf4\x90\x80\x80", "completion": "x"}\n', 1, "invalid UTF-8"),
    "character cut at the end of the file": Bad(after_good('{"prompt": "東'.encode()[:-1], COMPLETION), 2, "invalid UTF-8"),
    "UTF-16 with its BOM": Bad(lambda: lines(CHAT).decode().encode("utf-16"), 1, "invalid UTF-8 at byte 1"),
    "UTF-16 without a BOM": Bad(lambda: lines(CHAT).decode().encode("utf-16-le"), 1, "invalid JSON"),
    "BOM in the middle": Bad(after_good(BOM + line(CHAT)), 2, "byte order mark (BOM) is only allowed at the start"),
    "two BOMs": Bad(lambda: BOM + BOM + line(CHAT), 1, "byte order mark (BOM) is only allowed at the start"),
    "lone surrogate escape": Bad(lambda: b'{"prompt": "\\ud800", "completion": "x"}\n', 1, "\\ud800 is half of a UTF-16 surrogate pair"),
    "NUL byte in a string": Bad(lambda: b'{"prompt": "a\x00b", "completion": "x"}\n', 1, "invalid JSON: Invalid control character"),
    "raw carriage return in a string": Bad(after_good(b'{"prompt": "a\rb", "completion": "x"}\n', COMPLETION), 2, "invalid JSON: Invalid control character"),
    # Lines and framing
    "truncated last line": Bad(lambda: lines(CHAT, CHAT, CHAT) + b'{"messages": [{"role": "user", "content": "Hi', 4, "invalid JSON: Unterminated string"),
    "truncated after a key": Bad(after_good(b'{"prompt": "a", "completion":', COMPLETION), 2, "invalid JSON: Expecting value"),
    "empty file": Bad(lambda: b"", None, "the file has no examples"),
    "only blank lines": Bad(lambda: b"\n \n\t\r\n\n", None, "the file has no examples"),
    "only a BOM": Bad(lambda: BOM, None, "the file has no examples"),
    "a million blank lines": Bad(lambda: b"\n" * 10**6, None, "the file has no examples"),
    "a million tiny lines, the last one bad": Bad(
        lambda: TINY_LINE * (10**6 - 1) + b'{"prompt":"","completion":""}\n',
        10**6, "completion must not be empty",
    ),
    "one huge line": Bad(
        lambda: b'{"prompt": "' + b"a" * LINE_LIMIT + b'", "completion": "x"}\n', 1, f"line is longer than {LINE_LIMIT} bytes"
    ),
    "classic Mac line endings": Bad(lambda: line(CHAT)[:-1] + b"\r" + line(CHAT)[:-1] + b"\r", 1, "invalid JSON: Extra data"),
    "two examples on one line": Bad(lambda: line(CHAT)[:-1] + line(CHAT), 1, "invalid JSON: Extra data"),
    "pretty-printed JSON": Bad(lambda: json.dumps(CHAT, indent=2).encode() + b"\n", 1, "invalid JSON: Expecting property name"),
    "a JSON array of examples": Bad(lambda: json.dumps([CHAT, CHAT]).encode(), 1, "expected a JSON object, got a list"),
    "CRLF file with a bad line": Bad(
        lambda: (line(CHAT) + line(CHAT) + line(chat({"role": "bot", "content": "4"}))).replace(b"\n", b"\r\n"),
        3, 'messages[1].role must be one of',
    ),
    # Lines that are not objects
    "a string": Bad(after_good(b'"hello"\n'), 2, 'expected a JSON object, got "hello"'),
    "a number": Bad(after_good(b"42\n"), 2, "expected a JSON object, got 42"),
    "null": Bad(after_good(b"null\n"), 2, "expected a JSON object, got null"),
    "true": Bad(after_good(b"true\n"), 2, "expected a JSON object, got true"),
    "NaN": Bad(lambda: b'{"prompt": NaN, "completion": "x"}\n', 1, "invalid JSON: NaN is not allowed"),
    "Infinity as a weight": Bad(
        lambda: b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": Infinity}]}\n',
        1, "invalid JSON: Infinity is not allowed",
    ),
    "trailing comma": Bad(lambda: b'{"prompt": "a", "completion": "b",}\n', 1, "invalid JSON: Expecting property name"),
    "single quotes": Bad(lambda: b"{'prompt': 'a', 'completion': 'b'}\n", 1, "invalid JSON: Expecting property name"),
    "a 5000-digit number": Bad(lambda: b'{"prompt": "a", "completion": "b", "n": 1' + b"0" * 5000 + b"}\n", 1, "invalid JSON: Exceeds the limit"),
    "deeply nested arrays": Bad(lambda: b"[" * 100_000 + b"]" * 100_000 + b"\n", 1, "invalid JSON: nested too deeply"),
    "deeply nested content": Bad(
        lambda: ('{"messages": [{"role": "user", "content": ' + nested(100_000) + "}]}\n").encode(), 1,
        "invalid JSON: nested too deeply",
    ),
    "nested content that parses": Bad(
        lambda: ('{"messages": [{"role": "user", "content": ' + nested(500) + '}, {"role": "assistant", "content": "b"}]}\n').encode(),
        1, "messages[0].content must be a string or a list of content parts (got an object)",
    ),
    "unknown shape": Bad(second({"question": "2 + 2?", "answer": "4"}), 2, WRONG_SHAPE + '"question", "answer")'),
    "empty object": Bad(second({}), 2, WRONG_SHAPE + "none)"),
    # Messages and roles
    "role missing": Bad(second(chat({"content": "4"})), 2, "messages[1].role is required"),
    "role unknown": Bad(second(chat({"role": "bot", "content": "4"})), 2, f'messages[1].role must be one of {ROLES} (got "bot")'),
    "role capitalised": Bad(second(chat({"role": "Assistant", "content": "4"})), 2, '(got "Assistant")'),
    "role a number": Bad(second(chat({"role": 1, "content": "4"})), 2, "messages[1].role must be one of"),
    "messages empty": Bad(second({"messages": []}), 2, "messages must not be empty"),
    "messages an object": Bad(second({"messages": {"role": "user", "content": "a"}}), 2, "messages must be a list (got an object)"),
    "message a string": Bad(second(chat("4")), 2, 'messages[1] must be an object (got "4")'),
    "content missing": Bad(second({"messages": [{"role": "user"}, ASSISTANT]}), 2, "messages[0].content is required"),
    "no assistant message in a chat file": Bad(
        second({"messages": [USER]}), 2, "has no assistant message to train on, but the file started with chat examples (line 1)"
    ),
    "assistant message with nothing in it": Bad(second(chat({"role": "assistant", "content": ""})), 2, "messages[1] is an assistant message without content"),
    "every assistant message weighs 0": Bad(
        lambda: lines(chat({**ASSISTANT, "weight": 0}), chat({**ASSISTANT, "weight": 0})), None,
        "no example has an assistant message to train on: every assistant message has weight 0",
    ),
    "weight on a user message": Bad(
        second({"messages": [{**USER, "weight": 1}, ASSISTANT]}), 2,
        "messages[0].weight is only allowed on assistant messages (this is a user message)",
    ),
    "weight on a system message": Bad(
        second({"messages": [{"role": "system", "content": "Be brief.", "weight": 0}, USER, ASSISTANT]}), 2,
        "messages[0].weight is only allowed on assistant messages (this is a system message)",
    ),
    "weight on a tool message": Bad(
        second(chat(tool_call("{}"), {"role": "tool", "tool_call_id": "call_1", "content": "sunny", "weight": 1}, ASSISTANT)),
        2, "messages[2].weight is only allowed on assistant messages (this is a tool message)",
    ),
    "weight 2": Bad(second(chat({**ASSISTANT, "weight": 2})), 2, "messages[1].weight must be 0 or 1 (got 2)"),
    "weight a string": Bad(second(chat({**ASSISTANT, "weight": "1"})), 2, 'messages[1].weight must be 0 or 1 (got "1")'),
    "misspelt message key": Bad(second(chat({"role": "assistant", "contnet": "4"})), 2, 'messages[1]: unknown key "contnet"'),
    "unknown example key": Bad(second(chat(ASSISTANT, metadata={"source": "web"})), 2, 'unknown key "metadata" for a chat example'),
    # Tool calls
    "tool call arguments not JSON": Bad(
        second(chat(tool_call('{"city": "Paris"'))), 2,
        "messages[1].tool_calls[0].function.arguments is invalid JSON: Expecting ',' delimiter",
    ),
    "tool call arguments empty": Bad(second(chat(tool_call(""))), 2, "tool_calls[0].function.arguments is invalid JSON: Expecting value"),
    "tool call arguments a list": Bad(
        second(chat(tool_call("[1, 2]"))), 2, "tool_calls[0].function.arguments must be a JSON object in a string (got a list in a string)"
    ),
    "tool call arguments with NaN": Bad(second(chat(tool_call('{"t": NaN}'))), 2, "arguments is invalid JSON: NaN is not allowed"),
    "tool call arguments not a string": Bad(
        second(chat(tool_call({"city": "Paris"}))), 2, "tool_calls[0].function.arguments must be a string (got an object)"
    ),
    "function_call arguments not JSON": Bad(
        second(chat(tool_call("{city: Paris}", key="function_call"))), 2, "messages[1].function_call.arguments is invalid JSON"
    ),
    "tool call without a function name": Bad(
        second(chat({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": "{}"}}]})),
        2, "messages[1].tool_calls[0].function.name is required",
    ),
    "tool result without tool_call_id": Bad(
        second(chat(tool_call("{}"), {"role": "tool", "content": "sunny"}, ASSISTANT)), 2, "messages[2].tool_call_id is required"
    ),
    "tool call of another type": Bad(
        second(chat({"role": "assistant", "tool_calls": [{"id": "c", "type": "code", "function": {"name": "f", "arguments": "{}"}}]})),
        2, 'messages[1].tool_calls[0].type must be "function" (got "code")',
    ),
    # Preference pairs
    "preference without its non-preferred side": Bad(
        second({k: v for k, v in PREFERENCE.items() if k != "non_preferred_output"}, PREFERENCE), 2, "non_preferred_output is required"
    ),
    "preference without its preferred side": Bad(
        second({k: v for k, v in PREFERENCE.items() if k != "preferred_output"}, PREFERENCE), 2, "preferred_output is required"
    ),
    "preference with an empty side": Bad(
        second({**PREFERENCE, "non_preferred_output": []}, PREFERENCE), 2, "non_preferred_output must hold exactly 1 assistant message (got 0)"
    ),
    "preference side from the user": Bad(
        second({**PREFERENCE, "preferred_output": [USER]}, PREFERENCE), 2, 'preferred_output[0].role must be "assistant" (got "user")'
    ),
    "preference side a string": Bad(
        second({**PREFERENCE, "preferred_output": "4"}, PREFERENCE), 2, 'preferred_output must be a list (got "4")'
    ),
    "preference without input": Bad(second({k: v for k, v in PREFERENCE.items() if k != "input"}, PREFERENCE), 2, "input is required"),
    "preference in old field names": Bad(
        second({"input": PREFERENCE["input"], "preferred_completion": "4", "non_preferred_completion": "5"}, PREFERENCE), 2,
        "preferred_completion and non_preferred_completion are old field names",
    ),
    # Prompt/completion
    "completion missing": Bad(second({"prompt": "2 + 2 ="}, COMPLETION), 2, "completion is required"),
    "completion empty": Bad(second({"prompt": "2 + 2 =", "completion": ""}, COMPLETION), 2, "completion must not be empty"),
    "prompt a number": Bad(second({"prompt": 4, "completion": "4"}, COMPLETION), 2, "prompt must be a string (got 4)"),
    # One file, one kind
    "chat, then completion": Bad(second(COMPLETION), 2, "is a completion example, but the file started with chat examples (line 1)"),
    "completion, then preference": Bad(second(PREFERENCE, COMPLETION), 2, "is a preference example, but the file started with completion examples"),
    # Valid JSONL of a kind the job's method does not train on: refused when the job validates its files
    "preference pairs for a supervised job": Bad(lambda: lines(PREFERENCE, PREFERENCE), 1,
                                                "is a preference example, but supervised jobs train on chat or completion examples", "job"),
    "prompts without answers for a supervised job": Bad(
        lambda: lines({"messages": [USER]}, {"messages": [USER]}), 1,
        "has no assistant message to train on (a reinforcement prompt), but supervised jobs train on chat or completion examples", "job",
    ),
    "chat for a DPO job": Bad(lambda: lines(CHAT, CHAT), 1, "is a chat example, but dpo jobs train on preference examples", "job", "dpo"),
    "completions for a DPO job, after blank lines": Bad(
        lambda: b"\n\r\n" + lines(COMPLETION, COMPLETION), 3, "is a completion example, but dpo jobs train on preference examples", "job", "dpo"
    ),
}

# Longer than the default max_seq_length (2048 tokens), its answer at the end: only the local engine's
# tokenizer can tell. As the README documents, an example is cut at max_seq_length, one left with nothing
# to train is skipped with a warning, and a file left with nothing fails its job naming the lines.
LONG = {"messages": [{"role": "user", "content": "word " * 2500}, {"role": "assistant", "content": "ok"}]}

# Files that look odd but are valid: each is accepted at upload, and a job on it succeeds.
ACCEPTED: dict[str, Callable[[], bytes]] = {
    "a BOM at the start": lambda: BOM + lines(CHAT, CHAT),
    "CRLF line endings": lambda: lines(CHAT, CHAT).replace(b"\n", b"\r\n"),
    "no newline at the end": lambda: lines(CHAT, CHAT)[:-1],
    "blank and whitespace lines between examples": lambda: b"\n" + line(CHAT) + b" \t\r\n\n" + line(CHAT) + b"\n\n",
    "a carriage return as JSON whitespace": lambda: b'{"messages":\r[{"role": "user", "content": "a"},\r{"role": "assistant", "content": "b"}]}\n' * 2,
    "an emoji as an escaped surrogate pair": lambda: b'{"prompt": "\\ud83d\\ude80", "completion": " rocket"}\n' * 2,
}

