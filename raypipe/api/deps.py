"""What every route module shares: the caller's identity and the documented error answers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from raypipe.api.schemas import ErrorResponse
from raypipe.api.services import Principal, Services
from raypipe.exceptions import InvalidInput

#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 15.0

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429)
}


def services_of(request: Request) -> Services:
    return request.app.state.services


def _principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return services_of(request).authenticate(authorization)


Caller = Annotated[Principal, Depends(_principal)]


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
