"""Bearer keys mapped to projects. With no keys configured the server is open, as one `default` project."""

from __future__ import annotations

import hmac
from typing import Callable

from fastapi import Request

from ftserve.api.limits import RateLimiter
from ftserve.config import DEFAULT_PROJECT
from ftserve.domain.errors import AuthenticationFailed, RateLimited


def project_resolver(
    api_keys: dict[str, str], limiter: RateLimiter | None = None, failures: RateLimiter | None = None,
) -> Callable[[Request], str]:
    """A FastAPI dependency that returns the caller's project, or refuses the request: no or a wrong
    key (401), the project's request rate used up (429), or, with `failures`, a client address that sent
    too many wrong keys (429, whatever key it sends now, until its allowance refills)."""

    def project(request: Request) -> str:
        address = request.client.host if request.client else "unknown"
        if failures is not None and api_keys:
            # Checked before the key, so that a guesser over its allowance learns nothing from the answer.
            wait = failures.wait(address)
            if wait:
                raise RateLimited(
                    f"Too many requests with a wrong or missing API key from {address}. Try again in {wait:.1f}s.",
                    retry_after=wait, code="too_many_failed_authentications",
                )
        try:
            owner = _owner(api_keys, request)
        except AuthenticationFailed:
            if failures is not None:
                failures.spend(address)
            raise
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
