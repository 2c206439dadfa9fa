"""ASGI middleware: a request id on every response, and on every log record made while answering."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftserve import logs


class RequestId:
    """Adds `x-request-id` to every HTTP response, errors included, as OpenAI's API does, and binds it
    as `request_id` for the logs (sync routes run in threads that copy this context, so theirs carry it too)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with logs.bind(request_id=request_id):
            await self.app(scope, receive, send_with_id)
