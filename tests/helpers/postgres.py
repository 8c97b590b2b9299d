"""A PostgreSQL server of one run's own, which it may stop and start at will: for the fault
tests (tests/faults/conftest.py's ``private_postgres``) and the chaos soak (bench/chaos.py),
never the machine's shared server."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raypipe.store import create_engine, schema_version

PG_BIN = Path(os.environ.get("RAYPIPE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: initdb refuses to run as root; as root, the server runs as this OS user.
PG_OS_USER = "postgres"
PG_COMMAND_TIMEOUT_S = 120


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


def why_unavailable() -> str | None:
    """Why no private server can be started here (binaries or OS user missing), or None."""
    missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).exists()]
    if missing:
        return f"PostgreSQL's {' and '.join(missing)} not found in {PG_BIN} (RAYPIPE_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root, and no {PG_OS_USER!r} OS user to run PostgreSQL as"
    return None


@contextmanager
def private_postgres(port: int) -> Iterator[PrivatePostgres]:
    """A migrated PostgreSQL server of the caller's own on ``port``, removed afterwards."""
    # Not under pytest's tmp_path: its folders are private to this user, and the server
    # runs as another one.
    folder = Path(tempfile.mkdtemp(prefix="raypipe-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, PG_OS_USER, PG_OS_USER)
    server = PrivatePostgres(folder, port)
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
