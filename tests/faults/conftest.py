"""Faults: raypipe's actors, its database or Ray itself die under running jobs.

Each test breaks only what it owns: a private PostgreSQL server (never the machine's
shared one), a separate Ray head, or actors in its own namespace.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from raypipe.handle import JobHandle
from raypipe.jobs import AttemptStatus, JobStatus
from raypipe.store import create_engine, schema_version
from tests.conftest import IN_CI, free_port, process_alive
from tests.integration.conftest import raypipe

__all__ = [
    "PrivatePostgres",
    "actor_pid",
    "private_postgres",
    "process_alive",
    "raypipe",
    "rescued_then_completed",
]

PG_BIN = Path(os.environ.get("RAYPIPE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: initdb refuses to run as root; as root, the server runs as this OS user.
PG_OS_USER = "postgres"
PG_COMMAND_TIMEOUT_S = 120


def rescued_then_completed(job: JobHandle) -> None:
    """Assert the job's first attempt expired with its lease and the second completed."""
    final = job.wait(60)
    assert final.status is JobStatus.COMPLETED
    first, second = job.attempts()
    assert first.status is AttemptStatus.FAILED
    assert first.error is not None and first.error.type == "LeaseExpired"
    assert second.status is AttemptStatus.COMPLETED


def actor_pid(actor: ray.actor.ActorHandle) -> int:
    """The process an actor runs in now: a new one once Ray has restarted it."""
    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)


class PrivatePostgres:
    """A PostgreSQL server of one test's own, which it may stop and start at will.

    Trust authentication, loopback only, its socket in its own folder; fsync off,
    since nothing here needs to survive a crash of the machine.
    """

    def __init__(self, folder: Path, port: int):
        self.folder = folder
        self.port = port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        as_user = ["runuser", "-u", PG_OS_USER, "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*as_user, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PG_COMMAND_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}\n{tail}"
            )

    def init(self) -> None:
        self._run(
            str(PG_BIN / "initdb"),
            f"--pgdata={self.folder / 'data'}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "start",
            "--wait",
            f"--pgdata={self.folder / 'data'}",
            f"--log={self.folder / 'server.log'}",
            f"--options={options}",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "stop",
            "--wait",
            f"--pgdata={self.folder / 'data'}",
            f"-m{mode}",
        )

    def running(self) -> bool:
        return (self.folder / "data" / "postmaster.pid").exists()


def _why_no_private_postgres() -> str | None:
    missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).exists()]
    if missing:
        return f"PostgreSQL's {' and '.join(missing)} not found in {PG_BIN} (RAYPIPE_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root, and no {PG_OS_USER!r} OS user to run PostgreSQL as"
    return None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A migrated PostgreSQL server of this test's own on a free port, removed afterwards.

    Missing binaries skip the test on a laptop and fail it in CI.
    """
    reason = _why_no_private_postgres()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason + " (CI requires it)")
        pytest.skip(reason)
    # Not under pytest's tmp_path: its folders are private to this user, and the server
    # runs as another one.
    folder = Path(tempfile.mkdtemp(prefix="raypipe-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, PG_OS_USER, PG_OS_USER)
    server = PrivatePostgres(folder, free_port())
    try:
        server.init()
        server.start()
        engine = create_engine(server.url)
        schema_version.upgrade(engine)
        engine.dispose()
        yield server
    finally:
        if server.running():
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
