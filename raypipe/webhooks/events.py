"""Webhook events as outbox rows: written in the transaction that records what they tell, so
each terminal event is delivered from exactly one row, whatever crashes afterwards."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from raypipe.jobs import ErrorInfo, JobStatus, iso

#: Largest body sent; a job's result that would make it larger is left out (the receiver
#: reads the job instead), so a receiver never gets an unbounded request.
MAX_BODY_BYTES = 64 * 1024


def outbox_row(
    tenant: str,
    event: str,
    url: str,
    data: dict[str, Any],
    now: datetime,
    *,
    job_id: str | None = None,
    batch_id: str | None = None,
    trace_parent: str | None = None,
) -> dict[str, Any]:
    """A pending delivery of ``{"type", "timestamp", "data"}`` (the Standard Webhooks shape);
    ``trace_parent``: the job's trace, which the delivery's spans continue."""
    body = _encode({"type": event, "timestamp": iso(now), "data": data})
    if len(body.encode()) > MAX_BODY_BYTES and "result" in data:
        data = {**data, "result": None, "result_omitted": True}
        body = _encode({"type": event, "timestamp": iso(now), "data": data})
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "tenant": tenant,
        "event": event,
        "job_id": job_id,
        "batch_id": batch_id,
        "url": url,
        "body": body,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "trace_parent": trace_parent,
    }


def job_event(
    job: Any, status: JobStatus, result: Any, error: ErrorInfo | None, now: datetime
) -> dict[str, Any]:
    """The delivery of a job's terminal event; ``job`` is a row with its identity columns."""
    data = {
        "id": job.id,
        "type": job.type,
        "queue": job.queue,
        "status": status.value,
        "attempt": job.attempt,
        "tenant": job.tenant,
        "tags": list(job.tags or []),
        "batch_id": job.batch_id,
        "result": result if status is JobStatus.COMPLETED else None,
        "error": error.to_dict() if error else None,
        "finished_at": iso(now),
        "links": {"self": f"/v1/jobs/{job.id}"},
    }
    return outbox_row(
        job.tenant,
        f"job.{status.value}",
        job.webhook_url,
        data,
        now,
        job_id=job.id,
        trace_parent=job.trace_parent,
    )


def batch_event(tenant: str, url: str, summary: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The delivery of a batch's completion (``summary`` as the follow-up job gets it)."""
    data = {**summary, "finished_at": iso(now), "links": {"self": f"/v1/batches/{summary['id']}"}}
    return outbox_row(tenant, "batch.completed", url, data, now, batch_id=summary["id"])


def _encode(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=True)
