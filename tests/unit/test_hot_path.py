"""What one attempt costs besides the processor's own work, counted in this process.

A no-op job is the hot path's whole cost: a change that makes every attempt look up a
package, import a module or call Ray shows here as a count, on any machine. (Asking
``find_spec`` about nine packages per attempt made no-op jobs six times slower, and no
timing noticed.) ``tests/integration/test_hot_path.py`` counts the same in a real Ray
worker, the dispatcher's database statements per round and the pool's calls per bundle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.jobs import ClaimedJob
from raypipe.runtime import executor
from raypipe.runtime.fanout import RayRunner
from raypipe.runtime.progress import ProgressReporter
from tests.helpers.costs import NOTHING, counting

ATTEMPTS = 50


def test_loading_the_registry_again_looks_nothing_up_and_imports_nothing() -> None:
    registry.load()  # the first load in a process imports what is installed
    with counting() as costs:
        for _ in range(ATTEMPTS):
            registry.load()
            registry.not_installed()
    assert costs.find_spec == 0
    assert costs.path_scans == 0
    assert costs.import_module == 0
    assert costs.new_modules == []


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """A worker process's state as after its first attempt, on the default settings: the
    reporter is made without an actor, since a no-op attempt must not send anything."""
    settings = get_settings(data_dir=tmp_path / "data", namespace=f"u-{uuid.uuid4().hex[:8]}")
    reporter = ProgressReporter(None, settings.engine.progress_report_interval_s, 1 << 20)  # type: ignore[arg-type]
    monkeypatch.setitem(executor._reporters, settings.namespace, reporter)
    monkeypatch.setattr(executor, "_settled", True)  # gc.freeze is not this test's business
    yield settings


def noop_job() -> ClaimedJob:
    return ClaimedJob(
        id=str(uuid.uuid4()),
        type="noop",
        queue="default",
        payload={},
        attempt=1,
        max_attempts=3,
        timeout_s=60.0,
    )


def test_a_noop_attempt_costs_no_lookup_import_statement_or_ray_call(worker: Settings) -> None:
    runner = RayRunner(worker.embeddings, {})
    assert executor.run_attempt(worker, noop_job(), runner).ok  # the worker's first
    with counting(ray_calls=True) as costs:
        results = [executor.run_attempt(worker, noop_job(), runner) for _ in range(ATTEMPTS)]
    assert all(result.ok and result.result == {} for result in results)
    assert costs.as_dict() == NOTHING
