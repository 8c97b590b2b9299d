"""The code's own checks, run by the test command so CI holds them: ruff (lint and format)
over everything, and mypy over ``raypipe/`` with the settings in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MYPY_CACHE

ROOT = Path(__file__).resolve().parents[2]
CHECKS = {
    "ruff lint": ["ruff", "check", "raypipe", "tests", "bench", "serve_app.py"],
    "ruff format": ["ruff", "format", "--check", "raypipe", "tests", "bench", "serve_app.py"],
    "mypy": ["mypy", "--cache-dir", str(MYPY_CACHE)],
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_code_passes(name: str) -> None:
    command = [sys.executable, "-m", *CHECKS[name]]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(CHECKS[name])} failed:\n{done.stdout}{done.stderr}"
