"""``ai.complete``: one chat completion from an OpenAI-compatible service."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raypipe.ai_client import ChatClient, ChatReply, ModelUnavailable
from raypipe.config import Settings
from raypipe.config_groups import RunLimit
from raypipe.context import JobContext
from raypipe.exceptions import PermanentError
from raypipe.jobs import utcnow
from raypipe.registry import processor
from raypipe.retry import RetryPolicy
from raypipe.store import flow_control
from raypipe.store.schema_version import current_database

#: Rate limits and overloaded providers clear within seconds: retry soon (1, 2, 4, 8 s, spread
#: wide because throttled jobs fail together), and honour a ``Retry-After`` of up to 5 minutes.
AI_RETRY = RetryPolicy(max_attempts=5, base_s=1.0, factor=2.0, cap_s=300.0, jitter=0.3)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class CompletePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, description="default: RAYPIPE_AI_MODEL")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = Field(
        default=None, description='passed through, e.g. {"type": "json_object"}'
    )

    @field_validator("response_format")
    @classmethod
    def _has_type(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not isinstance(value.get("type"), str):
            raise ValueError('needs a "type", such as "json_object"')
        return value


def _run_limit(settings: Settings) -> RunLimit | None:
    """RAYPIPE_AI_RUN_LIMIT: read where jobs are submitted and dispatched."""
    return settings.ai.run_limit


# Network-bound: the attempt waits on the service, so a tenth of a CPU lets ten run per core.
# Its run limit (RAYPIPE_AI_RUN_LIMIT) holds every caller of the service to its rate.
@processor("ai.complete", queue="ai", num_cpus=0.1, retry=AI_RETRY, run_limit=_run_limit)
def complete(payload: CompletePayload, ctx: JobContext) -> dict[str, Any]:
    """Asks the chat model; if the service does not offer it, asks ``ai_fallback_model`` once,
    in the same attempt, rather than burning retries on a model that will not appear."""
    settings = ctx.settings
    if not settings.ai.base_url:
        raise PermanentError("ai.complete is not configured: set RAYPIPE_AI_BASE_URL")
    asked = payload.model or settings.ai.model
    models = [asked]
    if settings.ai.fallback_model and settings.ai.fallback_model != asked:
        models.append(settings.ai.fallback_model)
    messages = [message.model_dump() for message in payload.messages]
    options = payload.model_dump(exclude={"messages", "model"}, exclude_none=True)
    key = settings.ai.api_key.get_secret_value() if settings.ai.api_key else None

    missing: list[ModelUnavailable] = []
    client = ChatClient(
        settings.ai.base_url,
        api_key=key,
        timeout_s=settings.ai.timeout_s,
        on_rate_limited=lambda seconds: pause_run_key(settings, seconds),
    )
    with client as chat:
        for model in models:
            note = f"{asked} unavailable, asking {model}" if missing else f"asking {model}"
            ctx.progress(50.0 if missing else 0.0, note, stage="request")
            answer = chat.complete(model, messages, **options)
            if isinstance(answer, ChatReply):
                ctx.progress(100.0, "done", stage="done")
                return {
                    "text": answer.text,
                    "model": answer.model,
                    "usage": answer.usage,
                    "finish_reason": answer.finish_reason,
                    "fallback_used": model != asked,
                }
            missing.append(answer)
    raise PermanentError(_unavailable_message(missing))


def pause_run_key(settings: Settings, seconds: float) -> None:
    """The service answered 429 with a ``Retry-After``: no ai.complete job starts, on any
    worker, until it is over (the run limit's key is paused; without a run limit there is
    no key, and only this job waits, by its retry's delay)."""
    limit = settings.ai.run_limit
    if limit is not None:
        with current_database(settings.database_url) as engine:
            flow_control.pause(engine, limit.key, utcnow() + timedelta(seconds=seconds))


def _unavailable_message(missing: list[ModelUnavailable]) -> str:
    reasons = "; ".join(f"{m.model}: HTTP {m.status} {m.message}" for m in missing)
    if len(missing) == 1:
        return (
            f"model {missing[0].model} is not available from the AI service ({reasons});"
            " set RAYPIPE_AI_FALLBACK_MODEL to fall back to another"
        )
    names = " nor ".join(m.model for m in missing)
    return f"neither model {names} is available from the AI service ({reasons})"
