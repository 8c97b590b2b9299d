"""Where webhooks may go: http(s) URLs whose addresses are public, unless settings allow
more. Checked at submission (the URL's shape, literal addresses) and again at each
delivery against every address the name resolves to, which is the address then used."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import httpx

from raypipe.config import Settings
from raypipe.exceptions import InvalidInput

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(Exception):
    """The destination may not be reached from here (a permanent delivery failure)."""


class DestinationUnresolved(Exception):
    """The destination's name does not resolve now (DNS may come back: retried)."""


def refusal(address: Address, allowed: Sequence[str]) -> str | None:
    """Why ``address`` is off limits, or None when a webhook may reach it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in ipaddress.ip_network(net, strict=False) for net in allowed):
        return None
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    return None


def check_url(url: str, settings: Settings, loc: Sequence[str | int] = ("webhook_url",)) -> str:
    """The URL if its shape and any literal address are acceptable; else a located 422."""

    def invalid(problem: str) -> InvalidInput:
        where = ".".join(str(part) for part in loc)
        return InvalidInput(f"{where}: {problem}", details=[{"loc": list(loc), "msg": problem}])

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise invalid(f"not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise invalid("must be an absolute http:// or https:// URL")
    if parsed.userinfo:
        raise invalid("must not carry credentials")
    address = _literal(parsed.host)
    if address is not None:
        why = refusal(address, settings.webhook_allow_networks)
        if why:
            raise invalid(f"refused: {why} (see RAYPIPE_WEBHOOK_ALLOW_NETWORKS)")
    return url


def resolve(url: str, settings: Settings) -> list[Address]:
    """Every address the URL's host names, each allowed; :class:`DestinationRefused` if any
    is not (a name must not lead somewhere private by one of its answers),
    :class:`DestinationUnresolved` if the name does not resolve."""
    parsed = httpx.URL(url)
    literal = _literal(parsed.host)
    if literal is not None:
        found = [literal]
    else:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DestinationUnresolved(f"cannot resolve {parsed.host}: {exc}") from None
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    for address in found:
        why = refusal(address, settings.webhook_allow_networks)
        if why:
            raise DestinationRefused(f"refused {parsed.host}: {why}")
    return found


def _literal(host: str) -> Address | None:
    """The address a host names without DNS: an IP literal, or localhost."""
    if host == "localhost" or host.endswith(".localhost"):
        return ipaddress.ip_address("127.0.0.1")
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
