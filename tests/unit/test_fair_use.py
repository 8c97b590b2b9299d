"""The API's fair-use limits (``raypipe/api/fair_use.py``) without Serve: counting, which
requests are streams, and the middleware's answers, with a key checker that needs no
database. ``tests/security/test_api_fair_use.py`` runs them over real HTTP on Serve."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.types import Message, Receive, Scope, Send

from raypipe.api import create_app
from raypipe.api.fair_use import FairUse, Slots, is_stream
from raypipe.api.services import Principal, Services
from raypipe.config import Settings, get_settings
from raypipe.exceptions import Unauthorized


def test_slots_are_taken_under_every_limit_or_none_and_given_back() -> None:
    slots = Slots()
    claims = [("key", 2), ("tenant", 3)]
    assert slots.take(claims) is None and slots.take(claims) is None
    assert slots.take(claims) == 0  # the key is full: nothing taken
    assert (slots.open("key"), slots.open("tenant")) == (2, 2)
    assert slots.take([("other key", 2), ("tenant", 3)]) is None
    assert slots.take([("other key", 2), ("tenant", 3)]) == 1  # the tenant is full
    assert (slots.open("other key"), slots.open("tenant")) == (1, 3)
    slots.give_back(["key", "tenant"])
    assert slots.take(claims) is None
    for _ in range(2):
        slots.give_back(["key", "tenant"])
    slots.give_back(["other key", "tenant"])
    assert (slots.open("key"), slots.open("other key"), slots.open("tenant")) == (0, 0, 0)


def test_slots_count_right_from_many_threads() -> None:
    slots, most, seen = Slots(), 3, []

    def work() -> None:
        for _ in range(2000):
            if slots.take([("key", most)]) is None:
                seen.append(slots.open("key"))
                slots.give_back(["key"])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen and max(seen) <= most
    assert slots.open("key") == 0


def _scope(path: str, query: str = "", method: str = "GET", **headers: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def test_every_route_that_streams_counts_as_a_stream(tmp_path: Path) -> None:
    paths = create_app(get_settings(data_dir=tmp_path)).openapi()["paths"]
    streaming = [
        path
        for path, methods in paths.items()
        for method, operation in methods.items()
        if "text/event-stream" in operation["responses"].get("200", {}).get("content", {})
        and method == "get"
    ]
    assert len(streaming) >= 3, streaming
    for path in streaming:
        concrete = re.sub(r"\{[^}]+\}", "some-id", path)
        assert is_stream(_scope(concrete, "follow=true")), path
    assert is_stream(_scope("/v1/jobs/x/logs", "follow=1&attempt=2"))
    assert not is_stream(_scope("/v1/jobs/x/logs"))
    assert not is_stream(_scope("/v1/jobs/x/logs", "follow=false"))
    assert not is_stream(_scope("/v1/jobs/x/logs", "follow=maybe"))  # a 422 from the route
    assert not is_stream(_scope("/v1/jobs/x/artifacts/events"))
    assert not is_stream(_scope("/v1/jobs/x/events", method="POST"))
    assert not is_stream(_scope("/v1/jobs"))


class _Keys:
    """:class:`Services` as :class:`FairUse` uses it: settings, and a key checker."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def known(self, authorization: str | None) -> Principal | None:
        return None  # not seen lately: asked of authenticate, in a thread

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization != "Bearer good":
            raise Unauthorized()
        return Principal(tenant="acme", admin=False, key_id="k1")


def _middleware(inner: Any, tmp_path: Path, **settings: Any) -> FairUse:
    services = cast(Services, _Keys(get_settings(data_dir=tmp_path, **settings)))
    return FairUse(inner, services)


async def _call(app: FairUse, scope: Scope, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _answer(sent: list[Message]) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, json.loads(sent[1]["body"])["error"]


async def _never(*_args: object) -> None:
    raise AssertionError("not to be called")


def _stalled() -> Receive:
    """A body that stops after its first byte."""
    first: list[Message] = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> Message:
        if first:
            return first.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def test_a_request_without_a_valid_key_is_refused_before_its_body(tmp_path: Path) -> None:
    app = _middleware(_never, tmp_path)
    for headers in ({}, {"authorization": "Bearer bad"}):
        scope = _scope("/v1/jobs", method="POST", content_length="100000", **headers)
        status, answered, error = _answer(asyncio.run(_call(app, scope, _never)))
        assert (status, error["code"]) == (401, "unauthorized")
        assert answered["connection"] == "close" and answered["www-authenticate"] == "Bearer"


def test_a_body_past_the_deadline_is_a_408_and_gives_its_slot_back(tmp_path: Path) -> None:
    app = _middleware(_never, tmp_path, api_body_timeout_s=0.2)
    scope = _scope("/v1/jobs", method="POST", content_length="100000", authorization="Bearer good")
    status, answered, error = _answer(asyncio.run(_call(app, scope, _stalled())))
    assert (status, error["code"]) == (408, "request_timeout")
    assert error["message"] == "body: not received within 0.2s (RAYPIPE_API_BODY_TIMEOUT_S)"
    assert answered["connection"] == "close"
    assert app.slots.open(("api_max_requests_per_key", "k1")) == 0


def test_a_cancelled_stream_gives_its_slot_back_and_a_full_key_is_a_429(tmp_path: Path) -> None:
    opened = asyncio.Event()

    async def stream(_scope: Scope, _receive: Receive, _send: Send) -> None:
        opened.set()
        await asyncio.Event().wait()  # until the client goes away

    app = _middleware(stream, tmp_path, api_max_streams_per_key=1)
    scope = _scope("/v1/jobs/j1/events", authorization="Bearer good")
    held = ("api_max_streams_per_key", "k1")

    async def main() -> None:
        first = asyncio.create_task(_call(app, dict(scope), _never))
        await opened.wait()
        assert app.slots.open(held) == 1
        status, answered, error = _answer(await _call(app, dict(scope), _never))
        assert (status, answered["retry-after"], error["code"]) == (429, "5", "rate_limited")
        assert error["message"] == (
            "streams: at most 1 open at once per API key"
            " (RAYPIPE_API_MAX_STREAMS_PER_KEY); retry after 5s"
        )
        first.cancel()  # as Serve cancels a request whose client disconnected
        with pytest.raises(asyncio.CancelledError):
            await first
        assert app.slots.open(held) == 0

    asyncio.run(main())
