"""The outbound guard: which addresses may be reached, URL forms, and fetches over real
local HTTP (pinning, redirects, size, the total deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from raypipe import outbound, registry
from raypipe.config import Settings, get_settings
from raypipe.exceptions import (
    InvalidInput,
    OutboundRefused,
    OutboundUnresolved,
    PermanentError,
    RetryableError,
)
from raypipe.submission import prepare
from tests.helpers.local_http import QuietHandler, serving

BODY = b"x" * 5000
#: The test server listens on 127.0.0.1: tests that fetch from it must allow it, since
#: the guard refuses loopback by default. Only this one address: the rest of 127.0.0.0/8
#: also reaches this machine, and must stay refused.
SERVER_ONLY = ["127.0.0.1/32"]
NOW = datetime(2024, 5, 1, tzinfo=timezone.utc)


# -- which addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.100.100.200", "carrier-grade NAT"),  # a cloud metadata address
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "special-purpose"),  # documentation
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "special-purpose"),
        ("::7f00:1", "reserved"),  # IPv4-compatible, deprecated
    ],
)
def test_addresses_that_are_not_globally_routable_are_refused(address: str, kind: str) -> None:
    why = outbound.refusal(ipaddress.ip_address(address))
    assert why is not None and why.startswith("is not globally routable") and kind in why


@pytest.mark.parametrize(
    ("address", "inner", "kind"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "169.254.169.254", "link-local"),
        ("2002:a9fe:a9fe::1", "169.254.169.254", "link-local"),  # 6to4
        ("2002:7f00:1::1", "127.0.0.1", "loopback"),
        ("2002:6464:64c8::1", "100.100.100.200", "carrier-grade NAT"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254", "link-local"),  # NAT64
        ("64:ff9b::a00:1", "10.0.0.1", "private"),
        # Teredo: server 65.54.227.120 (public), client 192.0.2.45 (documentation)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45", "special-purpose"),
        # Teredo: server 10.0.0.1
        ("2001:0:a00:1::1", "10.0.0.1", "private"),
    ],
)
def test_ipv4_embedded_in_ipv6_is_checked(address: str, inner: str, kind: str) -> None:
    why = outbound.refusal(ipaddress.ip_address(address))
    assert why is not None and why.startswith(f"embeds {inner}, which is not") and kind in why


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700::1", "2a00:1450:4001::1", "::ffff:8.8.8.8",
     "2002:808:808::1", "64:ff9b::808:808"],
)  # fmt: skip
def test_public_addresses_are_allowed(address: str) -> None:
    assert outbound.refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_opens_exactly_its_networks() -> None:
    allowed = outbound.Purpose.FETCH.networks(get_settings(fetch_allow_networks=["127.0.0.0/8"]))
    for address in ("127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "2002:7f00:1::1"):
        assert outbound.refusal(ipaddress.ip_address(address), allowed) is None, address
    for address in ("::1", "10.0.0.1", "169.254.169.254"):
        assert outbound.refusal(ipaddress.ip_address(address), allowed) is not None, address


FETCH, WEBHOOK = outbound.Purpose.FETCH, outbound.Purpose.WEBHOOK


@pytest.mark.parametrize(
    ("variable", "opened", "closed"),
    [
        ("RAYPIPE_FETCH_ALLOW_NETWORKS", FETCH, WEBHOOK),
        ("RAYPIPE_WEBHOOK_ALLOW_NETWORKS", WEBHOOK, FETCH),
    ],
)
def test_each_purpose_has_its_own_allow_list_and_opening_one_never_opens_the_other(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    opened: outbound.Purpose,
    closed: outbound.Purpose,
) -> None:
    assert FETCH.networks(get_settings()) == WEBHOOK.networks(get_settings()) == []
    monkeypatch.setenv(variable, '["127.0.0.0/8", "10.0.0.1"]')
    settings = get_settings()
    assert [str(net) for net in opened.networks(settings)] == ["127.0.0.0/8", "10.0.0.1/32"]
    assert closed.networks(settings) == []
    url = "http://127.0.0.1:8000/a"
    outbound.check_url(url, settings, opened)
    with pytest.raises(OutboundRefused, match=f"loopback.*allow it with {closed.setting}$"):
        outbound.check_url(url, settings, closed)
    assert opened.setting == variable
    monkeypatch.setenv(variable, '["10.0.0.0/33"]')
    with pytest.raises(ValidationError, match="does not appear to be an IPv4 or IPv6 network"):
        get_settings()


@pytest.mark.parametrize("value", ['["10.0.0.0/8"]', "[]"])
def test_the_setting_that_opened_both_purposes_is_refused_naming_its_replacements(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RAYPIPE_OUTBOUND_ALLOW_NETWORKS", value)
    with pytest.raises(ValidationError) as err:
        get_settings()
    [error] = err.value.errors()
    assert error["loc"] == ("outbound_allow_networks",)
    assert "RAYPIPE_OUTBOUND_ALLOW_NETWORKS is no longer read" in error["msg"]
    assert "RAYPIPE_FETCH_ALLOW_NETWORKS" in error["msg"]
    assert "RAYPIPE_WEBHOOK_ALLOW_NETWORKS" in error["msg"]
    with pytest.raises(ValidationError, match="no longer read"):
        get_settings(outbound_allow_networks=["10.0.0.0/8"])  # from a file or code alike


# -- URL forms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://xn--/", "IDNA"),
        ("http://a.xn--zz.com/", "IDNA"),
        ("ftp://example.com/a", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("https:///a", "with a host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://exa mple.com/", "not a valid host name"),
        ("http://-bad-.com/", "not a valid host name"),
        ("http://2130706433/", "non-standard form"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "non-standard form"),
        ("http://[v1.x]/", "not a valid URL"),
    ],
)
def test_url_forms_that_are_refused(url: str, problem: str) -> None:
    with pytest.raises(OutboundRefused, match=problem):
        outbound.parse(url)


def test_url_forms_that_are_accepted() -> None:
    assert outbound.parse("https://ß.de/a").raw_host == b"xn--zca.de"
    assert outbound.parse("http://[2606:4700::1]:8080/x").port == 8080
    assert outbound.parse("http://files.example.com./x").raw_host == b"files.example.com."


def test_check_url_judges_literal_addresses_only_with_settings() -> None:
    with pytest.raises(OutboundRefused, match=r"address 169\.254\.169\.254 .*link-local.*ALLOW"):
        outbound.check_url("http://169.254.169.254/latest", get_settings(), WEBHOOK)
    with pytest.raises(OutboundRefused, match=r"address 127\.0\.0\.1 .*loopback"):
        outbound.check_url("http://localhost:8000/", get_settings(), FETCH)
    outbound.check_url("http://169.254.169.254/latest", None, FETCH)  # the form is fine
    outbound.check_url("http://internal.example/", get_settings(), FETCH)  # needs DNS: later


def test_a_name_with_any_refused_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = fake_dns(monkeypatch, {"split.example": ["8.8.8.8", "127.0.0.1"]})
    with pytest.raises(OutboundRefused, match=r"split\.example resolves to 127\.0\.0\.1, which"):
        outbound.resolve(outbound.parse("http://split.example/"), get_settings(), FETCH)
    assert answers == ["split.example"]
    with pytest.raises(OutboundUnresolved, match="cannot resolve"):
        outbound.resolve(outbound.parse("http://nothing.invalid/"), get_settings(), WEBHOOK)


# -- submission ----------------------------------------------------------------------------


def test_refused_urls_are_a_422_at_submission() -> None:
    registry.load()
    settings = get_settings()
    cases = [
        ({"type": "noop", "webhook_url": "http://xn--/"}, ["webhook_url"], "IDNA"),
        ({"type": "noop", "webhook_url": "http://100.100.100.200/"}, ["webhook_url"], "NAT"),
        (
            {"type": "mesh.from_image", "payload": {"image_url": "http://xn--/a.png"}},
            ["payload", "image_url"],
            "IDNA",
        ),
        (
            {"type": "document.process", "payload": {"document_url": "http://[::1]/a.pdf"}},
            ["payload", "document_url"],
            "loopback",
        ),
    ]
    for spec, loc, problem in cases:
        with pytest.raises(InvalidInput) as err:
            prepare([spec], settings, NOW)
        assert err.value.details[0]["loc"] == loc and problem in err.value.message, spec


@pytest.mark.parametrize("opened", [FETCH, WEBHOOK])
def test_submission_checks_each_url_against_its_purposes_allow_list(
    opened: outbound.Purpose,
) -> None:
    registry.load()
    settings = get_settings(**{f"{opened.value}_allow_networks": ["127.0.0.0/8"]})
    urls = {
        FETCH: {"type": "document.process", "payload": {"document_url": "http://127.0.0.1/a"}},
        WEBHOOK: {"type": "noop", "webhook_url": "http://127.0.0.1/hook"},
    }
    [closed] = {FETCH, WEBHOOK} - {opened}
    assert len(prepare([urls[opened]], settings, NOW)) == 1
    with pytest.raises(InvalidInput, match=f"loopback.*allow it with {closed.setting}"):
        prepare([urls[closed]], settings, NOW)


# -- fetches over real HTTP ----------------------------------------------------------------


class Handler(QuietHandler):
    def do_GET(self) -> None:
        path = urlsplit(self.path)
        parts = path.path.strip("/").split("/")
        if parts[0] == "to":
            self._redirect(parse_qs(path.query)["u"][0])
        elif parts[0] == "hop":
            left = int(parts[1])
            if parts[2:] == ["slow"]:
                time.sleep(0.3)
            self._redirect(f"/hop/{left - 1}/{'/'.join(parts[2:])}" if left else None)
        elif parts[0] == "echo":
            self._answer(self.headers["host"].encode())
        elif parts[0] == "trickle":
            self._trickle(1000)
        elif parts[0] == "silent":  # a byte every 0.1 s for 1.9 s, then nothing for long
            self._trickle(19, then_wait_s=30)
        elif parts[0] == "endless":
            self.send_response(200)
            self.end_headers()  # no length: the body runs until the connection closes
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    self.wfile.write(b"x" * 1000)
        else:
            self._answer(BODY)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self._answer(self.headers["host"].encode())

    def _trickle(self, count: int, then_wait_s: float = 0) -> None:
        """Of a 1000-byte body, ``count`` bytes one every 0.1 s, then a wait."""
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(count):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
            time.sleep(then_wait_s)

    def _redirect(self, location: str | None) -> None:
        if location is None:
            self._answer(BODY)
            return
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(Handler) as url:
        yield url


def posting() -> Settings:
    """Settings whose webhooks may reach the test server (and only it)."""
    return get_settings(webhook_allow_networks=SERVER_ONLY)


def fetching(**overrides: Any) -> Settings:
    """Settings whose fetches may reach the test server (and only it)."""
    return get_settings(fetch_allow_networks=SERVER_ONLY, **overrides)


def test_loopback_is_refused_by_default(server: str) -> None:
    with pytest.raises(PermanentError) as err:
        outbound.fetch(f"{server}/ok", get_settings(), "payload.document_url")
    assert str(err.value) == (
        f"payload.document_url: {server}/ok: address 127.0.0.1 is not globally routable"
        " (loopback); allow it with RAYPIPE_FETCH_ALLOW_NETWORKS"
    )
    # Opening webhooks to it opens no fetch.
    with pytest.raises(PermanentError, match="allow it with RAYPIPE_FETCH_ALLOW_NETWORKS"):
        outbound.fetch(f"{server}/ok", posting(), "payload.document_url")


def test_loopback_is_fetched_when_allowed(server: str) -> None:
    assert outbound.fetch(f"{server}/ok", fetching(), "payload.document_url") == BODY


def test_the_checked_address_is_connected_to_with_the_name_in_host(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = urlsplit(server).port
    # The name answers 127.0.0.1 once, then an address the guard would refuse: only the
    # first answer may be used (no second lookup to rebind).
    answers = fake_dns(monkeypatch, {"files.example": ["127.0.0.1", "10.0.0.1"]}, rebind=True)
    host = outbound.fetch(f"http://files.example:{port}/echo", fetching(), "payload.image_url")
    assert host == f"files.example:{port}".encode()
    assert answers == ["files.example"]


def test_redirects_are_followed_and_each_hop_is_checked(server: str) -> None:
    port = urlsplit(server).port
    assert outbound.fetch(f"{server}/hop/3", fetching(), "payload.image_url") == BODY
    # 127.0.0.2 is loopback too (all of 127/8 reaches this machine): only .1 is allowed.
    for target, refused in (
        (f"http://127.0.0.2:{port}/ok", "127.0.0.2"),
        (f"http://[::1]:{port}/ok", "::1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
    ):
        with pytest.raises(PermanentError) as err:
            outbound.fetch(f"{server}/to?u={quote(target)}", fetching(), "payload.image_url")
        assert str(err.value).startswith(
            f"payload.image_url: redirected to {target}: address {refused} is not globally"
        ), err.value
    with pytest.raises(PermanentError, match=r"redirected to ftp://.*: must be an http"):
        outbound.fetch(f"{server}/to?u=ftp://example.com/", fetching(), "payload.image_url")


def test_too_many_redirects_are_refused(server: str) -> None:
    settings = fetching(fetch_max_redirects=2)
    assert outbound.fetch(f"{server}/hop/2", settings, "payload.image_url") == BODY
    with pytest.raises(PermanentError, match=r"more than 2 redirects \(RAYPIPE_FETCH_MAX"):
        outbound.fetch(f"{server}/hop/3", settings, "payload.image_url")


def test_the_size_limit_holds_while_streaming(server: str) -> None:
    settings = fetching(max_input_bytes=10_000)
    with pytest.raises(PermanentError, match=r"too large: more than 10000 bytes"):
        outbound.fetch(f"{server}/endless", settings, "payload.image_url")
    with pytest.raises(PermanentError, match=r"too large: 5000 bytes > 100"):
        outbound.fetch(f"{server}/ok", fetching(max_input_bytes=100), "payload.image_url")


def test_a_trickling_server_is_stopped_at_the_total_deadline(server: str) -> None:
    """A byte every 0.1 s answers every read in time: only a total deadline stops it (it
    would take 100 s). The bound is loose: the point is the kind of failure."""
    began = time.monotonic()
    with pytest.raises(RetryableError, match=r"timed out: .* within 0\.5s, redirects included"):
        outbound.fetch(f"{server}/trickle", fetching(fetch_timeout_s=0.5), "payload.image_url")
    assert time.monotonic() - began < 5


def test_a_server_silent_mid_body_is_stopped_at_the_total_deadline(server: str) -> None:
    """The last read began just before the 2 s deadline, with a read timeout of all that
    was left when the request went out (2 s): it ended near 4 s before its socket was shut
    at the deadline. The bound leaves 1.5 s for a busy machine."""
    began = time.monotonic()
    with pytest.raises(RetryableError, match=r"timed out: .* within 2s, redirects included"):
        outbound.fetch(f"{server}/silent", fetching(fetch_timeout_s=2.0), "payload.image_url")
    assert time.monotonic() - began < 3.5


def test_the_deadline_covers_every_redirect(server: str) -> None:
    # Each hop takes 0.3 s, well within 0.5 s, but the four hops together do not.
    with pytest.raises(RetryableError, match="timed out"):
        outbound.fetch(f"{server}/hop/3/slow", fetching(fetch_timeout_s=0.5), "payload.image_url")


def test_webhook_posts_go_to_the_checked_address(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = urlsplit(server).port
    answers = fake_dns(monkeypatch, {"hooks.example": ["127.0.0.1"]})

    async def post(url: str, settings: Settings) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await outbound.send(http, "POST", url, settings, WEBHOOK, content=b"{}")
            await response.aread()
            await response.aclose()
            return response

    response = asyncio.run(post(f"http://hooks.example:{port}/hook", posting()))
    assert response.content == f"hooks.example:{port}".encode()
    assert answers == ["hooks.example"]
    for closed in (get_settings(), fetching()):  # opening fetches opens no webhook
        with pytest.raises(
            OutboundRefused, match=r"loopback.*allow it with RAYPIPE_WEBHOOK_ALLOW_NETWORKS"
        ):
            asyncio.run(post(f"http://hooks.example:{port}/hook", closed))


# -- helpers -------------------------------------------------------------------------------


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]], rebind: bool = False
) -> list[str]:
    """Answer ``names`` from the table (all their addresses, or with ``rebind`` one per
    lookup, in turn); other names go to the real resolver. The looked-up fake names are
    recorded in the list returned."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in names:
            return real(host, port, *args, **kwargs)
        looked_up.append(host)
        answers = names[host][len(looked_up) - 1 :][:1] if rebind else names[host]
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in answers
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up
