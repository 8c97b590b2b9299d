"""A real local HTTP server that plays an OpenAI-compatible chat service, scripted per test.

    with FakeAI() as fake:                       # or start() / stop(); a fixture wraps it
        fake.script(error(429, "slow down", headers={"Retry-After": "7"}), completion("hi"))
        ...                                      # point RAYPIPE_AI_BASE_URL at fake.url + "/v1"
        assert fake.requests[0].json["model"] == "m1"

Every request (any method, any path) takes the next scripted :class:`Reply`; once the script
runs out, a completion that echoes the requested model answers, so tests that only need a
working service script nothing. Everything is recorded in :attr:`FakeAI.requests`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body`` is sent as JSON unless it is ``bytes`` (sent as is);
    ``delay_s`` holds the answer back, to make the client time out."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Request:
    """One request as the server received it; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any  # None when the body is not JSON
    at: float  # time.monotonic() on arrival


def completion(
    text: str = "ok",
    *,
    model: str | None = None,
    finish_reason: str = "stop",
    usage: dict[str, int] | None = None,
    delay_s: float = 0.0,
) -> Reply:
    """A successful chat completion in OpenAI's shape; ``model=None`` echoes the request's."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage or {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    if model is not None:
        body["model"] = model
    return Reply(200, body, delay_s=delay_s)


def error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An error answer in OpenAI's ``{"error": {"message", "type", "code"}}`` shape."""
    body = {"error": {"message": message, "type": type, "code": code}}
    return Reply(status, body, headers=dict(headers or {}))


def model_not_found(model: str) -> Reply:
    """What OpenAI answers for a model it does not offer."""
    return error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


class FakeAI:
    """The fake service on 127.0.0.1 and an ephemeral port, served from a background thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[Request] = []
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="fake-ai", daemon=True
        )
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def start(self) -> FakeAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (again is harmless); answers held back by ``delay_s`` end at once."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        """Forget the script and the recorded requests (for a server shared by several tests)."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[Request]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self._requests.append(request)
            if self._script:
                return self._script.popleft()
        model = request.json.get("model") if isinstance(request.json, dict) else None
        return completion(model=model if isinstance(model, str) else "fake")


class _Server(ThreadingHTTPServer):
    fake: FakeAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) leaves a closed socket behind: not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        request = Request(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            json=parsed,
            at=time.monotonic(),
        )
        reply = fake._answer(request)
        if reply.delay_s and fake._stopping.wait(reply.delay_s):
            return
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""
