"""Streaming validation of fine-tuning JSONL files.

An upload is checked while its bytes are copied to disk: `JsonlValidator` takes chunks of any size,
keeps only the unfinished last line, and raises `InvalidFileFormat` at the first bad line. The line
shapes are OpenAI's fine-tuning inputs (chat, completion, preference, reinforcement), as in section 5
of reference/openai-fine-tuning-surface.md.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ftserve.domain.errors import InvalidFileFormat
from ftserve.domain.tokens import estimated_tokens, text_length

DatasetFormat = Literal["chat", "completion", "preference", "reinforcement"]

_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_PLAIN_ROLES = frozenset(_ROLES[:4])  # the roles a message of only `role` and `content` may have
_MESSAGE_KEYS: dict[str, tuple[str, ...]] = {
    "system": ("role", "content", "name"),
    "developer": ("role", "content", "name"),
    "user": ("role", "content", "name"),
    "assistant": ("role", "content", "tool_calls", "function_call", "refusal", "name", "weight"),
    "tool": ("role", "tool_call_id", "content"),
    "function": ("role", "name", "content"),
}
_CHAT_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
_REINFORCEMENT_KEYS = frozenset(("messages", "tools"))  # RFT's reserved keys; every other key is a grader variable
_PROMPT_ENDS = ("user", "developer")  # the roles a reinforcement prompt may end with: the model answers them
_COMPLETION_KEYS = ("prompt", "completion")
_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
_PREFERENCE_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
_OLD_PREFERENCE_KEYS = ("preferred_completion", "non_preferred_completion")
_IMAGE_DETAILS = ("auto", "low", "high")
_FUNCTION_KEYS = ("name", "description", "parameters", "strict")  # the deprecated `functions` lack strict


@dataclass(frozen=True)
class DatasetSummary:
    """What a valid file holds: the kind of its examples, how many there are, the line of the first, and (for
    reinforcement) the grader variables every example has, so a grader's `{{item.<field>}}` can be checked
    against the file when a job is created, without reading it again."""

    format: DatasetFormat
    examples: int
    first_line: int = 1
    item_fields: frozenset[str] = frozenset()
    estimated_tokens: int = 0
    """Tokens of the examples' text, estimated as a dry run estimates them (`ftserve.domain.tokens`)."""


# A validator buffers an unfinished line longer than this only while it holds one of the `long_lines` slots.
LONG_LINE_BYTES = 256 * 1024


class JsonlValidator:
    """Validates a JSONL dataset fed as bytes in arbitrary chunks.

    Raises `InvalidFileFormat(reason, line=N)` at the first bad line. Memory stays flat: only the
    unfinished last line is buffered, and never more than `max_line_bytes` of it.

    Validators that share `long_lines` take turns with long lines: one buffers (and parses) a line past
    `LONG_LINE_BYTES` only while it holds a slot of that semaphore, so many uploads of huge lines at once
    hold a few of them in memory, not one each. A slot is held from the line's first long chunk until
    the line is checked, so feed such a validator from local data (a spooled upload, a stored blob), never
    from a slow client, and `close` it when the validation stops early.
    """

    def __init__(self, max_line_bytes: int = 64 * 1024 * 1024, long_lines: threading.Semaphore | None = None) -> None:
        self._max_line_bytes = max_line_bytes
        self._long_lines = long_lines
        self._holding = False  # one of the `long_lines` slots
        self._partial = bytearray()
        self._lines = 0
        self._examples = 0
        self._characters = 0  # of the examples' text, for the token estimate
        self._trains = False  # some example trains something
        self._format: DatasetFormat | None = None
        self._first_example_line = 0
        self._item_fields: frozenset[str] | None = None  # None: no reinforcement example yet

    def feed(self, chunk: bytes) -> None:
        """Validate every line that `chunk` completes and buffer the rest.

        A line is refused as too long before its bytes join the buffer, so the buffer never holds more than
        the limit (plus the one byte of slack a line ending in "\r\n" needs)."""
        try:
            if b"\n" not in chunk:  # the middle of a long line: no copy of the chunk but the buffer's
                self._buffer(chunk)
                return
            lines = chunk.split(b"\n")
            rest = lines.pop()
            if lines and self._partial:
                self._buffer(lines[0])
                joined, self._partial = self._partial, bytearray()
                self._check_line(joined)
                del joined
                self._release()
                lines = lines[1:]
            for line in lines:
                self._check_line(line)
            self._buffer(rest)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the buffered line and of a long-line slot; the validator takes no more chunks."""
        self._partial = bytearray()
        self._release()

    def _buffer(self, piece: bytes) -> None:
        size = len(self._partial) + len(piece)
        if size > self._max_line_bytes + 1:
            raise self._too_long(self._lines + 1)
        if size > LONG_LINE_BYTES and self._long_lines is not None and not self._holding:
            self._long_lines.acquire()
            self._holding = True
        self._partial += piece

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            assert self._long_lines is not None  # only a validator with slots holds one
            self._long_lines.release()

    def finish(self) -> DatasetSummary:
        """Validate a last line without a trailing newline and summarise the file."""
        try:
            if self._partial:
                line, self._partial = self._partial, bytearray()
                self._check_line(line)
        finally:
            self.close()
        if self._format is None:
            raise InvalidFileFormat("the file has no examples")
        if self._format == "chat" and not self._trains:
            raise InvalidFileFormat(
                "no example has an assistant message to train on: every assistant message has weight 0"
            )
        return DatasetSummary(format=self._format, examples=self._examples, first_line=self._first_example_line,
                              item_fields=self._item_fields or frozenset(),
                              estimated_tokens=estimated_tokens(self._characters))

    def _check_line(self, raw: bytes | bytearray) -> None:
        self._lines += 1
        number = self._lines
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > self._max_line_bytes:
            raise self._too_long(number)
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line or line.isspace():
            return
        example = _parse(line, number)
        kind = validate_example(example, number, file_format=self._format)
        if self._format is None:
            self._format, self._first_example_line = kind, number
        elif kind != self._format:
            started = f"the file started with {self._format} examples (line {self._first_example_line})"
            # A `messages` line without an assistant turn is a reinforcement prompt; in a chat file it is a mistake.
            reason = (
                f"has no assistant message to train on, but {started}, and each needs one"
                if (kind, self._format) == ("reinforcement", "chat") else f"is a {kind} example, but {started}"
            )
            raise InvalidFileFormat(reason, line=number)
        self._examples += 1
        self._characters += text_length(example)
        if kind == "reinforcement":
            assert isinstance(example, dict)  # validate_example returned a kind, so the line is an object
            fields = example.keys() - _REINFORCEMENT_KEYS
            self._item_fields = frozenset(fields) if self._item_fields is None else self._item_fields & fields
        if not self._trains:
            self._trains = kind != "chat" or _trains_something(example)

    def _too_long(self, line: int) -> InvalidFileFormat:
        return InvalidFileFormat(f"line is longer than {self._max_line_bytes} bytes", line=line)


def _trains_something(example: object) -> bool:
    """A chat example trains its assistant messages, except those with weight 0."""
    messages = example.get("messages", []) if isinstance(example, dict) else []
    return any(m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages if isinstance(m, dict))


def validate_example(obj: object, line: int, *, file_format: DatasetFormat | None = None) -> DatasetFormat:
    """Validate one parsed JSONL line and return its kind.

    `file_format` is the kind of the file's earlier examples, if any: in a reinforcement file a
    `messages` line may also hold assistant turns (few-shot prompts), and still counts as
    reinforcement. Raises `InvalidFileFormat(reason, line=line)`.
    """
    try:
        if not isinstance(obj, dict):
            raise _Invalid(f"expected a JSON object, got {_describe(obj)}")
        return _check_example(obj, file_format)
    except _Invalid as e:
        raise InvalidFileFormat(str(e), line=line) from None


class _Invalid(Exception):
    """A reason a line is invalid; `validate_example` adds the line number."""


def _parse(line: bytes | bytearray, number: int) -> object:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidFileFormat(f"invalid UTF-8 at byte {e.start + 1}", line=number) from None
    try:
        value = _decode(text)
    except _Invalid as e:
        if text.startswith("\ufeff"):
            raise InvalidFileFormat("a byte order mark (BOM) is only allowed at the start of the file", line=number) from None
        raise InvalidFileFormat(str(e), line=number) from None
    # JSON may escape half of a surrogate pair alone; it decodes to no character, and tokenizers refuse it.
    if b"\\u" in line and _SURROGATE_ESCAPE.search(line) and (
        lone := _SURROGATE.search(json.dumps(value, ensure_ascii=False))
    ):
        raise InvalidFileFormat(
            f"\\u{ord(lone.group()):x} is half of a UTF-16 surrogate pair alone, not a character", line=number
        )
    return value


def _decode(text: str) -> object:
    # The scanner alone is twice as fast as `decode`, which wraps it in regular expressions to skip
    # whitespace; `decode` runs only for a line the scanner does not take whole, to parse it or say why not.
    try:
        parsed, end = _DECODER.scan_once(text, 0)  # type: ignore[attr-defined]  # set in __init__, missing from the stubs
        if end == len(text):
            return parsed
    except (StopIteration, ValueError, RecursionError):
        pass
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise _Invalid(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:  # NaN and Infinity; integers of more than 4300 digits
        raise _Invalid(f"invalid JSON: {e}") from None
    except RecursionError:
        raise _Invalid("invalid JSON: nested too deeply") from None


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity, which are not JSON and which other parsers reject.
    raise ValueError(f"{name} is not allowed")


# One decoder for every line: `json.loads` with an option builds a new one per call, a third of a tiny line's cost.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _check_example(obj: dict[str, object], file_format: DatasetFormat | None) -> DatasetFormat:
    if "messages" in obj:
        return _check_messages_example(obj, file_format)
    if not obj.keys().isdisjoint(_PREFERENCE_KEYS + _OLD_PREFERENCE_KEYS):
        _check_preference(obj)
        return "preference"
    if not obj.keys().isdisjoint(_COMPLETION_KEYS):
        if not (len(obj) == 2 and type(obj.get("prompt")) is str and type(obj.get("completion")) is str
                and obj["completion"]):  # the common case at once; the checks below say what is wrong
            _check_keys(obj, _COMPLETION_KEYS, "", "a completion example")
            _required_str(obj, "prompt", "")
            if not _required_str(obj, "completion", ""):
                raise _Invalid("completion must not be empty")
        return "completion"
    found = ", ".join(f'"{key}"' for key in obj) or "none"
    raise _Invalid(
        f"unrecognized example (keys found: {found}); expected "
        '"messages" (chat or reinforcement), "prompt" and "completion" (completion), '
        'or "input", "preferred_output" and "non_preferred_output" (preference)'
    )


def _check_messages_example(obj: dict[str, object], file_format: DatasetFormat | None) -> DatasetFormat:
    messages = obj["messages"]
    has_assistant = isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") == "assistant" for m in messages
    )
    if file_format == "reinforcement" or not has_assistant:
        # `messages` and `tools` are RFT's only reserved keys; any other key is a grader variable.
        _check_messages(messages, "messages")
        if "tools" in obj:
            _check_tools(obj["tools"], "tools")
        if file_format != "chat":  # in a chat file, the missing assistant message is the thing to report
            _check_prompt_end(messages)
        return "reinforcement"
    _check_keys(obj, _CHAT_KEYS, "", "a chat example")
    _check_messages(messages, "messages")
    _check_tool_options(obj, "")
    if "functions" in obj:
        for i, function in enumerate(_as_list(obj["functions"], "functions", nonempty=True)):
            _check_function_definition(function, f"functions[{i}]", _FUNCTION_KEYS[:-1])
    return "chat"


def _check_prompt_end(messages: object) -> None:
    """The model answers a reinforcement prompt's last message, so it is the user's or the developer's.
    `messages` has passed `_check_messages`: a non-empty list of messages, each with a role."""
    listed = _as_list(messages, "messages")
    last = len(listed) - 1
    role = _as_dict(listed[last], f"messages[{last}]")["role"]
    if role not in _PROMPT_ENDS:
        raise _Invalid(f"messages[{last}].role must be {_one_of(_PROMPT_ENDS)}: a reinforcement example ends with "
                       f"the message the model answers (got {_describe(role)})")


def _check_preference(obj: dict[str, object]) -> None:
    old = [key for key in _OLD_PREFERENCE_KEYS if key in obj]
    if old:
        verb = "are old field names" if len(old) > 1 else "is an old field name"
        raise _Invalid(
            f'{" and ".join(old)} {verb}; a preference example has '
            '"input", "preferred_output" and "non_preferred_output"'
        )
    _check_keys(obj, _PREFERENCE_KEYS, "", "a preference example")
    prompt = _object(_required(obj, "input", ""), "input", _PREFERENCE_INPUT_KEYS, "a preference input")
    _check_messages(_required(prompt, "messages", "input"), "input.messages")
    _check_tool_options(prompt, "input")
    for key in ("preferred_output", "non_preferred_output"):
        output = _as_list(_required(obj, key, ""), key)
        if len(output) != 1:
            raise _Invalid(f"{key} must hold exactly 1 assistant message (got {len(output)})")
        role = _required(_as_dict(output[0], f"{key}[0]"), "role", f"{key}[0]")
        _expect(role == "assistant", f"{key}[0].role", '"assistant"', role)
        _check_message(output[0], f"{key}[0]")


def _check_messages(value: object, path: str) -> None:
    for i, message in enumerate(_as_list(value, path, nonempty=True)):
        if not _plain(message):
            _check_message(message, f"{path}[{i}]")


def _plain(message: object) -> bool:
    """The common message, a role and its text, passed without building the paths errors would name."""
    if type(message) is not dict or len(message) != 2:
        return False
    role, content = message.get("role"), message.get("content")
    return type(content) is str and role in _PLAIN_ROLES and (role != "assistant" or content != "")


def _check_message(value: object, path: str) -> None:
    message = _as_dict(value, path)
    role = _required(message, "role", path)
    if not (isinstance(role, str) and role in _ROLES):
        raise _wrong(f"{path}.role", _one_of(_ROLES), role)
    if "weight" in message and role != "assistant":
        raise _Invalid(f"{path}.weight is only allowed on assistant messages (this is a {role} message)")
    _check_keys(message, _MESSAGE_KEYS[role], path, f"{'an' if role == 'assistant' else 'a'} {role} message")
    if "name" in message or role == "function":
        _required_str(message, "name", path)
    if role == "assistant":
        _check_assistant(message, path)
    elif role == "function":
        content = _required(message, "content", path)
        _expect(content is None or isinstance(content, str), f"{path}.content", "a string or null", content)
    else:
        _check_content(_required(message, "content", path), f"{path}.content", images=role == "user")
        if role == "tool":
            _required_str(message, "tool_call_id", path)


def _check_assistant(message: dict[str, object], path: str) -> None:
    content = message.get("content")
    if content is not None:
        _check_content(content, f"{path}.content", images=False)
    refusal = message.get("refusal")
    _expect(refusal is None or isinstance(refusal, str), f"{path}.refusal", "a string or null", refusal)
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        for i, item in enumerate(_as_list(tool_calls, f"{path}.tool_calls")):
            call_path = f"{path}.tool_calls[{i}]"
            call = _object(item, call_path, ("id", "type", "function"), "a tool call")
            _required_str(call, "id", call_path)
            _expect_function_type(call, call_path)
            _check_function_call(_required(call, "function", call_path), f"{call_path}.function")
    function_call = message.get("function_call")
    if function_call is not None:
        _check_function_call(function_call, f"{path}.function_call")
    if "weight" in message:
        weight = message["weight"]
        # type() rather than isinstance(): JSON true must not pass as 1.
        _expect(type(weight) is int and weight in (0, 1), f"{path}.weight", "0 or 1", weight)
    if not (content or tool_calls or function_call):
        raise _Invalid(f"{path} is an assistant message without content, tool_calls or function_call")


def _check_content(value: object, path: str, *, images: bool) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _wrong(path, "a string or a list of content parts", value)
    kinds = ("text", "image_url") if images else ("text",)
    for i, item in enumerate(_as_list(value, path, nonempty=True)):
        part_path = f"{path}[{i}]"
        kind = _required(_as_dict(item, part_path), "type", part_path)
        _expect(kind in kinds, f"{part_path}.type", _one_of(kinds), kind)
        if kind == "text":
            _required_str(_object(item, part_path, ("type", "text"), "a text part"), "text", part_path)
            continue
        part = _object(item, part_path, ("type", "image_url"), "an image_url part")
        image_path = f"{part_path}.image_url"
        image = _object(_required(part, "image_url", part_path), image_path, ("url", "detail"), "an image_url")
        if not _required_str(image, "url", image_path):
            raise _Invalid(f"{image_path}.url must not be empty")
        detail = image.get("detail", "auto")
        _expect(detail in _IMAGE_DETAILS, f"{image_path}.detail", _one_of(_IMAGE_DETAILS), detail)


def _check_function_call(value: object, path: str) -> None:
    call = _object(value, path, ("name", "arguments"), "a function call")
    _required_str(call, "name", path)
    arguments = _required_str(call, "arguments", path)
    # The model is trained to write these arguments, and callers parse them as a JSON object.
    try:
        parsed = _decode(arguments)
    except _Invalid as e:
        raise _Invalid(f"{path}.arguments is {e}") from None
    if not isinstance(parsed, dict):
        raise _Invalid(f"{path}.arguments must be a JSON object in a string (got {_describe(parsed)} in a string)")


def _check_tool_options(obj: dict[str, object], path: str) -> None:
    if "tools" in obj:
        _check_tools(obj["tools"], _join(path, "tools"))
    if "parallel_tool_calls" in obj:
        flag = obj["parallel_tool_calls"]
        _expect(isinstance(flag, bool), _join(path, "parallel_tool_calls"), "true or false", flag)


def _check_tools(value: object, path: str) -> None:
    for i, item in enumerate(_as_list(value, path)):
        tool_path = f"{path}[{i}]"
        tool = _object(item, tool_path, ("type", "function"), "a tool")
        _expect_function_type(tool, tool_path)
        _check_function_definition(_required(tool, "function", tool_path), f"{tool_path}.function", _FUNCTION_KEYS)


def _check_function_definition(value: object, path: str, keys: tuple[str, ...]) -> None:
    function = _object(value, path, keys, "a function")
    _required_str(function, "name", path)
    if "description" in function:
        _as_str(function["description"], f"{path}.description")
    if "parameters" in function:
        _as_dict(function["parameters"], f"{path}.parameters")
    if "strict" in function:
        strict = function["strict"]
        _expect(strict is None or isinstance(strict, bool), f"{path}.strict", "true, false or null", strict)


def _expect_function_type(obj: dict[str, object], path: str) -> None:
    kind = _required(obj, "type", path)
    _expect(kind == "function", f"{path}.type", '"function"', kind)


# Small checks that name the JSON path of what is wrong.


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _required(obj: dict[str, object], key: str, path: str) -> object:
    if key not in obj:
        raise _Invalid(f"{_join(path, key)} is required")
    return obj[key]


def _required_str(obj: dict[str, object], key: str, path: str) -> str:
    return _as_str(_required(obj, key, path), _join(path, key))


def _check_keys(obj: dict[str, object], allowed: Sequence[str], path: str, what: str) -> None:
    unknown = [key for key in obj if key not in allowed]
    if unknown:
        names = ", ".join(f'"{key}"' for key in unknown)
        where = f"{path}: " if path else ""
        plural = "s" if len(unknown) > 1 else ""
        raise _Invalid(f"{where}unknown key{plural} {names} for {what} (allowed: {', '.join(allowed)})")


def _object(value: object, path: str, allowed: Sequence[str], what: str) -> dict[str, object]:
    obj = _as_dict(value, path)
    _check_keys(obj, allowed, path, what)
    return obj


def _wrong(path: str, expected: str, value: object) -> _Invalid:
    return _Invalid(f"{path} must be {expected} (got {_describe(value)})")


def _expect(ok: bool, path: str, expected: str, value: object) -> None:
    if not ok:
        raise _wrong(path, expected, value)


def _as_dict(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _wrong(path, "an object", value)
    return value


def _as_list(value: object, path: str, *, nonempty: bool = False) -> list[object]:
    if not isinstance(value, list):
        raise _wrong(path, "a list", value)
    if nonempty and not value:
        raise _Invalid(f"{path} must not be empty")
    return value


def _as_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _wrong(path, "a string", value)
    return value


def _one_of(values: Sequence[str]) -> str:
    return f'"{values[0]}"' if len(values) == 1 else "one of " + ", ".join(values)


def _describe(value: object) -> str:
    """A JSON value as an error message shows it: scalars verbatim (long strings cut), containers by type."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 40 else text[:36] + '..."'
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return "a list" if isinstance(value, list) else "an object"
