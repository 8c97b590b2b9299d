"""Operator lanes: admin-only queues and a tenant's priority range, as pure rules and as
every path that turns a spec into a row applies them (single, bulk, ``then``, batches and
their ``then``, schedules)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydantic
import pytest

from raypipe import registry, rights
from raypipe.config import Settings, get_settings
from raypipe.cron import check_schedule
from raypipe.exceptions import Forbidden, InvalidInput, RaypipeError
from raypipe.jobs import MAX_PRIORITY
from raypipe.submission import prepare, prepare_batch

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    registry.load()
    return get_settings(data_dir=tmp_path, queues={"ops": {"admin_only": True}})


def test_maintenance_is_admin_only_by_default_and_stays_so_when_configured(
    tmp_path: Path,
) -> None:
    assert get_settings(data_dir=tmp_path).queues["maintenance"].admin_only
    tuned = get_settings(data_dir=tmp_path, queues={"maintenance": {"concurrency": 2}})
    assert tuned.queues["maintenance"].admin_only and tuned.queues["maintenance"].concurrency == 2
    opened = get_settings(data_dir=tmp_path, queues={"maintenance": {"admin_only": False}})
    assert not opened.queues["maintenance"].admin_only
    assert not get_settings(data_dir=tmp_path).queues["default"].admin_only


def test_a_tenant_key_may_not_submit_to_an_admin_only_queue(settings: Settings) -> None:
    for queue in ("maintenance", "ops"):
        with pytest.raises(Forbidden) as refused:
            rights.check_queue(queue, settings, admin=False)
        assert [d["loc"] for d in refused.value.details] == [["queue"]]
        assert repr(queue) in refused.value.message and "admin" in refused.value.message
        rights.check_queue(queue, settings, admin=True)
    rights.check_queue("default", settings, admin=False)


def test_a_tenants_priority_is_bounded_and_an_admins_is_not(settings: Settings) -> None:
    for priority in (None, 0, 50, 100):
        rights.check_priority(priority, settings, admin=False)
    for priority in (101, MAX_PRIORITY):
        with pytest.raises(InvalidInput) as refused:
            rights.check_priority(priority, settings, admin=False)
        assert refused.value.details[0]["loc"] == ["priority"]
        assert "between 0 and 100" in refused.value.message
        rights.check_priority(priority, settings, admin=True)


def test_the_range_is_a_setting_and_must_be_a_range(tmp_path: Path) -> None:
    narrow = get_settings(data_dir=tmp_path, tenant_priority_min=10, tenant_priority_max=20)
    with pytest.raises(InvalidInput, match="between 10 and 20"):
        rights.check_priority(5, narrow, admin=False)
    rights.check_priority(15, narrow, admin=False)
    with pytest.raises(pydantic.ValidationError, match="exceeds"):
        get_settings(data_dir=tmp_path, tenant_priority_min=30, tenant_priority_max=20)


LANE = {"type": "sleep", "payload": {"seconds": 900}, "queue": "maintenance"}
HIGH = {"type": "noop", "priority": MAX_PRIORITY}


def _single(spec: dict[str, Any], settings: Settings, admin: bool) -> None:
    prepare([spec], settings, NOW, "acme", admin=admin)


def _bulk(spec: dict[str, Any], settings: Settings, admin: bool) -> None:
    prepare([{"type": "noop"}, spec], settings, NOW, "acme", ("jobs",), admin)


def _then(spec: dict[str, Any], settings: Settings, admin: bool) -> None:
    prepare([{"type": "noop", "then": spec}], settings, NOW, "acme", admin=admin)


def _batch(spec: dict[str, Any], settings: Settings, admin: bool) -> None:
    prepare_batch({"jobs": [{"type": "noop"}, spec]}, settings, NOW, "acme", admin)


def _batch_then(spec: dict[str, Any], settings: Settings, admin: bool) -> None:
    prepare_batch({"jobs": [{"type": "noop"}], "then": spec}, settings, NOW, "acme", admin)


def _schedule(spec: dict[str, Any], settings: Settings, admin: bool) -> None:
    row = {
        "id": "s1",
        "tenant": "acme",
        "name": "lane",
        "cron": "0 3 * * *",
        "timezone": "UTC",
        "missed": "run_once",
        "spec": spec,
    }
    check_schedule(row, settings, NOW, admin)


#: Every path that turns a spec into a row, and where the spec's fields are located in it.
PATHS: dict[str, tuple[Callable[[dict[str, Any], Settings, bool], None], list[Any]]] = {
    "single": (_single, []),
    "bulk": (_bulk, ["jobs", 1]),
    "then": (_then, ["then"]),
    "batch": (_batch, ["jobs", 1]),
    "batch then": (_batch_then, ["then"]),
    "schedule": (_schedule, ["job"]),
}


#: What a tenant asks beyond its rights: the error, the field it names, and what it says.
BEYOND: dict[str, tuple[dict[str, Any], type[RaypipeError], str, str]] = {
    "maintenance lane": (LANE, Forbidden, "queue", "'maintenance' queue"),
    "top priority": (HIGH, InvalidInput, "priority", "between 0 and 100"),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("ask", list(BEYOND))
def test_every_path_refuses_a_tenant_what_only_an_admin_may_ask(
    settings: Settings, path: str, ask: str
) -> None:
    submit, loc = PATHS[path]
    spec, error, field, says = BEYOND[ask]
    with pytest.raises(error) as refused:
        submit(spec, settings, False)
    assert refused.value.details[0]["loc"] == [*loc, field]
    assert says in refused.value.details[0]["msg"] and says in refused.value.message
    submit(spec, settings, True)
