"""One delivery attempt: POST it signed through the outbound guard, and decide what comes
next.

Independent of Ray, so it is tested against a local receiver. Where a webhook may go,
and how it gets there (the checked address, the URL's name in ``Host`` and TLS), is
:mod:`raypipe.outbound`'s rule, the same as for job input URLs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from raypipe import outbound
from raypipe.config import Settings
from raypipe.exceptions import OutboundRefused, OutboundUnresolved
from raypipe.jobs import utcnow
from raypipe.retry import ErrorKind, RetryPolicy, decide, parse_retry_after
from raypipe.store.webhooks import AttemptOutcome, Delivery
from raypipe.webhooks import signing

#: Bytes of a receiver's answer that are read and kept (the rest is never downloaded).
RESPONSE_LIMIT = 4096
#: Answers whose ``Retry-After`` sets the delay before the next try.
THROTTLED = frozenset({429, 503})
#: The receiver says the endpoint is gone for good: no more tries.
GONE = 410


def client(settings: Settings) -> httpx.AsyncClient:
    """The client a sender shares between deliveries.

    No redirects, no proxies or credentials from the environment, no cookies (tenants
    must not share any), and no kept connections: a kept TLS connection was verified for
    one name and must not carry another name's webhook to the same address.
    """
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=settings.webhooks.timeout_s,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        limits=httpx.Limits(
            max_connections=settings.webhooks.concurrency, max_keepalive_connections=0
        ),
    )


def policy(settings: Settings) -> RetryPolicy:
    """Deliveries back off like jobs: ``backoff * 2**(n-1)``, capped, with jitter."""
    return RetryPolicy(
        max_attempts=settings.webhooks.max_attempts,
        base_s=settings.webhooks.backoff_s,
        cap_s=settings.webhooks.max_backoff_s,
    )


def next_try(
    settings: Settings,
    attempt: int,
    now: datetime,
    kind: ErrorKind,
    retry_after_s: float | None = None,
) -> datetime | None:
    """When attempt ``attempt`` (1-based) that failed as ``kind`` is tried again; None if
    never. Delays a receiver asks for are honoured up to the backoff cap."""
    decision = decide(policy(settings), kind, attempt, requested_delay_s=retry_after_s)
    return now + timedelta(seconds=decision.delay_s) if decision.retry else None


async def deliver(
    delivery: Delivery,
    secret: str,
    settings: Settings,
    http: httpx.AsyncClient,
    clock: Callable[[], datetime] = utcnow,
) -> AttemptOutcome:
    """Make the next attempt of ``delivery``, signed with ``secret``; never raises for what
    the network or the receiver does (that is the outcome)."""
    started_at = clock()
    began = time.perf_counter()
    attempt = delivery.attempts + 1

    def failed(
        kind: ErrorKind,
        error: str,
        status_code: int | None = None,
        response: str | None = None,
        retry_after_s: float | None = None,
    ) -> AttemptOutcome:
        return AttemptOutcome(
            started_at=started_at,
            duration_ms=_elapsed_ms(began),
            status_code=status_code,
            error=_storable(error),
            response=_storable(response),
            retry_at=next_try(settings, attempt, clock(), kind, retry_after_s),
        )

    try:
        response, text = await asyncio.wait_for(
            _post(delivery, secret, settings, http, started_at), settings.webhooks.timeout_s
        )
    except OutboundRefused as exc:
        return failed(ErrorKind.PERMANENT, f"refused: {exc}")
    except OutboundUnresolved as exc:
        return failed(ErrorKind.ERROR, str(exc))
    except asyncio.TimeoutError:
        return failed(ErrorKind.ERROR, f"no answer within {settings.webhooks.timeout_s:g}s")
    except httpx.HTTPError as exc:
        return failed(ErrorKind.ERROR, f"{type(exc).__name__}: {exc}".rstrip(": "))
    code = response.status_code
    if response.is_success:
        return AttemptOutcome(
            started_at=started_at,
            duration_ms=_elapsed_ms(began),
            status_code=code,
            response=_storable(text),
            delivered=True,
        )
    if code == GONE:
        kind, retry_after_s = ErrorKind.PERMANENT, None
    elif code in THROTTLED:
        kind, retry_after_s = (
            ErrorKind.RETRYABLE,
            parse_retry_after(response.headers.get("retry-after")),
        )
    else:
        kind, retry_after_s = ErrorKind.ERROR, None
    error = f"HTTP {code} {response.reason_phrase}".strip()
    return failed(kind, error, code, text, retry_after_s)


async def _post(
    delivery: Delivery,
    secret: str,
    settings: Settings,
    http: httpx.AsyncClient,
    now: datetime,
) -> tuple[httpx.Response, str]:
    """POST through the outbound guard (no redirects); the answer and its first bytes."""
    headers = signing.headers(secret, delivery.id, delivery.body, now)
    response = await outbound.send(
        http,
        "POST",
        delivery.url,
        settings,
        outbound.Purpose.WEBHOOK,
        headers=headers,
        content=delivery.body.encode(),
    )
    head = bytearray()
    try:
        async for chunk in response.aiter_raw():
            head += chunk
            if len(head) >= RESPONSE_LIMIT:
                break
    finally:
        await response.aclose()
    return response, head[:RESPONSE_LIMIT].decode("utf-8", "replace")


def _storable(text: str | None) -> str | None:
    """Text a database can keep (PostgreSQL refuses NUL characters)."""
    return text.replace("\x00", "\ufffd") if text else text


def _elapsed_ms(began: float) -> float:
    return round((time.perf_counter() - began) * 1000, 3)
