"""The installed ``raypipe`` command, run in subprocesses by the tests that need it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

UP_TIMEOUT_S = 240
COMMAND_TIMEOUT_S = 120


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
        script = Path(sys.executable).with_name("raypipe")
        self.command = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from raypipe.cli import main; main()"]
        )

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
