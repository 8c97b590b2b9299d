"""The one door for requests raypipe makes on a user's behalf: job input URLs, webhooks.

Any tenant can name a URL, so a URL is a way into the cluster's network. The rule: an
absolute http(s) URL without credentials whose host is an IP address or a valid (IDNA)
name; the name is resolved once, every address it gives must be globally routable (or
in the allow-list of the request's :class:`Purpose`), IPv4 addresses embedded in IPv6
forms included, and the request goes to a checked address (no second lookup that DNS
rebinding could answer differently) with the URL's name in ``Host``, SNI and the
certificate check. A name whose answers are split between allowed and refused addresses
is refused: trying only the allowed ones would still let one answer steer the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from enum import Enum

import httpx
import idna

from raypipe import tracing
from raypipe.config import Settings
from raypipe.exceptions import OutboundRefused, OutboundUnresolved, PermanentError, RetryableError
from raypipe.retry import RETRYABLE_HTTP_STATUSES, parse_retry_after

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
#: A last label like this makes resolvers read the name as an address (``2130706433``,
#: ``0x7f.1``): refused, the address must be written as one.
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")


# -- the rule --------------------------------------------------------------------------


class Purpose(Enum):
    """What a request is for. Each purpose has its own allow-list, so opening a network for
    one never opens it for the other: an input fetch's answer becomes the job's input,
    which the tenant who named the URL reads back; a webhook is a POST whose answer only
    shows as a status code."""

    FETCH = "fetch"
    WEBHOOK = "webhook"

    @property
    def setting(self) -> str:
        """The variable that opens networks for this purpose: every refusal names it."""
        return f"RAYPIPE_{self.value.upper()}_ALLOW_NETWORKS"

    def networks(self, settings: Settings) -> list[Network]:
        """The networks the settings open for this purpose (validated when read)."""
        listed = (
            settings.fetch.allow_networks
            if self is Purpose.FETCH
            else settings.webhooks.allow_networks
        )
        return [ipaddress.ip_network(net, strict=False) for net in listed]


def parse(url: str) -> httpx.URL:
    """``url`` as it will be requested, if its form is acceptable; else :class:`OutboundRefused`."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError) as exc:
        # httpx encodes names with the idna package: a bad one is a UnicodeError.
        raise OutboundRefused(f"not a valid URL ({exc})") from None
    if target.scheme not in SCHEMES:
        raise OutboundRefused("must be an http:// or https:// URL")
    if not target.raw_host:
        raise OutboundRefused("must be an http:// or https:// URL with a host")
    if target.userinfo:
        raise OutboundRefused("must not carry credentials")
    host = _host(target)
    if _ip(host) is None:
        problem = _name_problem(host)
        if problem:
            raise OutboundRefused(f"host {host!r} {problem}")
    return target


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why ``address`` may not be reached (to follow ``"address X "``), or None: it is in
    ``allowed``, or globally routable and so is any IPv4 address it carries."""
    if any(address in network for network in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address in _NAT64:
            # The packets go to the IPv4 address: it alone decides.
            inner = address.ipv4_mapped or ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
            why = refusal(inner, allowed)
            return f"embeds {inner}, which {why}" if why else None
        for inner in (address.sixtofour, *(address.teredo or ())):
            why = refusal(inner, allowed) if inner is not None else None
            if why:
                return f"embeds {inner}, which {why}"
    kind = _special(address)
    return f"is not globally routable ({kind})" if kind else None


def check_url(url: str, settings: Settings | None, purpose: Purpose) -> None:
    """The checks that need no DNS, for submission: the form, and a literal address (or
    ``localhost``) against the networks the settings open for ``purpose``, when settings
    are given."""
    address = _literal(_host(parse(url)))
    if address is not None and settings is not None:
        why = refusal(address, purpose.networks(settings))
        if why:
            raise OutboundRefused(f"address {address} {why}; allow it with {purpose.setting}")


def resolve(target: httpx.URL, settings: Settings, purpose: Purpose) -> list[Address]:
    """Every address ``target``'s host names, each allowed for ``purpose``: these and only
    these are then connected to. :class:`OutboundRefused` if any is not allowed,
    :class:`OutboundUnresolved` if the name does not resolve."""
    host = _host(target)
    literal = _literal(host)
    if literal is not None:
        found = [literal]
    else:
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise OutboundUnresolved(f"cannot resolve {host} ({exc})") from None
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    allowed = purpose.networks(settings)
    for address in found:
        why = refusal(address, allowed)
        if why:
            where = f"address {address}" if literal else f"{host} resolves to {address}, which"
            raise OutboundRefused(f"{where} {why}; allow it with {purpose.setting}")
    return found


# -- requests --------------------------------------------------------------------------


def pinned_request(
    http: httpx.Client | httpx.AsyncClient,
    method: str,
    target: httpx.URL,
    address: Address,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    timeout: httpx.Timeout | None = None,
) -> httpx.Request:
    """A request for ``target`` that connects to ``address``: the URL's name stays in
    ``Host``, and for https in SNI, so the certificate is still checked against the name."""
    extensions = {"sni_hostname": _host(target)} if target.scheme == "https" else {}
    return http.build_request(
        method,
        target.copy_with(host=str(address)),
        content=content,
        # Identity only: a compressed answer could inflate far past what is read of it.
        headers={
            **(headers or {}),
            "host": target.netloc.decode("ascii"),
            "accept-encoding": "identity",
        },
        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        extensions=extensions,
    )


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    settings: Settings,
    purpose: Purpose,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """Send to the first address of ``url`` checked for ``purpose`` that accepts a
    connection, without following redirects; the answer is streamed (the caller reads and
    closes it)."""
    target = parse(url)
    addresses = await asyncio.to_thread(resolve, target, settings, purpose)
    with tracing.outgoing(method, str(target)) as traced:
        headers = {**(headers or {}), **traced}
        for address in addresses[:-1]:
            with contextlib.suppress(httpx.ConnectError):
                request = pinned_request(
                    http, method, target, address, headers=headers, content=content
                )
                return await http.send(request, stream=True, follow_redirects=False)
        last = pinned_request(http, method, target, addresses[-1], headers=headers, content=content)
        return await http.send(last, stream=True, follow_redirects=False)


class _Late(Exception):
    """The fetch's total deadline passed."""


def fetch(url: str, settings: Settings, label: str) -> bytes:
    """GET ``url`` as a job's input (:attr:`Purpose.FETCH`): each hop checked and pinned,
    at most ``fetch_max_redirects`` redirects, at most ``max_input_bytes``, all within
    ``fetch_timeout_s`` in total.

    Errors start with ``label`` (the payload field) and say which rule or setting:
    :class:`RetryableError` for 429/5xx and the deadline, :class:`PermanentError` for
    anything else. No answer body is ever quoted.
    """
    limit = settings.fetch.timeout_s
    deadline = time.monotonic() + limit
    where = label
    try:
        target = parse(url)
        with httpx.Client(
            trust_env=False,  # a proxy would connect on its own, to unchecked addresses
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as http:
            where = f"{label}: {target}"
            for _ in range(settings.fetch.max_redirects + 1):
                addresses = _resolve_by(target, settings, deadline)
                with (
                    tracing.outgoing("GET", str(target)) as traced,
                    contextlib.closing(_get(http, target, addresses, deadline, traced)) as response,
                ):
                    if not response.is_redirect:
                        _check_status(response, where)
                        return _body(response, settings.fetch.max_input_bytes, deadline, where)
                    location = _joined(target, response.headers["location"])
                where = f"{label}: redirected to {location}"
                target = parse(location)
    except OutboundRefused as exc:
        raise PermanentError(f"{where}: {exc}") from None
    except OutboundUnresolved as exc:
        raise PermanentError(f"{where} is unreachable: {exc}") from None
    except (_Late, httpx.TimeoutException) as exc:
        raise RetryableError(
            f"{label}: timed out: no complete answer within {limit:g}s, redirects included"
            " (RAYPIPE_FETCH_TIMEOUT_S)"
        ) from exc
    except httpx.HTTPError as exc:
        raise PermanentError(f"{where} is unreachable: {exc}") from None
    raise PermanentError(
        f"{label}: more than {settings.fetch.max_redirects} redirects (RAYPIPE_FETCH_MAX_REDIRECTS)"
    )


def _get(
    http: httpx.Client,
    target: httpx.URL,
    addresses: list[Address],
    deadline: float,
    headers: dict[str, str],
) -> httpx.Response:
    """A streamed GET of ``target`` from the first of ``addresses`` that accepts a
    connection, each phase limited to what is left of the deadline."""
    timeout = httpx.Timeout(_left(deadline))
    for address in addresses[:-1]:
        with contextlib.suppress(httpx.ConnectError):
            request = pinned_request(http, "GET", target, address, headers=headers, timeout=timeout)
            return http.send(request, stream=True)
    last = pinned_request(http, "GET", target, addresses[-1], headers=headers, timeout=timeout)
    return http.send(last, stream=True)


def _joined(target: httpx.URL, location: str) -> str:
    """Where a redirect from ``target`` leads, as an absolute URL."""
    try:
        return str(target.join(location))
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise OutboundRefused(f"redirected to an invalid URL ({exc})") from None


def _check_status(response: httpx.Response, where: str) -> None:
    """Refuse an answer that is not a success (a 3xx here had no ``Location``)."""
    code = response.status_code
    if code < 300:
        return
    problem = f"{where} answered HTTP {code}"
    if code in RETRYABLE_HTTP_STATUSES:
        raise RetryableError(
            problem, delay_s=parse_retry_after(response.headers.get("retry-after"))
        )
    raise PermanentError(problem)


def _body(response: httpx.Response, max_bytes: int, deadline: float, where: str) -> bytes:
    """The answer's bytes, stopped as soon as they pass ``max_bytes`` or the deadline (a
    server trickling a byte at a time answers every read, so reads alone never time out)."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PermanentError(
            f"{where} is too large: {declared} bytes > {max_bytes} (RAYPIPE_MAX_INPUT_BYTES)"
        )
    body = bytearray()
    # A read that blocks (a server gone silent mid-body) would wait out the read timeout,
    # which was what was left when the request went out: at the deadline, its socket is shut.
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, (response,))
    watchdog.start()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise PermanentError(
                    f"{where} is too large: more than {max_bytes} bytes (RAYPIPE_MAX_INPUT_BYTES)"
                )
            _left(deadline)
    except httpx.HTTPError:
        if time.monotonic() >= deadline:
            raise _Late from None
        raise
    finally:
        watchdog.cancel()
    return bytes(body)


def _shut(response: httpx.Response) -> None:
    """End a blocked read from another thread: shutting the socket down wakes it."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _resolve_by(target: httpx.URL, settings: Settings, deadline: float) -> list[Address]:
    """:func:`resolve` for an input fetch within the deadline (a resolver can hang for
    many seconds)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raypipe-resolve")
    try:
        return pool.submit(resolve, target, settings, Purpose.FETCH).result(timeout=_left(deadline))
    except FutureTimeout:
        raise _Late from None
    finally:
        pool.shutdown(wait=False)


def _left(deadline: float) -> float:
    """Seconds left before ``deadline``; :class:`_Late` if none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Late
    return left


# -- helpers ---------------------------------------------------------------------------


def _host(target: httpx.URL) -> str:
    """The host as it goes on the wire: an IP literal (no brackets) or an ASCII name."""
    return target.raw_host.decode("ascii")


def _ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _literal(host: str) -> Address | None:
    """The address a host names without DNS: an IP literal, or a ``localhost`` name
    (RFC 6761: loopback, whatever a resolver says)."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    return _ip(host)


def _name_problem(host: str) -> str | None:
    """What is wrong with a host name (ASCII, as httpx encoded it), or None."""
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    for label in labels:
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as exc:
                return f"is not a valid internationalized (IDNA) name ({exc})"
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "is not a valid host name"
    if _NUMERIC.fullmatch(labels[-1]):
        return "looks like an address in a non-standard form: write it as a.b.c.d"
    return None


def _special(address: Address) -> str | None:
    """The kind of a non-routable address, or None for one that is globally routable."""
    for kind in ("loopback", "link_local", "unspecified", "multicast"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if address in _CGNAT:
        return "shared address space, carrier-grade NAT"
    if any(address in network for network in _PRIVATE):
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "special-purpose"
    return None
