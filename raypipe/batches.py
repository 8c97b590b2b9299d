"""The vocabulary of batches: what is submitted, and what a batch looks like. No Ray, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field

from raypipe.jobs import FollowUpSpec, JobSpec, JobStatus, Strict, digest, iso, parse_iso


class BatchStatus(str, Enum):
    """``running`` until every job is terminal; then the batch's one outcome."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    CANCELLED = "cancelled"


class BatchSpec(Strict):
    """A batch as submitted: its jobs, and what happens once the last one ends.

    ``then`` is a follow-up job whose ``with_result`` field (if named) receives the
    batch's summary (``id``, ``status``, ``total``, ``counts``), so ``when`` can test
    ``counts.failed``, say.
    """

    jobs: list[JobSpec] = Field(min_length=1)
    webhook_url: str | None = Field(default=None, max_length=2048)
    then: FollowUpSpec | None = None
    tags: list[str] = Field(default_factory=list, max_length=50)

    def fingerprint(self) -> str:
        """A stable hash of what was asked, to tell a replay of an ``Idempotency-Key`` from
        a different batch sent under the same key."""
        return digest(self.model_dump(mode="json"))


def outcome(counts: dict[str, int], cancel_requested: bool) -> BatchStatus:
    """The one outcome of a batch whose jobs are all terminal."""
    if cancel_requested:
        return BatchStatus.CANCELLED
    if counts.get(JobStatus.FAILED.value, 0) or counts.get(JobStatus.CANCELLED.value, 0):
        return BatchStatus.COMPLETED_WITH_FAILURES
    return BatchStatus.COMPLETED


def eta_s(
    total: int, progress: float, first_started: datetime | None, now: datetime
) -> float | None:
    """Seconds left at the rate observed since the batch's first job started; None until
    there is a rate to go by."""
    if progress >= 100.0:
        return 0.0
    if first_started is None or progress <= 0.0:
        return None
    elapsed = (now - first_started).total_seconds()
    if elapsed <= 0:
        return None
    return round(elapsed * (100.0 - progress) / progress, 1)


@dataclass(frozen=True)
class BatchRecord:
    """A batch with its live counts, as the API shows it."""

    id: str
    tenant: str
    status: BatchStatus
    total: int
    counts: dict[str, int]
    progress: float
    eta_s: float | None
    tags: list[str]
    webhook_url: str | None
    then: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    finished_at: datetime | None
    completions: int = 0
    job_ids: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        """How many of its jobs are terminal."""
        return sum(self.counts.get(s.value, 0) for s in JobStatus if s.is_terminal)

    @property
    def is_finished(self) -> bool:
        return self.status is not BatchStatus.RUNNING

    def summary(self) -> dict[str, Any]:
        """What a completion callback receives."""
        return {
            "id": self.id,
            "status": self.status.value,
            "total": self.total,
            "counts": dict(self.counts),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "outcome": self.status.value if self.is_finished else None,
            "total": self.total,
            "counts": dict(self.counts),
            "progress": self.progress,
            "eta_s": self.eta_s,
            "tenant": self.tenant,
            "tags": list(self.tags),
            "webhook_url": self.webhook_url,
            "then": self.then,
            "cancel_requested": self.cancel_requested,
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
            "links": {
                "self": f"/v1/batches/{self.id}",
                "jobs": f"/v1/batches/{self.id}/jobs",
                "events": f"/v1/batches/{self.id}/events",
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRecord:
        return cls(
            id=data["id"],
            tenant=data["tenant"],
            status=BatchStatus(data["status"]),
            total=data["total"],
            counts=dict(data["counts"]),
            progress=float(data["progress"]),
            eta_s=data.get("eta_s"),
            tags=list(data.get("tags") or []),
            webhook_url=data.get("webhook_url"),
            then=data.get("then"),
            cancel_requested=bool(data.get("cancel_requested", False)),
            created_at=parse_iso(data["created_at"]),
            finished_at=parse_iso(data.get("finished_at")),
            job_ids=list(data.get("job_ids") or []),
        )
