"""The installed ``raypipe`` command, run in subprocesses by the tests that need it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

UP_TIMEOUT_S = 240
COMMAND_TIMEOUT_S = 120
FIRST_PORT = 6391  # 6379 is Redis here, 6380 raypipe's default


@dataclass(frozen=True)
class Done:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def json(self) -> object:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return (
            f"raypipe {' '.join(self.args)} exited {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


class Raypipe:
    """Runs the installed ``raypipe`` console script in an isolated environment."""

    def __init__(self, env: dict[str, str], cwd: Path, port: int, data_dir: Path):
        self.env = env
        self.cwd = cwd
        self.port = port
        self.data_dir = data_dir
        #: What `raypipe up` printed, once :func:`running_head` has run it.
        self.started: Done | None = None
        script = Path(sys.executable).with_name("raypipe")
        self.command = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from raypipe.cli import main; main()"]
        )

    @property
    def ray_pointer(self) -> Path:
        """Ray's current-cluster file as this environment's Ray reads and writes it
        (``$RAY_TMPDIR/ray/ray_current_cluster``)."""
        return Path(self.env.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster")

    def __call__(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> Done:
        done = subprocess.run(
            [*self.command, *args],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Done(tuple(args), done.returncode, done.stdout, done.stderr)

    def many(self, commands: Sequence[Sequence[str]]) -> list[Done]:
        """Run several commands at once; results in the same order."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self(*args), commands))

    def ok(self, *args: str) -> Done:
        done = self(*args)
        assert done.returncode == 0, done.describe()
        return done

    def job_count(self) -> int:
        jobs = self.ok("jobs", "--json", "--limit", "10000").json()
        assert isinstance(jobs, list)
        return len(jobs)

    def rows_in_database(self) -> int:
        with closing(sqlite3.connect(self.data_dir / "raypipe.db")) as conn:
            return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


# -- a head of its own -----------------------------------------------------------------


def free_port(first: int = FIRST_PORT) -> int:
    for port in range(first, first + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for a Ray head")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """Each process on this machine with its arguments (Linux /proc); a process that ends
    while it is read is passed over."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(entry.name), args


def gcs_processes(port: int) -> list[int]:
    """Pids of Ray GCS servers listening on ``port`` (Linux /proc)."""
    flag = f"--gcs_server_port={port}".encode()
    return [pid for pid, args in _command_lines() if flag in args]


def gcs_addresses() -> set[str]:
    """The GCS addresses that Ray's processes on this machine name (``--gcs-address=``), as
    ``ray status`` finds them when no current-cluster file names one."""
    return {
        arg.decode(errors="replace").split("=", 1)[1]
        for _pid, args in _command_lines()
        for arg in args
        if arg.startswith(b"--gcs-address=")
    }


def session_dir(port: int) -> Path:
    """The session folder of the Ray head on ``port`` (from its GCS server's command line)."""
    [pid] = gcs_processes(port)
    args = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    [session] = [arg.split("=", 1)[1] for arg in args if arg.startswith("--session-dir=")]
    return Path(session)


def running_head(root: Path, **env: str) -> Iterator[Raypipe]:
    """`raypipe up` with a Ray head of its own (a free port, its own data folder, SQLite
    database and namespace) and ``env`` on top; afterwards `raypipe down` unless a test
    already stopped it. A fixture's body: ``yield from running_head(...)``.

    The head's Ray folder is its own too (``RAY_TMPDIR``), so that its current-cluster
    file is this head's alone: other test runs on the machine start heads of their own,
    and ``ray start`` names each in the shared ``/tmp/ray/ray_current_cluster``. (Short,
    under /tmp: Ray's socket paths inside it must stay under 107 characters.)"""
    data_dir = root / "data"
    port = free_port()
    ray_temp = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    isolated = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RAYPIPE_") and key not in ("RAY_ADDRESS", "PYTEST_CURRENT_TEST")
    }
    isolated.update(
        RAYPIPE_DATA_DIR=str(data_dir),
        RAYPIPE_RAY_PORT=str(port),
        RAYPIPE_RAY_ADDRESS=f"127.0.0.1:{port}",
        RAYPIPE_NAMESPACE=f"cli-{uuid.uuid4().hex[:10]}",
        RAYPIPE_API_PORT=str(free_port(port + 1)),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TMPDIR=str(ray_temp),
        **env,
    )
    cli = Raypipe(isolated, cwd=root, port=port, data_dir=data_dir)  # cwd: no stray .env
    try:
        up = cli("up", "--num-cpus", "2", timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.describe()
        assert "started a local Ray head" in up.stdout, up.describe()
        assert port_open(port)
        assert cli.ray_pointer.read_text().endswith(f":{port}"), "the head is not in RAY_TMPDIR"
        cli.started = up
        yield cli
    finally:
        if gcs_processes(port):
            cli("down")
        if not gcs_processes(port):
            shutil.rmtree(ray_temp, ignore_errors=True)
