"""Who is calling, for the paywall's per-client rate limit.

The socket peer, unless that peer is a proxy the operator listed
(``X402__RATE_LIMIT__TRUSTED_PROXIES``): then X-Forwarded-For is read from the right, past
the trusted hops, and the first address no listed proxy vouches for is the client. Anything
left of that is the caller's own claim and never believed. uvicorn's own proxy-header
rewriting is off (``proxy_headers=False``) so this is the only rule.

IPv6 clients are keyed by their prefix (``X402__RATE_LIMIT__IPV6_PREFIX``, a /64 by default):
one host usually holds a whole /64 and could otherwise take a fresh bucket per address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from bindu.settings import IpNetwork

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The key when the transport gives no peer address (e.g. a Unix socket): one shared bucket.
UNKNOWN = "unknown"


def client_key(
    peer: str | None,
    forwarded_for: str | None,
    trusted: Sequence[IpNetwork],
    ipv6_prefix: int,
) -> str:
    """The rate-limit key of a request from socket peer ``peer``."""
    address = _parse(peer)
    if address is None:
        return UNKNOWN
    if forwarded_for and _trusted(address, trusted):
        for hop in reversed(forwarded_for.split(",")):
            claimed = _parse(hop.strip())
            if claimed is None:
                break  # garbage from the left: the last trusted hop is all we know
            address = claimed
            if not _trusted(claimed, trusted):
                break
    return _key(address, ipv6_prefix)


def _parse(text: str | None) -> IpAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IpAddress, trusted: Sequence[IpNetwork]) -> bool:
    return any(address in network for network in trusted)


def _key(address: IpAddress, ipv6_prefix: int) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, ipv6_prefix), strict=False)
        return str(network)
    return str(address)
