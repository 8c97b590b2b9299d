"""The dispatcher's controller on a fake cluster and clock (tests/helpers/fake_cluster.py),
over a migrated SQLite database: its decisions, one round at a time, without Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fresh_settings
from tests.helpers.fake_cluster import Rig

MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeRig]:
    """``make_rig(capacity, **settings)``: a controller on a cluster of ``capacity``
    (2 CPUs by default), with the integration tests' settings and these overrides."""
    with ExitStack() as stack:

        def make(capacity: dict[str, float] | None = None, **overrides: Any) -> Rig:
            settings = stack.enter_context(fresh_settings(request, "sqlite", tmp_path, **overrides))
            rig = Rig(settings, capacity or {"CPU": 2.0})
            stack.callback(rig.close)
            return rig

        yield make
