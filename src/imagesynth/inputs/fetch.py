"""Fetching a user-supplied URL from the server without becoming a proxy into private networks.

Every TCP connection (the first and each redirect's) goes through a network backend that
resolves the host itself, refuses the connection if any resolved address is not public
(private, loopback, link-local, multicast, reserved, ...), and then connects to the address it
checked, so a DNS answer that changes between the check and the connect (rebinding) can't
slip through. An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-compatible,
IPv4-translated, NAT64, 6to4) is judged by the IPv4 address it reaches; IPv6 ranges whose
destination can't be told from the address (local-use NAT64, Teredo, site-local) are refused.
TLS still verifies the certificate against the original host name. Size and time are capped
while streaming.

URLs must be ASCII, as DashScope asks ("no Chinese characters in the URL"): a path or query
with other characters must be percent-encoded by the caller, and is refused otherwise. The one
exception is an internationalised domain name, which is mapped and encoded as browsers do
(UTS #46, then IDNA 2008 to its `xn--` A-labels): a host that has non-ASCII characters must
come out with at least one A-label, so ASCII or an IP address in disguise (full-width or
circled digits, full-width dots: `１２７．０．０．１`, `①②⑦.0.0.1`) is refused, not mapped.
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
import idna

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


# IPv6 ranges whose low 32 bits are the IPv4 address a connection ends up at.
_LOW_32_BITS_IPV4 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # IPv4-compatible (deprecated, RFC 4291): ::7f00:1 is 127.0.0.1
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT, RFC 2765)
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052): DNS64 hands these out
    )
)
# IPv6 ranges refused whatever they carry: where they lead can't be told from the address.
_NEVER_FETCHED = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): the operator places the IPv4 anywhere
        "2001::/32",  # Teredo: a tunnel whose far end is an obfuscated IPv4 address
        "fec0::/10",  # site-local (deprecated, RFC 3879), still routed to the local site
    )
)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, translated, NAT64,
    6to4), or None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _LOW_32_BITS_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_fetchable(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    if any(ip in net for net in allow):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_fetchable(inner, allow)
        if any(ip in net for net in _NEVER_FETCHED):
            return False
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


def _ascii_host(host: str) -> str:
    """An internationalised host name as its A-labels; anything else non-ASCII is refused."""
    try:
        encoded = idna.encode(host, uts46=True, std3_rules=True).decode("ascii")
    except idna.IDNAError:
        raise InvalidURL("The URL's host is not a valid internationalised domain name.") from None
    if not any(label.startswith("xn--") for label in encoded.split(".")):
        # Only ASCII after mapping: an ASCII name or an IP address written in look-alikes.
        raise InvalidURL("Write the URL's host in ASCII (it maps to an ASCII host name).")
    return encoded


def checked_url(url: str) -> str:
    """The URL as it is requested: http(s), no credentials, ASCII (an IDN host encoded)."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidURL("The URL contains spaces or control characters; percent-encode them.")
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidURL(f"The URL is malformed: {url[:200]!r}.") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise InvalidURL(f"Only http(s) URLs can be fetched; got {url[:200]!r}.")
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidURL("URLs with credentials are not fetched.")
    rest = parts._replace(scheme="", netloc="").geturl()
    if not rest.isascii():
        raise InvalidURL(
            "The URL's path or query has non-ASCII characters; percent-encode them "
            "(e.g. %E7%8C%AB for 猫)."
        )
    if hostname.isascii():
        return url
    host = _ascii_host(hostname)
    netloc = host if port is None else f"{host}:{port}"
    return parts._replace(netloc=netloc).geturl()


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """GET url (following up to MAX_REDIRECTS redirects, each checked) and return the body."""
    deadline = time.monotonic() + policy.timeout_seconds
    with httpcore.ConnectionPool(network_backend=_GuardedBackend(policy.allow)) as pool:
        for _ in range(MAX_REDIRECTS + 1):
            url = checked_url(url)
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


def check_public_url(url: str, allow: Sequence[IPNetwork] = ()) -> str:
    """The URL as it will be requested (checked_url), refused with InvalidURL unless every
    address its host resolves to may be reached now: a submission's callback URL, checked up
    front; the connection checks again (post), since DNS may answer differently later."""
    url = checked_url(url)
    parts = urlsplit(url)
    assert parts.hostname is not None  # checked_url refuses a URL without a host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    blocked = [ip for ip in resolve(parts.hostname, port) if not is_fetchable(ip, allow)]
    if blocked:
        raise BlockedAddress(
            f"The host {parts.hostname!r} resolves to a non-public address ({blocked[0]}): "
            "the service does not call private networks."
        )
    return url


def post(
    url: str, body: bytes, headers: Sequence[tuple[str, str]], policy: FetchPolicy
) -> tuple[int, bytes]:
    """POST body to url through the same guarded connections as fetch(); returns the status
    and at most policy.max_bytes of the answer. Redirects are not followed (a webhook
    receiver answers where it was registered); the whole call ends within the timeout.

    Raises InvalidURL (a refused address or URL) or FileDownloadFailed (no answer)."""
    url = checked_url(url)
    deadline = time.monotonic() + policy.timeout_seconds
    timeouts = dict.fromkeys(("connect", "read", "write", "pool"), policy.timeout_seconds)
    sent = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    with httpcore.ConnectionPool(network_backend=_GuardedBackend(policy.allow)) as pool:
        try:
            with pool.stream(
                "POST", url, headers=sent, content=body, extensions={"timeout": timeouts}
            ) as response:
                answer = bytearray()
                for chunk in response.iter_stream():
                    answer += chunk
                    if len(answer) >= policy.max_bytes or time.monotonic() > deadline:
                        break
                return response.status, bytes(answer[: policy.max_bytes])
        except httpcore.TimeoutException:
            raise FileDownloadFailed(f"No answer within {policy.timeout_seconds:g} s.") from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise FileDownloadFailed(f"The request failed: {exc or type(exc).__name__}") from None
        except httpcore.UnsupportedProtocol:
            raise InvalidURL("Only http(s) URLs can be called.") from None
