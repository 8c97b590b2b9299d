"""Unit tests are pure: no Ray, no database, and no settings leaking in from the shell."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drop ``RAYPIPE_*`` variables and run from an empty folder (no stray ``.env``)."""
    for name in list(os.environ):
        if name.upper().startswith("RAYPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
