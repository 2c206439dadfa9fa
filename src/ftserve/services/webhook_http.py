"""One webhook POST, connected to addresses that were checked and to nothing else.

httpx would resolve the URL's host again when it connects, and a name can answer differently the second
time (DNS rebinding). So the request goes through httpcore with a network backend that dials the checked
addresses; the URL keeps its host name, which is what the Host header, TLS SNI and certificate
verification use.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence

import httpcore
import httpx

from ftserve.services.webhook_targets import Target

_TLS = httpx.create_ssl_context()

# What a try can meet on the wire besides an answer: every one of them means "not delivered".
NETWORK_ERRORS = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError, ssl.SSLError)


class _Pinned(httpcore.AsyncNetworkBackend):
    """Connects to `addresses` in turn, whatever host it is asked for."""

    def __init__(self, addresses: Sequence[str]):
        self.addresses = addresses
        self.backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for address in self.addresses:
            try:
                return await self.backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as error:
                failure = error
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


async def post(target: Target, addresses: Sequence[str], headers: dict[str, str], payload: bytes,
               timeout: float) -> int:
    """The status line's code; the answer's headers are read, its body never is. `timeout` bounds each step;
    the caller bounds the whole (a receiver that sends a byte at a time would outlast any per-step limit)."""
    request = httpx.Request("POST", target.url, headers=headers, content=payload)  # adds Host and Content-Length
    url = httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                       target=request.url.raw_path)
    steps = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    async with httpcore.AsyncConnectionPool(ssl_context=_TLS, network_backend=_Pinned(addresses), retries=0) as pool:
        async with pool.stream("POST", url, headers=request.headers.raw, content=payload,
                               extensions={"timeout": steps}) as response:
            return response.status
