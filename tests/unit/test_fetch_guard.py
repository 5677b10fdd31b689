"""The reference-image fetcher's guard: IPv6 spellings of IPv4 addresses, and URLs that are not
ASCII, are refused before any connection is made (inputs/fetch.py)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from imagesynth.errors import FileDownloadFailed, InvalidURL
from imagesynth.inputs import fetch as fetch_module
from imagesynth.inputs.fetch import FetchPolicy, embedded_ipv4, fetch, is_fetchable

POLICY = FetchPolicy(max_bytes=1 << 20, timeout_seconds=2.0)

# Each routes to loopback or private space although Python's ipaddress calls most "global".
EMBEDDING_PRIVATE = [
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::127.0.0.1",
    "::a00:1",  # IPv4-compatible 10.0.0.1
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
    "64:ff9b::7f00:1",  # NAT64 well-known prefix, 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 169.254.169.254 (cloud metadata)
    "64:ff9b:1::7f00:1",  # local-use NAT64
    "64:ff9b:1:ffff::808:808",  # local-use NAT64, whatever it seems to carry
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fec0::1",  # site-local
    "feff::1",
]
# The same mechanisms carrying a public IPv4 address reach the public internet: fetched.
EMBEDDING_PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
def test_ipv6_forms_of_private_addresses_are_refused(address: str) -> None:
    assert not is_fetchable(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", EMBEDDING_PUBLIC)
def test_ipv6_forms_of_public_addresses_are_judged_by_their_ipv4(address: str) -> None:
    ip = ipaddress.IPv6Address(address)
    assert embedded_ipv4(ip) == ipaddress.IPv4Address("8.8.8.8")
    assert is_fetchable(ip)


def test_allowed_networks_apply_to_the_embedded_ipv4() -> None:
    allow = (ipaddress.ip_network("127.0.0.2/32"),)
    assert is_fetchable(ipaddress.ip_address("::ffff:127.0.0.2"), allow)
    assert is_fetchable(ipaddress.ip_address("64:ff9b::7f00:2"), allow)
    assert not is_fetchable(ipaddress.ip_address("64:ff9b::7f00:1"), allow)


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts: it must see none."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every outgoing connection the fetcher's transport attempts."""
    attempts: list[Any] = []
    real = socket.create_connection

    def recording(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    return attempts


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
def test_fetch_refuses_embedded_ipv4_without_connecting(
    address: str, listener: Listener, connects: list[Any]
) -> None:
    with pytest.raises(InvalidURL):
        fetch(f"http://[{address}]:{listener.port}/ref.png", POLICY)
    assert connects == []
    assert listener.accepted == 0


def test_the_guard_sees_connections_at_all(listener: Listener, connects: list[Any]) -> None:
    # Positive control: with loopback allowed, the same listener and recorder see the fetch.
    allowed = FetchPolicy(1 << 20, 2.0, allow=(ipaddress.ip_network("127.0.0.1/32"),))
    with pytest.raises(FileDownloadFailed):  # the listener hangs up at once
        fetch(f"http://[::ffff:127.0.0.1]:{listener.port}/ref.png", allowed)
    assert connects and listener.accepted == 1


NON_ASCII = [
    "http://127.0.0.1:{port}/猫.png",
    "http://127.0.0.1:{port}/ref.png?name=猫",
    "http://１２７．０．０．１:{port}/ref.png",  # full-width digits and dots
    "http://①②⑦.0.0.1:{port}/ref.png",  # circled digits
    "http://127。0。0。1:{port}/ref.png",  # ideographic full stops
    "http://ｌｏｃａｌｈｏｓｔ:{port}/ref.png",  # full-width letters
    "http://127.0.0.1:{port}/a b.png",
    "http://127.0.0.1:{port}/ref.png\r\nHost: evil",
    "http://xn--zz.example:{port}/ref.png\u200b",
    "http://a_b..example:{port}/",
]


@pytest.mark.parametrize("template", NON_ASCII)
def test_non_ascii_urls_are_invalid_without_connecting(
    template: str, listener: Listener, connects: list[Any]
) -> None:
    with pytest.raises(InvalidURL):
        fetch(template.format(port=listener.port), POLICY)
    assert connects == []
    assert listener.accepted == 0


def test_idn_hosts_are_resolved_by_their_a_labels(
    monkeypatch: pytest.MonkeyPatch, connects: list[Any]
) -> None:
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(fetch_module.socket, "getaddrinfo", getaddrinfo)
    for url in ("http://例え.jp/ref.png", "http://MÜNCHEN.de:8080/ref.png"):
        with pytest.raises(fetch_module.BlockedAddress):  # ... and then guarded like any host
            fetch(url, POLICY)
    assert asked == ["xn--r8jz45g.jp", "xn--mnchen-3ya.de"]
    assert connects == []
