"""Every error leaves as OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ftserve.domain.errors import FtserveError, PayloadTooLarge, RateLimited
from ftserve.schemas.common import Error, ErrorResponse

log = logging.getLogger(__name__)


def rendered(message: str, type: str, param: str | None = None, code: str | None = None) -> str:
    """OpenAI's error envelope as JSON: every error response, and an error inside a stream, is this text."""
    # A message may quote the caller's input, and JSON input may hold half a surrogate pair, which UTF-8
    # cannot encode: it is shown escaped (`\ud800`) rather than failing the response.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return ErrorResponse(error=Error(message=message, type=type, param=param, code=code)).model_dump_json()


def of(error: FtserveError) -> str:
    """An error of ours in the envelope."""
    return rendered(error.message, error.type, error.param, error.code)


def envelope(status: int, message: str, type: str, param: str | None = None, code: str | None = None) -> Response:
    return Response(rendered(message, type, param, code), status_code=status, media_type="application/json")


_UNION_TAG = re.compile(r"^[A-Z][A-Za-z0-9]*$|[\[\]()\-]|^(int|float|str|bool|none)$")


def _param(loc: tuple[Any, ...]) -> str | None:
    """("body", "method", "type") -> "method.type". Pydantic also names the union member it tried
    (`SupervisedHyperparameters`, `literal['auto']`, `int`); those are not parameters and are dropped."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if _UNION_TAG.search(part):
            continue
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or None


def _most_relevant(errors: list[dict[str, Any]]) -> dict[str, Any]:
    # For `"auto" | int` a bad number fails both branches; the number's complaint is the useful one.
    for error in errors:
        if not any("literal[" in str(part) for part in error.get("loc", ())):
            return error
    return errors[0] if errors else {}


def _validation_message(error: dict[str, Any], param: str | None) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request. Send valid JSON."
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    if param is None:  # the body as a whole, such as a JSON array where an object belongs
        return f"Invalid request body: {error.get('msg', 'invalid')}."
    if kind == "missing":
        return f"Missing required parameter: '{param}'."
    return f"Invalid value for '{param}': {error.get('msg', 'invalid')}."


def install(app: FastAPI) -> None:
    @app.exception_handler(FtserveError)
    async def _domain(_: Request, error: FtserveError) -> Response:
        response = Response(of(error), status_code=error.status_code, media_type="application/json")
        if isinstance(error, RateLimited):  # whole seconds, rounded up, as the SDK and proxies read it
            response.headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> Response:
        first = _most_relevant(list(error.errors()))
        param = _param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            param = None
        return envelope(400, _validation_message(first, param), "invalid_request_error", param, None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif error.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        code = PayloadTooLarge.code if error.status_code == 413 else None
        return envelope(error.status_code, message, "invalid_request_error", None, code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "The server had an error while processing your request.", "server_error")
