"""Getting a job's input file: inline base64, another job's artifact, or an http(s) URL."""

from __future__ import annotations

import base64
import binascii

from pydantic import ValidationInfo

from raypipe import outbound
from raypipe.context import JobContext
from raypipe.exceptions import OutboundRefused, PermanentError


def load_input(
    ctx: JobContext,
    *,
    field: str,
    b64: str | None = None,
    url: str | None = None,
    artifact: str | None = None,
) -> bytes:
    """The bytes of whichever source the payload named (``<field>_b64`` and friends).

    Bad base64, a missing artifact, a refused, unreachable or too large URL:
    :class:`PermanentError`. A URL that times out or answers 429/5xx: :class:`RetryableError`.
    URLs go through :mod:`raypipe.outbound`.
    """
    if b64 is not None:
        return decode_b64(b64, f"payload.{field}_b64")
    if artifact is not None:
        return ctx.read_artifact(artifact)
    if url is not None:
        return outbound.fetch(url, ctx.settings, f"payload.{field}_url")
    raise PermanentError(f"payload: give one of {field}_b64, {field}_url or {field}_artifact")


def decode_b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError(f"{where}: not valid base64") from None


def check_input_url(value: str | None, info: ValidationInfo) -> str | None:
    """Validator of payload URL fields: the outbound guard's checks that need no DNS, so
    a URL that can never be fetched is a 422 at submission, not a failed job. Literal
    addresses are judged by the input fetches' allow-list of the settings in the validation
    context, when there are any."""
    if value is not None:
        try:
            settings = (info.context or {}).get("settings")
            outbound.check_url(value, settings, outbound.Purpose.FETCH)
        except OutboundRefused as exc:
            raise ValueError(exc.message) from None
    return value
