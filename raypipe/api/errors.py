"""One place that turns errors into JSON: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as db_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

from raypipe.exceptions import (
    MAX_DETAILS,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    NotRunning,
    PayloadTooLarge,
    RateLimited,
    RaypipeError,
    SchemaOutOfDate,
    Unauthorized,
)
from raypipe.store import engine
from raypipe.submission import summary

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait before retrying while the database is unavailable.
DATABASE_RETRY_AFTER_S = 5

STATUS = {
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    PayloadTooLarge: 413,
    SchemaOutOfDate: 503,
    NotRunning: 503,
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    more: int = 0,
) -> JSONResponse:
    """The one error shape. At most :data:`~raypipe.exceptions.MAX_DETAILS` details are
    listed; ``more`` counts the problems left out, and is there only when some were."""
    details = details or []
    more += max(0, len(details) - MAX_DETAILS)
    error: dict[str, Any] = {"code": code, "message": message, "details": details[:MAX_DETAILS]}
    if more:
        error["more"] = more
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def raypipe_response(exc: RaypipeError) -> JSONResponse:
    """The answer to one of raypipe's errors: its status, and the headers it asks for."""
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    more = exc.more if isinstance(exc, InvalidInput) else 0
    return error_response(status, exc.code, exc.message, exc.details, headers, more)


def install(app: FastAPI) -> None:
    @app.exception_handler(RaypipeError)
    async def raypipe_error(_request: Request, exc: RaypipeError) -> JSONResponse:
        return raypipe_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            return _invalid_json((detail.get("ctx") or {}).get("error", "invalid JSON"))
        details = [
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in e["loc"]][_skip(e) :],
                "msg": e["msg"],
            }
            for e in itertools.islice(errors, MAX_DETAILS)
        ]
        more = len(errors) - len(details)
        message = summary(details, more)
        return error_response(422, "validation_error", message, details, more=more)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, RaypipeError):  # raised while FastAPI read the body
            return raypipe_response(exc.__cause__)
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body": JSON that Python's parser gave up on
            # otherwise than with a syntax error (too deep, not UTF-8: compressed, say).
            return _invalid_json(_unreadable(exc.__cause__, request))
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, _http_message(exc, request))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal error; see the server log")

    @app.exception_handler(db_errors.SQLAlchemyError)
    async def database_error(request: Request, exc: db_errors.SQLAlchemyError) -> JSONResponse:
        if not engine.unavailable(exc):
            return await unexpected(request, exc)
        # A 503, not a 500: the request was fine, and clients (ours included) retry it.
        log.warning("database unavailable: %s", str(exc).partition("\n")[0])
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )


def _http_message(exc: StarletteHTTPException, request: Request) -> str:
    """What went wrong, naming the path: the router's bare "Not Found" read as if the job
    were missing when it was the path (``raypipe artifact ID ../x`` asked for
    ``/v1/jobs/ID/x``, as clients resolve ``..``)."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"no such route: {where} (see /docs for the API's routes)"
    if exc.status_code == 405:
        return f"method not allowed: {where}"
    return str(exc.detail)


def _invalid_json(reason: str) -> JSONResponse:
    return error_response(400, "invalid_json", f"body: not valid JSON ({reason})")


def _unreadable(cause: BaseException, request: Request) -> str:
    """Why a body could not be read as JSON, in words: never the parser's own message,
    which may quote the body or an object's repr."""
    if isinstance(cause, RecursionError):
        reason = "nested too deeply"
    elif isinstance(cause, UnicodeDecodeError):
        reason = "not UTF-8 text"
    else:
        reason = "unreadable"
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        reason += "; Content-Encoding is not supported: send the JSON uncompressed"
    return reason


def _skip(error: dict[str, Any]) -> int:
    """Drop FastAPI's leading "body" so locations read as the field paths users sent."""
    loc = error["loc"]
    return 1 if loc and loc[0] == "body" else 0
