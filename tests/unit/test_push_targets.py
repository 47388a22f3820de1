"""Which push URLs may be contacted: public addresses only, unless an operator allows the
host. Literal addresses and /etc/hosts names only: no DNS query leaves the machine."""

from __future__ import annotations

import ipaddress

import pytest

from bindu.server.push_targets import UnsafeTarget, check_target, refusal


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fc00::1]/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://100.64.0.1/hook", "non-public"),
        ("http://0x7f000001/hook", "loopback"),  # hex
        ("http://2130706433/hook", "loopback"),  # decimal
        ("http://017700000001/hook", "loopback"),  # octal
        ("http://127.1/hook", "loopback"),  # short form
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),  # IPv4-mapped
        ("http://[::ffff:169.254.169.254]/hook", "link-local"),
        ("http://[2002:a00:1::]/hook", "private"),  # 6to4 around 10.0.0.1
        ("http://localhost:8080/hook", "loopback"),  # a name that resolves inside
    ],
)
async def test_internal_targets_are_refused(url: str, kind: str) -> None:
    with pytest.raises(UnsafeTarget) as info:
        await check_target(url, frozenset())
    assert kind in info.value.reason and "PUSH__ALLOWED_HOSTS" in info.value.reason
    assert not info.value.retryable


async def test_public_address_is_allowed_and_pinned() -> None:
    target = await check_target("https://93.184.215.14:8443/hook?a=1", frozenset())
    assert target.address == "93.184.215.14"
    assert str(target.pinned()) == "https://93.184.215.14:8443/hook?a=1"


async def test_an_allowed_host_skips_the_check_but_is_still_pinned() -> None:
    target = await check_target("http://LocalHost:9000/hook", frozenset({"localhost"}))
    assert ipaddress.ip_address(target.address).is_loopback
    assert target.host_header == "localhost:9000"
    assert target.pinned().host == target.address
    ipv6 = await check_target("http://[::1]:9000/hook", frozenset({"::1"}))
    assert ipv6.host_header == "[::1]:9000" and ipv6.pinned().host == "::1"


async def test_allowing_one_host_does_not_allow_another_spelling() -> None:
    with pytest.raises(UnsafeTarget):
        await check_target("http://localhost/hook", frozenset({"127.0.0.1"}))


async def test_non_http_schemes_are_refused() -> None:
    with pytest.raises(UnsafeTarget, match="http"):
        await check_target("ftp://93.184.215.14/x", frozenset())


def test_public_addresses_have_no_refusal() -> None:
    for text in ("8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert refusal(ipaddress.ip_address(text)) is None
