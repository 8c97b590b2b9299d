"""What every route module shares: the caller's identity and the documented error answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from raypipe.api.schemas import ErrorResponse
from raypipe.api.services import Principal, Services

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
