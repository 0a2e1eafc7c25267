"""Outbound connections to addresses users name (image fetches, webhooks): resolved once and
refused inside the network (private, loopback, link-local, multicast, reserved, shared (CGNAT),
IPv6 site-local, 6to4, and NAT64 of any of those) unless an operator's allow-list covers the
address; then connected to that very address (pinned), so a name that resolves elsewhere a
moment later is no way in. A refusal never names the addresses a name resolved to (they are
the network's, not the user's, to know)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import SplitResult, urlsplit

__all__ = ["PrivateAddress", "check_webhook_url", "is_inside", "pinned_url", "pinned_url_async", "public_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Inside, though Python's flags let them pass.
_ALSO_INSIDE: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "100.64.0.0/10",  # shared address space (carrier-grade NAT): a provider's inside
    "192.0.0.0/24",  # IETF protocol assignments (Python calls some of it global)
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "fec0::/10",  # IPv6 site-local (deprecated, still routed inside some networks)
    "2002::/16",  # 6to4: any IPv4 in it, via relays that are deprecated (RFC 7526)
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64: judged by the IPv4 it embeds
# Name lookups of the async checks: a pool of their own, so that slow DNS (a name whose servers
# drip) holds neither the event loop's default executor (asyncio.to_thread, loop.getaddrinfo)
# nor more than this many threads; each lookup is also bounded by its caller's timeout.
_DNS_THREADS = 8
_dns = ThreadPoolExecutor(max_workers=_DNS_THREADS, thread_name_prefix="dash-dns")  # webhook sends
# Submit-time checks have a pool of their own: names that never answer, submitted by one user,
# cannot hold the threads that deliver everyone's webhooks (and the gateway caps each user's
# lookups in flight).
_dns_submit = ThreadPoolExecutor(max_workers=_DNS_THREADS, thread_name_prefix="dash-dns-submit")


class PrivateAddress(ValueError):
    """The URL is not one to connect to: its host resolves to an address inside the network,
    or (`unresolved`) cannot be resolved now, or the URL is malformed."""

    def __init__(self, message: str, unresolved: bool = False) -> None:
        super().__init__(message)
        self.unresolved = unresolved


def _unwrap(addr: Address) -> Address:
    """The IPv4 address an IPv4-mapped or well-known-NAT64 IPv6 address reaches, else `addr`."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def is_inside(addr: Address) -> bool:
    """True for an address no user-named connection may reach by default."""
    addr = _unwrap(addr)
    if any(addr.version == n.version and addr in n for n in _ALSO_INSIDE):
        return True
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified or not addr.is_global)


def _checked(infos: Sequence[Any], allowed: Iterable[str]) -> str:
    """The address to connect to among getaddrinfo's `infos`: every one must be public or inside
    one of the `allowed` networks (CIDR strings), else PrivateAddress."""
    if not infos:
        raise PrivateAddress("cannot resolve the host", unresolved=True)
    networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allowed]
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        seen = {addr, addr.ipv4_mapped} if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped else {addr}
        if is_inside(addr) and not any(a.version == n.version and a in n for a in seen for n in networks):
            raise PrivateAddress("the host resolves to a private address")  # which one is not said
    return str(infos[0][4][0])


def public_address(host: str, port: int, allowed: Iterable[str] = ()) -> str:
    """The address to connect to for `host`: every address it resolves to must be public or
    inside one of the `allowed` networks (CIDR strings), else PrivateAddress."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise PrivateAddress("cannot resolve the host", unresolved=True) from None
    return _checked(infos, allowed)


def _parse(url: str) -> tuple[SplitResult, str, int]:
    """(the URL's parts, its host, its port) for an http(s) URL, else PrivateAddress."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port out of range or not a number, a bracket left open
        raise PrivateAddress("not a valid URL (its port must be 1-65535)") from None
    if parts.scheme not in ("http", "https") or not host:
        raise PrivateAddress("not an http(s) URL")
    if parts.port == 0:
        raise PrivateAddress("not a valid URL (its port must be 1-65535)")
    return parts, host, port


def _pinned(parts: SplitResult, host: str, port: int, ip: str) -> tuple[str, str, str]:
    netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return parts._replace(netloc=netloc).geturl(), parts.netloc.rsplit("@", 1)[-1], host


def pinned_url(url: str, allowed: Iterable[str] = ()) -> tuple[str, str, str]:
    """(the URL with its host replaced by the checked address, the `Host` header, the TLS server
    name) for an http(s) URL; PrivateAddress as `public_address`, or for a malformed URL."""
    parts, host, port = _parse(url)
    return _pinned(parts, host, port, public_address(host, port, allowed))


async def pinned_url_async(url: str, allowed: Iterable[str] = (), timeout_s: float = 5.0, *,
                           pool: ThreadPoolExecutor | None = None) -> tuple[str, str, str]:
    """`pinned_url` for an event loop: the name is looked up on the guard's own small pool of
    threads (`pool`, else the senders'), within `timeout_s` (else PrivateAddress, `unresolved`)."""
    parts, host, port = _parse(url)
    try:
        ipaddress.ip_address(host)
        infos: Sequence[Any] = [(0, 0, 0, "", (host, port))]  # a literal: nothing to look up
    except ValueError:
        lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(pool or _dns, lookup),
                                           timeout_s)
        except asyncio.TimeoutError:  # before OSError: TimeoutError is one from Python 3.11
            raise PrivateAddress("cannot resolve the host in time", unresolved=True) from None
        except (OSError, UnicodeError):
            raise PrivateAddress("cannot resolve the host", unresolved=True) from None
    return _pinned(parts, host, port, _checked(infos, allowed))


async def check_webhook_url(url: str, allowed_networks: Iterable[str], timeout_s: float = 5.0) -> None:
    """Raise PrivateAddress unless a webhook may be sent to `url` now (DASH_WEBHOOK_ALLOWED_NETWORKS
    as `allowed_networks`); the name is looked up within `timeout_s`, on the submit checks' own pool."""
    await pinned_url_async(url, allowed_networks, timeout_s, pool=_dns_submit)
