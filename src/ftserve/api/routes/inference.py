"""`/chat/completions` and `/completions`. Generation runs in a thread: a stream's tokens cross to
the event loop through a queue, and a client that goes away, streaming or not, stops its generation
at the next token."""


import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ftserve.api import errors
from ftserve.domain.errors import FtserveError
from ftserve.domain.ids import new_id
from ftserve.inference.interface import TokenLogprob
from ftserve.schemas import inference as wire
from ftserve.services.inference import InferenceService, Output, Prepared

# With `stream: true` the answer is server-sent events (chunk objects, then `data: [DONE]`).
_STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def router(inference: InferenceService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(tags=["Chat"])
    Project = Annotated[str, Depends(project)]

    @api.post("/chat/completions", response_model=wire.ChatCompletion, responses=_STREAMED)
    async def create_chat_completion(body: wire.ChatCompletionRequest, owner: Project, request: Request) -> object:
        prepared = await run_in_threadpool(inference.prepare_chat, owner, body)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_chunks(_relay(inference, prepared), prepared, usage))
        return _chat_completion(prepared, await _whole(inference, prepared, request))

    @api.post("/completions", response_model=wire.Completion, responses=_STREAMED)
    async def create_completion(body: wire.CompletionRequest, owner: Project, request: Request) -> object:
        prepared = await run_in_threadpool(inference.prepare_completion, owner, body)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_completion_chunks(_relay(inference, prepared), prepared, usage))
        return _completion(prepared, await _whole(inference, prepared, request))

    return api


def _usage(prepared: Prepared, outputs: list[Output]) -> wire.Usage:
    # A choice's token count is cumulative: its last output holds the total.
    last = {o.index: o.tokens for o in outputs}
    completion = sum(last.values())
    prompt = prepared.prompt_tokens
    return wire.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _choices(outputs: list[Output]) -> dict[int, tuple[str, Output]]:
    texts: dict[int, str] = {}
    last: dict[int, Output] = {}
    for output in outputs:
        texts[output.index] = texts.get(output.index, "") + output.text
        last[output.index] = output
    return {i: (texts[i], last[i]) for i in sorted(texts)}


def _tool_calls(output: Output) -> list[wire.ToolCall] | None:
    if not output.tool_calls:
        return None
    return [wire.ToolCall(id=c["id"], function=wire.FunctionCall(**c["function"])) for c in output.tool_calls]


def _token_logprobs(outputs: list[Output]) -> list[TokenLogprob]:
    return [lp for o in outputs for lp in o.logprobs]


def _chat_logprobs(prepared: Prepared, logprobs: list[TokenLogprob]) -> wire.ChoiceLogprobs | None:
    if prepared.logprobs is None:
        return None
    return wire.ChoiceLogprobs(content=[
        wire.TokenLogprob(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()), top_logprobs=[
            wire.TopLogprob(token=token, logprob=value, bytes=list(token.encode())) for token, value in lp.top])
        for lp in logprobs])


def _completion_logprobs(prepared: Prepared, logprobs: list[TokenLogprob], offset: int = 0) -> wire.CompletionLogprobs | None:
    if prepared.logprobs is None:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return wire.CompletionLogprobs(text_offset=offsets, token_logprobs=[lp.logprob for lp in logprobs],
                                   tokens=[lp.token for lp in logprobs], top_logprobs=[dict(lp.top) for lp in logprobs])


def _chat_completion(prepared: Prepared, outputs: list[Output]) -> wire.ChatCompletion:
    choices = [
        wire.ChatChoice(
            index=i, finish_reason=last.finish_reason or "stop",
            message=wire.AssistantMessage(content=text if not last.tool_calls or text else None, tool_calls=_tool_calls(last)),
            logprobs=_chat_logprobs(prepared, _token_logprobs([o for o in outputs if o.index == i])),
        )
        for i, (text, last) in _choices(outputs).items()
    ]
    return wire.ChatCompletion(id=new_id("chatcmpl-"), created=int(time.time()), model=prepared.model,
                               choices=choices, usage=_usage(prepared, outputs))


def _completion(prepared: Prepared, outputs: list[Output]) -> wire.Completion:
    choices = [
        wire.CompletionChoice(index=i, text=text, finish_reason=_text_finish(last) or "stop",
                              logprobs=_completion_logprobs(prepared, _token_logprobs([o for o in outputs if o.index == i])))
        for i, (text, last) in _choices(outputs).items()
    ]
    return wire.Completion(id=new_id("cmpl-"), created=int(time.time()), model=prepared.model,
                           choices=choices, usage=_usage(prepared, outputs))


def _text_finish(output: Output) -> Literal["stop", "length"] | None:
    """A completion's finish reason: its requests carry no tools, so it never ends in tool calls."""
    reason = output.finish_reason
    if reason == "tool_calls":
        raise AssertionError("a completion ended in tool calls")
    return reason


# How often a non-streamed answer looks for its client having hung up.
HANG_UP_POLL_SECONDS = 0.25


async def _whole(inference: InferenceService, prepared: Prepared, request: Request) -> list[Output]:
    """A non-streamed answer, generated in a thread while the client is watched: one that hangs up stops the
    generation at its next token, as a stream's does, so the model is free for the next request."""
    gone = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(lambda: list(inference.run(prepared, cancelled=gone.is_set))))
    try:
        while not work.done():
            if await request.is_disconnected():
                gone.set()
                break
            await asyncio.wait({work}, timeout=HANG_UP_POLL_SECONDS)
        return await work
    finally:
        gone.set()


async def _relay(inference: InferenceService, prepared: Prepared) -> AsyncIterator[Output]:
    """Run the generation in its own thread and hand its outputs to the event loop as they come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Output | Exception | None] = asyncio.Queue()  # None: the generation has ended
    gone = threading.Event()

    def produce() -> None:
        try:
            for output in inference.run(prepared, cancelled=gone.is_set):
                loop.call_soon_threadsafe(queue.put_nowait, output)
        except Exception as error:  # delivered to the stream as an error event
            loop.call_soon_threadsafe(queue.put_nowait, error)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=produce, name="ftserve-generate", daemon=True).start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        gone.set()


async def _chat_chunks(outputs: AsyncIterator[Output], prepared: Prepared, usage: bool) -> AsyncIterator[str]:
    head = wire.ChatCompletionChunk(id=new_id("chatcmpl-"), created=int(time.time()), model=prepared.model, choices=[])
    unasked = None if usage else {"usage"}
    started: set[int] = set()
    seen: list[Output] = []

    def chunk(index: int, delta: wire.Delta, finish_reason: wire.FinishReason | None = None,
              logprobs: wire.ChoiceLogprobs | None = None) -> str:
        choice = wire.ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)
        return head.model_copy(update={"choices": [choice]}).model_dump_json(exclude=unasked)

    async for output in outputs:
        seen.append(output)
        if output.index not in started:
            started.add(output.index)
            yield chunk(output.index, wire.Delta(role="assistant", content=""))
        if output.text or output.logprobs:
            yield chunk(output.index, wire.Delta(content=output.text), logprobs=_chat_logprobs(prepared, list(output.logprobs)))
        if output.tool_calls:
            calls = [wire.ToolCallDelta(index=k, id=call["id"], function=wire.FunctionCall(**call["function"]))
                     for k, call in enumerate(output.tool_calls)]
            yield chunk(output.index, wire.Delta(tool_calls=calls))
        if output.finish_reason:
            yield chunk(output.index, wire.Delta(), output.finish_reason)
    if usage:
        yield head.model_copy(update={"usage": _usage(prepared, seen)}).model_dump_json()


async def _completion_chunks(outputs: AsyncIterator[Output], prepared: Prepared, usage: bool) -> AsyncIterator[str]:
    head = wire.Completion(id=new_id("cmpl-"), created=int(time.time()), model=prepared.model, choices=[])
    unasked = None if usage else {"usage"}
    seen: list[Output] = []
    written: dict[int, int] = {}  # characters of each choice sent so far, for logprobs' text offsets
    async for output in outputs:
        seen.append(output)
        if output.text or output.finish_reason or output.logprobs:
            offset = written.get(output.index, 0)
            written[output.index] = offset + len(output.text)
            choice = wire.CompletionChoice(index=output.index, text=output.text, finish_reason=_text_finish(output),
                                           logprobs=_completion_logprobs(prepared, list(output.logprobs), offset))
            yield head.model_copy(update={"choices": [choice]}).model_dump_json(exclude=unasked)
    if usage:
        yield head.model_copy(update={"usage": _usage(prepared, seen)}).model_dump_json()


def _sse(chunks: AsyncIterator[str]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        try:
            async for data in chunks:
                yield f"data: {data}\n\n"
        except FtserveError as error:
            yield f"data: {errors.of(error)}\n\n"
        except Exception:  # the stream has started: the error can only travel inside it
            yield f"data: {errors.rendered('The server had an error while generating.', 'server_error')}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
