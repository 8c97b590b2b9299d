"""Fair use of a replica's request slots: who may hold how many of them, and for how long.

A Serve replica takes a fixed number of requests at once (``max_ongoing_requests``);
whatever holds one makes everyone else wait. So, before a request under ``/v1`` reaches
its route (:class:`FairUse`, outermost but for Starlette's error middleware):

- its key is checked first, and a request without a valid one is answered 401 before its
  body is read (a slow body without a key holds nothing);
- each API key and each tenant holds at most so many requests in flight, and at most so
  many event streams open (``RAYPIPE_API_MAX_REQUESTS_PER_KEY``/``_PER_TENANT``,
  ``RAYPIPE_API_MAX_STREAMS_PER_KEY``/``_PER_TENANT``): past them a 429 with
  ``Retry-After``; a stream counts against the stream limits only;
- streams over all tenants hold at most ``RAYPIPE_API_MAX_STREAMS`` (at most half the
  replica's slots), so ordinary requests always keep the rest: past it a 503;
- the whole body must arrive within ``RAYPIPE_API_BODY_TIMEOUT_S``, else a 408.

Counts are per replica, in memory: a slot is given back when its request ends, however it
ends (Serve cancels a request whose client went away).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

import anyio
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raypipe.api import errors
from raypipe.api.services import Principal, Services
from raypipe.config import Settings
from raypipe.exceptions import RateLimited, Unauthorized

#: The paths whose callers must show a key.
PREFIX = "/v1/"
#: Seconds a refused caller is asked to wait: a request's slot frees within about that; a
#: stream's only when one of the caller's streams ends.
RETRY_AFTER_S = {"requests": 1, "streams": 5}
#: A refused request's body is taken, to keep its connection open, only if it is this
#: small and arrives within this long (a client's own body, already sent).
ARRIVED_BYTES = 64 * 1024
ARRIVED_S = 0.05
#: Where the middleware leaves the caller it admitted, in the request's state.
_PRINCIPAL = "raypipe_principal"

Kind = Literal["requests", "streams"]
Per = Literal["key", "tenant", "replica"]


@dataclass(frozen=True)
class Limit:
    """At most ``most`` ``kind`` open at once per ``per``, as the ``field`` setting says."""

    kind: Kind
    per: Per
    field: str
    most: int

    @property
    def setting(self) -> str:
        return f"RAYPIPE_{self.field.upper()}"

    def holder(self, principal: Principal) -> Hashable:
        """Whose count a request of ``principal`` adds to under this limit."""
        who = {"key": principal.key_id, "tenant": principal.tenant, "replica": ""}[self.per]
        return (self.field, who)

    def refusal(self, principal: Principal) -> Response:
        """The answer past this limit: a 429 for the caller's own limits, a 503 for the
        replica's, with ``Retry-After`` and the limit and its setting named."""
        wait = RETRY_AFTER_S[self.kind]
        opened = "open " if self.kind == "streams" else "in flight "
        whose = {
            "key": "per API key",
            "tenant": f"per tenant (tenant {principal.tenant!r})",
            "replica": "per API replica, over all tenants",
        }[self.per]
        message = (
            f"{self.kind}: at most {self.most} {opened}at once {whose} ({self.setting});"
            f" retry after {wait}s"
        )
        if self.per == "replica":
            return errors.error_response(
                503, "api_busy", message, headers={"Retry-After": str(wait)}
            )
        return errors.raypipe_response(RateLimited(message, retry_after_s=wait))


#: The settings a request of each kind is counted under (flat names, of ``settings.api``),
#: and whose count each keeps.
LIMITS: dict[Kind, tuple[tuple[Per, str], ...]] = {
    "requests": (("key", "api_max_requests_per_key"), ("tenant", "api_max_requests_per_tenant")),
    "streams": (
        ("key", "api_max_streams_per_key"),
        ("tenant", "api_max_streams_per_tenant"),
        ("replica", "api_max_streams"),
    ),
}

#: The routes that stream: a job's or a batch's events, and a job's logs followed.
_EVENTS = re.compile(r"/v1/(jobs|batches)/[^/]+/events")
_LOGS = re.compile(r"/v1/jobs/[^/]+/logs")


def limits(settings: Settings, kind: Kind) -> tuple[Limit, ...]:
    """The limits a request of ``kind`` is counted under, as ``settings`` set them."""
    return tuple(
        Limit(kind, per, field, getattr(settings.api, field.removeprefix("api_")))
        for per, field in LIMITS[kind]
    )


class Slots:
    """What is open, per holder, under a lock: the replica's event loop and its threads may
    both take and give back."""

    def __init__(self) -> None:
        self._open: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def take(self, claims: Sequence[tuple[Hashable, int]]) -> int | None:
        """One slot of each ``(holder, most)`` claim, or none at all: None once taken, else
        the index of the first claim whose holder already has ``most`` open."""
        with self._lock:
            for index, (holder, most) in enumerate(claims):
                if self._open.get(holder, 0) >= most:
                    return index
            for holder, _ in claims:
                self._open[holder] = self._open.get(holder, 0) + 1
            return None

    def give_back(self, holders: Iterable[Hashable]) -> None:
        with self._lock:
            for holder in holders:
                left = self._open.get(holder, 0) - 1
                if left > 0:
                    self._open[holder] = left
                else:
                    self._open.pop(holder, None)

    def open(self, holder: Hashable) -> int:
        """How many ``holder`` has open now."""
        with self._lock:
            return self._open.get(holder, 0)


_BOOL = TypeAdapter(bool)


def is_stream(scope: Scope) -> bool:
    """Whether a request opens an event stream: a GET of a job's or a batch's events, or of
    a job's logs with ``follow`` true (read as the route reads it)."""
    path = _route_path(scope)
    if scope["method"] != "GET":
        return False
    if _EVENTS.fullmatch(path):
        return True
    if not _LOGS.fullmatch(path):
        return False
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    try:
        return _BOOL.validate_python(query.get("follow", False))
    except ValidationError:
        return False  # the route answers 422


def principal_of(request: Request) -> Principal | None:
    """The caller :class:`FairUse` admitted this request for, if it did."""
    return getattr(request.state, _PRINCIPAL, None)


class FairUse:
    """The ASGI middleware that keeps to the limits above (see the module's docstring)."""

    def __init__(self, app: ASGIApp, services: Services):
        self.app = app
        self.services = services
        self.slots = Slots()
        self.limits = {kind: limits(services.settings, kind) for kind in LIMITS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _route_path(scope).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.services.settings.api.body_timeout_s
        body = _body_length(scope)
        authorization = _header(scope, b"authorization")
        try:
            # A key seen lately is known without the database, in the event loop.
            principal = self.services.known(authorization) or await run_in_threadpool(
                self.services.authenticate, authorization
            )
        except Unauthorized as exc:
            refusal = await _unread(errors.raypipe_response(exc), body, receive)
            await refusal(scope, receive, send)
            return
        except Exception:
            # The database out of reach, say: the route checks the key again once the body
            # is in, and answers that (a 503).
            principal = None
        held: list[Hashable] = []
        if principal is not None:
            limits = self.limits["streams" if is_stream(scope) else "requests"]
            claims = [(limit.holder(principal), limit.most) for limit in limits]
            full = self.slots.take(claims)
            if full is not None:
                refusal = await _unread(limits[full].refusal(principal), body, receive)
                await refusal(scope, receive, send)
                return
            held = [holder for holder, _ in claims]
            scope.setdefault("state", {})[_PRINCIPAL] = principal
        try:
            most = self.services.settings.limits.max_body_bytes
            # A body said to be larger is BodyLimit's to refuse, by its length, at once.
            if 0 < body <= most:
                messages = await _read_body(receive, deadline, most)
                if messages is None:
                    refusal = await _unread(self._too_slow(), body, None)
                    await refusal(scope, receive, send)
                    return
                if messages[-1]["type"] != "http.request":
                    return  # the client went away: nobody to answer
                receive = _replay(messages, receive)
            await self.app(scope, receive, send)
        finally:
            self.slots.give_back(held)

    def _too_slow(self) -> Response:
        timeout = self.services.settings.api.body_timeout_s
        return errors.error_response(
            408,
            "request_timeout",
            f"body: not received within {timeout:g}s (RAYPIPE_API_BODY_TIMEOUT_S)",
        )


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the prefix the app is mounted under, if any."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _body_length(scope: Scope) -> int:
    """The bytes a request says its body has: its Content-Length, any number for a chunked
    body (1), 0 for none."""
    length = _header(scope, b"content-length")
    if length is not None:
        return int(length) if length.strip().isdigit() else 1
    return 1 if _header(scope, b"transfer-encoding") is not None else 0


async def _read_body(receive: Receive, deadline: float, most: int) -> list[Message] | None:
    """The body's messages as they came, up to ``most`` bytes of it (the app refuses more)
    or up to the client leaving; None if the deadline passed first."""
    messages: list[Message] = []
    size = 0
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if not message.get("more_body", False) or size > most:
                return messages
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that gives the messages already read first."""
    queued = deque(messages)

    async def replayed() -> Message:
        return queued.popleft() if queued else await receive()

    return replayed


async def _unread(response: Response, body: int, receive: Receive | None) -> Response:
    """An answer given before the body was read. A small body already sent is taken (within
    :data:`ARRIVED_S`) so the connection stays open for the client's next request; any
    other (large, slow, or the deadline's) closes the connection after the answer rather
    than wait for the rest. Closing every one made a client that reconnects after each
    refusal pay a new connection each time (the OpenAPI fuzz test took 174 s, not 75)."""
    if not body:
        return response
    if receive is None or body > ARRIVED_BYTES or not await _arrived(receive):
        response.headers["Connection"] = "close"
    return response


async def _arrived(receive: Receive) -> bool:
    """Whether the rest of the body arrives within :data:`ARRIVED_S` (it is dropped)."""
    with anyio.move_on_after(ARRIVED_S):
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return message["type"] == "http.request"
    return False
