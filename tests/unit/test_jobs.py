"""The pure vocabulary of jobs: statuses, spec fingerprints, records and outcomes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest

from raypipe import artifacts
from raypipe.exceptions import InvalidInput
from raypipe.jobs import (
    MAX_PAYLOAD_DEPTH,
    MAX_TIMEOUT_S,
    TERMINAL_STATUSES,
    AttemptRecord,
    AttemptStatus,
    ErrorInfo,
    JobRecord,
    JobSpec,
    JobStatus,
    Outcome,
    ProgressState,
    nests_deeper,
    utcnow,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


# -- statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (JobStatus.QUEUED, False),
        (JobStatus.PROCESSING, False),
        (JobStatus.COMPLETED, True),
        (JobStatus.FAILED, True),
        (JobStatus.CANCELLED, True),
    ],
)
def test_is_terminal(status: JobStatus, terminal: bool) -> None:
    assert status.is_terminal is terminal


def test_terminal_statuses() -> None:
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED} == TERMINAL_STATUSES


def test_status_values_are_what_the_api_shows() -> None:
    assert [s.value for s in JobStatus] == [
        "queued",
        "processing",
        "completed",
        "failed",
        "cancelled",
    ]
    assert JobStatus("failed") is JobStatus.FAILED
    assert JobStatus.QUEUED == "queued"  # a str enum


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.utcoffset() == timedelta(0)


# -- JobSpec ----------------------------------------------------------------------------


def test_fingerprint_ignores_dict_key_order() -> None:
    a = JobSpec.model_validate(
        {"type": "t", "payload": {"a": 1, "b": {"x": 1, "y": [1, 2]}}, "priority": 3}
    )
    b = JobSpec.model_validate(
        {"priority": 3, "payload": {"b": {"y": [1, 2], "x": 1}, "a": 1}, "type": "t"}
    )
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_is_stable_and_hex() -> None:
    spec = JobSpec(type="t", payload={"a": 1})
    assert spec.fingerprint() == JobSpec(type="t", payload={"a": 1}).fingerprint()
    assert len(spec.fingerprint()) == 64
    int(spec.fingerprint(), 16)


def test_fingerprint_treats_defaults_like_explicit_values() -> None:
    assert JobSpec(type="t").fingerprint() == JobSpec(type="t", payload={}).fingerprint()


@pytest.mark.parametrize(
    "other",
    [
        {"type": "t", "payload": {"a": 2}},
        {"type": "t", "payload": {"a": "1"}},
        {"type": "t", "payload": {"a": 1, "b": None}},
        {"type": "u", "payload": {"a": 1}},
        {"type": "t", "payload": {"a": 1}, "priority": 1},
        {"type": "t", "payload": {"a": 1}, "queue": "q"},
        {"type": "t", "payload": {"a": 1}, "tags": ["x"]},
        {"type": "t", "payload": {"a": 1}, "delay_s": 5},
    ],
)
def test_fingerprint_differs_for_different_requests(other: dict[str, Any]) -> None:
    base = JobSpec.model_validate({"type": "t", "payload": {"a": 1}})
    assert JobSpec.model_validate(other).fingerprint() != base.fingerprint()


def test_fingerprint_ignores_idempotency_key() -> None:
    a = JobSpec(type="t", payload={"a": 1}, idempotency_key="first")
    b = JobSpec(type="t", payload={"a": 1}, idempotency_key="second")
    c = JobSpec(type="t", payload={"a": 1})
    assert a.fingerprint() == b.fingerprint() == c.fingerprint()


def test_jobspec_forbids_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        JobSpec.model_validate({"type": "t", "bogus": 1})
    assert info.value.errors()[0]["loc"] == ("bogus",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", ""),
        ("priority", -1),
        ("priority", 1_000_001),
        ("delay_s", -0.1),
        ("max_attempts", 0),
        ("max_attempts", 101),
        ("timeout_s", 0),
        ("idempotency_key", ""),
    ],
)
def test_jobspec_bounds(field: str, value: Any) -> None:
    data = {"type": "t", field: value}
    with pytest.raises(pydantic.ValidationError) as info:
        JobSpec.model_validate(data)
    assert info.value.errors()[0]["loc"] == (field,)


# -- records ----------------------------------------------------------------------------


def record(**overrides: Any) -> JobRecord:
    fields: dict[str, Any] = {
        "id": "job-1",
        "tenant": "default",
        "type": "sleep",
        "queue": "default",
        "priority": 3,
        "status": JobStatus.FAILED,
        "payload": {"seconds": 1},
        "progress": 40.0,
        "message": "step 4/10",
        "stage": "sleep",
        "result": None,
        "error": ErrorInfo("RuntimeError", "boom", "Traceback (most recent call last): ..."),
        "attempt": 2,
        "max_attempts": 3,
        "timeout_s": 60.0,
        "tags": ["a"],
        "idempotency_key": None,
        "cancel_requested": False,
        "created_at": T0,
        "run_at": T0 + timedelta(seconds=5),
        "started_at": T0 + timedelta(seconds=6),
        "finished_at": None,
    }
    fields.update(overrides)
    return JobRecord(**fields)


def test_record_to_dict_timestamps_are_iso_utc_with_z() -> None:
    data = record().to_dict()
    assert data["created_at"] == "2024-05-01T12:00:00.123456Z"
    assert data["run_at"] == "2024-05-01T12:00:05.123456Z"
    assert data["started_at"] == "2024-05-01T12:00:06.123456Z"
    assert data["finished_at"] is None
    for key in ("created_at", "run_at", "started_at"):
        assert data[key].endswith("Z")
        assert "+00:00" not in data[key]
        assert datetime.fromisoformat(data[key].replace("Z", "+00:00")) == getattr(record(), key)


def test_record_to_dict_converts_other_zones_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    data = record(created_at=datetime(2024, 5, 1, 14, 0, tzinfo=plus_two)).to_dict()
    assert data["created_at"] == "2024-05-01T12:00:00Z"


def test_record_to_dict_fields() -> None:
    data = record().to_dict()
    assert data["status"] == "failed"
    assert data["error"] == {"type": "RuntimeError", "message": "boom"}  # no traceback
    assert data["tags"] == ["a"]
    assert (data["id"], data["attempt"], data["max_attempts"]) == ("job-1", 2, 3)
    json.dumps(data)  # the API can send it as is


def test_record_to_dict_without_error() -> None:
    data = record(status=JobStatus.COMPLETED, error=None, result={"ok": 1}).to_dict()
    assert data["error"] is None
    assert data["result"] == {"ok": 1}
    assert data["status"] == "completed"


def test_record_to_dict_copies_tags() -> None:
    rec = record()
    rec.to_dict()["tags"].append("changed")
    assert rec.tags == ["a"]


def test_attempt_record_to_dict() -> None:
    attempt = AttemptRecord(
        job_id="job-1",
        attempt=1,
        status=AttemptStatus.TIMED_OUT,
        started_at=T0,
        finished_at=T0 + timedelta(minutes=1),
        error=ErrorInfo("JobTimeout", "too slow"),
        lease_owner="d-1",
    )
    assert attempt.to_dict() == {
        "attempt": 1,
        "status": "timed_out",
        "started_at": "2024-05-01T12:00:00.123456Z",
        "finished_at": "2024-05-01T12:01:00.123456Z",
        "error": {"type": "JobTimeout", "message": "too slow"},
    }


def test_progress_state_to_dict() -> None:
    state = ProgressState("job-1", 2, 50.0, "half", "embed", seq=7)
    assert state.to_dict() == {
        "id": "job-1",
        "attempt": 2,
        "progress": 50.0,
        "message": "half",
        "stage": "embed",
        "seq": 7,
    }


# -- Outcome ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "attempt_status"),
    [
        (JobStatus.COMPLETED, AttemptStatus.COMPLETED),
        (JobStatus.CANCELLED, AttemptStatus.CANCELLED),
        (JobStatus.FAILED, AttemptStatus.FAILED),
        (JobStatus.QUEUED, AttemptStatus.FAILED),  # a retry: this attempt failed
    ],
)
def test_final_attempt_status_follows_job_status(
    status: JobStatus, attempt_status: AttemptStatus
) -> None:
    assert Outcome("j", 1, status).final_attempt_status is attempt_status


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_final_attempt_status_override_wins(status: JobStatus) -> None:
    outcome = Outcome("j", 1, status, attempt_status=AttemptStatus.TIMED_OUT)
    assert outcome.final_attempt_status is AttemptStatus.TIMED_OUT


@pytest.mark.parametrize("timeout_s", [1e300, MAX_TIMEOUT_S + 1])
def test_a_time_limit_past_thirty_days_is_refused_naming_the_field(timeout_s: float) -> None:
    # 1e300 was accepted and then overflowed PostgreSQL's interval arithmetic.
    with pytest.raises(pydantic.ValidationError) as caught:
        JobSpec(type="noop", timeout_s=timeout_s)
    assert caught.value.errors()[0]["loc"] == ("timeout_s",)
    assert JobSpec(type="noop", timeout_s=MAX_TIMEOUT_S).timeout_s == MAX_TIMEOUT_S


@pytest.mark.parametrize("name", ["result.txt\n", "a/b", "..x", "", "-x"])
def test_artifact_names_are_whole_plain_file_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="artifact name"):
        artifacts.check_name(name)
    assert artifacts.check_name("result.txt") == "result.txt"


def _nested(levels: int) -> dict[str, Any]:
    """Objects in objects, ``levels`` deep."""
    payload: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        payload = {"a": payload}
    return payload


def test_a_payload_nested_past_the_limit_is_refused_naming_the_field() -> None:
    # 256 levels in 542 bytes used to pass validation and then fail serializing: a 500.
    deep = json.loads('{"a":' * 300 + "1" + "}" * 300)
    with pytest.raises(pydantic.ValidationError) as caught:
        JobSpec(type="noop", payload=deep)
    error = caught.value.errors()[0]
    assert error["loc"] == ("payload",)
    assert f"deeper than {MAX_PAYLOAD_DEPTH} levels" in error["msg"]


def test_nesting_is_counted_through_lists_and_objects() -> None:
    assert not nests_deeper({"a": [{"b": 1}]}, 3)
    assert nests_deeper({"a": [{"b": [1]}]}, 3)
    assert not nests_deeper("text", 0)
    assert JobSpec(type="noop", payload=_nested(MAX_PAYLOAD_DEPTH)).payload["a"]
    with pytest.raises(pydantic.ValidationError):
        JobSpec(type="noop", payload=_nested(MAX_PAYLOAD_DEPTH + 1))
