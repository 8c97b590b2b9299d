"""submission.prepare: defaults, time handling, and every kind of invalid input."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.exceptions import InvalidInput
from raypipe.jobs import MAX_FOLLOW_UP_DEPTH, JobSpec, OnDuplicate
from raypipe.retry import RetryPolicy
from raypipe.submission import DEFAULT_TENANT, prepare, prepare_batch

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


class EmbedPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1)
    model: str = "small"


def embed(payload: EmbedPayload, ctx: JobContext) -> dict[str, int]:
    return {"n": len(payload.texts)}


@pytest.fixture(autouse=True)
def processors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in processors, plus one with its own queue, retry policy and timeout,
    in a registry copy that is thrown away after the test."""
    registry.load()
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    registry.processor(
        "unit-embed",
        queue="gpu",
        num_gpus=1,
        retry=RetryPolicy(max_attempts=7),
        timeout_s=120.0,
    )(embed)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(
        data_dir=tmp_path,
        queues={
            "default": {"concurrency": 10, "priority": 5},
            "gpu": {"concurrency": 2, "priority": 50},
            "bulk": {"concurrency": 100},
        },
        default_max_attempts=4,
        default_timeout_s=99.0,
    )


def one(spec: dict[str, Any] | JobSpec, settings: Settings, **kwargs: Any) -> dict[str, Any]:
    rows = prepare([spec], settings, NOW, **kwargs)
    assert len(rows) == 1
    return rows[0]


def invalid(specs: list[Any], settings: Settings, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        prepare(specs, settings, NOW, **kwargs)
    assert info.value.details, "an InvalidInput from prepare always has details"
    return info.value


def locs(error: InvalidInput) -> list[list[Any]]:
    return [d["loc"] for d in error.details]


# -- defaults ---------------------------------------------------------------------------


def test_defaults_for_a_minimal_spec(settings: Settings) -> None:
    row = one({"type": "noop"}, settings)
    assert row["type"] == "noop"
    assert row["queue"] == "default"
    assert row["priority"] == 5  # the default queue's priority
    assert row["max_attempts"] == 4  # settings.engine.default_max_attempts
    assert row["timeout_s"] == 99.0  # settings.engine.default_timeout_s
    assert row["payload"] == {}
    assert row["tags"] == []
    assert row["tenant"] == DEFAULT_TENANT
    assert row["idempotency_key"] is None
    assert row["created_at"] == NOW
    assert row["run_at"] == NOW
    assert uuid.UUID(row["id"]).version == 4


def test_row_has_exactly_the_expected_columns(settings: Settings) -> None:
    assert set(one({"type": "noop"}, settings)) == {
        "id",
        "tenant",
        "type",
        "queue",
        "priority",
        "payload",
        "tags",
        "max_attempts",
        "timeout_s",
        "idempotency_key",
        "request_hash",
        "created_at",
        "run_at",
        "then",
        "parent_id",
        "webhook_url",
        "trace_parent",
        "concurrency_key",
        "run_key",
        "unique_key",
        "unique_while",
        "unique_slot",
        "on_duplicate",  # read by the store, not a column
    }


def test_a_unique_row_says_what_its_duplicates_do(settings: Settings) -> None:
    assert one({"type": "noop"}, settings)["on_duplicate"] is None
    unique = one({"type": "noop", "unique_key": "k"}, settings)
    assert unique["on_duplicate"] is OnDuplicate.SKIP
    spec = JobSpec(type="noop", unique_key="k", on_duplicate=OnDuplicate.REPLACE)
    assert one(spec, settings)["on_duplicate"] is OnDuplicate.REPLACE


def test_a_batch_refuses_keys_of_its_jobs_with_their_place(settings: Settings) -> None:
    jobs = [
        {"type": "noop"},
        {"type": "noop", "unique_key": "u"},
        {"type": "noop", "idempotency_key": "i", "unique_key": "u"},
    ]
    with pytest.raises(InvalidInput) as caught:
        prepare_batch({"jobs": jobs}, settings, NOW)
    assert [d["loc"] for d in caught.value.details] == [
        ["jobs", 1, "unique_key"],
        ["jobs", 2, "idempotency_key"],
        ["jobs", 2, "unique_key"],
    ]
    assert {d["msg"] for d in caught.value.details} == {"not supported inside a batch"}


@pytest.mark.parametrize("option", [{"unique_while": "running"}, {"on_duplicate": "replace"}])
def test_unique_options_without_a_key_are_refused_at_the_option(
    settings: Settings, option: dict[str, str]
) -> None:
    with pytest.raises(InvalidInput) as caught:
        one({"type": "noop", **option}, settings)
    [name] = option
    assert caught.value.details == [
        {"loc": [name], "msg": f"Value error, {name} needs a unique_key"}
    ]


def test_ids_are_unique(settings: Settings) -> None:
    rows = prepare([{"type": "noop"}] * 50, settings, NOW)
    assert len({row["id"] for row in rows}) == 50


def test_processor_defaults_queue_attempts_and_timeout(settings: Settings) -> None:
    row = one({"type": "unit-embed", "payload": {"texts": ["a"]}}, settings)
    assert row["queue"] == "gpu"
    assert row["priority"] == 50
    assert row["max_attempts"] == 7
    assert row["timeout_s"] == 120.0


def test_spec_values_override_every_default(settings: Settings) -> None:
    row = one(
        {
            "type": "unit-embed",
            "payload": {"texts": ["a"]},
            "queue": "bulk",
            "priority": 9,
            "max_attempts": 2,
            "timeout_s": 5.5,
            "tags": ["x", "y"],
            "idempotency_key": "k-1",
        },
        settings,
        tenant="acme",
    )
    assert row["queue"] == "bulk"
    assert row["priority"] == 9
    assert row["max_attempts"] == 2
    assert row["timeout_s"] == 5.5
    assert row["tags"] == ["x", "y"]
    assert row["idempotency_key"] == "k-1"
    assert row["tenant"] == "acme"


def test_explicit_zero_priority_is_kept(settings: Settings) -> None:
    assert one({"type": "noop", "priority": 0}, settings)["priority"] == 0


def test_queue_without_priority_uses_zero(settings: Settings) -> None:
    assert one({"type": "noop", "queue": "bulk"}, settings)["priority"] == 0


def test_payload_is_validated_and_stored_as_json(settings: Settings) -> None:
    row = one({"type": "sleep", "payload": {"seconds": "1.5"}}, settings)
    assert row["payload"] == {"seconds": 1.5}


def test_request_hash_is_the_spec_fingerprint(settings: Settings) -> None:
    spec = {"type": "sleep", "payload": {"seconds": 1}, "idempotency_key": "k"}
    row = one(spec, settings)
    assert row["request_hash"] == JobSpec.model_validate(spec).fingerprint()
    other = one({"type": "sleep", "payload": {"seconds": 2}, "idempotency_key": "k"}, settings)
    assert other["request_hash"] != row["request_hash"]


def test_accepts_jobspec_instances(settings: Settings) -> None:
    row = one(JobSpec(type="sleep", payload={"seconds": 3}, priority=1), settings)
    assert (row["type"], row["payload"], row["priority"]) == ("sleep", {"seconds": 3.0}, 1)


def test_validates_payload_of_jobspec_instances(settings: Settings) -> None:
    error = invalid([JobSpec(type="sleep", payload={"seconds": -1})], settings)
    assert locs(error) == [["payload", "seconds"]]


def test_empty_list_gives_no_rows(settings: Settings) -> None:
    assert prepare([], settings, NOW) == []


# -- run_at -----------------------------------------------------------------------------


def test_delay_sets_run_at(settings: Settings) -> None:
    row = one({"type": "noop", "delay_s": 90.5}, settings)
    assert row["run_at"] == NOW + timedelta(seconds=90.5)
    assert row["created_at"] == NOW


def test_future_run_at_is_kept_and_converted_to_utc(settings: Settings) -> None:
    row = one({"type": "noop", "run_at": "2024-05-01T16:30:00+02:00"}, settings)
    assert row["run_at"] == datetime(2024, 5, 1, 14, 30, tzinfo=timezone.utc)
    assert row["run_at"].utcoffset() == timedelta(0)


def test_run_at_with_z_suffix(settings: Settings) -> None:
    row = one({"type": "noop", "run_at": "2030-01-02T03:04:05Z"}, settings)
    assert row["run_at"] == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_past_run_at_is_clamped_to_now(settings: Settings) -> None:
    row = one({"type": "noop", "run_at": "2001-01-01T00:00:00+00:00"}, settings)
    assert row["run_at"] == NOW


def test_naive_run_at_is_rejected(settings: Settings) -> None:
    error = invalid([{"type": "noop", "run_at": "2030-01-01T00:00:00"}], settings)
    assert locs(error) == [["run_at"]]
    assert error.message.startswith("run_at:")
    assert "time zone" in error.message


def test_naive_run_at_in_jobspec_is_rejected(settings: Settings) -> None:
    error = invalid([JobSpec(type="noop", run_at=datetime(2030, 1, 1))], settings)
    assert locs(error) == [["run_at"]]


def test_negative_delay_is_rejected(settings: Settings) -> None:
    assert locs(invalid([{"type": "noop", "delay_s": -1}], settings)) == [["delay_s"]]


def test_absurd_delay_is_invalid_input_not_a_crash(settings: Settings) -> None:
    # A delay past year 9999 cannot become a run_at; the caller must get an
    # InvalidInput (a 422 over HTTP) naming delay_s, not an OverflowError (a 500).
    error = invalid([{"type": "noop", "delay_s": 1e12}], settings)
    assert locs(error) == [["delay_s"]]


# -- invalid input ----------------------------------------------------------------------


def test_unknown_type_lists_known_types(settings: Settings) -> None:
    error = invalid([{"type": "no-such-type"}], settings)
    assert locs(error) == [["type"]]
    assert error.message.startswith("type:")
    for known in ("noop", "sleep", "fail", "unit-embed"):
        assert known in error.message
        assert known in error.details[0]["msg"]


def test_invalid_payload_names_the_payload_field(settings: Settings) -> None:
    error = invalid([{"type": "sleep", "payload": {"seconds": -1}}], settings)
    assert locs(error) == [["payload", "seconds"]]
    assert error.message.startswith("payload.seconds:")
    assert "greater than or equal to 0" in error.message


def test_unknown_payload_field_is_rejected(settings: Settings) -> None:
    error = invalid([{"type": "noop", "payload": {"surprise": 1}}], settings)
    assert locs(error) == [["payload", "surprise"]]


def test_missing_required_payload_field(settings: Settings) -> None:
    error = invalid([{"type": "unit-embed", "payload": {}}], settings)
    assert locs(error) == [["payload", "texts"]]


def test_every_payload_error_is_listed(settings: Settings) -> None:
    error = invalid([{"type": "sleep", "payload": {"seconds": -1, "steps": 0}}], settings)
    assert sorted(map(tuple, locs(error))) == [("payload", "seconds"), ("payload", "steps")]
    assert "(and 1 more)" in error.message


def test_negative_priority(settings: Settings) -> None:
    error = invalid([{"type": "noop", "priority": -1}], settings)
    assert locs(error) == [["priority"]]
    assert error.message.startswith("priority:")


def test_unknown_queue(settings: Settings) -> None:
    error = invalid([{"type": "noop", "queue": "nowhere"}], settings)
    assert locs(error) == [["queue"]]
    assert error.message.startswith("queue:")
    assert "nowhere" in error.message
    known = "ai, bulk, default, documents, embeddings, gpu, maintenance, mesh"
    assert known in error.details[0]["msg"]


def test_processor_queue_missing_from_settings(tmp_path: Path) -> None:
    settings = get_settings(data_dir=tmp_path)  # no "gpu" queue configured
    error = invalid([{"type": "unit-embed", "payload": {"texts": ["a"]}}], settings)
    assert locs(error) == [["queue"]]
    assert "gpu" in error.message


def test_extra_top_level_field(settings: Settings) -> None:
    error = invalid([{"type": "noop", "colour": "blue"}], settings)
    assert locs(error) == [["colour"]]
    assert error.message.startswith("colour:")


def test_missing_type(settings: Settings) -> None:
    error = invalid([{"payload": {}}], settings)
    assert locs(error) == [["type"]]


def test_spec_that_is_not_an_object(settings: Settings) -> None:
    error = invalid(["noop"], settings)
    assert locs(error) == [[]]
    assert error.message.startswith("body:")


def test_several_errors_in_one_spec(settings: Settings) -> None:
    error = invalid([{"type": "noop", "priority": -1, "max_attempts": 0}], settings)
    assert sorted(map(tuple, locs(error))) == [("max_attempts",), ("priority",)]


def test_several_bad_specs_are_all_reported_with_their_index(settings: Settings) -> None:
    specs = [
        {"type": "noop"},
        {"type": "sleep", "payload": {"seconds": -1}},
        {"type": "nope"},
        {"type": "noop"},
        {"type": "noop", "priority": -5},
        {"type": "noop", "queue": "nowhere"},
    ]
    error = invalid(specs, settings)
    assert locs(error) == [
        [1, "payload", "seconds"],
        [2, "type"],
        [4, "priority"],
        [5, "queue"],
    ]
    assert error.message.startswith("1.payload.seconds:")
    assert error.message.endswith("(and 3 more)")


def test_one_bad_spec_among_many_rejects_all(settings: Settings) -> None:
    specs: list[Any] = [{"type": "noop"}] * 9 + [{"type": "noop", "priority": -1}]
    error = invalid(specs, settings)
    assert locs(error) == [[9, "priority"]]


def test_loc_prefix_is_prepended_even_for_one_spec(settings: Settings) -> None:
    error = invalid([{"type": "noop", "priority": -1}], settings, loc_prefix=("jobs",))
    assert locs(error) == [["jobs", 0, "priority"]]
    assert error.message.startswith("jobs.0.priority:")


# -- follow-ups (then) ------------------------------------------------------------------


def test_then_is_validated_and_stored_with_defaults(settings: Settings) -> None:
    row = one(
        {
            "type": "noop",
            "then": {
                "type": "sleep",
                "payload": {"seconds": 0.1},
                "when": {"field": "confidence", "gte": 0.8},
                "then": {"type": "noop", "delay_s": 5},
            },
        },
        settings,
    )
    then = row["then"]
    assert then["type"] == "sleep"
    assert then["payload"] == {"seconds": 0.1}
    assert (then["queue"], then["priority"], then["max_attempts"]) == ("default", 5, 4)
    assert then["when"] == {"field": "confidence", "gte": 0.8}
    assert then["then"]["type"] == "noop" and then["then"]["delay_s"] == 5
    assert one({"type": "noop"}, settings)["then"] is None


@pytest.mark.parametrize(
    ("then", "loc"),
    [
        ({"type": "nope"}, ["then", "type"]),
        ({"type": "sleep", "payload": {"seconds": -1}}, ["then", "payload", "seconds"]),
        ({"type": "noop", "queue": "ghost"}, ["then", "queue"]),
        ({"type": "noop", "then": {"type": "nope"}}, ["then", "then", "type"]),
        ({"type": "noop", "when": {"field": "x"}}, ["then", "when"]),
        ({"type": "noop", "when": {"field": "x", "gte": 1, "lt": 2}}, ["then", "when"]),
    ],
)
def test_bad_then_names_the_field(settings: Settings, then: dict, loc: list) -> None:
    with pytest.raises(InvalidInput) as err:
        one({"type": "noop", "then": then}, settings)
    assert err.value.details[0]["loc"][: len(loc)] == loc


def test_then_chains_are_bounded(settings: Settings) -> None:
    chain: dict = {"type": "noop"}
    for _ in range(MAX_FOLLOW_UP_DEPTH):
        chain = {"type": "noop", "then": chain}
    with pytest.raises(InvalidInput, match="nest at most"):
        one({"type": "noop", "then": chain}, settings)


def test_with_result_field_may_be_missing_until_the_parent_completes(settings: Settings) -> None:
    then = {"type": "fail", "with_result": "message"}
    assert one({"type": "noop", "then": then}, settings)["then"]["with_result"] == "message"
    bad = {"type": "fail", "with_result": "message", "payload": {"error": "Nope"}}
    with pytest.raises(InvalidInput, match=r"then\.payload\.error"):
        one({"type": "noop", "then": bad}, settings)


def test_a_condition_is_stored_as_its_one_test(settings: Settings) -> None:
    when = {"field": "score", "gte": 0.8, "lt": None}
    row = one({"type": "noop", "then": {"type": "noop", "when": when}}, settings)
    assert row["then"]["when"] == {"field": "score", "gte": 0.8}
    row = one(
        {"type": "noop", "then": {"type": "noop", "when": {"field": "x", "eq": None}}}, settings
    )
    assert row["then"]["when"] == {"field": "x", "eq": None}
