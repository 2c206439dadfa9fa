"""Where webhooks may go: every spelling of an internal address is recognised as one, public addresses and names
pass, and the operator's allowlist re-opens exactly what it names."""

from __future__ import annotations

import ipaddress

import pytest

from ftserve.domain.errors import InvalidRequest
from ftserve.domain.webhook_targets import Allow, address_refusal, host_refusal, numeric_host
from ftserve.services.webhook_targets import target

REFUSED_HOSTS = {
    # loopback, in every spelling a resolver takes as an address
    "127.0.0.1": "loopback", "127.1": "loopback", "2130706433": "loopback", "0x7f000001": "loopback",
    "0x7f.1": "loopback", "0x7F.0.0.1": "loopback", "0177.0.0.1": "loopback", "017700000001": "loopback",
    "127.0.0.1.": "loopback", "127.255.255.254": "loopback",
    "::1": "loopback", "0:0:0:0:0:0:0:1": "loopback", "::ffff:127.0.0.1": "loopback", "::ffff:7f00:1": "loopback",
    "64:ff9b::7f00:1": "loopback", "2002:7f00:1::": "loopback",
    # the cloud metadata addresses
    "169.254.169.254": "link-local", "0xa9fea9fe": "link-local", "2852039166": "link-local",
    "fd00:ec2::254": "unique-local", "fe80::1": "link-local", "fe80::1%eth0": "link-local",
    # private, shared and unique-local networks
    "10.0.0.1": "private", "10.1": "private", "172.16.0.1": "private", "192.168.1.1": "private",
    "0xc0.0xa8.1.1": "private", "100.64.0.1": "shared (carrier-grade NAT)", "fc00::1": "unique-local",
    "::ffff:10.0.0.1": "private", "fec0::1": "unique-local",
    # nowhere, everywhere, and the ranges no one may use
    "0.0.0.0": "unspecified", "0": "unspecified", "::": "unspecified", "224.0.0.1": "multicast",
    "ff02::1": "multicast", "255.255.255.255": "private", "240.0.0.1": "private", "192.0.2.1": "private",
}


@pytest.mark.parametrize("host, kind", REFUSED_HOSTS.items())
def test_every_spelling_of_an_internal_address_is_refused(host: str, kind: str) -> None:
    assert host_refusal(host, Allow()) == f"names a {kind} address"


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "api.localhost", "a.b.localhost.",
                                  "localhost.localdomain"])
def test_local_host_names_are_refused_without_a_lookup(host: str) -> None:
    assert host_refusal(host, Allow()) == "names the local host"


@pytest.mark.parametrize("host", ["example.com", "hooks.example.com.", "93.184.216.34", "8.8.8.8", "2606:4700::1111",
                                  "1.1.1.1", "127.example.com", "0x7f.example", "localhost.example.com"])
def test_public_addresses_and_names_pass(host: str) -> None:
    assert host_refusal(host, Allow()) is None


@pytest.mark.parametrize("host, address", [("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
                                           ("0177.0.0.01", "127.0.0.1"), ("10.1.2", "10.1.0.2"), ("[::1]", "::1"),
                                           ("example.com", None), ("1.2.3.4.5", None), ("08.0.0.1", None),
                                           ("256.0.0.1", None), ("1.2.65536", None), ("", None)])
def test_numeric_hosts_are_read_as_resolvers_read_them(host: str, address: str | None) -> None:
    assert numeric_host(host) == (ipaddress.ip_address(address) if address else None)


def test_the_allowlist_reopens_what_it_names_and_nothing_else() -> None:
    allow = Allow.parse(["127.0.0.1", "10.0.0.0/8", "Hooks.Internal.", "[::1]"])
    assert host_refusal("127.0.0.1", allow) is None and host_refusal("0x7f.1", allow) is None
    assert host_refusal("::ffff:127.0.0.1", allow) is None and host_refusal("::1", allow) is None
    assert host_refusal("10.9.8.7", allow) is None
    assert host_refusal("127.0.0.2", allow) == "names a loopback address"
    assert host_refusal("169.254.169.254", allow) == "names a link-local address"
    assert host_refusal("localhost", allow) == "names the local host"  # a name is allowed by its name
    loopback = [ipaddress.ip_address("127.0.0.1")]
    assert address_refusal("hooks.internal", [ipaddress.ip_address("192.168.0.9")], allow) is None
    assert address_refusal("other.internal", [ipaddress.ip_address("192.168.0.9")], allow) == \
        "resolves to a private address"
    assert address_refusal("anything.example", loopback, allow) is None


def test_a_name_with_one_internal_address_among_public_ones_is_refused() -> None:
    addresses = [ipaddress.ip_address(a) for a in ("93.184.216.34", "10.0.0.5")]
    assert address_refusal("mixed.example", addresses, Allow()) == "resolves to a private address"
    assert address_refusal("public.example", addresses[:1], Allow()) is None


@pytest.mark.parametrize("url, says", [
    ("http://user:pass@example.com/", "user name or password"),
    ("https://token@example.com/", "user name or password"),
    ("http://a\\@127.0.0.1/", "user name or password"),
    ("ftp://example.com/", "http:// or https://"),
    ("http:///path", "http:// or https://"),
    ("http://[::1/", "http:// or https://"),
    ("http://hooks..example/", "http:// or https://"),
    (f"http://{'a' * 64}.example/", "http:// or https://"),
    ("http://[::ffff:127.0.0.1]:8080/", "loopback"),
    ("http://0x7f.1/hook", "loopback"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://LocalHost.:80/", "local host"),
])
def test_urls_are_refused_naming_the_reason(url: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        target(url, Allow())
    assert refused.value.param == "url" and says in refused.value.message


def test_a_url_keeps_its_name_and_gets_its_port() -> None:
    found = target("https://Bücher.example/hook?x=1", Allow())
    assert (found.host, found.port) == ("xn--bcher-kva.example", 443)
