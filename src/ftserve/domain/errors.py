"""The one exception hierarchy of ftserve.

Every error a caller can see is a subclass of `FtserveError`. Each class carries the HTTP status,
the OpenAI error `type` and a machine `code`; its docstring is the default message. The API layer
renders them once into OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.

Error levels, as a caller meets them:
- request errors (bad parameter, unknown id) are 4xx answers before anything is stored;
- file-content errors found while a job validates its files make the job `failed`, with
  `error.param` naming the file;
- runtime errors inside training make the job `failed` and leave an `error` event.
"""

from __future__ import annotations


class FtserveError(Exception):
    """Failed to process the request."""

    status_code: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str | None = None, *, param: str | None = None, code: str | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.param = param
        if code is not None:
            self.code = code
        super().__init__(self.message)


class InvalidRequest(FtserveError):
    """The request is invalid."""

    status_code = 400
    type = "invalid_request_error"


class InvalidFileFormat(InvalidRequest):
    """The file is not valid JSONL for fine-tuning."""

    code = "invalid_file_format"

    def __init__(self, reason: str, *, line: int | None = None, param: str | None = "file"):
        self.line = line
        self.reason = reason
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"Invalid file format: {where}{reason}", param=param)


class AuthenticationFailed(FtserveError):
    """Incorrect or missing API key. Send `Authorization: Bearer <key>`."""

    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(FtserveError):
    """The requested object does not exist."""

    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(FtserveError):
    """The object is not in a state that allows this operation."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_state"


class InUse(Conflict):
    """The object is in use and cannot be deleted now."""

    status_code = 409
    code = "in_use"


class PayloadTooLarge(FtserveError):
    """The request body is larger than allowed."""

    status_code = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(FtserveError):
    """Rate limit reached for requests. Retry after the time in the Retry-After header."""

    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str | None = None, *, retry_after: float, param: str | None = None,
                 code: str | None = None):
        self.retry_after = retry_after
        super().__init__(message, param=param, code=code)


class TrainingFailed(FtserveError):
    """Training failed."""

    code = "training_failed"


class EngineUnavailable(FtserveError):
    """The generation engine is not running; it is being restarted. Try again shortly."""

    status_code = 503
    type = "server_error"
    code = "engine_unavailable"
