"""Outbound connections to addresses users name (image fetches, webhooks): resolved once and
refused inside the network (private, loopback, link-local, multicast, reserved) unless an
operator's allow-list covers the address; then connected to that very address (pinned), so a
name that resolves elsewhere a moment later is no way in."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlparse

__all__ = ["PrivateAddress", "is_inside", "pinned_url", "public_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PrivateAddress(ValueError):
    """The host resolves to an address inside the network, or (`unresolved`) cannot be resolved."""

    def __init__(self, message: str, unresolved: bool = False) -> None:
        super().__init__(message)
        self.unresolved = unresolved


def is_inside(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address no user-named connection may reach by default."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified)


def public_address(host: str, port: int, allowed: Iterable[str] = ()) -> str:
    """The address to connect to for `host`: every address it resolves to must be public or
    inside one of the `allowed` networks (CIDR strings), else PrivateAddress."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise PrivateAddress("cannot resolve the host", unresolved=True) from None
    networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allowed]
    if not infos:
        raise PrivateAddress("cannot resolve the host", unresolved=True)
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if is_inside(addr) and not any(addr in n for n in networks):
            raise PrivateAddress(f"the host resolves to a private address ({addr})")
    return str(infos[0][4][0])


def pinned_url(url: str, allowed: Iterable[str] = ()) -> tuple[str, str, str]:
    """(the URL with its host replaced by the checked address, the `Host` header, the TLS server
    name) for an http(s) URL; PrivateAddress as `public_address`."""
    parts = urlparse(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise PrivateAddress("not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip = public_address(host, port, allowed)
    netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return parts._replace(netloc=netloc).geturl(), parts.netloc.rsplit("@", 1)[-1], host
