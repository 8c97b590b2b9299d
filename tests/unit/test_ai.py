"""ai.complete against a real local HTTP server playing an OpenAI-compatible service."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from raypipe import registry
from raypipe.ai_client import ChatClient, Failure, ServiceError, classify
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.exceptions import PermanentError, RetryableError
from raypipe.jobs import utcnow
from raypipe.processors.ai import CompletePayload, complete
from raypipe.retry import ErrorKind, RetryDecision, decide
from raypipe.retry import classify as classify_error
from raypipe.store import create_engine
from raypipe.store.tables import run_pauses
from tests.conftest import fresh_database
from tests.helpers.contexts import reporting
from tests.helpers.fake_ai import FakeAI, Reply, completion, error, model_not_found

KEY = "sk-test"
HELLO = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def fake_ai() -> Iterator[FakeAI]:
    """A fresh fake AI service per test."""
    with FakeAI() as fake:
        yield fake


def ai_settings(fake: FakeAI, tmp_path: Path, **overrides: object) -> Settings:
    return get_settings(
        **{
            "data_dir": tmp_path,
            "ai_base_url": fake.url + "/v1",
            "ai_api_key": KEY,
            "ai_model": "m1",
            "ai_fallback_model": "m2",
            "ai_timeout_s": 0.5,
            **overrides,
        }
    )


def run(settings: Settings, **payload: Any) -> dict[str, Any]:
    """Call the processor as an attempt would, with a validated payload."""
    ctx = JobContext.local("ai.complete", settings)
    return complete(CompletePayload.model_validate({"messages": HELLO, **payload}), ctx)


def fail(settings: Settings, expected: type[Exception], **payload: Any) -> Any:
    with pytest.raises(expected) as caught:
        run(settings, **payload)
    return caught.value


# -- success ---------------------------------------------------------------------------


def test_success_returns_text_model_and_usage(fake_ai: FakeAI, tmp_path: Path) -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    fake_ai.script(completion('{"answer": 42}', model="m1-2024-07-18", usage=usage))

    result = run(ai_settings(fake_ai, tmp_path), temperature=0.2, max_tokens=50)

    assert result == {
        "text": '{"answer": 42}',  # JSON text stays text
        "model": "m1-2024-07-18",
        "usage": usage,
        "finish_reason": "stop",
        "fallback_used": False,
    }
    [request] = fake_ai.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json == {"model": "m1", "messages": HELLO, "temperature": 0.2, "max_tokens": 50}


def test_payload_model_and_response_format_are_sent(fake_ai: FakeAI, tmp_path: Path) -> None:
    fmt = {"type": "json_object"}
    result = run(ai_settings(fake_ai, tmp_path), model="big", response_format=fmt)

    assert result["model"] == "big"  # the fake echoes the model asked for
    assert fake_ai.requests[0].json == {"model": "big", "messages": HELLO, "response_format": fmt}


def test_no_key_sends_no_authorization(fake_ai: FakeAI, tmp_path: Path) -> None:
    run(ai_settings(fake_ai, tmp_path, ai_api_key=None))
    assert "authorization" not in fake_ai.requests[0].headers


def test_missing_model_and_usage_in_reply_fall_back(fake_ai: FakeAI, tmp_path: Path) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": None}}]}
    fake_ai.script(Reply(200, body))

    result = run(ai_settings(fake_ai, tmp_path))

    assert result == {
        "text": "",
        "model": "m1",
        "usage": {},
        "finish_reason": None,
        "fallback_used": False,
    }


def test_progress_stages(fake_ai: FakeAI, tmp_path: Path) -> None:
    ctx, states = reporting("ai.complete", ai_settings(fake_ai, tmp_path), job_id="j")
    complete(CompletePayload.model_validate({"messages": HELLO}), ctx)
    assert [(s.stage, s.progress) for s in states] == [("request", 0.0), ("done", 100.0)]


# -- transient failures ----------------------------------------------------------------


def test_rate_limit_is_retryable_after_retry_after(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(
        error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"Retry-After": "7"})
    )
    exc = fail(ai_settings(fake_ai, tmp_path), RetryableError)
    assert exc.delay_s == 7
    assert "429" in exc.message


def test_retry_after_becomes_the_retry_delay(fake_ai: FakeAI, tmp_path: Path) -> None:
    """Wire-level Retry-After, through the processor's error, is the dispatcher's delay."""
    fake_ai.script(error(429, "slow down", headers={"Retry-After": "7"}))
    exc = fail(ai_settings(fake_ai, tmp_path), RetryableError)

    spec = registry.get("ai.complete")
    assert spec.retry is not None
    kind = classify_error(exc, spec.retry)
    assert kind is ErrorKind.RETRYABLE
    decision = decide(spec.retry, kind, attempt=1, requested_delay_s=exc.delay_s)
    assert decision == RetryDecision(retry=True, delay_s=7.0)


def test_server_error_is_retryable_with_normal_backoff(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(error(500, "The server had an error", type="server_error"))
    exc = fail(ai_settings(fake_ai, tmp_path), RetryableError)
    assert exc.delay_s is None
    assert "The server had an error" in exc.message


def test_timeout_is_retryable(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(completion(delay_s=30))  # stopping the fake lets it go at once
    exc = fail(ai_settings(fake_ai, tmp_path), RetryableError)
    assert "did not answer within 0.5s" in exc.message


def test_unreachable_service_is_retryable(fake_ai: FakeAI, tmp_path: Path) -> None:
    settings = ai_settings(fake_ai, tmp_path)
    fake_ai.stop()
    exc = fail(settings, RetryableError)
    assert "unreachable" in exc.message


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"}),
        Reply(200, {"choices": []}),
        Reply(200, {"choices": [{"message": {"role": "assistant"}}]}),
        Reply(200, {"choices": [{"message": {"content": 7}}]}),
    ],
    ids=["html", "no-choices", "no-content", "content-not-text"],
)
def test_malformed_success_body_is_retryable(fake_ai: FakeAI, tmp_path: Path, reply: Reply) -> None:
    fake_ai.script(reply)
    exc = fail(ai_settings(fake_ai, tmp_path), RetryableError)
    assert "unexpected body" in exc.message


# -- a rate limit pauses the service's run key -------------------------------------------

RUN_LIMIT = {"key": "openai", "limit": 60, "window_s": 60}
SLOW_DOWN = error(429, "slow down", code="rate_limit_exceeded", headers={"Retry-After": "30"})


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database, where the pause is written (the same upsert runs on
    PostgreSQL in tests/integration/test_flow_control_store.py)."""
    with fresh_database(request, "sqlite", tmp_path) as url:
        yield url


def pauses(url: str) -> dict[str, datetime]:
    """The run_pauses rows: run key -> until when."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {key: until for key, until in conn.execute(sa.select(run_pauses))}
    finally:
        engine.dispose()


def rate_limited(settings: Settings) -> tuple[datetime, datetime]:
    """Run a job the service answers with :data:`SLOW_DOWN`: it is retried after the
    Retry-After, as without a pause. Returns the times just before and after."""
    before = utcnow()
    exc = fail(settings, RetryableError)
    after = utcnow()
    assert exc.delay_s == 30
    return before, after


@pytest.mark.parametrize(
    ("reply", "heard"),
    [
        (SLOW_DOWN, [30.0]),
        (error(429, "slow down"), []),  # no Retry-After: nothing to pause for
        (error(503, "overloaded", headers={"Retry-After": "7"}), []),  # not a rate limit
        (
            error(429, "quota", code="insufficient_quota", headers={"Retry-After": "7"}),
            [],  # a spent quota is not over in seconds
        ),
    ],
    ids=["rate-limited", "no-retry-after", "overloaded", "quota"],
)
def test_on_rate_limited_hears_a_429s_retry_after_only(
    fake_ai: FakeAI, reply: Reply, heard: list[float]
) -> None:
    fake_ai.script(reply)
    told: list[float] = []
    client = ChatClient(
        fake_ai.url + "/v1", api_key=KEY, timeout_s=0.5, on_rate_limited=told.append
    )
    with client as chat, pytest.raises((RetryableError, PermanentError)):
        chat.complete("m1", HELLO)
    assert told == heard


def test_a_429_pauses_the_run_limits_key_until_its_retry_after(
    fake_ai: FakeAI, tmp_path: Path, sqlite_url: str
) -> None:
    settings = ai_settings(fake_ai, tmp_path, database_url=sqlite_url, ai_run_limit=RUN_LIMIT)
    fake_ai.script(SLOW_DOWN)
    before, after = rate_limited(settings)
    [(key, until)] = pauses(sqlite_url).items()
    assert key == "openai"
    wait = timedelta(seconds=30)
    assert before + wait <= until <= after + wait


def test_without_a_run_limit_a_429_pauses_nothing(
    fake_ai: FakeAI, tmp_path: Path, sqlite_url: str
) -> None:
    settings = ai_settings(fake_ai, tmp_path, database_url=sqlite_url)
    assert settings.ai.run_limit is None
    fake_ai.script(SLOW_DOWN)
    rate_limited(settings)  # only this job waits, by its retry's delay
    assert pauses(sqlite_url) == {}


# -- permanent failures ----------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_is_permanent_and_not_echoed(
    fake_ai: FakeAI, tmp_path: Path, status: int
) -> None:
    fake_ai.script(error(status, f"Incorrect API key provided: {KEY}", code="invalid_api_key"))
    exc = fail(ai_settings(fake_ai, tmp_path), PermanentError)
    assert "refused the API key" in exc.message
    assert KEY not in str(exc)


def test_missing_key_says_which_setting(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(error(401, "You didn't provide an API key."))
    exc = fail(ai_settings(fake_ai, tmp_path, ai_api_key=None), PermanentError)
    assert "RAYPIPE_AI_API_KEY" in exc.message


@pytest.mark.parametrize("status", [429, 403])
def test_quota_exceeded_is_permanent(fake_ai: FakeAI, tmp_path: Path, status: int) -> None:
    fake_ai.script(
        error(
            status,
            "You exceeded your current quota",
            type="insufficient_quota",
            code="insufficient_quota",
            headers={"Retry-After": "7"},
        )
    )
    exc = fail(ai_settings(fake_ai, tmp_path), PermanentError)
    assert "quota" in exc.message


def test_other_client_error_is_permanent_with_service_message(
    fake_ai: FakeAI, tmp_path: Path
) -> None:
    fake_ai.script(error(400, "max_tokens is too large: 999999", code="invalid_value"))
    exc = fail(ai_settings(fake_ai, tmp_path), PermanentError)
    assert "HTTP 400" in exc.message
    assert "max_tokens is too large" in exc.message
    assert len(fake_ai.requests) == 1  # no fallback for an ordinary bad request


def test_unconfigured_base_url_is_permanent(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path)
    exc = fail(settings, PermanentError)
    assert exc.message == "ai.complete is not configured: set RAYPIPE_AI_BASE_URL"


# -- model fallback --------------------------------------------------------------------


def test_unavailable_model_falls_back_in_the_same_attempt(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(model_not_found("m1"), completion("from m2", model="m2"))

    result = run(ai_settings(fake_ai, tmp_path))

    assert result["text"] == "from m2"
    assert result["model"] == "m2"
    assert result["fallback_used"] is True
    assert [r.json["model"] for r in fake_ai.requests] == ["m1", "m2"]
    assert fake_ai.requests[0].at <= fake_ai.requests[1].at


def test_model_missing_in_a_400_message_falls_back(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(error(400, "The model `m1` does not exist."), completion())
    assert run(ai_settings(fake_ai, tmp_path))["fallback_used"] is True


def test_unavailable_model_without_fallback_is_permanent(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(model_not_found("m1"))
    exc = fail(ai_settings(fake_ai, tmp_path, ai_fallback_model=None), PermanentError)
    assert "m1" in exc.message
    assert "RAYPIPE_AI_FALLBACK_MODEL" in exc.message
    assert len(fake_ai.requests) == 1


def test_unavailable_fallback_is_permanent_naming_both(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(model_not_found("m1"), model_not_found("m2"))
    exc = fail(ai_settings(fake_ai, tmp_path), PermanentError)
    assert "m1" in exc.message
    assert "m2" in exc.message
    assert len(fake_ai.requests) == 2


def test_fallback_errors_are_classified_as_usual(fake_ai: FakeAI, tmp_path: Path) -> None:
    fake_ai.script(model_not_found("m1"), error(503, "overloaded", headers={"Retry-After": "3"}))
    exc = fail(ai_settings(fake_ai, tmp_path), RetryableError)
    assert exc.delay_s == 3


# -- classification table --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (429, ServiceError("slow down", code="rate_limit_exceeded"), Failure.TRANSIENT),
        (429, ServiceError("quota", code="insufficient_quota"), Failure.QUOTA),
        (403, ServiceError("quota", type="insufficient_quota"), Failure.QUOTA),
        (403, ServiceError("forbidden"), Failure.KEY_REFUSED),
        (401, ServiceError("bad key"), Failure.KEY_REFUSED),
        (404, ServiceError("Not Found"), Failure.MODEL_UNAVAILABLE),
        (400, ServiceError("no", code="model_not_found"), Failure.MODEL_UNAVAILABLE),
        (400, ServiceError('model "m1" not found, try pulling it'), Failure.MODEL_UNAVAILABLE),
        (400, ServiceError("messages: too long"), Failure.REJECTED),
        (422, ServiceError("bad"), Failure.REJECTED),
        (408, ServiceError("timeout"), Failure.TRANSIENT),
        (500, ServiceError("oops"), Failure.TRANSIENT),
        (529, ServiceError("overloaded"), Failure.TRANSIENT),
    ],
)
def test_classify(status: int, error: ServiceError, expected: Failure) -> None:
    assert classify(status, error) is expected


# -- registration and payload ----------------------------------------------------------


def test_registered_on_the_ai_queue_with_little_cpu() -> None:
    spec = registry.get("ai.complete")
    assert complete.spec is spec and spec.fn is complete.fn
    assert spec.queue == "ai"
    assert spec.num_cpus == 0.1
    assert spec.retry is not None and spec.retry.max_attempts == 5


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user"}]},
        {"messages": HELLO, "temperature": 2.5},
        {"messages": HELLO, "max_tokens": 0},
        {"messages": HELLO, "model": ""},
        {"messages": HELLO, "response_format": {"schema": {}}},
        {"messages": HELLO, "stream": True},
    ],
    ids=["empty", "bad-role", "no-content", "hot", "no-tokens", "empty-model", "format", "extra"],
)
def test_invalid_payload_is_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CompletePayload.model_validate(payload)
