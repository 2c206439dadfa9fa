"""A webhook URL checked against the address rules of domain/webhook_targets.py: when it is registered, and
again, after DNS, right before each try, so a name that points inside the network later (DNS rebinding)
is caught where it matters. The try then connects to the addresses checked here and no others."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import Executor
from dataclasses import dataclass

import httpx

from ftserve.domain.errors import InvalidRequest
from ftserve.domain.webhook_targets import Allow, IPAddress, address_refusal, host_refusal, numeric_host

# Looked up through the module, so tests can answer for names without a DNS server.
getaddrinfo = socket.getaddrinfo

_RULE = ("webhooks may only call public addresses (the server's operator can allow chosen internal ones "
         "with FTSERVE_WEBHOOK_ALLOW)")


class Refused(Exception):
    """The host resolved to an address webhooks may not call."""


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    host: str  # as DNS knows it: IDNA-encoded, IPv6 without brackets
    port: int


def target(url: str, allow: Allow) -> Target:
    """The URL parsed as the sender will parse it, or InvalidRequest naming `url`: not http(s), no host,
    credentials in it, or a host that names an address webhooks may not call."""
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        if numeric_host(host) is None:
            host.encode("idna")  # what the resolver will do with it: no empty labels, none over 63 characters
    except (httpx.InvalidURL, ValueError):
        parsed, host = None, ""
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise InvalidRequest(f"url must be an http:// or https:// URL with a host, not '{url[:200]}'.", param="url")
    if parsed.userinfo:
        raise InvalidRequest("url must not hold a user name or password; authenticate the delivery by its signature "
                             "(webhook-signature), or put a token in the path.", param="url")
    problem = host_refusal(host, allow)
    if problem:
        raise InvalidRequest(f"url {problem}; {_RULE}.", param="url")
    return Target(parsed, host, parsed.port or (443 if parsed.scheme == "https" else 80))


async def resolve(found: Target, allow: Allow, executor: Executor) -> list[str]:
    """The addresses to connect to, in the resolver's order; Refused when any of them is one webhooks may not
    call, socket.gaierror when the name does not resolve. The caller bounds the wait: a lookup that outlives
    it is abandoned on `executor`, never on a thread the API or the database needs."""
    answers = await asyncio.get_running_loop().run_in_executor(
        executor, getaddrinfo, found.host, found.port, 0, socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
    problem = address_refusal(found.host, [_address(a) for a in addresses], allow)
    if problem:
        raise Refused(problem)
    return addresses


async def check(url: str, allow: Allow, executor: Executor, timeout: float) -> None:
    """`target`, and the host's addresses too where it resolves within `timeout`. A name that does not resolve
    (yet) is accepted: each try checks again, and one that resolves inside the network is not sent."""
    found = target(url, allow)
    try:
        await asyncio.wait_for(resolve(found, allow, executor), timeout)
    except Refused as refused:
        raise InvalidRequest(f"url's host {refused}; {_RULE}.", param="url") from None
    except (OSError, asyncio.TimeoutError):
        pass


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # a link-local IPv6 answer may carry its zone
