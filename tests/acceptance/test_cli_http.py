"""Acceptance: the real ``raypipe`` command against a deployment over HTTP, with a tenant's
key and no database of its own (its database URL leads nowhere): it sees what the key sees,
fails in one line, and offers shell completion."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.helpers.commands import Raypipe
from tests.helpers.serving import Api, postgres_api  # noqa: F401  (`api` on PostgreSQL only)

#: Nothing listens here: a command that opened the database would fail.
NO_DATABASE = "postgresql://nobody@127.0.0.1:9/none"


@pytest.fixture
def cli(api: Api, tmp_path: Path) -> Raypipe:
    """The command with a new tenant's key in RAYPIPE_URL and RAYPIPE_API_KEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYPIPE_")}
    env.update(
        RAYPIPE_URL=api.url,
        RAYPIPE_API_KEY=api.key(f"cli-{uuid.uuid4().hex[:8]}"),
        RAYPIPE_DATABASE_URL=NO_DATABASE,
        RAYPIPE_DATA_DIR=str(tmp_path / "data"),
    )
    return Raypipe(env, tmp_path, port=0, data_dir=tmp_path / "data")


def test_job_commands_work_over_http_as_the_keys_tenant(cli: Raypipe, api: Api) -> None:
    done = cli.ok("submit", "sleep", "--payload", '{"seconds": 0.1}', "--wait", "--json").json()
    assert isinstance(done, dict) and done["status"] == "completed", done
    listed = cli.ok("jobs", "--json").json()
    assert isinstance(listed, list) and [job["id"] for job in listed] == [done["id"]]
    shown = cli.ok("show", done["id"], "--json").json()
    assert isinstance(shown, dict) and [a["status"] for a in shown["attempts"]] == ["completed"]
    chatty = cli.ok("submit", "test.chatty", "--payload", '{"lines": 2}', "--wait", "--json")
    chatty_id = chatty.json()["id"]  # type: ignore[index]
    # Its lines reach the database within a flush interval after its outcome.
    wait_for(lambda: len(cli.ok("logs", chatty_id).stdout.splitlines()) == 2, what="its log")
    printed = cli.ok("logs", chatty_id).stdout.splitlines()
    assert [line.split(None, 1)[1] for line in printed] == [
        "INFO     attempt 1 line 0 ",
        "INFO     attempt 1 line 1 ",
    ]
    followed = cli.ok("logs", chatty_id, "--follow", "--json").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in followed] == [1, 2]

    delayed = cli.ok("submit", "noop", "--delay", "3600").stdout.strip()
    assert cli.ok("cancel", delayed).stdout.strip() == f"{delayed} cancelled"
    assert cli.ok("retry", delayed).stdout.strip() == f"{delayed} queued again"

    def retried() -> bool:  # queued again to run now
        job = cli.ok("show", delayed, "--json").json()
        return isinstance(job, dict) and job["status"] == "completed"

    wait_for(retried, what="the retried job to complete")
    assert cli.ok("delete", done["id"]).stdout.strip() == f"{done['id']} deleted"
    stats = cli.ok("stats", "--json", "--since", "1h").json()
    assert isinstance(stats, dict) and stats["jobs"]["completed"] == 2, stats  # chatty, noop
    assert cli.ok("stats").stdout.startswith("window ")
    elsewhere = cli("stats", "--tenant", "someone-else")
    assert elsewhere.returncode == 2, elsewhere.describe()
    assert "only admin keys may read other tenants" in elsewhere.stderr

    # Another tenant's job is not there for this key, over --url and --key as well.
    other_key = api.key(f"other-{uuid.uuid4().hex[:8]}")
    theirs = cli.ok("submit", "noop", "--delay", "3600", "--key", other_key).stdout.strip()
    missing = cli("show", theirs)
    assert missing.returncode == 1 and len(missing.stderr_lines) == 1, missing.describe()
    assert missing.stderr_lines[0] == f"raypipe: job {theirs} not found"
    mine = cli.ok("jobs", "--json", "--url", api.url, "--key", other_key).json()
    assert isinstance(mine, list) and [job["id"] for job in mine] == [theirs]


def test_a_bad_key_or_bad_input_fails_in_one_line(cli: Raypipe) -> None:
    refused = cli("jobs", "--key", "rp_not-a-key")
    assert refused.returncode == 1 and len(refused.stderr_lines) == 1, refused.describe()
    assert "invalid or revoked API key" in refused.stderr
    invalid = cli("submit", "sleep", "--payload", '{"seconds": -1}')
    assert invalid.returncode == 2 and len(invalid.stderr_lines) == 1, invalid.describe()
    assert "payload.seconds" in invalid.stderr


def test_shell_completion_names_commands(cli: Raypipe) -> None:
    env = {**cli.env, "_RAYPIPE_COMPLETE": "complete_bash", "COMP_CWORD": "2"}
    completing = Raypipe({**env, "COMP_WORDS": "raypipe queues p"}, cli.cwd, 0, cli.data_dir)
    assert completing.ok().stdout.split() == ["pause"]
    assert "_raypipe_completion" in cli.ok("--show-completion", "bash").stdout


def test_operator_commands_work_over_http_within_the_keys_rights(cli: Raypipe, api: Api) -> None:
    # Queues: a tenant key sees its own jobs' depth, and may not pause a queue.
    cli.ok("submit", "noop", "--delay", "3600")
    queues = cli.ok("queues", "list", "--json").json()
    assert isinstance(queues, list)
    assert {q["name"]: q["depth"] for q in queues}["default"] == 1, queues
    refused = cli("queues", "pause", "default")
    assert refused.returncode == 1 and len(refused.stderr_lines) == 1, refused.describe()
    assert "only an admin key may pause a queue" in refused.stderr
    admin = ["--key", api.key("ops", admin=True)]
    try:
        paused = cli.ok("queues", "pause", "default", "--json", *admin).json()
        assert isinstance(paused, dict) and paused["paused"] and paused["paused_at"], paused
        listed = cli.ok("queues", "list", "--json").json()
        assert isinstance(listed, list)
        assert {q["name"]: q["paused"] for q in listed}["default"] is True
    finally:
        resumed = cli.ok("queues", "resume", "default", *admin).stdout.strip()
    assert resumed == "queue default resumed"

    # Schedules: created, listed, paused and deleted as the key's tenant.
    made = cli.ok("schedules", "add", "nightly", "--cron", "0 3 * * *", "--type", "noop", "--json")
    schedule = made.json()
    assert isinstance(schedule, dict) and schedule["enabled"] and schedule["source"] == "api"
    [listed_one] = cli.ok("schedules", "list", "--json").json()  # type: ignore[misc]
    assert listed_one["id"] == schedule["id"] and listed_one["tenant"] == schedule["tenant"]
    paused_schedule = cli.ok("schedules", "pause", "nightly", "--json").json()
    assert isinstance(paused_schedule, dict) and paused_schedule["enabled"] is False
    fires = cli.ok("schedules", "next", "nightly", "--count", "2", "--json").json()
    assert isinstance(fires, list) and [f[11:16] for f in fires] == ["03:00", "03:00"], fires
    foreign = cli("schedules", "list", "--tenant", "x", "--json")
    assert foreign.returncode == 0 and foreign.json() == []
    deleted = cli.ok("schedules", "delete", schedule["id"]).stdout.strip()
    assert deleted == f"deleted schedule nightly of tenant {schedule['tenant']!r}"
    assert cli.ok("schedules", "list", "--json").json() == []

    # Webhooks: the key's tenant's secret, rotated; deliveries listed; an unknown replay.
    secret = cli.ok("webhooks", "secret").stdout.strip()
    assert secret.startswith("whsec_") and cli.ok("webhooks", "secret").stdout.strip() == secret
    rotated = cli.ok("webhooks", "secret", "--rotate").stdout.strip()
    assert rotated.startswith("whsec_") and rotated != secret
    assert cli.ok("webhooks", "deliveries", "--json").json() == []
    unknown = cli("webhooks", "replay", "nope")
    assert unknown.returncode == 1 and len(unknown.stderr_lines) == 1, unknown.describe()
    other_tenant = cli("webhooks", "secret", "--tenant", "someone-else")
    assert other_tenant.returncode == 2, other_tenant.describe()
