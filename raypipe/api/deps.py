"""What every route module shares: the caller's identity and the documented error answers."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from raypipe.api.fair_use import principal_of
from raypipe.api.schemas import ErrorResponse
from raypipe.api.services import Principal, Services
from raypipe.exceptions import InvalidInput
from raypipe.store.jobs import Replay
from raypipe.submission import check_text

#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 15.0

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 408, 409, 413, 422, 429, 503)
}


def services_of(request: Request) -> Services:
    return request.app.state.services


#: A route's parameter for the process's :class:`Services`.
AppServices = Annotated[Services, Depends(services_of)]


async def _principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    admitted = principal_of(request)  # checked before the body was read
    if admitted is not None:
        return admitted
    return await run_in_threadpool(services_of(request).authenticate, authorization)


Caller = Annotated[Principal, Depends(_principal)]


#: A submission's `Idempotency-Key` header.
IdempotencyKey = Annotated[str | None, Header(max_length=255)]


def submission(model: type[BaseModel]) -> dict[str, Any]:
    """The route options of a submission answered with ``model``: 202 for what it made,
    200 for a replay of an earlier one."""
    return {
        "status_code": 202,
        "response_model": model,
        "responses": {
            200: {
                "model": model,
                "description": "an idempotent replay, or a unique job's duplicate: what"
                " was made earlier",
            }
        },
    }


#: The header saying why a submission's answer is an object made earlier.
REPLAYED = {Replay.IDEMPOTENT: "Idempotent-Replayed", Replay.UNIQUE: "Unique-Replayed"}


def submitted(response: Response, location: str, created: bool) -> None:
    """A submission's answer: where its object is, and, for one not created now, that it
    is an idempotent replay (200, not 202, and a header saying so)."""
    answered(response, location, None if created else Replay.IDEMPOTENT)


def answered(response: Response, location: str, replay: Replay | None) -> None:
    """A submission's answer: where its object is, and, for one made earlier (``replay``
    says why), 200, not 202, with the header saying so."""
    response.headers["Location"] = location
    if replay is not None:
        response.status_code = 200
        response.headers[REPLAYED[replay]] = "true"


def replayed_in_bulk(response: Response, replays: list[Replay | None]) -> None:
    """A bulk submission's answer stays 202; for each reason a job in it was made
    earlier, its header lists the positions of those jobs (``Unique-Replayed: 1,4``)."""
    for replay, header in REPLAYED.items():
        positions = [str(i) for i, why in enumerate(replays) if why is replay]
        if positions:
            response.headers[header] = ",".join(positions)


def utc_param(name: str, value: datetime | None) -> datetime | None:
    """An aware datetime in UTC, or a 422 naming the parameter."""
    if value is None:
        return None
    try:
        if value.tzinfo is None:
            raise ValueError("must include a time zone")
        return value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else "out of range"
        raise InvalidInput(
            f"{name}: {message}", details=[{"loc": [name], "msg": message}]
        ) from None


def encode_cursor(created_at: datetime, last_id: str) -> str:
    """An opaque cursor after the row (``created_at``, ``last_id``) of a newest-first page."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{last_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) in a cursor from :func:`encode_cursor`; else a 422."""
    try:
        at, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        check_text(last_id)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when.astimezone(timezone.utc), last_id
    except (ValueError, OverflowError, InvalidInput):
        raise bad_cursor() from None


def bad_cursor() -> InvalidInput:
    """The 422 for a ``cursor`` that no page handed out."""
    return InvalidInput(
        "cursor: not a cursor from a previous page",
        details=[{"loc": ["cursor"], "msg": "not a cursor from a previous page"}],
    )
