"""The job record's fields are declared once, in :class:`JobRecord`: its dict form and back
and the store's row mapping and defaults derive from them. Two copies remain, held equal
here field by field: the table's columns and the API's :class:`JobView` (a pydantic model,
which makes the API's schema), so a field added in one place and forgotten in another
fails here, not in a user's hands (adding ``trace_parent`` touched twelve modules). Every
difference between two of them is named below, with why.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

from raypipe.api.schemas import JobView
from raypipe.jobs import ErrorInfo, JobRecord, JobStatus
from raypipe.store import jobs as job_store
from raypipe.store.tables import jobs

RECORD = {f.name for f in dataclasses.fields(JobRecord)}
COLUMNS = {c.name for c in jobs.columns}

#: Record fields kept elsewhere than in a column of their own name.
NOT_COLUMNS = {
    "error": {"error_type", "error_message", "error_traceback"},
    "payload": set(),  # its own table (job_payloads): claims read rows without it
    "trace_id": {"trace_parent"},  # the W3C traceparent is kept; its trace id is shown
}
#: Columns only the store reads: the fingerprint an idempotency key's replay must match,
#: when the row last changed, and the unique key while the job holds it (the unique
#: index's column, cleared when the job leaves its window).
STORE_ONLY = {"request_hash", "updated_at", "unique_slot"}
#: Record fields the API does not show: a key's secret use and the dispatcher's lease.
NOT_SHOWN = {"idempotency_key", "lease_owner", "lease_expires_at"}
#: What the API's view adds to the record: the attempts (on request) and links.
VIEW_ONLY = {"attempts", "links"}


def full_record() -> JobRecord:
    """A record with every field set to something other than its default."""
    now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    return JobRecord(
        id="00000000-0000-0000-0000-000000000001",
        tenant="t",
        type="noop",
        queue="default",
        priority=3,
        status=JobStatus.FAILED,
        payload={"a": 1},
        progress=42.0,
        message="m",
        stage="s",
        result={"r": 1},
        error=ErrorInfo("ValueError", "bad", None),
        attempt=2,
        max_attempts=3,
        timeout_s=60.0,
        tags=["x"],
        idempotency_key="k",
        cancel_requested=True,
        created_at=now,
        run_at=now + timedelta(seconds=1),
        started_at=now + timedelta(seconds=2),
        finished_at=now + timedelta(seconds=3),
        lease_owner="o",
        lease_expires_at=now + timedelta(seconds=4),
        artifacts=[{"name": "a.txt", "size": 1}],
        parent_id="00000000-0000-0000-0000-000000000002",
        then={"type": "noop"},
        batch_id="00000000-0000-0000-0000-000000000003",
        batch_index=0,
        webhook_url="https://example.com/hook",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        concurrency_key="user-1",
        unique_key="refresh-doc-1",
        unique_while="running",
        run_key="openai",
    )


def test_every_record_field_has_its_column_and_every_column_its_field() -> None:
    kept = set().union(*NOT_COLUMNS.values())
    assert RECORD - set(NOT_COLUMNS) <= COLUMNS, RECORD - set(NOT_COLUMNS) - COLUMNS
    assert COLUMNS - STORE_ONLY - kept == RECORD - set(NOT_COLUMNS)


def test_the_store_maps_every_column_and_defaults_only_columns() -> None:
    assert set(job_store._JOB_DEFAULTS) <= COLUMNS
    row = {name: None for name in COLUMNS} | {
        "id": "j",
        "tenant": "t",
        "type": "noop",
        "queue": "default",
        "priority": 0,
        "status": "queued",
        "payload": {},
        "progress": 0,
        "attempt": 0,
        "max_attempts": 1,
        "timeout_s": 1.0,
    }
    record = job_store.job_from_mapping(row)
    assert {f.name for f in dataclasses.fields(record)} == RECORD


def test_the_dict_form_the_api_view_and_the_record_name_the_same_fields() -> None:
    shown = set(full_record().to_dict())
    assert shown == RECORD - NOT_SHOWN
    assert set(JobView.model_fields) - VIEW_ONLY == shown


def test_the_dict_form_reads_back_as_the_record_but_what_it_does_not_show() -> None:
    record = full_record()
    back = JobRecord.from_dict(record.to_dict())
    hidden = {"idempotency_key": None, "lease_owner": None, "lease_expires_at": None}
    assert back == dataclasses.replace(record, **hidden)


def test_the_api_spells_the_statuses_the_record_has() -> None:
    assert JobView.model_fields["status"].annotation is JobStatus
    schema = JobView.model_json_schema()
    status = schema["properties"]["status"]
    enum = schema["$defs"][status["$ref"].rsplit("/", 1)[-1]]["enum"]
    assert enum == [s.value for s in JobStatus]
