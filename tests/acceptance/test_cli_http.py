"""Acceptance: the real ``raypipe`` command against a deployment over HTTP, with a tenant's
key and no database of its own (its database URL leads nowhere): it sees what the key sees,
fails in one line, and offers shell completion."""

from __future__ import annotations

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

    delayed = cli.ok("submit", "noop", "--delay", "3600").stdout.strip()
    assert cli.ok("cancel", delayed).stdout.strip() == f"{delayed} cancelled"
    assert cli.ok("retry", delayed).stdout.strip() == f"{delayed} queued again"

    def retried() -> bool:  # queued again to run now
        job = cli.ok("show", delayed, "--json").json()
        return isinstance(job, dict) and job["status"] == "completed"

    wait_for(retried, what="the retried job to complete")
    assert cli.ok("delete", done["id"]).stdout.strip() == f"{done['id']} deleted"
    stats = cli.ok("stats", "--json", "--since", "1h").json()
    assert isinstance(stats, dict) and stats["jobs"]["completed"] == 1, stats
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
