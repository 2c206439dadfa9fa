"""Bearer keys mapped to projects. With no keys configured the server is open, as one `default` project.

Wrong keys are throttled per client address: past the allowance every request from that address is refused
with 429, the right key included, until the allowance refills. Letting the right key through would not slow a
guesser at all (each wrong guess would get 429, the right one 200), so the refusal cannot depend on the key.
Only a key that matches nothing counts: a request without a key guesses nothing (the dashboard's first request
has none, and its 401 is what brings up the sign-in prompt).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Callable

from fastapi import Request

from ftserve.api.limits import RateLimiter
from ftserve.config import DEFAULT_PROJECT
from ftserve.domain.errors import AuthenticationFailed, RateLimited

# An IPv6 client usually holds a whole /64; counting its addresses one by one would let it guess without end.
IPV6_PREFIX = 64


def project_resolver(
    api_keys: dict[str, str], limiter: RateLimiter | None = None, failures: RateLimiter | None = None,
) -> Callable[[Request], str]:
    """A FastAPI dependency that returns the caller's project, or refuses the request: no or a wrong
    key (401), the project's request rate used up (429), or, with `failures`, a client that sent too many
    wrong keys (429, whatever key it sends now)."""

    def project(request: Request) -> str:
        owner = _checked(request, api_keys, failures, "") if api_keys else DEFAULT_PROJECT
        if limiter is not None:
            limiter.take(owner)
        return owner

    return project


def metrics_guard(metrics_key: str | None, failures: RateLimiter | None = None) -> Callable[[Request], None]:
    """A dependency for `/metrics` on a server with keys: only `metrics_key` passes (none does when it is
    unset), and wrong keys spend the same allowance as wrong project keys."""
    refusal = ("/metrics covers every project, so on a server with API keys it answers only the metrics key "
               "(FTSERVE_METRICS_KEY), sent as `Authorization: Bearer <key>`; project keys are refused.")
    if metrics_key is None:
        refusal += " This server has none set."

    def guard(request: Request) -> None:
        _checked(request, {metrics_key: "metrics"} if metrics_key else {}, failures, refusal)

    return guard


def _checked(request: Request, keys: dict[str, str], failures: RateLimiter | None, refusal: str) -> str:
    """The owner of the request's key among `keys`; a refusal says `refusal`, or the default messages."""
    client = _client(request)
    if failures is not None:
        # Before the key is looked at, so that an address over its allowance learns nothing from the answer.
        wait = failures.wait(client)
        if wait:
            raise RateLimited(
                f"Too many requests with a wrong API key from {client}. Try again in {wait:.1f}s.",
                retry_after=wait, code="too_many_failed_authentications",
            )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(refusal or "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")
    for key, owner in keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            return owner
    if failures is not None:
        failures.spend(client)
    raise AuthenticationFailed(refusal or "Incorrect API key provided.")


def _client(request: Request) -> str:
    """The throttle's key for the request's client: its address, or its /64 for IPv6."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # a dual-stack listener's IPv4 client: its own address, not a /64 of all of them
    if address.version == 6 and not address.is_loopback:
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return host
