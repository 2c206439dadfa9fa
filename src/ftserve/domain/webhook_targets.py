"""Where a webhook may be sent: public addresses only, unless the operator allows chosen internal ones.

Pure rules over host names and IP addresses, no I/O. The service applies them twice: to the URL's host as
written when an endpoint is registered or changed, and to every address the host resolves to just before
a try, whose connection then goes to exactly the address that passed (services/webhook_targets.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT: inside someone's network, not the internet
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # IPv4 addresses reached through a NAT64 gateway
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")  # includes fd00:ec2::254, AWS's IPv6 metadata address


def numeric_host(host: str) -> IPAddress | None:
    """The address `host` is by itself, in any spelling a resolver takes as one rather than look up:
    dotted quads and the shorter inet_aton forms (`127.1`, `0x7f.1`, `0177.0.0.1`, `2130706433`,
    `0x7f000001`), IPv6 with or without a zone (`fe80::1%eth0`), with trailing dots. None: a name."""
    text = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        pass
    return _inet_aton(text)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        lowered = part.lower()
        try:
            if lowered.startswith("0x"):
                values.append(int(lowered[2:] or "0", 16))
            elif len(lowered) > 1 and lowered.startswith("0"):
                values.append(int(lowered[1:], 8))
            else:
                values.append(int(lowered, 10) if lowered.isdigit() else -1)
        except ValueError:
            return None
    *leading, last = values
    if any(not 0 <= value <= 255 for value in leading) or not 0 <= last < 256 ** (5 - len(values)):
        return None
    number = 0
    for value in leading:
        number = number << 8 | value
    return ipaddress.IPv4Address(number << 8 * (5 - len(values)) | last)


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped `::ffff:a.b.c.d`, 6to4, NAT64), else the address itself:
    a packet to it ends up there."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def internal_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is (`loopback`, `private`, ...), or None for a public one."""
    address = embedded_ipv4(address)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:  # 169.254.169.254, the cloud metadata address, among them
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(address, ipaddress.IPv6Address) and (address in _UNIQUE_LOCAL or address.is_site_local):
        return "unique-local"
    if address.is_private:  # RFC 1918, and the documentation and benchmarking ranges
        return "private"
    if address.is_reserved or not address.is_global:  # 240/4, 255.255.255.255, IETF ranges
        return "reserved"
    return None


def local_name(host: str) -> bool:
    """`localhost` and names under it, which resolvers answer with loopback without asking DNS."""
    name = host.strip().rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost") or name == "localhost.localdomain"


@dataclass(frozen=True)
class Allow:
    """Internal targets the operator re-opened (FTSERVE_WEBHOOK_ALLOW): host names, and address ranges."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allow:
        """`10.0.0.0/8`, `127.0.0.1` and `[::1]` are ranges; anything else is a host name."""
        names, networks = set(), []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.rstrip(".").lower())
        return cls(frozenset(names), tuple(networks))

    def name(self, host: str) -> bool:
        return host.strip().rstrip(".").lower() in self.names

    def address(self, address: IPAddress) -> bool:
        return any(candidate in network for candidate in {address, embedded_ipv4(address)} for network in self.networks
                   if candidate.version == network.version)


def host_refusal(host: str, allow: Allow) -> str | None:
    """Why a URL's host, as written, may not be a webhook target; None when it may (names still have to
    resolve to public addresses when a try is made)."""
    if allow.name(host):
        return None
    if local_name(host):
        return "names the local host"
    address = numeric_host(host)
    if address is not None and not allow.address(address) and (kind := internal_kind(address)):
        return f"names a {kind} address"
    return None


def address_refusal(host: str, addresses: Iterable[IPAddress], allow: Allow) -> str | None:
    """Why a host that resolved to `addresses` may not be called; None when every one of them is public or
    allowed. One bad address refuses them all: a name that also points inside the network is not a webhook's."""
    if allow.name(host):
        return None
    for address in addresses:
        if not allow.address(address) and (kind := internal_kind(address)):
            return f"resolves to a {kind} address"
    return None
