"""The vLLM engine: one supervised vLLM server per base model with traffic, adapters loaded into it
at run time, and each request sent as token ids to its completions endpoint, streamed back.

ftserve renders and tokenizes prompts itself (the same chat template and checks as training), so
vLLM sees exactly the tokens the transformers loop would. Every request streams from vLLM, even
when the client asked for a whole answer: that is how a client hanging up reaches vLLM at once (the
closed stream aborts the request there) and how chunks carry token ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ftserve.domain.errors import EngineUnavailable, InvalidRequest
from ftserve.engine.spec import ModelSource
from ftserve.inference.interface import Chunk, Feature, Generation, Target, TokenLogprob
from ftserve.inference.vllm_server import BASE, VllmOptions, VllmServer

# How long to wait for the next token before the engine counts as stuck.
READ_TIMEOUT_SECONDS = 300.0


class VllmEngine:
    name = "vllm"
    supports: frozenset[Feature] = frozenset({"logprobs", "response_format"})

    def __init__(self, options: VllmOptions, base_dir: Callable[[ModelSource], Path]):
        self.options = options
        self.base_dir = base_dir
        self._servers: dict[str, VllmServer] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=READ_TIMEOUT_SECONDS))
        threading.Thread(target=self._watch, name="ftserve-vllm-watch", daemon=True).start()

    def generate(self, request: Generation, cancelled: Callable[[], bool]) -> Iterator[Chunk]:
        server = self._server(request.target)
        for last_try in (False, True):
            with server.use() as url:
                try:
                    model = self._model(server, url, request.target)
                    yield from self._stream(server, url, model, request, cancelled)
                    return
                except httpx.ConnectError as error:
                    # Refused: the request never reached vLLM, whose process is gone or going (before this
                    # process has seen it end). It is ended for sure and the request goes to a new one, once.
                    server.refused(url)
                    if last_try:
                        raise _stopped(request) from error
                except (httpx.TransportError, httpx.StreamError) as error:
                    raise _stopped(request) from error

    def _stream(self, server: VllmServer, url: str, model: str, request: Generation,
                cancelled: Callable[[], bool]) -> Iterator[Chunk]:
        counts: dict[int, int] = {}
        with self._client.stream("POST", f"{url}/v1/completions", json=_body(request, model),
                                 headers=server.headers) as response:
            if response.status_code != 200:
                _refused(response, server)
            for line in response.iter_lines():
                if cancelled():
                    return  # leaving the block closes the stream, and vLLM aborts the request
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    server.fail()
                    raise EngineUnavailable(f"The generation engine failed ({event['error'].get('message')}); "
                                            f"it is being restarted. Its log is {server.log_path}.")
                for choice in event.get("choices", []):
                    yield _chunk(choice, counts, request.logprobs)

    def reload(self, target: Target) -> None:
        server = self._servers.get(target.base.id)
        if server is None or target.name not in server.adapters or not server.running:
            return  # loaded afresh from its directory on first use
        with server.use() as url:
            self._post(server, url, "/v1/load_lora_adapter",
                       {"lora_name": target.name, "lora_path": str(target.artifact), "load_inplace": True})

    def forget(self, name: str) -> None:
        with self._lock:
            full = self._servers.pop(_full_key(name), None)
            holders = [s for s in self._servers.values() if name in s.adapters and s.running]
        if full is not None:
            full.stop()
        for server in holders:
            with server.use() as url:
                self._post(server, url, "/v1/unload_lora_adapter", {"lora_name": name}, missing_ok=True)
                server.adapters.pop(name, None)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            server.stop()
        self._client.close()

    def servers(self) -> dict[str, VllmServer]:
        """The servers started so far, by base model id (full fine-tunes: `ft-full:` and their name)."""
        with self._lock:
            return dict(self._servers)

    def _server(self, target: Target) -> VllmServer:
        key = _full_key(target.name) if target.kind == "full" else target.base.id
        with self._lock:
            if key not in self._servers:
                if target.kind == "full":
                    assert target.artifact is not None
                    directory, lora = target.artifact, False
                else:
                    directory, lora = self.base_dir(target.base), True
                self._servers[key] = VllmServer(key, directory, self.options, lora=lora)
            return self._servers[key]

    def _model(self, server: VllmServer, url: str, target: Target) -> str:
        """The name to ask vLLM for: the base, or the adapter (loaded into the server first if it is not yet)."""
        if target.kind != "adapter":
            return BASE
        if target.name not in server.adapters:
            self._post(server, url, "/v1/load_lora_adapter", {"lora_name": target.name, "lora_path": str(target.artifact)})
            server.adapters[target.name] = target.artifact  # type: ignore[assignment]  # an adapter has a directory
        return target.name

    def _post(self, server: VllmServer, url: str, path: str, body: dict[str, Any], *, missing_ok: bool = False) -> None:
        try:
            response = self._client.post(url + path, json=body, headers=server.headers)
        except httpx.TransportError as error:
            raise EngineUnavailable("The generation engine is not answering; try again shortly.") from error
        if response.status_code == 200:
            return
        if missing_ok and response.status_code == 404:
            return
        message = response.text[:500]
        if "already been loaded" in message:  # loaded by a request that raced this one
            return
        raise EngineUnavailable(f"The generation engine refused {path} ({response.status_code}): {message}")

    def _watch(self) -> None:
        while not self._closed.wait(1.0):
            for server in self.servers().values():
                server.watch()


def _full_key(name: str) -> str:
    return f"ft-full:{name}"


def _body(request: Generation, model: str) -> dict[str, Any]:
    sampling = request.sampling
    prompts, n = request.prompts, request.n
    if sampling.greedy and n > 1:
        # vLLM takes n > 1 only when sampling; greedy choices are the same prompt asked n times (same numbering).
        prompts, n = [p for p in prompts for _ in range(n)], 1
    body: dict[str, Any] = {
        "model": model, "prompt": prompts, "n": n, "stream": True, "return_token_ids": True,
        "max_tokens": sampling.max_tokens, "temperature": 0.0 if sampling.greedy else sampling.temperature,
        "top_p": sampling.top_p, "stop": list(sampling.stop), "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty, "skip_special_tokens": True,
    }
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): value for token, value in sampling.logit_bias.items()}
    if request.seed is not None:
        body["seed"] = request.seed
    if request.logprobs is not None:
        body["logprobs"] = request.logprobs
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return body


def _chunk(choice: dict[str, Any], counts: dict[int, int], top: int | None) -> Chunk:
    index = int(choice["index"])
    ids = tuple(choice.get("token_ids") or ())
    counts[index] = counts.get(index, 0) + len(ids)
    logprobs: tuple[TokenLogprob, ...] = ()
    if top is not None and choice.get("logprobs"):
        given = choice["logprobs"]
        if choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None:
            # Ended by the end-of-turn token, which is not part of the answer's text: OpenAI lists no logprob for it.
            given = {key: value[:-1] for key, value in given.items() if isinstance(value, list)}
        logprobs = tuple(
            TokenLogprob(token, float(logprob), tuple(sorted((alternatives or {}).items(), key=lambda kv: -kv[1])[:top]))
            for token, logprob, alternatives in zip(given["tokens"], given["token_logprobs"],
                                                    given.get("top_logprobs") or [None] * len(given["tokens"]))
        )
    return Chunk(index, choice.get("text") or "", counts[index], choice.get("finish_reason"), ids, logprobs)


def _stopped(request: Generation) -> EngineUnavailable:
    return EngineUnavailable(f"The generation engine for {request.target.base.id} stopped while answering "
                             "(it is being restarted); try again shortly.")


def _refused(response: httpx.Response, server: VllmServer) -> None:
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    if response.status_code == 400:  # something ftserve's checks let through and vLLM would not take
        raise InvalidRequest(f"The generation engine refused the request: {message}")
    if response.status_code >= 500:
        server.fail()
    raise EngineUnavailable(f"The generation engine answered {response.status_code} ({message}); its log is "
                            f"{server.log_path}.")
