"""Ray itself stopped under running and queued jobs, then started again with `raypipe up`.

On a Ray head of this test's own (the session's Ray is shared by every test): the rows
keep what was queued and what was running, jobs submitted while Ray is down wait in the
database, and once Ray is back every job ends exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.handle import JobHandle
from raypipe.jobs import AttemptStatus, JobStatus
from raypipe.runtime import head
from tests.conftest import free_port, fresh_settings, process_alive, wait_for
from tests.helpers.commands import UP_TIMEOUT_S, Raypipe

#: What the `raypipe` subprocesses must share with this test's own client.
SHARED_SETTINGS = {
    "data_dir",
    "database_url",
    "namespace",
    "processor_modules",
    "queues",
    "ray_port",
    "ray_address",
    "poll_interval_s",
    "lease_ttl_s",
    "default_backoff_s",
    "maintenance_schedules",
}


def _environment(settings: Settings) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RAYPIPE_") and key not in ("RAY_ADDRESS", "PYTEST_CURRENT_TEST")
    }
    for name, value in settings.flat_dump(mode="json", include=SHARED_SETTINGS).items():
        env[f"RAYPIPE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Raypipe, DirectClient]]:
    """`raypipe up --no-api` on a Ray head of its own (SQLite), and a client of its database."""
    port = free_port()
    with fresh_settings(
        request, "sqlite", tmp_path, ray_port=port, ray_address=f"127.0.0.1:{port}"
    ) as settings:
        cli = Raypipe(_environment(settings), cwd=tmp_path, port=port, data_dir=settings.data_dir)
        client = DirectClient(settings)
        try:
            _up(cli)
            yield cli, client
        finally:
            client.close()
            head.stop_head(settings)  # quicker than `raypipe down`, which joins Ray first


def _up(cli: Raypipe) -> None:
    done = cli("up", "--no-api", "--num-cpus", "2", timeout=UP_TIMEOUT_S)
    assert done.returncode == 0, done.describe()
    assert "started a local Ray head" in done.stdout, done.describe()


def _statuses(handles: list[JobHandle]) -> list[JobStatus]:
    return [h.refresh().status for h in handles]


def test_jobs_queued_or_running_when_ray_stops_run_once_it_is_back(
    stack: tuple[Raypipe, DirectClient], tmp_path: Path
) -> None:
    cli, client = stack
    # Two gates run until Ray stops (a second attempt passes); the one in "solo" holds
    # that queue, so the no-ops behind it are still queued then.
    queues = ["default", "solo"]
    folders = [tmp_path / queue for queue in queues]
    for folder in folders:
        folder.mkdir()
    gates = [
        client.submit("test.gate", {"folder": str(f), "release_on_attempt": 2}, queue=q)
        for f, q in zip(folders, queues, strict=True)
    ]
    behind = client.submit_many([{"type": "noop", "queue": "solo"}] * 2)
    wait_for(lambda: all((f / "pid-1").exists() for f in folders), what="both gates to run")
    assert _statuses(behind) == [JobStatus.QUEUED] * 2

    assert head.stop_head(client.settings)  # Ray dies: raypipe's actors get no say
    for folder in folders:
        pid = int((folder / "pid-1").read_text())
        wait_for(lambda pid=pid: not process_alive(pid), what="the gate's worker to die with Ray")
    while_down = client.submit_many([("noop", {}), ("sleep", {"seconds": 0.2, "steps": 2})])
    assert _statuses(gates) == [JobStatus.PROCESSING] * 2  # as far as the rows know
    assert _statuses(behind + while_down) == [JobStatus.QUEUED] * 4

    _up(cli)
    everything = gates + behind + while_down
    wait_for(
        lambda: all(s.is_terminal for s in _statuses(everything)),
        timeout=120,
        what="every job to end",
    )
    assert _statuses(everything) == [JobStatus.COMPLETED] * len(everything)
    for gate, folder in zip(gates, folders, strict=True):
        first, second = gate.attempts()
        assert first.status is AttemptStatus.FAILED
        assert first.error is not None and first.error.type == "LeaseExpired", first.error
        assert second.status is AttemptStatus.COMPLETED
        assert not (folder / "pid-3").exists()
    for handle in behind + while_down:
        assert [a.status for a in handle.attempts()] == [AttemptStatus.COMPLETED]
