"""Turning submitted job specs into rows: validation and defaults, shared by every entry point."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pydantic

from raypipe import outbound, registry, rights, tracing
from raypipe.batches import BatchSpec
from raypipe.config import DEFAULT_QUEUE, Settings
from raypipe.exceptions import MAX_DETAILS, Forbidden, InvalidInput, OutboundRefused
from raypipe.jobs import MAX_FOLLOW_UP_DEPTH, FollowUpSpec, JobSpec, unknown_keys

DEFAULT_TENANT = "default"


def prepare(
    specs: Sequence[JobSpec | dict[str, Any]],
    settings: Settings,
    now: datetime,
    tenant: str = DEFAULT_TENANT,
    loc_prefix: tuple[str | int, ...] = (),
    admin: bool = True,
) -> list[dict[str, Any]]:
    """Validate every spec and return the rows to insert; raise one error listing every problem.

    Nothing is written when any spec is invalid (all-or-nothing). ``admin``: whether the
    submitter may use admin-only job types and queues and priorities beyond a tenant's
    range (:mod:`raypipe.rights`; the CLI and in-cluster clients may). A right refused is a
    :class:`Forbidden` at once; every other problem is listed in one :class:`InvalidInput`.
    """
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    more = 0
    for index, raw in enumerate(specs):
        prefix = (*loc_prefix, index) if len(specs) > 1 or loc_prefix else ()
        try:
            rows.append(_row(raw, settings, now, tenant, admin))
        except Forbidden as exc:  # a right, not a mistake: no use listing the others
            raise relocated(exc, prefix) from None
        except InvalidInput as exc:
            listed = exc.details[: max(0, MAX_DETAILS - len(details))]
            details.extend(located(listed, prefix))
            more += exc.more + len(exc.details) - len(listed)
    if details:
        raise InvalidInput(summary(details, more), details=details, more=more)
    return rows


def prepare_batch(
    raw: BatchSpec | dict[str, Any],
    settings: Settings,
    now: datetime,
    tenant: str = DEFAULT_TENANT,
    admin: bool = True,
    idempotency_key: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate a batch: the rows of its jobs, and the batch's own fields (tags, webhook,
    follow-up, the request's idempotency key and fingerprint). Every problem is reported at
    once, located under ``jobs``/``then``/…"""
    spec = raw if isinstance(raw, BatchSpec) else parse_model(BatchSpec, raw, ())
    check_text(idempotency_key, ("header", "Idempotency-Key"))
    limit = settings.limits.max_batch_jobs
    if len(spec.jobs) > limit:
        raise InvalidInput(
            f"jobs: at most {limit} per batch (RAYPIPE_MAX_BATCH_JOBS)",
            details=[{"loc": ["jobs"], "msg": f"at most {limit} items"}],
        )
    # A unique job's duplicate would stand for a job of another batch, or of none.
    keyed = [
        {"loc": ["jobs", i, field], "msg": "not supported inside a batch"}
        for i, job in enumerate(spec.jobs)
        for field in ("idempotency_key", "unique_key")
        if getattr(job, field)
    ]
    if keyed:
        raise InvalidInput(summary(keyed), details=keyed)
    check_text(spec.tags, ("tags",))
    _check_webhook_url(spec.webhook_url, settings)
    then = _follow_up(spec.then, settings, ("then",), 1, admin) if spec.then else None
    rows = prepare(spec.jobs, settings, now, tenant, ("jobs",), admin)
    return rows, {
        "tags": spec.tags,
        "webhook_url": spec.webhook_url,
        "then": then,
        "idempotency_key": idempotency_key,
        # As for a job: hashed only when the key may be used again.
        "request_hash": spec.fingerprint() if idempotency_key else "",
    }


def _check_webhook_url(url: str | None, settings: Settings) -> None:
    """The outbound guard's checks that need no DNS (form, literal addresses), as a 422
    located at ``webhook_url``; the rest is checked at each delivery."""
    if url is not None:
        try:
            outbound.check_url(url, settings, outbound.Purpose.WEBHOOK)
        except OutboundRefused as exc:
            details = [{"loc": ["webhook_url"], "msg": exc.message}]
            raise InvalidInput(f"webhook_url: {exc.message}", details=details) from None


def check_text(value: Any, loc: tuple[str | int, ...] = ()) -> None:
    """Refuse strings a database cannot store: NUL characters (PostgreSQL text and JSONB)
    and lone surrogates (not UTF-8), anywhere in a JSON value."""
    if isinstance(value, str):
        if "\x00" in value:
            problem = "must not contain NUL characters"
        else:
            try:
                value.encode("utf-8")
                return
            except UnicodeEncodeError:
                problem = "must be valid Unicode (no lone surrogates)"
        where = ".".join(str(part) for part in loc) or "body"
        raise InvalidInput(f"{where}: {problem}", details=[{"loc": list(loc), "msg": problem}])
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(key, loc)
            check_text(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, (*loc, index))


def _row(
    raw: JobSpec | dict[str, Any], settings: Settings, now: datetime, tenant: str, admin: bool
) -> dict[str, Any]:
    spec = raw if isinstance(raw, JobSpec) else parse_model(JobSpec, raw, ())
    # The payload's schema first: it refuses a payload of a million unknown keys at once,
    # where this walk would take seconds to find them all fine.
    resolved = _resolved(spec, settings, admin)
    check_text(spec.model_dump(mode="json"))
    return {
        "id": str(uuid.uuid4()),
        "tenant": tenant,
        **resolved,
        "idempotency_key": spec.idempotency_key,
        # Compared only when the key is used again: a hash of megabytes of payload is not
        # worked out for jobs that have no key.
        "request_hash": spec.fingerprint() if spec.idempotency_key else "",
        "unique_key": spec.unique_key,
        "unique_while": spec.unique_while.value if spec.unique_key else None,
        # Held while the job is in its window (raypipe.store.unique clears it).
        "unique_slot": spec.unique_key,
        # What a duplicate does to the job holding the slot; asked of the spec, not stored
        # (raypipe.store.unique.ON_DUPLICATE).
        "on_duplicate": spec.on_duplicate if spec.unique_key else None,
        "created_at": now,
        "run_at": _run_at(spec, now),
        "then": _follow_up(spec.then, settings, ("then",), 1, admin) if spec.then else None,
        "parent_id": None,
        # The submitter's span (the API's request), which the job's attempts continue.
        "trace_parent": tracing.current_parent(),
    }


def _resolved(
    spec: JobSpec | FollowUpSpec, settings: Settings, admin: bool, optional: str | None = None
) -> dict[str, Any]:
    """Type, queue, priority, payload and limits of a spec, with the defaults filled in.

    ``optional`` names a payload field filled in later (a follow-up's ``with_result``):
    the payload is checked without complaining that it is missing.
    """
    processor = registry.get(spec.type)
    rights.check_type(processor, admin)
    model: pydantic.BaseModel | None
    try:
        model = parse_model(processor.payload_model, spec.payload, ("payload",), settings)
        payload = model.model_dump(mode="json", exclude_unset=True)
    except InvalidInput as exc:
        kept = [d for d in exc.details if d["loc"][:2] != ["payload", optional]]
        if kept:
            raise InvalidInput(summary(kept, exc.more), details=kept, more=exc.more) from None
        model, payload = None, spec.payload
    queue = spec.queue or processor.queue or DEFAULT_QUEUE
    if queue not in settings.queues:
        known = ", ".join(sorted(settings.queues))
        raise InvalidInput(
            f"queue: unknown queue {queue!r}",
            details=[{"loc": ["queue"], "msg": f"unknown queue {queue!r}; known: {known}"}],
        )
    rights.check_queue(queue, settings, admin)
    rights.check_priority(spec.priority, settings, admin)
    policy_attempts = processor.retry.max_attempts if processor.retry else None
    _check_webhook_url(spec.webhook_url, settings)
    # A follow-up's payload is whole only once its parent's result is in: it gets the key
    # its spec names, and its run limit's own key.
    keys = processor.keys(model, settings, queue)
    return {
        "type": spec.type,
        "queue": queue,
        "priority": spec.priority if spec.priority is not None else settings.queues[queue].priority,
        "payload": payload,
        "tags": list(spec.tags),
        "max_attempts": spec.max_attempts
        or policy_attempts
        or settings.engine.default_max_attempts,
        "timeout_s": spec.timeout_s or processor.timeout_s or settings.engine.default_timeout_s,
        "webhook_url": spec.webhook_url,
        "concurrency_key": spec.concurrency_key or keys["concurrency_key"],
        "run_key": keys["run_key"],
    }


def _follow_up(
    spec: FollowUpSpec, settings: Settings, loc: tuple[str, ...], depth: int, admin: bool
) -> dict[str, Any]:
    """The stored form of a ``then``: validated now, turned into a job on completion."""
    if depth > MAX_FOLLOW_UP_DEPTH:
        problem = f"follow-ups nest at most {MAX_FOLLOW_UP_DEPTH} deep"
        raise InvalidInput(
            f"{'.'.join(loc)}: {problem}", details=[{"loc": list(loc), "msg": problem}]
        )
    try:
        resolved = _resolved(spec, settings, admin, optional=spec.with_result)
    except (InvalidInput, Forbidden) as exc:
        raise relocated(exc, loc) from None
    return {
        **resolved,
        "delay_s": spec.delay_s,
        "when": spec.when.stored() if spec.when else None,
        "with_result": spec.with_result,
        "then": (
            _follow_up(spec.then, settings, (*loc, "then"), depth + 1, admin) if spec.then else None
        ),
    }


def _run_at(spec: JobSpec, now: datetime) -> datetime:
    if spec.run_at is not None:
        if spec.run_at.tzinfo is None:
            raise InvalidInput(
                "run_at: must include a time zone",
                details=[{"loc": ["run_at"], "msg": "must include a time zone (e.g. Z)"}],
            )
        try:
            return max(spec.run_at.astimezone(timezone.utc), now)
        except OverflowError:
            raise InvalidInput(
                "run_at: out of range",
                details=[{"loc": ["run_at"], "msg": "out of range"}],
            ) from None
    return now + timedelta(seconds=spec.delay_s)


def parse_model(
    model: type[pydantic.BaseModel],
    data: Any,
    loc: tuple[str | int, ...],
    settings: Settings | None = None,
) -> Any:
    """``model.model_validate(data)``; errors become :class:`InvalidInput` under ``loc``,
    the first :data:`~raypipe.exceptions.MAX_DETAILS` of them listed and the rest counted.

    Validators see the settings as ``info.context["settings"]`` (configured limits).
    """
    unknown = unknown_keys(model, data)
    if len(unknown) > MAX_DETAILS:
        # Refused before pydantic is asked: it would make an error of each key, and
        # converting half a million of them to Python takes seconds.
        details = [{"loc": [*loc, key], "msg": UNKNOWN_KEY} for key in unknown[:MAX_DETAILS]]
        more = len(unknown) - MAX_DETAILS
        raise InvalidInput(summary(details, more), details=details, more=more)
    try:
        return model.model_validate(data, context={"settings": settings} if settings else None)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        details = [{"loc": [*loc, *err["loc"]], "msg": err["msg"]} for err in errors[:MAX_DETAILS]]
        more = exc.error_count() - len(details)
        raise InvalidInput(summary(details, more), details=details, more=more) from None


#: pydantic's message for a key that a model forbidding extra keys does not have.
UNKNOWN_KEY = "Extra inputs are not permitted"


def relocated(exc: InvalidInput | Forbidden, loc: Sequence[str | int]) -> InvalidInput | Forbidden:
    """``exc`` for a spec placed under ``loc`` in a request: its details located there, its
    message naming the first of them."""
    details = located(exc.details, loc)
    if isinstance(exc, Forbidden):
        return Forbidden(summary(details), details=details)
    return InvalidInput(summary(details, exc.more), details=details, more=exc.more)


def located(details: Iterable[dict[str, Any]], loc: Sequence[str | int]) -> list[dict[str, Any]]:
    """``details`` placed under ``loc`` (a spec's problems, under its place in a request)."""
    return [{**d, "loc": [*loc, *d.get("loc", [])]} for d in details]


def summary(details: list[dict[str, Any]], more: int = 0) -> str:
    """One line for many problems: the first, located, and how many more (``more``: those
    found beyond ``details``)."""
    first = details[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    others = len(details) - 1 + more
    return f"{where}: {first['msg']}" + (f" (and {others} more)" if others else "")
