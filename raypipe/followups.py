"""Follow-up jobs: the ``then`` of a job, submitted when it completes. Pure functions."""

from __future__ import annotations

import hashlib
import json
import operator
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

_MISSING = object()

_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
}


def lookup(result: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a JSON result (list items by index), or _MISSING."""
    value = result
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def condition_met(when: dict[str, Any] | None, result: Any) -> bool:
    """Whether a stored condition (``{"field": …, "<op>": value}``) holds for ``result``;
    no condition always holds.

    Numeric tests need a number (not a bool); a missing field never passes.
    """
    if not when:
        return True
    value = lookup(result, when["field"])
    if value is _MISSING:
        return False
    op, expected = next((k, v) for k, v in when.items() if k != "field")
    if op in _NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return _NUMERIC[op](value, expected)
    return (value == expected) if op == "eq" else (value != expected)


def follow_up_row(
    template: dict[str, Any], parent_id: str, tenant: str, result: Any, now: datetime
) -> dict[str, Any] | None:
    """The row of the follow-up job ``template`` describes, or None when its condition fails.

    ``template`` is what submission stored in the parent's ``then`` column.
    """
    if not condition_met(template.get("when"), result):
        return None
    payload = dict(template["payload"])
    if template.get("with_result"):
        payload[template["with_result"]] = result
    digest = json.dumps([parent_id, template], sort_keys=True, separators=(",", ":"))
    return {
        "id": str(uuid.uuid4()),
        "tenant": tenant,
        "type": template["type"],
        "queue": template["queue"],
        "priority": template["priority"],
        "payload": payload,
        "tags": list(template["tags"]),
        "max_attempts": template["max_attempts"],
        "timeout_s": template["timeout_s"],
        "idempotency_key": None,
        "request_hash": hashlib.sha256(digest.encode()).hexdigest(),
        "created_at": now,
        "run_at": now + timedelta(seconds=template["delay_s"]),
        "then": template.get("then"),
        "parent_id": parent_id,
        "webhook_url": template.get("webhook_url"),
    }
