"""Follow-up jobs: conditions on a parent's result, and the row a follow-up becomes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from raypipe.followups import condition_met, follow_up_row

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("when", "result", "met"),
    [
        (None, {}, True),
        ({"field": "confidence", "gte": 0.8}, {"confidence": 0.8}, True),
        ({"field": "confidence", "gte": 0.8}, {"confidence": 0.79}, False),
        ({"field": "confidence", "gt": 0.8}, {"confidence": 0.8}, False),
        ({"field": "n", "lt": 3}, {"n": 2}, True),
        ({"field": "n", "lte": 3}, {"n": 4}, False),
        ({"field": "a.b.0", "gte": 1}, {"a": {"b": [1.5]}}, True),
        ({"field": "missing", "gte": 0}, {"x": 1}, False),
        ({"field": "confidence", "gte": 0.5}, {"confidence": "high"}, False),
        ({"field": "flag", "gte": 0}, {"flag": True}, False),
        ({"field": "label", "eq": "cat"}, {"label": "cat"}, True),
        ({"field": "label", "ne": "cat"}, {"label": "dog"}, True),
        ({"field": "label", "eq": None}, {"label": None}, True),
        ({"field": "x", "gte": 1}, None, False),
    ],
)
def test_conditions(when: dict[str, Any] | None, result: Any, met: bool) -> None:
    assert condition_met(when, result) is met


TEMPLATE = {
    "type": "quantity.calc",
    "queue": "default",
    "priority": 3,
    "payload": {"unit": "kg"},
    "tags": ["t"],
    "max_attempts": 2,
    "timeout_s": 60.0,
    "delay_s": 30.0,
    "when": {"field": "confidence", "gte": 0.8},
    "with_result": "recognition",
    "then": {"type": "noop"},
}


def test_follow_up_row_carries_the_template_the_parent_and_its_result() -> None:
    result = {"confidence": 0.93, "label": "bricks"}
    row = follow_up_row(TEMPLATE, "parent-1", "acme", result, NOW)
    assert row is not None
    assert (row["type"], row["queue"], row["priority"]) == ("quantity.calc", "default", 3)
    assert row["payload"] == {"unit": "kg", "recognition": result}
    assert (row["tenant"], row["parent_id"]) == ("acme", "parent-1")
    assert row["run_at"] == NOW + timedelta(seconds=30)
    assert row["then"] == {"type": "noop"}
    assert TEMPLATE["payload"] == {"unit": "kg"}  # the template is not changed


def test_no_row_when_the_condition_fails() -> None:
    assert follow_up_row(TEMPLATE, "p", "acme", {"confidence": 0.2}, NOW) is None
