"""The performance smoke runs first in a session, before any other tier has started the
session's Ray or Serve: their idle actors would take CPU from one side of a comparison
(a 2-CPU mesh run most), and the bench scripts start Rays of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: HERE not in item.path.parents)
