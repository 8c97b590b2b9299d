"""Acceptance: ``raypipe schedules …`` on a real SQLite database named by the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from raypipe.commands.schedules import app
from raypipe.exceptions import Conflict, InvalidInput, NotFound
from raypipe.jobs import parse_iso, utcnow
from tests.conftest import fresh_database

Run = Callable[..., Result]


@pytest.fixture
def run(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    """Runs the command group with settings from ``RAYPIPE_*`` only, as a shell would."""
    for name in list(os.environ):
        if name.upper().startswith("RAYPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with fresh_database(request, "sqlite", tmp_path) as url:
        monkeypatch.setenv("RAYPIPE_DATABASE_URL", url)
        monkeypatch.setenv("RAYPIPE_DATA_DIR", str(tmp_path / "data"))
        runner = CliRunner()

        def invoke(*args: str) -> Result:
            return runner.invoke(app, list(args))

        yield invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_add_list_next_pause_resume_delete(run: Run) -> None:
    before = utcnow()
    added = json.loads(
        ok(
            run(
                "add",
                "nightly",
                "--cron",
                "30 2 * * *",
                "--type",
                "sleep",
                "--payload",
                '{"seconds": 1}',
                "--timezone",
                "Europe/Paris",
                "--missed",
                "skip",
                "--json",
            )
        )
    )
    assert (added["name"], added["tenant"], added["missed"]) == ("nightly", "default", "skip")
    assert added["job"] == {"type": "sleep", "payload": {"seconds": 1}}
    first = parse_iso(added["next_fire_at"])
    assert before < first <= before + timedelta(days=1, hours=1)

    listed = ok(run("list"))
    assert "nightly" in listed and "30 2 * * *" in listed and "enabled" in listed
    [shown] = json.loads(ok(run("list", "--json")))
    assert shown["id"] == added["id"]

    times = json.loads(ok(run("next", "nightly", "--count", "3", "--json")))
    assert len(times) == 3
    assert parse_iso(times[0]) == first
    lines = ok(run("next", added["id"], "--count", "2")).splitlines()
    assert len(lines) == 2 and "02:30 CE" in lines[0]

    paused = json.loads(ok(run("pause", "nightly", "--json")))
    assert (paused["enabled"], paused["next_fire_at"]) == (False, None)
    assert "paused" in ok(run("list"))
    resumed = json.loads(ok(run("resume", "nightly", "--json")))
    assert resumed["next_fire_at"] == added["next_fire_at"]

    assert "deleted schedule nightly" in ok(run("delete", "nightly"))
    assert json.loads(ok(run("list", "--json"))) == []
    assert isinstance(run("delete", "nightly").exception, NotFound)


def test_next_checks_an_expression_without_a_schedule(run: Run) -> None:
    times = json.loads(ok(run("next", "--cron", "@hourly", "--count", "4", "--json")))
    instants = [parse_iso(t) for t in times]
    assert all(t.minute == 0 and t.second == 0 for t in instants)
    assert [b - a for a, b in pairwise(instants)] == [timedelta(hours=1)] * 3
    assert instants[0] > datetime.now(instants[0].tzinfo)


@pytest.mark.parametrize(
    ("args", "loc"),
    [
        (["add", "x", "--cron", "* * * * * *", "--type", "noop"], ["cron"]),
        (["add", "x", "--cron", "@daily", "--type", "noop", "--timezone", "Mars/X"], ["timezone"]),
        (["add", "x", "--cron", "@daily", "--type", "nope"], ["job", "type"]),
        (["add", "x", "--cron", "@daily", "--type", "noop", "--payload", "{"], ["payload"]),
        (["add", "x", "--cron", "@daily", "--type", "noop", "--missed", "never"], ["missed"]),
        (["next"], ["cron"]),
        (["next", "--cron", "61 * * * *"], ["cron"]),
    ],
)
def test_bad_input_is_refused_naming_the_field(run: Run, args: list[str], loc: list[str]) -> None:
    result = run(*args)
    assert isinstance(result.exception, InvalidInput), result.output
    assert result.exception.details[0]["loc"] == loc
    assert json.loads(ok(run("list", "--json"))) == []


def test_names_are_unique_per_tenant(run: Run) -> None:
    add = ["add", "nightly", "--cron", "@daily", "--type", "noop"]
    ok(run(*add))
    assert isinstance(run(*add).exception, Conflict)
    ok(run(*add, "--tenant", "acme"))
    assert isinstance(run("pause", "nightly").exception, Conflict)  # which tenant's?
    ok(run("pause", "nightly", "--tenant", "acme"))
    states = {s["tenant"]: s["enabled"] for s in json.loads(ok(run("list", "--json")))}
    assert states == {"default": True, "acme": False}
