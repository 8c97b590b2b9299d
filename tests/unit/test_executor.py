"""The worker process's one-time settling after its first attempt."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from raypipe.runtime import executor


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(executor, "_settled", False)
    yield
    gc.unfreeze()  # this test process is not a worker: its objects stay collectable


def test_a_worker_freezes_what_it_imported_once_after_its_first_attempt(
    fresh_worker: None,
) -> None:
    executor._settle()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    made_since = [[] for _ in range(1000)]  # tracked objects a second freeze would take
    executor._settle()  # later attempts leave the collector as it is
    # Not more (the lists above would be frozen); perhaps fewer: other threads of this
    # process (Ray's, earlier tests') may free frozen objects meanwhile.
    assert gc.get_freeze_count() <= frozen
    assert made_since
