"""A small client for OpenAI-compatible chat completions, its failures sorted for retrying.

Transient trouble (rate limits, 5xx, timeouts, dropped connections, a garbled 200) becomes a
:class:`RetryableError` carrying the service's ``Retry-After``; a refused key, an exhausted
quota or a rejected request becomes a :class:`PermanentError`. A model the service does not
offer is an answer, :class:`ModelUnavailable`, so the caller can pick another model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from raypipe import tracing
from raypipe.exceptions import PermanentError, RetryableError
from raypipe.retry import RETRYABLE_HTTP_STATUSES, parse_retry_after

#: How much of a service's error message goes into a job's error.
MAX_MESSAGE_CHARS = 500

_QUOTA = "insufficient_quota"
_MODEL_MISSING_CODE = "model_not_found"
_MODEL_MISSING_TEXT = re.compile(r"\bmodel\b.*\b(does not exist|not found)\b", re.I | re.S)


class Failure(str, Enum):
    """What an error answer from the service means for the job."""

    TRANSIENT = "transient"  # rate limited or overloaded: try again later
    KEY_REFUSED = "key_refused"  # 401/403: the key is wrong or lacks access
    QUOTA = "quota"  # the account is out of credit: waiting will not help
    MODEL_UNAVAILABLE = "model_unavailable"  # the service does not offer the model
    REJECTED = "rejected"  # the request itself is wrong


@dataclass(frozen=True)
class ServiceError:
    """The fields of an error body; OpenAI's ``{"error": {"message", "type", "code"}}``,
    vLLM's top-level ``{"message", "type", "code"}`` and a bare ``{"error": "…"}`` alike."""

    message: str
    type: str = ""
    code: str = ""

    @classmethod
    def of(cls, response: httpx.Response) -> ServiceError:
        plain = response.reason_phrase or f"HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            return cls(plain)
        error = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(error, str):
            return cls(error[:MAX_MESSAGE_CHARS])
        if not isinstance(error, dict):
            return cls(plain)
        return cls(
            message=str(error.get("message") or plain)[:MAX_MESSAGE_CHARS],
            type=str(error.get("type") or ""),
            code=str(error.get("code") or ""),
        )


def classify(status: int, error: ServiceError) -> Failure:
    """The meaning of a non-2xx answer: a pure function, so the table is testable on its own."""
    if status in (403, 429) and _QUOTA in (error.code, error.type):
        return Failure.QUOTA
    if status in (401, 403):
        return Failure.KEY_REFUSED
    if status == 404 or (
        status == 400
        and (error.code == _MODEL_MISSING_CODE or _MODEL_MISSING_TEXT.search(error.message))
    ):
        return Failure.MODEL_UNAVAILABLE
    if status in RETRYABLE_HTTP_STATUSES or status >= 500:
        return Failure.TRANSIENT
    return Failure.REJECTED


@dataclass(frozen=True)
class ChatReply:
    """The first choice of a completion."""

    text: str
    model: str  # the model the service says answered, else the one asked for
    usage: dict[str, Any]
    finish_reason: str | None


@dataclass(frozen=True)
class ModelUnavailable:
    """The service said it does not offer ``model``; ``message`` is its reason."""

    model: str
    status: int
    message: str


class ChatClient:
    """Chat completions from one OpenAI-compatible service, over one connection pool.

    ``on_rate_limited`` hears the seconds of a 429's ``Retry-After``: the service asks
    every caller to wait, not only this job (raypipe pauses the run limit's key)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        on_rate_limited: Callable[[float], None] | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout_s = timeout_s
        self.on_rate_limited = on_rate_limited
        self._has_key = bool(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout_s)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def complete(
        self, model: str, messages: Sequence[Mapping[str, str]], **options: Any
    ) -> ChatReply | ModelUnavailable:
        """Ask ``model``; ``options`` (temperature, max_tokens, …) go into the request as given.

        Raises :class:`RetryableError` or :class:`PermanentError` for every other failure.
        """
        body = {"model": model, "messages": list(messages), **options}
        try:
            with tracing.outgoing("POST", self.url) as traced:
                response = self._http.post(self.url, json=body, headers=traced)
        except httpx.TimeoutException as exc:
            raise RetryableError(f"the AI service did not answer within {self.timeout_s}s") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentError(f"RAYPIPE_AI_BASE_URL is not a usable URL: {exc}") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"the AI service is unreachable: {exc}") from exc
        if response.is_success:
            return parse_reply(response, model)
        error = ServiceError.of(response)
        failure = classify(response.status_code, error)
        if failure is Failure.MODEL_UNAVAILABLE:
            return ModelUnavailable(model, response.status_code, error.message)
        raise self._error(failure, response, error)

    def _error(
        self, failure: Failure, response: httpx.Response, error: ServiceError
    ) -> PermanentError | RetryableError:
        status = response.status_code
        if failure is Failure.TRANSIENT:
            delay = parse_retry_after(response.headers.get("retry-after"))
            if status == 429 and delay and self.on_rate_limited is not None:
                self.on_rate_limited(delay)
            return RetryableError(
                f"the AI service answered HTTP {status}: {error.message}", delay_s=delay
            )
        if failure is Failure.KEY_REFUSED:
            # The service's own message is left out: OpenAI's quotes part of the key.
            if not self._has_key:
                return PermanentError(
                    f"the AI service requires an API key (HTTP {status}): set RAYPIPE_AI_API_KEY"
                )
            return PermanentError(f"the AI service refused the API key (HTTP {status})")
        if failure is Failure.QUOTA:
            return PermanentError(
                f"the AI service's quota is exhausted (HTTP {status}): {error.message}"
            )
        return PermanentError(
            f"the AI service rejected the request (HTTP {status}): {error.message}"
        )


def parse_reply(response: httpx.Response, model: str) -> ChatReply:
    """The reply in a 2xx body; a body of another shape is a :class:`RetryableError`, since
    it is nearly always a proxy or gateway having a bad moment rather than the model."""
    try:
        body = response.json()
        choice = body["choices"][0]
        message = choice["message"]
        content = message["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        body = content = None
    if not isinstance(body, dict) or not isinstance(content, (str, type(None))):
        raise RetryableError(
            f"the AI service answered HTTP {response.status_code} with an unexpected body:"
            f" {response.text[:200]!r}"
        )
    answered = body.get("model")
    usage = body.get("usage")
    finish_reason = choice.get("finish_reason")
    return ChatReply(
        # null content is valid (a refusal, a content filter): finish_reason tells which
        text=content or "",
        model=answered if isinstance(answered, str) and answered else model,
        usage=usage if isinstance(usage, dict) else {},
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
    )
