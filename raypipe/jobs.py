"""The vocabulary of jobs: submission specs and records (statuses and their moves:
:mod:`raypipe.lifecycle`). No Ray, no SQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from operator import attrgetter
from typing import TYPE_CHECKING, Any, overload

from pydantic import (
    AliasChoices,
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raypipe.exceptions import MAX_DETAILS
from raypipe.lifecycle import TERMINAL_STATUSES as TERMINAL_STATUSES
from raypipe.lifecycle import JobStatus

if TYPE_CHECKING:
    from raypipe.job_logs import LogLine  # which imports this module


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AttemptStatus(str, Enum):
    """The outcome of one execution of a job."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


#: The longest delay a job may be submitted with (ten years).
MAX_DELAY_S = 10 * 365 * 86_400
#: The longest time limit an attempt may have (thirty days): longer is no limit in
#: practice, and an unbounded number overflows the database's interval arithmetic.
MAX_TIMEOUT_S = 30 * 86_400
#: The highest priority a job may have (admin keys; tenant keys have a configured range
#: below it, ``tenant_priority_min``..``tenant_priority_max``).
MAX_PRIORITY = 1_000_000
#: The deepest nesting a payload may have: generous for any real payload, and far below
#: what breaks serializing it (pydantic refuses about 255 levels) or recursing over it.
MAX_PAYLOAD_DEPTH = 64


#: A payload as a caller may give it: a pydantic model of the job type's payload, or its JSON.
PayloadLike = BaseModel | Mapping[str, Any] | None


def payload_of(payload: PayloadLike) -> dict[str, Any]:
    """A payload as JSON-ready data: a pydantic model is dumped as JSON would carry it
    (dates as ISO text), None is ``{}``."""
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return dict(payload or {})


def unknown_keys(model: type[BaseModel], data: Any) -> list[str]:
    """The keys of ``data`` that ``model`` forbids, when there are more than an error lists
    (:data:`~raypipe.exceptions.MAX_DETAILS`); else ``[]``, and pydantic reports them."""
    if model.model_config.get("extra") != "forbid" or not isinstance(data, dict):
        return []
    if len(data) <= MAX_DETAILS:
        return []
    known: set[str] = set()
    for name, field_info in model.model_fields.items():
        aliases = field_info.validation_alias
        choices = aliases.choices if isinstance(aliases, AliasChoices) else [aliases]
        for alias in (name, field_info.alias, *choices):
            first = alias.path[0] if isinstance(alias, AliasPath) else alias
            if isinstance(first, str):
                known.add(first)
    return [key for key in data if key not in known]


class Strict(BaseModel):
    """A request's object: unknown keys are refused, and many of them in one error. pydantic
    makes an error of each, and converting half a million of those to Python (as FastAPI
    does with a body's) takes the API seconds."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_keys(cls, data: Any) -> Any:
        unknown = unknown_keys(cls, data)
        if len(unknown) > MAX_DETAILS:
            named = ", ".join(repr(key[:40]) for key in unknown[:3])
            raise ValueError(f"{len(unknown):,} unknown fields ({named}, …)")
        return data


class _JobFields(Strict):
    """What a submitted job and a follow-up job have in common."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, min_length=1, max_length=200)
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    delay_s: float = Field(default=0.0, ge=0, le=MAX_DELAY_S)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    tags: list[str] = Field(default_factory=list, max_length=50)
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="POSTed a signed event when the job ends (Standard Webhooks)",
    )
    concurrency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="at most the queue's key_limit (default 1) of the tenant's jobs with"
        " this key run at once; the others wait queued",
    )

    @field_validator("payload", mode="before")
    @classmethod
    def _dumped(cls, payload: Any) -> Any:
        """A pydantic model instance is taken as its JSON data."""
        return payload_of(payload) if isinstance(payload, BaseModel) else payload

    @field_validator("payload")
    @classmethod
    def _not_too_deep(cls, payload: dict[str, Any]) -> dict[str, Any]:
        if nests_deeper(payload, MAX_PAYLOAD_DEPTH):
            raise ValueError(f"must not nest deeper than {MAX_PAYLOAD_DEPTH} levels")
        return payload


class Condition(BaseModel):
    """A test on one field of a result: ``{"field": "confidence", "gte": 0.8}``.

    ``field`` is a dotted path into the result; a missing field fails the test.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    field: str = Field(min_length=1, max_length=200)
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None
    eq: str | float | bool | None = None
    ne: str | float | bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        self.test()
        return self

    def test(self) -> tuple[str, Any]:
        """The one (operator, value) given; ``eq``/``ne`` may compare with null."""
        given = [
            (op, getattr(self, op))
            for op in ("gte", "gt", "lte", "lt", "eq", "ne")
            if op in self.model_fields_set and (getattr(self, op) is not None or op in ("eq", "ne"))
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of gte, gt, lte, lt, eq, ne")
        return given[0]

    def stored(self) -> dict[str, Any]:
        op, value = self.test()
        return {"field": self.field, op: value}


#: How deep ``then`` chains may nest.
MAX_FOLLOW_UP_DEPTH = 10


class FollowUpSpec(_JobFields):
    """A job submitted when its parent completes, if ``when`` holds for the parent's result.

    ``with_result`` names a payload field that receives the parent's result.
    """

    when: Condition | None = None
    with_result: str | None = Field(default=None, min_length=1, max_length=200)
    then: FollowUpSpec | None = None


def follow_ups(then: FollowUpSpec | None) -> int:
    """How many jobs a ``then`` chain may add, one as each parent completes: a submission
    is charged for them up front, since they are made later, out of any request."""
    count = 0
    while then is not None:
        count, then = count + 1, then.then
    return count


def jobs_made(specs: Iterable[JobSpec]) -> int:
    """How many jobs these specs may make in all: each one, and its follow-ups."""
    return sum(1 + follow_ups(spec.then) for spec in specs)


class UniqueWhile(str, Enum):
    """How long a unique job keeps others of its key out."""

    #: Until it starts.
    QUEUED = "queued"
    #: Until it ends.
    RUNNING = "running"


class OnDuplicate(str, Enum):
    """What a submission does that finds a unique job of its key in its window."""

    #: Returns that job, unchanged.
    SKIP = "skip"
    #: Gives that job (if still queued) the new payload and a new ``run_at`` (debounce).
    REPLACE = "replace"


#: Spec fields added after the first release: a fingerprint counts them only when given,
#: so that the hashes of older replays still match.
LATER_FIELDS = ("then", "webhook_url", "concurrency_key", "unique_key")


class JobSpec(_JobFields):
    """A job as submitted: only ``type`` and ``payload`` are required."""

    run_at: datetime | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    then: FollowUpSpec | None = None
    unique_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="while a job of the tenant's with this type and key is in its window,"
        " submitting another returns it (200, Unique-Replayed: true)",
    )
    unique_while: UniqueWhile = UniqueWhile.QUEUED
    on_duplicate: OnDuplicate = OnDuplicate.SKIP

    @field_validator("unique_while", "on_duplicate")
    @classmethod
    def _unique_options_need_a_key(cls, value: Any, info: ValidationInfo) -> Any:
        """Located at the option given (a model's own error would be the body's); a
        ``unique_key`` refused already is not reported again."""
        if "unique_key" in info.data and info.data["unique_key"] is None:
            raise ValueError(f"{info.field_name} needs a unique_key")
        return value

    def fingerprint(self) -> str:
        """A stable hash of what was asked, to tell a replay from a conflicting reuse of a key."""
        fields = set(JobSpec.model_fields) - {"idempotency_key"}
        # Optional fields added later count only when given, so older hashes still match.
        fields -= {name for name in LATER_FIELDS if getattr(self, name) is None}
        if self.unique_key is None:
            fields -= {"unique_while", "on_duplicate"}
        return digest(self.model_dump(mode="json", include=fields, exclude_unset=False))


def digest(body: Any) -> str:
    """A stable hash of a request's JSON (keys in any order), the fingerprint an
    idempotency key's replay must match."""
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


#: A job as a client takes it: a :class:`JobSpec`, its JSON, or ``(type, payload)``.
SpecLike = JobSpec | dict[str, Any] | tuple[str, PayloadLike]


@dataclass(frozen=True)
class ErrorInfo:
    """What a failed attempt left behind."""

    type: str
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ErrorInfo | None:
        """The API's ``{"type", "message"}``, or None for no error."""
        if not data:
            return None
        return cls(type=data["type"], message=data.get("message") or "")


#: The error of a job cancelled on a user's request.
CANCELLED_ON_REQUEST = ErrorInfo("Cancelled", "cancelled on request")


#: Marks a record field the API does not show (:meth:`JobRecord.to_dict` leaves it out).
NOT_SHOWN = {"shown": False}


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """A job row as read from the store: the one declaration of a job's fields. Its dict
    form (:meth:`to_dict`, :meth:`from_dict`, in this order) and the store's row mapping
    derive from these fields; the API's ``JobView`` is held equal to them by a test."""

    id: str
    type: str
    queue: str
    #: Higher first; within a priority, older first.
    priority: int
    status: JobStatus
    #: 0 to 100; with ``message`` and ``stage``, the current attempt's last report (a
    #: queued job's message may say what it waits for).
    progress: float
    message: str | None
    stage: str | None
    #: The current attempt's number: 0 before the first claim.
    attempt: int
    max_attempts: int
    #: Each attempt's time limit, counted from its start.
    timeout_s: float
    #: A user asked it to stop; the dispatcher that holds it records the end.
    cancel_requested: bool
    tenant: str
    tags: list[str]
    batch_id: str | None = None
    #: Its place in its batch, from 0.
    batch_index: int | None = None
    webhook_url: str | None = None
    payload: dict[str, Any]
    result: Any
    #: The last failed attempt's error (or why it was cancelled).
    error: ErrorInfo | None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    parent_id: str | None = None
    then: dict[str, Any] | None = None
    #: The trace its submission began (traces on), which its attempts continue.
    trace_id: str | None = None
    #: At most the key limit of the tenant's jobs with this key run at once (in its queue).
    concurrency_key: str | None = None
    #: While it is ``unique_while`` (queued, or queued and running), a submission of the
    #: same type and key by its tenant returns it instead of making another.
    unique_key: str | None = None
    unique_while: str | None = None
    #: The run limit (starts per window) it counts against.
    run_key: str | None = None
    idempotency_key: str | None = field(default=None, metadata=NOT_SHOWN)
    lease_owner: str | None = field(default=None, metadata=NOT_SHOWN)
    lease_expires_at: datetime | None = field(default=None, metadata=NOT_SHOWN)

    def to_dict(self) -> dict[str, Any]:
        """The job as the API and the CLI show it."""
        data = {name: getattr(self, name) for name in _SHOWN}
        for name, write in _WRITERS:
            data[name] = write(data[name])
        data["artifacts"] = [
            {**artifact, "url": f"/v1/jobs/{self.id}/artifacts/{artifact['name']}"}
            for artifact in self.artifacts
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """A job from the API's JSON (the inverse of :meth:`to_dict`).

        Fields the API does not show take their defaults (no idempotency key, no lease);
        a missing ``timeout_s`` is 0.0, ``cancel_requested`` False.
        """
        values: dict[str, Any] = {
            name: data[name] if name in _REQUIRED else data.get(name) for name in _SHOWN
        }
        for name, read in _READERS:
            values[name] = read(values[name])
        values["artifacts"] = [
            {k: v for k, v in a.items() if k != "url"} for a in data.get("artifacts") or []
        ]
        return cls(**values)


@dataclass(frozen=True)
class AttemptRecord:
    """One execution of a job."""

    job_id: str
    attempt: int
    status: AttemptStatus
    #: None while the attempt is claimed but its worker has not reported the start.
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorInfo | None
    lease_owner: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "status": self.status.value,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error.to_dict() if self.error else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], job_id: str) -> AttemptRecord:
        """An attempt of job ``job_id`` from the API's JSON (the inverse of :meth:`to_dict`)."""
        return cls(
            job_id=job_id,
            attempt=data["attempt"],
            status=AttemptStatus(data["status"]),
            started_at=parse_iso(data.get("started_at")),
            finished_at=parse_iso(data.get("finished_at")),
            error=ErrorInfo.from_dict(data.get("error")),
            lease_owner=None,
        )


@dataclass(frozen=True)
class ClaimedJob:
    """What the dispatcher needs to run one attempt of a job."""

    id: str
    type: str
    queue: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_s: float
    tenant: str = "default"
    #: The trace to continue (a W3C traceparent), when traces are on.
    trace_parent: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the dispatcher records it.

    ``status`` is the job's next status: ``queued`` (a retry at ``run_at``),
    ``completed``, ``failed`` or ``cancelled``; ``attempt_status`` overrides the
    attempt's own (``timed_out``), which otherwise follows from ``status``. ``refund``:
    the attempt does not count against ``max_attempts`` (a drain stopped it).
    """

    job_id: str
    attempt: int
    status: JobStatus
    result: Any = None
    error: ErrorInfo | None = None
    run_at: datetime | None = None
    attempt_status: AttemptStatus | None = None
    message: str | None = None
    stage: str | None = None
    artifacts: tuple[dict[str, Any], ...] = ()
    refund: bool = False
    #: The attempt's last log lines, written in the transaction that records it.
    logs: tuple[LogLine, ...] = ()

    @property
    def final_attempt_status(self) -> AttemptStatus:
        if self.attempt_status is not None:
            return self.attempt_status
        return {
            JobStatus.COMPLETED: AttemptStatus.COMPLETED,
            JobStatus.CANCELLED: AttemptStatus.CANCELLED,
        }.get(self.status, AttemptStatus.FAILED)


@dataclass
class ProgressState:
    """The latest progress of a running job, as the progress actor keeps it."""

    job_id: str
    attempt: int
    progress: float
    message: str | None = None
    stage: str | None = None
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "attempt": self.attempt,
            "progress": self.progress,
            "message": self.message,
            "stage": self.stage,
            "seq": self.seq,
        }


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@overload
def parse_iso(value: str) -> datetime: ...


@overload
def parse_iso(value: str | None) -> datetime | None: ...


def parse_iso(value: str | None) -> datetime | None:
    """Read what :func:`iso` wrote (Python 3.10's ``fromisoformat`` knows no ``Z``)."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels, found without
    recursion: a hostile value is as deep as its bytes allow."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth + 1 > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def _error_dict(error: ErrorInfo | None) -> dict[str, str] | None:
    return error.to_dict() if error else None


#: How a record field of each type is written in the dict form and read back; a field of
#: another type is kept as it is. A number, a flag or a collection may be missing from a
#: dict (an older server's): 0, False or empty; so may anything that may be None.
_AS_JSON: dict[str, tuple[Callable[[Any], Any] | None, Callable[[Any], Any]]] = {
    "JobStatus": (attrgetter("value"), JobStatus),
    "ErrorInfo | None": (_error_dict, ErrorInfo.from_dict),
    "datetime": (iso, parse_iso),
    "datetime | None": (iso, parse_iso),
    "float": (None, lambda value: float(value or 0.0)),
    "bool": (None, bool),
    "list[str]": (list, lambda value: list(value or [])),
    "dict[str, Any]": (None, lambda value: value or {}),
}
_MAY_MISS = {"Any", "float", "bool", "list[str]", "dict[str, Any]"}
_FIELDS = [f for f in fields(JobRecord) if f.metadata.get("shown", True)]
#: The fields the API shows, in its order (artifacts get their URLs on top).
_SHOWN = [f.name for f in _FIELDS]
_REQUIRED = {
    f.name
    for f in _FIELDS
    if f.default is MISSING
    and f.default_factory is MISSING
    and "None" not in str(f.type)
    and str(f.type) not in _MAY_MISS
}
_WRITERS = [(f.name, w) for f in _FIELDS if (w := _AS_JSON.get(str(f.type), (None,))[0])]
_READERS = [(f.name, _AS_JSON[str(f.type)][1]) for f in _FIELDS if str(f.type) in _AS_JSON]
