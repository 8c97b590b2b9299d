"""What one tenant's streams, or anyone's slow bodies, may hold of the API, over real HTTP
on Serve (PostgreSQL): ``raypipe/api/fair_use.py``.

Before (issue 33): ~256 ``GET /v1/jobs/{id}/events`` of one tenant on its own job, or 260
connections sending ``POST /v1/jobs`` a byte every 3 s without a key, held every request
slot of the replica (``max_ongoing_requests=256``), and every other request timed out.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import wait_for
from tests.helpers.serving import Api, module_api

pytestmark = pytest.mark.postgres

#: Small stream caps: each open stream polls the database several times a second, and the
#: defaults (16 a key, 32 a tenant, 64 a replica) would hold dozens on CI's two cores.
STREAMS = {"api_max_streams_per_key": 2, "api_max_streams_per_tenant": 3, "api_max_streams": 5}
#: A short body deadline: the default (30 s) is the test's whole budget.
BODY_TIMEOUT_S = 3.0
#: The default request cap per key (32), which a test reaches cheaply: slow bodies are held
#: by sockets, not by threads.
REQUESTS_PER_KEY = 32


api = module_api("fair-use", "postgres", api_body_timeout_s=BODY_TIMEOUT_S, **STREAMS)


def _tenant(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _parked_job(client: httpx.Client) -> str:
    """A job that stays queued for an hour: its event stream stays open."""
    answer = client.post("/v1/jobs", json={"type": "noop", "delay_s": 3600})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _open(client: httpx.Client, path: str) -> httpx.Response:
    """A stream's answer, its body left unread (the connection stays open until closed)."""
    return client.send(client.build_request("GET", path), stream=True)


def _refused(answer: httpx.Response, status: int, code: str, setting: str) -> None:
    try:
        # The status first: an open stream would be read until its job ends.
        assert answer.status_code == status, answer.headers
        answer.read()
    finally:
        answer.close()
    error = answer.json()["error"]
    assert error["code"] == code and setting in error["message"], error
    assert answer.headers["Retry-After"] == "5"


def _timed_listing(api: Api, client: httpx.Client) -> float:
    """The middle time of three ``GET /v1/jobs`` by another tenant, each answered 200."""
    times = []
    for _ in range(3):
        began = time.monotonic()
        answer = client.get("/v1/jobs")
        times.append(time.monotonic() - began)
        assert answer.status_code == 200, answer.text
    return sorted(times)[1]


def test_streams_past_a_key_tenant_or_replica_cap_are_refused_and_others_still_answer(
    api: Api,
) -> None:
    tenant_a, tenant_b = _tenant("streamer"), _tenant("other")
    a1, a2 = api.client(api.key(tenant_a)), api.client(api.key(tenant_a))
    b = api.client(api.key(tenant_b))
    bystander = api.client(api.key(_tenant("bystander")))
    job_a, job_b = _parked_job(a1), _parked_job(b)
    batch = b.post("/v1/batches", json={"jobs": [{"type": "noop", "delay_s": 3600}]}).json()
    held: list[httpx.Response] = []
    try:
        # One key: two streams open, then every other is refused, at once, whatever the
        # route (a job's events, its logs followed).
        held += [_open(a1, f"/v1/jobs/{job_a}/events") for _ in range(2)]
        assert [s.status_code for s in held] == [200, 200]
        for path in [f"/v1/jobs/{job_a}/events"] * 20 + [f"/v1/jobs/{job_a}/logs?follow=1"]:
            _refused(_open(a1, path), 429, "rate_limited", "RAYPIPE_API_MAX_STREAMS_PER_KEY")
        # Its tenant's other key: one more, up to the tenant's three.
        held.append(_open(a2, f"/v1/jobs/{job_a}/logs?follow=true"))
        assert held[-1].status_code == 200
        _refused(
            _open(a2, f"/v1/jobs/{job_a}/events"),
            429,
            "rate_limited",
            "RAYPIPE_API_MAX_STREAMS_PER_TENANT",
        )
        # Another tenant: two more (a batch's events count too), up to the replica's five.
        held += [
            _open(b, f"/v1/jobs/{job_b}/events"),
            _open(b, f"/v1/batches/{batch['id']}/events"),
        ]
        assert [s.status_code for s in held] == [200] * 5
        _refused(
            _open(bystander, f"/v1/batches/{batch['id']}/events"),
            503,
            "api_busy",
            "RAYPIPE_API_MAX_STREAMS",
        )
        # Streams hold none of the slots that ordinary requests use.
        assert _timed_listing(api, bystander) < 1.0
        assert a1.get(f"/v1/jobs/{job_a}").status_code == 200
    finally:
        for stream in held:
            stream.close()
    # Closed streams give their slots back (once Serve has cancelled their requests).
    wait_for(
        lambda: _reopens(a1, f"/v1/jobs/{job_a}/events"),
        timeout=30,
        what="a closed stream's slot to be given back",
    )
    for client in (a1, a2, b, bystander):
        client.close()


def _reopens(client: httpx.Client, path: str) -> bool:
    stream = _open(client, path)
    stream.close()
    return stream.status_code == 200


# -- slow bodies --------------------------------------------------------------------------


@dataclass
class Slow:
    """A ``POST /v1/jobs`` that says its body has 100,000 bytes, and sends them one at a
    time."""

    sock: socket.socket
    opened: float
    data: bytes = b""
    answered: float | None = None

    @classmethod
    def open(cls, api: Api, authorization: str | None) -> Slow:
        address = urlsplit(api.url)
        sock = socket.create_connection((address.hostname, address.port), timeout=10)
        auth = f"Authorization: {authorization}\r\n" if authorization is not None else ""
        head = (
            "POST /v1/jobs HTTP/1.1\r\nHost: raypipe\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\n{auth}\r\n"
        )
        sock.sendall(head.encode() + b"{")
        sock.setblocking(False)
        return cls(sock, time.monotonic())

    def read(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        self.data += chunk
        if self._complete() or not chunk:
            self.answered = self.answered or time.monotonic()

    def trickle(self) -> None:
        with contextlib.suppress(OSError):  # refused and closed: nothing more goes out
            self.sock.send(b" ")

    def _complete(self) -> bool:
        _, found, body = self.data.partition(b"\r\n\r\n")
        return bool(found) and len(body) >= int(self.headers().get("content-length", 0))

    def headers(self) -> dict[str, str]:
        lines = self.data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
        return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1]) if self.data else 0

    @property
    def error(self) -> dict[str, Any]:
        return json.loads(self.data.partition(b"\r\n\r\n")[2])["error"]

    @property
    def waited(self) -> float:
        assert self.answered is not None
        return self.answered - self.opened


def _collect(slows: list[Slow], timeout: float, until: int | None = None) -> None:
    """Read answers, sending each unanswered connection a byte every quarter second, until
    ``until`` are answered (all by default) or ``timeout`` passes."""
    wanted = len(slows) if until is None else until
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for slow in slows:
            selector.register(slow.sock, selectors.EVENT_READ, slow)
        while sum(s.answered is not None for s in slows) < wanted:
            if time.monotonic() > deadline:
                return
            for key, _ in selector.select(timeout=0.25):
                slow = key.data
                slow.read()
                if slow.answered is not None:
                    selector.unregister(slow.sock)
            for slow in slows:
                if slow.answered is None:
                    slow.trickle()


def test_slow_bodies_are_refused_before_their_body_without_a_key_and_cut_off_with_one(
    api: Api,
) -> None:
    key = api.key(_tenant("trickler"))
    bystander = api.client(api.key(_tenant("bystander")))
    anonymous = [Slow.open(api, None) for _ in range(48)]
    anonymous += [Slow.open(api, "Bearer rp_not-a-key") for _ in range(16)]
    keyed = [Slow.open(api, f"Bearer {key}") for _ in range(REQUESTS_PER_KEY + 1)]
    try:
        # Without a valid key: a 401 at once, the body unread, and the connection closed.
        _collect(anonymous, timeout=10)
        assert all(s.status == 401 and s.error["code"] == "unauthorized" for s in anonymous)
        assert all(s.headers()["connection"] == "close" for s in anonymous)
        assert max(s.waited for s in anonymous) < BODY_TIMEOUT_S
        # With one: past the key's request cap a 429 at once; the others are held...
        _collect(keyed, timeout=BODY_TIMEOUT_S, until=1)
        first = [s for s in keyed if s.answered is not None]
        assert [s.status for s in first] == [429], [s.data[:300] for s in first]
        assert "RAYPIPE_API_MAX_REQUESTS_PER_KEY" in first[0].error["message"]
        assert first[0].headers()["retry-after"] == "1"
        # ...while another tenant's requests answer as usual...
        assert _timed_listing(api, bystander) < 1.0
        # ...and each ends at the deadline, trickling or not, with the deadline's error.
        _collect(keyed, timeout=BODY_TIMEOUT_S + 15)
        held = [s for s in keyed if s is not first[0]]
        assert all(s.status == 408 for s in held), {s.data[:300] for s in held}
        assert all("RAYPIPE_API_BODY_TIMEOUT_S" in s.error["message"] for s in held)
        assert all(s.error["code"] == "request_timeout" for s in held)
        assert min(s.waited for s in held) >= BODY_TIMEOUT_S - 0.5
    finally:
        for slow in anonymous + keyed:
            slow.sock.close()
    # Their slots are given back: the key submits again.
    with api.client(key) as client:
        assert client.post("/v1/jobs", json={"type": "noop", "delay_s": 3600}).status_code == 202
    bystander.close()


def test_a_thousand_hostile_connections_leave_another_tenants_listing_under_a_second(
    api: Api,
) -> None:
    # The bound: 1,000 connections of the kinds above at once (slow bodies without a
    # key, with a wrong one, and with one tenant's key past its cap), and another tenant's
    # GET /v1/jobs still answers within a second.
    key = api.key(_tenant("flood"))
    bystander = api.client(api.key(_tenant("bystander")))
    anonymous = [Slow.open(api, None) for _ in range(500)]
    anonymous += [Slow.open(api, "Bearer rp_not-a-key") for _ in range(200)]
    keyed = [Slow.open(api, f"Bearer {key}") for _ in range(300)]
    hostile = anonymous + keyed
    try:
        assert _timed_listing(api, bystander) < 1.0
        _collect(hostile, timeout=BODY_TIMEOUT_S + 30)
        assert {s.status for s in anonymous} == {401}
        assert {s.status for s in keyed} == {408, 429}
        # The key's cap held at a time; requests that Serve's proxy queued behind the first
        # ones may be taken once those end at the deadline, and are then held in turn.
        assert sum(s.status == 408 for s in keyed) >= REQUESTS_PER_KEY
        assert _timed_listing(api, bystander) < 1.0
    finally:
        for slow in hostile:
            slow.sock.close()
        bystander.close()


def test_async_waits_past_the_stream_caps_poll_and_all_end(api: Api) -> None:
    # AsyncJobHandle.wait follows a stream per job: awaiting more jobs at once than the
    # key may hold streams must still see each one end (those refused a stream poll).
    import asyncio

    from raypipe import AsyncClient
    from raypipe.jobs import JobStatus

    async def wait_all() -> list[JobStatus]:
        async with AsyncClient(api.url, api_key=api.key(_tenant("waiter"))) as client:
            handles = [
                await client.submit("sleep", {"seconds": 0.5})
                for _ in range(STREAMS["api_max_streams"] + 1)
            ]
            records = await asyncio.gather(*(h.wait(timeout=120) for h in handles))
        return [record.status for record in records]

    assert asyncio.run(wait_all()) == [JobStatus.COMPLETED] * (STREAMS["api_max_streams"] + 1)
