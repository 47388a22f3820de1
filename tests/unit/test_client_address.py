"""Which address a request is limited under: the socket peer unless a trusted proxy vouches."""

from __future__ import annotations

import ipaddress

import pytest

from bindu.server.client_address import UNKNOWN, client_key

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "key"),
    [
        ("203.0.113.7", None, [], "203.0.113.7"),
        # Secure by default: no proxy is trusted, so the header is the caller's own claim.
        ("203.0.113.7", "198.51.100.1", [], "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", PROXIES, "203.0.113.7"),  # the peer is not a proxy
        ("10.1.2.3", "198.51.100.1", PROXIES, "198.51.100.1"),
        # Left of the first untrusted hop is whatever the client wrote: ignored.
        ("10.1.2.3", "1.1.1.1, 198.51.100.1", PROXIES, "198.51.100.1"),
        ("10.1.2.3", "1.1.1.1, 198.51.100.1, 10.9.9.9", PROXIES, "198.51.100.1"),
        ("10.1.2.3", "10.4.4.4, 10.9.9.9", PROXIES, "10.4.4.4"),  # all hops trusted
        ("10.1.2.3", "198.51.100.1, garbage", PROXIES, "10.1.2.3"),
        ("10.1.2.3", "", PROXIES, "10.1.2.3"),
        ("10.1.2.3", None, PROXIES, "10.1.2.3"),
        ("fd00::1", "2001:db8:1:2:3:4:5:6", PROXIES, "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", None, [], "203.0.113.7"),
        ("2001:db8:1:2::5", None, [], "2001:db8:1:2::/64"),
        (None, "198.51.100.1", PROXIES, UNKNOWN),
        ("not-an-ip", None, [], UNKNOWN),
    ],
)
def test_client_key(peer, forwarded, trusted, key):
    assert client_key(peer, forwarded, trusted, 64) == key


def test_one_ipv6_host_cannot_take_a_bucket_per_address():
    keys = {client_key(f"2001:db8::{n:x}", None, [], 64) for n in range(1, 100)}
    assert keys == {"2001:db8::/64"}
    assert client_key("2001:db8::1", None, [], 128) == "2001:db8::1/128"
