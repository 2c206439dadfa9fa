"""What a server without API keys accepts from the network around it: requests addressed to it by a loopback
name, and browser writes only from its own pages.

An open server trusts whoever can reach it, which on loopback is the people on this machine. A web page in
their browser can reach it too: through DNS rebinding (a name of the attacker's that resolves to 127.0.0.1,
which the browser then treats as the attacker's own origin, so the page may read the answers) or through a
plain cross-origin form, which a browser sends without asking (it may not read the answer, but the file is
stored). The first carries the attacker's name in `Host`; the second announces itself in `Origin` and
`Sec-Fetch-Site`. A server with keys needs neither check: a browser never attaches a bearer key by itself.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ftserve.api import errors

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What Sec-Fetch-Site says for a request a page of another origin made; `same-origin` and `none` (typed in the
# address bar, or not a browser fetch) pass.
FOREIGN_SITES = frozenset({b"cross-site", b"same-site"})


def host_name(host: str) -> str:
    """The name in a Host header or an origin's authority, without the port or IPv6 brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class OpenServerGuard:
    """On a server without keys: a request whose Host is not a loopback name (or one of `allowed_hosts`) gets
    421, and a write a browser sent from another origin gets 403. SDKs, curl and the dashboard pass."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]):
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        name = host_name(host)
        if not (is_loopback(name) or name in self.allowed):
            await _refuse(send, 421, f"This server has no API keys, so it answers only requests addressed to it by a "
                          f"loopback name (localhost, 127.0.0.1, [::1]), not to '{host[:100]}'. To serve other names, "
                          "set FTSERVE_API_KEYS, or list them in FTSERVE_ALLOWED_HOSTS.", "misdirected_request")
            return
        if scope["method"] in UNSAFE_METHODS:
            origin = headers.get(b"origin")
            # `Origin: null` (a sandboxed frame, a file:// page) has no authority, so it never matches.
            foreign_origin = origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != host.lower()
            if headers.get(b"sec-fetch-site", b"") in FOREIGN_SITES or foreign_origin:
                await _refuse(send, 403, "A browser page of another origin may not change anything on a server "
                              "without API keys. Use the dashboard this server serves, the SDK or the CLI.",
                              "cross_origin_request")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    body = errors.rendered(message, "invalid_request_error", code=code).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})
