"""Bearer keys mapped to projects. With no keys configured the server is open, as one `default` project."""

from __future__ import annotations

import hmac
from typing import Callable

from fastapi import Request

from ftserve.api.limits import RateLimiter
from ftserve.config import DEFAULT_PROJECT
from ftserve.domain.errors import AuthenticationFailed


def project_resolver(api_keys: dict[str, str], limiter: RateLimiter | None = None) -> Callable[[Request], str]:
    """A FastAPI dependency that returns the caller's project, or refuses the request: no or a wrong
    key (401), or the project's request rate used up (429)."""

    def project(request: Request) -> str:
        owner = _owner(api_keys, request)
        if limiter is not None:
            limiter.take(owner)
        return owner

    return project


def _owner(api_keys: dict[str, str], request: Request) -> str:
    if not api_keys:
        return DEFAULT_PROJECT
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")
    token = token.strip()
    for key, owner in api_keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            return owner
    raise AuthenticationFailed("Incorrect API key provided.")
