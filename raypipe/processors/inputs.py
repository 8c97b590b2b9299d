"""Getting a job's input file: inline base64, another job's artifact, or an http(s) URL."""

from __future__ import annotations

import base64
import binascii

import httpx

from raypipe.context import JobContext
from raypipe.exceptions import PermanentError, RetryableError
from raypipe.retry import RETRYABLE_HTTP_STATUSES, parse_retry_after


def load_input(
    ctx: JobContext,
    *,
    field: str,
    b64: str | None = None,
    url: str | None = None,
    artifact: str | None = None,
) -> bytes:
    """The bytes of whichever source the payload named (``<field>_b64`` and friends).

    Bad base64, a missing artifact, an unreachable or too large URL: :class:`PermanentError`.
    A URL that times out or answers 429/5xx: :class:`RetryableError`.
    """
    if b64 is not None:
        return decode_b64(b64, f"payload.{field}_b64")
    if artifact is not None:
        return ctx.read_artifact(artifact)
    if url is not None:
        return fetch(url, ctx.settings.max_input_bytes, ctx.settings.fetch_timeout_s)
    raise PermanentError(f"payload: give one of {field}_b64, {field}_url or {field}_artifact")


def decode_b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError(f"{where}: not valid base64") from None


def fetch(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """GET ``url`` with a time limit, stopping as soon as the body passes ``max_bytes``."""
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code >= 400:
                problem = f"{url} answered HTTP {response.status_code}"
                if response.status_code in RETRYABLE_HTTP_STATUSES:
                    delay = parse_retry_after(response.headers.get("retry-after"))
                    raise RetryableError(problem, delay_s=delay)
                raise PermanentError(problem)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise PermanentError(f"{url} is too large: {declared} bytes > {max_bytes}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise PermanentError(f"{url} is too large: more than {max_bytes} bytes")
            return bytes(body)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{url} timed out after {timeout_s}s") from exc
    except httpx.UnsupportedProtocol as exc:
        raise PermanentError(f"{url}: only http and https URLs can be fetched") from exc
    except httpx.HTTPError as exc:
        raise PermanentError(f"{url} is unreachable: {exc}") from exc
