"""The HTTP client: :class:`Client` and :class:`AsyncClient` for the raypipe API.

Both have the same methods (``tests/unit/test_client_parity.py`` checks it) and build
requests, decide retries and read answers with the same code (the ``_…_call`` functions,
:class:`_ClientBase`, :class:`_Pages`, :class:`_EventReader`); only sending differs. Their
handles live in :mod:`raypipe.handle`.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from raypipe.artifacts import check_name
from raypipe.batches import BatchRecord
from raypipe.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RaypipeError,
    ServerError,
    Unauthorized,
    Unreachable,
)
from raypipe.handle import (
    AsyncBatchHandle,
    AsyncJobHandle,
    BatchHandle,
    BatchLookups,
    JobHandle,
)
from raypipe.jobs import (
    AttemptRecord,
    JobRecord,
    JobSpec,
    JobStatus,
    OnDuplicate,
    PayloadLike,
    SpecLike,
    UniqueWhile,
    payload_of,
)

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
#: Where the API's URL and key come from when none is passed.
URL_ENV = "RAYPIPE_URL"
API_KEY_ENV = "RAYPIPE_API_KEY"
#: The longest pause between two tries of one request.
MAX_BACKOFF_S = 10.0
#: Read timeout on event streams, which the server keeps alive every 15 s.
STREAM_READ_TIMEOUT_S = 60.0

#: Transport errors after which the request surely never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport errors worth another try of a request that is safe to send twice.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
#: Answers of a proxy or an overloaded server, worth another try of such a request.
_RETRY_STATUS = frozenset({502, 503, 504})

_ERRORS: dict[int, type[RaypipeError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: RateLimited,
}


class SubmitOptions(TypedDict, total=False):
    """The optional fields of a submission; None leaves the server's default."""

    queue: str | None
    priority: int | None
    delay_s: float | None
    run_at: datetime | str | None
    max_attempts: int | None
    timeout_s: float | None
    tags: Sequence[str] | None
    idempotency_key: str | None
    then: dict[str, Any] | None
    webhook_url: str | None
    concurrency_key: str | None
    unique_key: str | None
    unique_while: UniqueWhile | str | None
    on_duplicate: OnDuplicate | str | None


# -- requests -----------------------------------------------------------------------------


def _body(body: Any) -> Any:
    return body


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API request before it is sent, and how to read its answer's JSON;
    ``idempotent``: sending it twice is safe."""

    method: str
    path: str
    read: Callable[[Any], T] = _body
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    stream: bool = False
    raw: bool = False  # the answer is bytes (an artifact, or nothing), not JSON


def _job_path(job_id: str, *rest: str) -> str:
    return "/".join(("/v1/jobs", quote(job_id, safe=""), *rest))


def _spec_body(spec: SpecLike) -> dict[str, Any]:
    """A job spec as the API takes it: None leaves the default, datetimes go as ISO 8601."""
    if isinstance(spec, JobSpec):
        return spec.model_dump(mode="json", exclude_unset=True)
    if isinstance(spec, tuple):
        type_, payload = spec
        spec = {"type": type_, "payload": payload}
    spec = {**spec, "payload": payload_of(spec.get("payload"))}
    body = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in spec.items()}
    return {k: v for k, v in body.items() if v is not None}


def _submit_call(type: str, payload: PayloadLike, options: SubmitOptions) -> _Call[JobRecord]:
    unknown = set(options) - SubmitOptions.__optional_keys__
    if unknown:
        raise TypeError(f"submit() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    body = _spec_body({"type": type, "payload": payload, **options})
    # The key makes a retried submission return the job the first try made, if it made one.
    key = body.pop("idempotency_key", None) or str(uuid.uuid4())
    return _Call(
        "POST", "/v1/jobs", JobRecord.from_dict, json=body, headers={"Idempotency-Key": key}
    )


def _bulk_call(specs: Iterable[SpecLike]) -> _Call[list[JobRecord]]:
    # No idempotency for bulk submissions: tried again only when surely never sent.
    body = {"jobs": [_spec_body(spec) for spec in specs]}
    return _Call("POST", "/v1/jobs/bulk", _jobs, json=body, idempotent=False)


def _job_call(job_id: str) -> _Call[JobRecord]:
    return _Call("GET", _job_path(job_id), JobRecord.from_dict)


def _attempts_call(job_id: str) -> _Call[list[AttemptRecord]]:
    return _Call("GET", _job_path(job_id), _attempts, params={"include": "attempts"})


def _action_call(job_id: str, action: str) -> _Call[JobRecord]:
    # Cancel and retry answer 409 the second time: tried again only when surely never sent.
    return _Call("POST", _job_path(job_id, action), JobRecord.from_dict, idempotent=False)


def _artifact_call(job_id: str, name: str) -> _Call[bytes]:
    # Checked here, not left to the server: a name such as "../x" would change the path.
    return _Call("GET", _job_path(job_id, "artifacts", check_name(name)), raw=True)


def _logs_call(job_id: str, attempt: int | None, after: int) -> _Call[dict[str, Any]]:
    params = {"after": after} | ({"attempt": attempt} if attempt is not None else {})
    return _Call("GET", _job_path(job_id, "logs"), params=params)


def _delete_call(job_id: str) -> _Call[Any]:
    return _Call("DELETE", _job_path(job_id), raw=True)


def _stats_call(
    type: str | None,
    queue: str | None,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
) -> _Call[dict[str, Any]]:
    filters = {"type": type, "queue": queue, "tenant": tenant, "since": since, "until": until}
    params = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in filters.items()}
    return _Call("GET", "/v1/stats", params={k: v for k, v in params.items() if v is not None})


def _batch_path(batch_id: str, *rest: str) -> str:
    return "/".join(("/v1/batches", quote(batch_id, safe=""), *rest))


def _submit_batch_call(
    specs: Iterable[SpecLike],
    webhook_url: str | None,
    then: dict[str, Any] | None,
    tags: Sequence[str] | None,
    idempotency_key: str | None,
) -> _Call[BatchRecord]:
    # Like bulk submissions, tried again only when surely never sent; unless it has an
    # Idempotency-Key: sent twice, it makes one batch.
    body: dict[str, Any] = {"jobs": [_spec_body(spec) for spec in specs]}
    extra = {"webhook_url": webhook_url, "then": then, "tags": list(tags) if tags else None}
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return _Call(
        "POST",
        "/v1/batches",
        BatchRecord.from_dict,
        json=body,
        headers=headers,
        idempotent=bool(idempotency_key),
    )


def _batch_call(batch_id: str) -> _Call[BatchRecord]:
    return _Call("GET", _batch_path(batch_id), BatchRecord.from_dict)


def _batch_action_call(batch_id: str, action: str) -> _Call[BatchRecord]:
    return _Call("POST", _batch_path(batch_id, action), BatchRecord.from_dict, idempotent=False)


def _jobs(body: dict[str, Any]) -> list[JobRecord]:
    return [JobRecord.from_dict(job) for job in body["jobs"]]


def _attempts(body: dict[str, Any]) -> list[AttemptRecord]:
    return [AttemptRecord.from_dict(a, body["id"]) for a in body.get("attempts") or []]


class _Pages(Generic[T]):
    """A list (``GET /v1/jobs``, a batch's jobs, webhook deliveries) page after page,
    following ``next_cursor``; ``items`` reads one page's entries."""

    def __init__(
        self,
        limit: int,
        filters: dict[str, Any],
        path: str,
        items: Callable[[dict[str, Any]], list[T]],
    ):
        self.params = {k: v for k, v in filters.items() if v is not None} | {"limit": limit}
        self.path = path
        self.items = items
        self.cursor: str | None = None
        self.done = False

    def next_call(self) -> _Call[list[T]] | None:
        if self.done:
            return None
        cursor = {"cursor": self.cursor} if self.cursor else {}
        return _Call("GET", self.path, self._read, params=self.params | cursor)

    def _read(self, body: dict[str, Any]) -> list[T]:
        self.cursor = body.get("next_cursor")
        self.done = not self.cursor
        return self.items(body)


def _status(status: JobStatus | str | None) -> str | None:
    return None if status is None else JobStatus(status).value


def _list_pages(
    status: JobStatus | str | None, type: str | None, queue: str | None, tag: str | None, limit: int
) -> _Pages[JobRecord]:
    filters = {"status": _status(status), "type": type, "queue": queue, "tag": tag}
    return _Pages(limit, filters, "/v1/jobs", _jobs)


def _batch_pages(batch_id: str, status: JobStatus | str | None) -> _Pages[JobRecord]:
    # Pages as large as the API allows (1000 jobs): a batch is usually read whole.
    return _Pages(1000, {"status": _status(status)}, _batch_path(batch_id, "jobs"), _jobs)


# -- operating: queues, schedules, webhooks (their answers are the API's JSON) -------------


def _queue_action_call(name: str, action: str) -> _Call[dict[str, Any]]:
    # Pausing or resuming twice leaves the queue as once: safe to send again.
    return _Call("POST", f"/v1/queues/{quote(name, safe='')}/{action}")


def _schedule_path(schedule_id: str, *rest: str) -> str:
    return "/".join(("/v1/schedules", quote(schedule_id, safe=""), *rest))


def _create_schedule_call(
    name: str, cron: str, job: SpecLike, options: dict[str, Any]
) -> _Call[dict[str, Any]]:
    # A second try answers 409 (the name is taken): tried again only when surely never sent.
    body = {"name": name, "cron": cron, "job": _spec_body(job), **options}
    return _Call("POST", "/v1/schedules", json=body, idempotent=False)


def _update_schedule_call(schedule_id: str, changes: dict[str, Any]) -> _Call[dict[str, Any]]:
    if changes.get("job") is not None:
        changes = {**changes, "job": _spec_body(changes["job"])}
    return _Call("PATCH", _schedule_path(schedule_id), json=changes)


def _schedules(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body["schedules"])


def _delivery_pages(
    status: str | None, job_id: str | None, batch_id: str | None, limit: int
) -> _Pages[dict[str, Any]]:
    filters = {"status": status, "job_id": job_id, "batch_id": batch_id}
    return _Pages(limit, filters, "/v1/webhooks/deliveries", lambda body: body["deliveries"])


def _replay_call(delivery_id: str) -> _Call[dict[str, Any]]:
    path = f"/v1/webhooks/deliveries/{quote(delivery_id, safe='')}/replay"
    return _Call("POST", path, idempotent=False)


def _secret_call(rotate: bool) -> _Call[str]:
    def read(body: dict[str, Any]) -> str:
        return str(body["secret"])

    if rotate:  # a second rotation would replace the secret the first one made
        return _Call("POST", "/v1/webhooks/secret/rotate", read, idempotent=False)
    return _Call("GET", "/v1/webhooks/secret", read)


class _EventReader:
    """Reads one job's Server-Sent Events line by line; remembers the last event id, so that
    a dropped stream resumes where it stopped."""

    def __init__(self, job_id: str, last_event_id: int | str | None):
        self.job_id = job_id
        self.last_id = last_event_id
        self.done = False
        self.drops = 0
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def call(self) -> _Call[Any]:
        self._fields, self._data = {}, []
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        path = _job_path(self.job_id, "events")
        return _Call("GET", path, headers=headers, stream=True)

    def feed(self, line: str) -> dict[str, Any] | None:
        """Take one line; return the event it completes, if it completes one."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):  # a comment: keep-alive
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name in ("event", "id"):
            self._fields[name] = value
        return None

    def _dispatch(self) -> dict[str, Any] | None:
        fields, data = self._fields, self._data
        self._fields, self._data = {}, []
        if not data:
            return None
        raw_id = fields.get("id")
        event_id = int(raw_id) if raw_id and raw_id.isdigit() else raw_id
        event = {"event": fields.get("event", "message"), "event_id": event_id}
        event.update(json.loads("\n".join(data)))
        if event_id is not None:
            self.last_id = event_id
        self.drops = 0
        terminal = {s.value for s in JobStatus if s.is_terminal}
        self.done = event["event"] == "status" and event.get("status") in terminal
        return event

    def closed(self) -> None:
        """The server ended the stream: a job's events end with its terminal status, so
        an end before it is a drop."""


class _LogReader(_EventReader):
    """Follows one attempt's log lines (``GET /v1/jobs/{id}/logs?follow=true``); the
    server ends the stream once the attempt is over, and a dropped one resumes after the
    last line read, in the same attempt."""

    def __init__(self, job_id: str, attempt: int | None):
        super().__init__(job_id, None)
        self.attempt = attempt

    def call(self) -> _Call[Any]:
        self._fields, self._data = {}, []
        call = _logs_call(self.job_id, self.attempt, int(self.last_id or 0))
        params = {**(call.params or {}), "follow": "true"}
        headers = {"Accept": "text/event-stream"}
        return _Call("GET", call.path, params=params, headers=headers, stream=True)

    def feed(self, line: str) -> dict[str, Any] | None:
        event = super().feed(line)
        if event is not None:
            self.attempt = event["attempt"]  # a retry must not switch a resumed stream
        return event

    def closed(self) -> None:
        self.done = True


class _ClientBase:
    """Settings, request building, retry decisions and error reading of both clients."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        *,
        backoff_s: float = 0.5,
    ):
        base_url = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = str(url).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    def _http_options(self) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Request:
        timeout = (
            httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT_S))
            if call.stream
            else httpx.USE_CLIENT_DEFAULT
        )
        return http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            headers=call.headers,
            timeout=timeout,
        )

    def _backoff(self, tries: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (tries - 1))

    def _after_error(self, call: _Call[Any], tries: int, error: httpx.TransportError) -> float:
        """The pause before trying ``call`` again after ``error``; :class:`Unreachable` once it
        should not be tried again (retries spent, or it may have reached the server)."""
        again = isinstance(error, _NOT_SENT) or (call.idempotent and isinstance(error, _TRANSIENT))
        if again and tries <= self.retries:
            return self._backoff(tries)
        spent = f" (tried {tries} times)" if tries > 1 else ""
        raise Unreachable(
            f"cannot reach raypipe at {self.base_url}: {call.method} {call.path} failed with"
            f" {type(error).__name__}: {error or 'no detail'}{spent}"
        ) from error

    def _after_response(
        self, call: _Call[Any], tries: int, response: httpx.Response
    ) -> float | None:
        """The pause before trying ``call`` again after this answer, or None to keep it."""
        if call.idempotent and response.status_code in _RETRY_STATUS and tries <= self.retries:
            return self._backoff(tries)
        return None

    def _after_drop(self, reader: _EventReader, error: Exception | None) -> float:
        """The pause before reopening a dropped event stream; :class:`Unreachable` after
        ``retries`` drops in a row with no event between them."""
        reader.drops += 1
        if reader.drops <= self.retries:
            return self._backoff(reader.drops)
        why = f"{type(error).__name__}: {error}" if error else "closed before the job ended"
        raise Unreachable(
            f"event stream of job {reader.job_id} at {self.base_url} dropped"
            f" {reader.drops} times in a row ({why})"
        ) from error

    def _error(self, response: httpx.Response) -> RaypipeError:
        """The typed exception for an error answer, with the server's message and details."""
        try:
            body = response.json()["error"]
            code, message, details = body.get("code"), body["message"], body.get("details")
        except (ValueError, KeyError, TypeError):
            code, message, details = None, _foreign_error(response), None
        status = response.status_code
        if status == 401 and not self.api_key:
            message += f" (no API key: pass api_key= or set {API_KEY_ENV})"
        if status == 429:
            retry_after = response.headers.get("Retry-After", "")
            exc: RaypipeError = RateLimited(
                message, retry_after_s=int(retry_after) if retry_after.isdigit() else 1
            )
            exc.details = details or []
        else:
            cls = _ERRORS.get(status, ServerError if status >= 500 else RaypipeError)
            exc = cls(message, details=details)
        if code:
            exc.code = code
        return exc

    def _read(self, call: _Call[T], response: httpx.Response) -> T:
        if response.is_error:
            raise self._error(response)
        return call.read(response.content if call.raw else response.json())


def _foreign_error(response: httpx.Response) -> str:
    """The message for an error answer without the API's error body: one that something in
    front of the API made, such as Ray Serve's proxy when a replica died mid-request (a
    plain-text 500), or a load balancer."""
    text = response.text.strip()[:500]
    said = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")
    if response.status_code == 500:
        return (
            f"{said} (not the API's answer: Ray Serve's proxy answers so when the API's"
            " replica stops mid-request; the request may or may not have taken effect)"
        )
    return f"{said} (not the API's answer: something in front of it)"


# -- the blocking client ------------------------------------------------------------------


class Client(_ClientBase, BatchLookups):
    """The raypipe HTTP API from Python: ``submit`` returns a :class:`JobHandle`.

    ``base_url`` defaults to ``$RAYPIPE_URL`` (else http://127.0.0.1:8000), ``api_key`` to
    ``$RAYPIPE_API_KEY``. Requests that are safe to repeat are
    tried ``retries`` more times after a connection error or a 502/503/504, pausing
    ``backoff_s``, then twice that, and so on; a server that stays unreachable raises
    :class:`~raypipe.exceptions.Unreachable`, an error answer the matching
    :class:`~raypipe.exceptions.RaypipeError`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        *,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, timeout, retries, backoff_s=backoff_s)
        self._http = httpx.Client(transport=transport, **self._http_options())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: _Call[Any]) -> httpx.Response:
        request = self._build(self._http, call)
        tries = 0
        while True:
            tries += 1
            try:
                response = self._http.send(request, stream=call.stream)
            except httpx.TransportError as exc:
                time.sleep(self._after_error(call, tries, exc))
                continue
            pause = self._after_response(call, tries, response)
            if pause is None:
                return response
            response.close()
            time.sleep(pause)

    def _call(self, call: _Call[T]) -> T:
        return self._read(call, self._send(call))

    def _handle(self, job: JobRecord) -> JobHandle:
        return JobHandle(job.id, self, job)

    def submit(
        self, type: str, payload: PayloadLike = None, **options: Unpack[SubmitOptions]
    ) -> JobHandle:
        """Submit a job (``POST /v1/jobs``); ``options`` are :class:`SubmitOptions`.

        Without an ``idempotency_key`` one is made up for this call, so that trying again
        after a lost connection cannot submit the job twice.
        """
        return self._handle(self._call(_submit_call(type, payload, options)))

    def submit_many(self, specs: Iterable[SpecLike]) -> builtins.list[JobHandle]:
        """Submit many jobs in one request: all are valid and written, or none is.

        ``specs``: dicts like ``submit``'s arguments, or ``(type, payload)`` pairs. Not tried
        again once the request may have reached the server (the API cannot deduplicate it).
        """
        return [self._handle(job) for job in self._call(_bulk_call(specs))]

    def get(self, job_id: str) -> JobHandle:
        return self._handle(self._call(_job_call(job_id)))

    def wait(self, job_id: str, timeout: float | None = None, progress: bool = False) -> JobRecord:
        """Block until the job is terminal (see :meth:`JobHandle.wait`)."""
        return self.get(job_id).wait(timeout, progress)

    def stream(
        self, job_id: str, last_event_id: int | str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The job's events as they happen, ending after the terminal status event.

        Each is the event's data (``id`` is the job's) plus ``event`` (``status`` or
        ``progress``) and ``event_id``, which ``last_event_id`` takes to resume after it.
        A dropped connection is reopened where it stopped.
        """
        return self._follow(_EventReader(job_id, last_event_id))

    def logs(self, job_id: str, attempt: int | None = None, after: int = 0) -> dict[str, Any]:
        """What the job's processor logged in one attempt (default: the latest), as
        ``GET /v1/jobs/{id}/logs`` answers: ``lines`` after seq ``after``, and ``dropped``."""
        return self._call(_logs_call(job_id, attempt, after))

    def follow_logs(self, job_id: str, attempt: int | None = None) -> Iterator[dict[str, Any]]:
        """An attempt's log lines (default: the latest) as they are logged, ending once
        the attempt is over; a dropped connection resumes after the last line."""
        return self._follow(_LogReader(job_id, attempt))

    def _follow(self, reader: _EventReader) -> Iterator[dict[str, Any]]:
        while not reader.done:
            error: httpx.TransportError | None = None
            try:
                with self._open(reader.call()) as response:
                    for line in response.iter_lines():
                        event = reader.feed(line)
                        if event is not None:
                            yield event
                            if reader.done:
                                return
                reader.closed()
            except httpx.TransportError as exc:
                error = exc
            if not reader.done:
                time.sleep(self._after_drop(reader, error))

    @contextmanager
    def _open(self, call: _Call[Any]) -> Iterator[httpx.Response]:
        response = self._send(call)
        try:
            if response.is_error:
                response.read()
                raise self._error(response)
            yield response
        finally:
            response.close()

    # -- JobBackend -----------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        return self._call(_job_call(job_id))

    def cancel_job(self, job_id: str) -> JobRecord:
        """Cancel a queued job, or ask a running one to stop (its status follows)."""
        return self._call(_action_call(job_id, "cancel"))

    def retry_job(self, job_id: str) -> JobRecord:
        """Queue a failed or cancelled job again."""
        return self._call(_action_call(job_id, "retry"))

    def job_attempts(self, job_id: str) -> builtins.list[AttemptRecord]:
        return self._call(_attempts_call(job_id))

    def job_artifact(self, job_id: str, name: str) -> bytes:
        """The bytes of one of a job's artifacts."""
        return self._call(_artifact_call(job_id, name))

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job, its history and its artifacts."""
        self._call(_delete_call(job_id))

    def stats(
        self,
        type: str | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        """Processing statistics of the key's jobs (``GET /v1/stats``; default: the last
        24 hours; ``tenant`` for admin keys)."""
        return self._call(_stats_call(type, queue, tenant, since, until))

    cancel = cancel_job
    retry = retry_job
    attempts = job_attempts

    # -- batches ------------------------------------------------------------------------

    def submit_batch(
        self,
        specs: Iterable[SpecLike],
        *,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> BatchHandle:
        """Submit a batch (``POST /v1/batches``) from any iterable of specs (dicts like
        ``submit``'s arguments, or ``(type, payload)`` pairs): all written, or none.

        ``webhook_url`` and ``then`` fire once, when the last job ends. With an
        ``idempotency_key``, the same batch sent again (by you, or by this client after a
        dropped connection) is the first one, not a second.
        """
        call = _submit_batch_call(specs, webhook_url, then, tags, idempotency_key)
        batch = self._call(call)
        return BatchHandle(batch.id, self, batch)

    def batch_record(self, batch_id: str) -> BatchRecord:
        return self._call(_batch_call(batch_id))

    def batch_jobs(
        self, batch_id: str, status: JobStatus | str | None = None
    ) -> Iterator[JobRecord]:
        """The batch's jobs in submission order (only those in ``status`` if given), fetched
        a page at a time as they are iterated."""
        pages = _batch_pages(batch_id, status)
        while (call := pages.next_call()) is not None:
            yield from self._call(call)

    def cancel_batch(self, batch_id: str) -> BatchRecord:
        """Cancel the batch's queued jobs and ask its running ones to stop; its outcome is
        ``cancelled`` once they have."""
        return self._call(_batch_action_call(batch_id, "cancel"))

    def retry_failed(self, batch_id: str) -> BatchRecord:
        """Queue the batch's failed jobs again; the batch runs again."""
        return self._call(_batch_action_call(batch_id, "retry-failed"))

    def list(
        self,
        status: JobStatus | str | None = None,
        type: str | None = None,
        queue: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> Iterator[JobRecord]:
        """Every matching job, newest first, fetched ``limit`` per request as it is iterated."""
        pages = _list_pages(status, type, queue, tag, limit)
        while (call := pages.next_call()) is not None:
            yield from self._call(call)

    # -- operating ----------------------------------------------------------------------

    def queues(self) -> builtins.list[dict[str, Any]]:
        """Each configured queue: depth, running jobs and whether it is paused, counting the
        key's tenant's jobs (every tenant's for an admin key)."""
        return self._call(_Call("GET", "/v1/queues"))

    def pause_queue(self, name: str) -> dict[str, Any]:
        """Start none of the queue's jobs until it is resumed (admin keys)."""
        return self._call(_queue_action_call(name, "pause"))

    def resume_queue(self, name: str) -> dict[str, Any]:
        """Start the queue's jobs again (admin keys)."""
        return self._call(_queue_action_call(name, "resume"))

    def schedules(self) -> builtins.list[dict[str, Any]]:
        """The key's tenant's cron schedules (every tenant's for an admin key), by name."""
        return self._call(_Call("GET", "/v1/schedules", _schedules))

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call(_Call("GET", _schedule_path(schedule_id)))

    def create_schedule(
        self,
        name: str,
        cron: str,
        job: SpecLike,
        *,
        timezone: str = "UTC",
        missed: str = "run_once",
        enabled: bool = True,
    ) -> dict[str, Any]:
        """A schedule that submits ``job`` (a spec, as ``submit_many`` takes one) on each
        instant of ``cron`` in ``timezone``."""
        options = {"timezone": timezone, "missed": missed, "enabled": enabled}
        return self._call(_create_schedule_call(name, cron, job, options))

    def update_schedule(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        """Change ``cron``, ``timezone``, ``job``, ``missed`` or ``enabled``."""
        return self._call(_update_schedule_call(schedule_id, changes))

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call(_Call("POST", _schedule_path(schedule_id, "pause")))

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        """Fire again from the next instant after now."""
        return self._call(_Call("POST", _schedule_path(schedule_id, "resume")))

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; the jobs it submitted stay."""
        self._call(_Call("DELETE", _schedule_path(schedule_id), raw=True))

    def deliveries(
        self,
        status: str | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        limit: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """The key's tenant's webhook deliveries with their attempts, newest first."""
        pages = _delivery_pages(status, job_id, batch_id, limit)
        while (call := pages.next_call()) is not None:
            yield from self._call(call)

    def replay_delivery(self, delivery_id: str) -> dict[str, Any]:
        """Send a delivery again, with the same ``webhook-id``."""
        return self._call(_replay_call(delivery_id))

    def webhook_secret(self, rotate: bool = False) -> str:
        """The key's tenant's webhook signing secret; ``rotate`` replaces it first."""
        return self._call(_secret_call(rotate))


# -- the asyncio client -------------------------------------------------------------------


class AsyncClient(_ClientBase):
    """:class:`Client` for asyncio: the same methods, awaited; ``stream``, ``list`` and
    ``batch_jobs`` are async iterators, ``submit`` returns an
    :class:`~raypipe.handle.AsyncJobHandle` and ``submit_batch`` an
    :class:`~raypipe.handle.AsyncBatchHandle`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        *,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, timeout, retries, backoff_s=backoff_s)
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _send(self, call: _Call[Any]) -> httpx.Response:
        request = self._build(self._http, call)
        tries = 0
        while True:
            tries += 1
            try:
                response = await self._http.send(request, stream=call.stream)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._after_error(call, tries, exc))
                continue
            pause = self._after_response(call, tries, response)
            if pause is None:
                return response
            await response.aclose()
            await asyncio.sleep(pause)

    async def _call(self, call: _Call[T]) -> T:
        return self._read(call, await self._send(call))

    def _handle(self, job: JobRecord) -> AsyncJobHandle:
        return AsyncJobHandle(job.id, self, job)

    async def submit(
        self, type: str, payload: PayloadLike = None, **options: Unpack[SubmitOptions]
    ) -> AsyncJobHandle:
        """See :meth:`Client.submit`."""
        return self._handle(await self._call(_submit_call(type, payload, options)))

    async def submit_many(self, specs: Iterable[SpecLike]) -> builtins.list[AsyncJobHandle]:
        """See :meth:`Client.submit_many`."""
        return [self._handle(job) for job in await self._call(_bulk_call(specs))]

    async def get(self, job_id: str) -> AsyncJobHandle:
        return self._handle(await self._call(_job_call(job_id)))

    async def wait(
        self, job_id: str, timeout: float | None = None, progress: bool = False
    ) -> JobRecord:
        """See :meth:`Client.wait`."""
        return await (await self.get(job_id)).wait(timeout, progress)

    async def stream(
        self, job_id: str, last_event_id: int | str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`Client.stream`."""
        async for event in self._follow(_EventReader(job_id, last_event_id)):
            yield event

    async def logs(self, job_id: str, attempt: int | None = None, after: int = 0) -> dict[str, Any]:
        """See :meth:`Client.logs`."""
        return await self._call(_logs_call(job_id, attempt, after))

    async def follow_logs(
        self, job_id: str, attempt: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`Client.follow_logs`."""
        async for event in self._follow(_LogReader(job_id, attempt)):
            yield event

    async def _follow(self, reader: _EventReader) -> AsyncIterator[dict[str, Any]]:
        while not reader.done:
            error: httpx.TransportError | None = None
            try:
                async with self._open(reader.call()) as response:
                    async for line in response.aiter_lines():
                        event = reader.feed(line)
                        if event is not None:
                            yield event
                            if reader.done:
                                return
                reader.closed()
            except httpx.TransportError as exc:
                error = exc
            if not reader.done:
                await asyncio.sleep(self._after_drop(reader, error))

    @asynccontextmanager
    async def _open(self, call: _Call[Any]) -> AsyncIterator[httpx.Response]:
        response = await self._send(call)
        try:
            if response.is_error:
                await response.aread()
                raise self._error(response)
            yield response
        finally:
            await response.aclose()

    # -- AsyncJobBackend ----------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord:
        return await self._call(_job_call(job_id))

    async def cancel_job(self, job_id: str) -> JobRecord:
        """See :meth:`Client.cancel_job`."""
        return await self._call(_action_call(job_id, "cancel"))

    async def retry_job(self, job_id: str) -> JobRecord:
        """See :meth:`Client.retry_job`."""
        return await self._call(_action_call(job_id, "retry"))

    async def job_attempts(self, job_id: str) -> builtins.list[AttemptRecord]:
        return await self._call(_attempts_call(job_id))

    async def job_artifact(self, job_id: str, name: str) -> bytes:
        """See :meth:`Client.job_artifact`."""
        return await self._call(_artifact_call(job_id, name))

    async def delete_job(self, job_id: str) -> None:
        """See :meth:`Client.delete_job`."""
        await self._call(_delete_call(job_id))

    async def stats(
        self,
        type: str | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        """See :meth:`Client.stats`."""
        return await self._call(_stats_call(type, queue, tenant, since, until))

    cancel = cancel_job
    retry = retry_job
    attempts = job_attempts

    # -- batches ------------------------------------------------------------------------

    async def submit_batch(
        self,
        specs: Iterable[SpecLike],
        *,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncBatchHandle:
        """See :meth:`Client.submit_batch`."""
        call = _submit_batch_call(specs, webhook_url, then, tags, idempotency_key)
        batch = await self._call(call)
        return AsyncBatchHandle(batch.id, self, batch)

    async def get_batch(self, batch_id: str) -> AsyncBatchHandle:
        return AsyncBatchHandle(batch_id, self, await self.batch_record(batch_id))

    async def wait_batch(
        self, batch_id: str, timeout: float | None = None, progress: bool = False
    ) -> BatchRecord:
        """See :meth:`Client.wait_batch`."""
        return await AsyncBatchHandle(batch_id, self).wait(timeout, progress)

    async def batch_record(self, batch_id: str) -> BatchRecord:
        return await self._call(_batch_call(batch_id))

    async def batch_jobs(
        self, batch_id: str, status: JobStatus | str | None = None
    ) -> AsyncIterator[JobRecord]:
        """See :meth:`Client.batch_jobs`."""
        pages = _batch_pages(batch_id, status)
        while (call := pages.next_call()) is not None:
            for job in await self._call(call):
                yield job

    async def cancel_batch(self, batch_id: str) -> BatchRecord:
        """See :meth:`Client.cancel_batch`."""
        return await self._call(_batch_action_call(batch_id, "cancel"))

    async def retry_failed(self, batch_id: str) -> BatchRecord:
        """See :meth:`Client.retry_failed`."""
        return await self._call(_batch_action_call(batch_id, "retry-failed"))

    async def list(
        self,
        status: JobStatus | str | None = None,
        type: str | None = None,
        queue: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> AsyncIterator[JobRecord]:
        """See :meth:`Client.list`."""
        pages = _list_pages(status, type, queue, tag, limit)
        while (call := pages.next_call()) is not None:
            for job in await self._call(call):
                yield job

    # -- operating ----------------------------------------------------------------------

    async def queues(self) -> builtins.list[dict[str, Any]]:
        """See :meth:`Client.queues`."""
        return await self._call(_Call("GET", "/v1/queues"))

    async def pause_queue(self, name: str) -> dict[str, Any]:
        """See :meth:`Client.pause_queue`."""
        return await self._call(_queue_action_call(name, "pause"))

    async def resume_queue(self, name: str) -> dict[str, Any]:
        """See :meth:`Client.resume_queue`."""
        return await self._call(_queue_action_call(name, "resume"))

    async def schedules(self) -> builtins.list[dict[str, Any]]:
        """See :meth:`Client.schedules`."""
        return await self._call(_Call("GET", "/v1/schedules", _schedules))

    async def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self._call(_Call("GET", _schedule_path(schedule_id)))

    async def create_schedule(
        self,
        name: str,
        cron: str,
        job: SpecLike,
        *,
        timezone: str = "UTC",
        missed: str = "run_once",
        enabled: bool = True,
    ) -> dict[str, Any]:
        """See :meth:`Client.create_schedule`."""
        options = {"timezone": timezone, "missed": missed, "enabled": enabled}
        return await self._call(_create_schedule_call(name, cron, job, options))

    async def update_schedule(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        """See :meth:`Client.update_schedule`."""
        return await self._call(_update_schedule_call(schedule_id, changes))

    async def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self._call(_Call("POST", _schedule_path(schedule_id, "pause")))

    async def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        """See :meth:`Client.resume_schedule`."""
        return await self._call(_Call("POST", _schedule_path(schedule_id, "resume")))

    async def delete_schedule(self, schedule_id: str) -> None:
        """See :meth:`Client.delete_schedule`."""
        await self._call(_Call("DELETE", _schedule_path(schedule_id), raw=True))

    async def deliveries(
        self,
        status: str | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        limit: int = 100,
    ) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`Client.deliveries`."""
        pages = _delivery_pages(status, job_id, batch_id, limit)
        while (call := pages.next_call()) is not None:
            for delivery in await self._call(call):
                yield delivery

    async def replay_delivery(self, delivery_id: str) -> dict[str, Any]:
        """See :meth:`Client.replay_delivery`."""
        return await self._call(_replay_call(delivery_id))

    async def webhook_secret(self, rotate: bool = False) -> str:
        """See :meth:`Client.webhook_secret`."""
        return await self._call(_secret_call(rotate))


@functools.cache
def default_client() -> Client:
    """The process's :class:`Client` for ``RAYPIPE_URL`` and ``RAYPIPE_API_KEY``, made on
    first use (typed submission uses it when given no client)."""
    return Client()
