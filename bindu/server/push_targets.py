"""Where a push notification may go: never inside (SSRF).

A client names the URL, so its host is resolved and every address it resolves to must be
a public one: loopback, private, link-local, multicast, reserved and unspecified
addresses are refused (IPv4 and IPv6, IPv4-mapped and embedded forms; hex, decimal and
octal IPv4 spellings are normalised by the URL parser and the resolver before the
check). Hosts an operator lists in ``PUSH__ALLOWED_HOSTS`` skip the check. The check runs
when a config is set and again at each delivery, and the delivery connects to the very
address checked, so a name that re-resolves elsewhere (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass

import httpx

# How long resolving a push host may take (seconds).
RESOLVE_TIMEOUT_SECONDS = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(Exception):
    """The URL may not be pushed to; the message says why, for the client."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable  # a resolver failure, not a verdict on the host


@dataclass(frozen=True)
class Target:
    url: httpx.URL  # as the client gave it (normalised)
    address: str  # the checked address to connect to

    def pinned(self) -> httpx.URL:
        """The URL with its host replaced by the checked address."""
        return self.url.copy_with(host=self.address)

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}.get(self.url.scheme)
        port = self.url.port
        host = self.url.raw_host.decode("ascii")
        if ":" in host:
            host = f"[{host}]"
        return host if port in (None, default) else f"{host}:{port}"


def normalise_host(host: str) -> str:
    """The form hosts are compared in: lower case, no IPv6 brackets, no trailing dot."""
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def refusal(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is ("a loopback address"); None if
    a client's push may reach it."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            why = refusal(embedded)
            return f"{why} ({embedded} inside)" if why else None
    checks = (
        (address.is_unspecified, "an unspecified"),
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (address.is_multicast, "a multicast"),
        (address.is_reserved, "a reserved"),
        (address.is_private, "a private"),
        (not address.is_global, "a non-public"),
    )
    for hit, kind in checks:
        if hit:
            return f"{kind} address"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError) as exc:
        raise UnsafeTarget(f"cannot resolve {host}: {exc or 'timed out'}", retryable=True) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a zone ("fe80::1%eth0"): the zone is not the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeTarget(f"{host} resolves to no address", retryable=True)
    return addresses


async def check_target(url: str | httpx.URL, allowed_hosts: Collection[str]) -> Target:
    """The address to connect to for ``url``, or UnsafeTarget saying why not."""
    parsed = httpx.URL(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeTarget("push URLs must be http(s) with a host")
    host = normalise_host(parsed.host)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(host, port)
    if host not in allowed_hosts:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                what = host if host == str(address) else f"{host} resolves to {address}, which"
                raise UnsafeTarget(
                    f"{what} is {why}; push notifications may not reach internal addresses "
                    "(an operator can allow a host with PUSH__ALLOWED_HOSTS)"
                )
    return Target(parsed, str(addresses[0]))
