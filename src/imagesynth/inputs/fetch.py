"""Fetching a user-supplied URL from the server without becoming a proxy into private networks.

Every TCP connection (the first and each redirect's) goes through a network backend that
resolves the host itself, refuses the connection if any resolved address is not public
(private, loopback, link-local, multicast, reserved, ...), and then connects to the address it
checked, so a DNS answer that changes between the check and the connect (rebinding) can't
slip through. TLS still verifies the certificate against the original host name. Size and time
are capped while streaming.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore

from imagesynth.errors import FileDownloadFailed, InputTooLarge, InvalidURL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}


class BlockedAddress(InvalidURL):
    """The URL's host resolves to an address the service does not fetch from."""


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """'127.0.0.0/8, 10.1.0.0/16' -> networks (for Settings.fetch_allow_networks)."""
    return tuple(
        ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()
    )


def is_fetchable(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allow):
        return True
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidURL(f"The host {host!r} could not be resolved.") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._allow = allow
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        blocked = [ip for ip in addresses if not is_fetchable(ip, self._allow)]
        if blocked:
            raise BlockedAddress(
                f"The host {host!r} resolves to a non-public address ({blocked[0]}): "
                "the service does not fetch from private networks."
            )
        error: Exception | None = None
        for ip in addresses:
            try:
                return self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise InvalidURL("Unix sockets are not fetched.")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_seconds: float
    allow: tuple[IPNetwork, ...] = ()


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(f"Only http(s) URLs can be fetched; got {url[:200]!r}.")
    if parts.username or parts.password:
        raise InvalidURL("URLs with credentials are not fetched.")


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """GET url (following up to MAX_REDIRECTS redirects, each checked) and return the body."""
    deadline = time.monotonic() + policy.timeout_seconds
    with httpcore.ConnectionPool(network_backend=_GuardedBackend(policy.allow)) as pool:
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(url)
            remaining = max(deadline - time.monotonic(), 0.001)
            timeouts = {
                "connect": remaining,
                "read": remaining,
                "write": remaining,
                "pool": remaining,
            }
            try:
                with pool.stream(
                    "GET",
                    url,
                    headers=[(b"User-Agent", b"imagesynth"), (b"Accept", b"image/*")],
                    extensions={"timeout": timeouts},
                ) as response:
                    if response.status in _REDIRECTS:
                        location = next(
                            (v for k, v in response.headers if k.lower() == b"location"), None
                        )
                        if not location:
                            raise FileDownloadFailed("A redirect without a Location header.")
                        url = urljoin(url, location.decode("latin-1"))
                        continue
                    if response.status != 200:
                        raise FileDownloadFailed(
                            f"Downloading the input file failed: HTTP {response.status}."
                        )
                    return _read_capped(response, policy, deadline)
            except httpcore.TimeoutException:
                raise FileDownloadFailed(
                    f"Downloading the input file took over {policy.timeout_seconds:g} s."
                ) from None
            except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
                raise FileDownloadFailed(f"Downloading the input file failed: {exc}") from None
            except httpcore.UnsupportedProtocol:
                raise InvalidURL("Only http(s) URLs can be fetched.") from None
    raise FileDownloadFailed(f"More than {MAX_REDIRECTS} redirects.")


def _read_capped(response: httpcore.Response, policy: FetchPolicy, deadline: float) -> bytes:
    too_large = InputTooLarge(
        f"The input file is larger than {policy.max_bytes // (1024 * 1024)} MB."
    )
    for name, value in response.headers:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > policy.max_bytes:
            raise too_large
    body = bytearray()
    for chunk in response.iter_stream():
        body += chunk
        if len(body) > policy.max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise FileDownloadFailed(
                f"Downloading the input file took over {policy.timeout_seconds:g} s."
            )
    return bytes(body)
