"""The SSRF guard of user-named connections (image fetches, webhooks), on address literals (no DNS)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from dash_ray.services.netguard import (
    PrivateAddress,
    check_webhook_url,
    is_inside,
    pinned_url,
    public_address,
)

INSIDE = ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
          "100.64.0.1", "100.127.255.254", "192.0.0.8", "198.18.0.1", "240.0.0.1", "255.255.255.255",
          "::1", "::", "fe80::1", "fc00::1", "fd12::1", "fec0::1", "feff::1", "ff02::1", "::ffff:127.0.0.1",
          "::ffff:100.64.0.1", "2002:7f00:1::1", "2002:a00:1::1", "2002:808:808::1", "64:ff9b::7f00:1",
          "64:ff9b::a9fe:a9fe", "64:ff9b:1::7f00:1", "2001:db8::1", "2001::1", "192.88.99.1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::1", "64:ff9b::808:808",
          "::ffff:8.8.8.8"]


@pytest.mark.parametrize("addr", INSIDE)
def test_inside_the_network(addr: str) -> None:
    assert is_inside(ipaddress.ip_address(addr))
    with pytest.raises(PrivateAddress) as info:
        public_address(addr, 80)
    assert addr not in str(info.value) and not info.value.unresolved  # no address is named


@pytest.mark.parametrize("addr", PUBLIC)
def test_public(addr: str) -> None:
    assert not is_inside(ipaddress.ip_address(addr))
    assert public_address(addr, 80) == addr


def test_allowed_networks_open_only_what_they_cover() -> None:
    assert public_address("127.0.0.1", 80, ["127.0.0.0/8"]) == "127.0.0.1"
    assert public_address("::ffff:127.0.0.1", 80, ["127.0.0.0/8"]) == "::ffff:127.0.0.1"
    assert public_address("100.64.0.1", 80, ["100.64.0.0/10"]) == "100.64.0.1"
    with pytest.raises(PrivateAddress):
        public_address("10.0.0.1", 80, ["127.0.0.0/8"])


def test_bad_urls_are_refusals_not_crashes() -> None:
    for url in ("http://example.com:99999/x", "http://example.com:0/x", "http://[::1/x", "ftp://example.com/",
                "http:///x", "http://example.com:http/x"):
        with pytest.raises(PrivateAddress) as info:
            pinned_url(url)
        assert not info.value.unresolved, url
    assert pinned_url("http://8.8.8.8:8080/x?y=1") == ("http://8.8.8.8:8080/x?y=1", "8.8.8.8:8080", "8.8.8.8")
    assert pinned_url("https://[2606:4700:4700::1111]/x")[0] == "https://[2606:4700:4700::1111]:443/x"


def test_the_async_check_refuses_and_allows_the_same() -> None:
    async def go() -> None:
        await check_webhook_url("http://127.0.0.1:9/hook", ["127.0.0.0/8"])
        await check_webhook_url("http://8.8.8.8/hook", [])
        for url in ("http://127.0.0.1:9/hook", "http://[fec0::1]/hook", "http://example.com:99999/hook"):
            with pytest.raises(PrivateAddress):
                await check_webhook_url(url, [])
        with pytest.raises(PrivateAddress) as info:
            await check_webhook_url("http://localhost/hook", [])
        assert "127.0.0.1" not in str(info.value)

    asyncio.run(go())
