"""What the hot path costs per job, counted on a real Ray and real databases: an attempt in
a Ray worker, the dispatcher's database statements per round, the pool's calls per bundle.

Counts, not timings (see ``tests/unit/test_hot_path.py``): a change that adds a lookup,
an import, a statement per job or an actor call per job fails here on any machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import ray

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.jobs import ClaimedJob, JobStatus, Outcome, utcnow
from raypipe.runtime import executor
from raypipe.runtime.fanout import RayRunner
from raypipe.store import Candidate, DispatchStore, JobStore
from raypipe.store.queues import QueueStore
from raypipe.store.transitions import Start
from tests.conftest import wait_for
from tests.helpers.costs import NOTHING, counting
from tests.integration.conftest import pool_actors

OWNER = "hot-path-test"


@ray.remote(num_cpus=0, max_retries=0)
def attempts_in_a_worker(settings: Settings, n: int) -> dict[str, Any]:
    """``n`` no-op attempts in this Ray worker, after its first one: what they cost."""

    def job() -> ClaimedJob:
        return ClaimedJob(str(uuid.uuid4()), "noop", "default", {}, 1, 3, 60.0)

    runner = RayRunner(settings.embeddings, {})
    assert executor.run_attempt(settings, job(), runner).ok
    with counting(ray_calls=True) as costs:
        assert all(executor.run_attempt(settings, job(), runner).ok for _ in range(n))
    return costs.as_dict()


def test_a_noop_attempt_in_a_ray_worker_costs_nothing_besides_itself(
    raypipe: DirectClient, settings: Settings
) -> None:
    """The worker's progress reporter is the real one, on the running progress actor."""
    costs = ray.get(attempts_in_a_worker.remote(settings, 50))
    assert costs == NOTHING


# -- the dispatcher's state moves ---------------------------------------------------------

#: Statements of each state move for one round, whatever the number of jobs in it (up to
#: one chunk of ids): the moves are set-wise. Raising one is a decision, not an accident.
ROUND_STATEMENTS = {
    # SQLite's one more is the explicit BEGIN raypipe sends (store/engine.py).
    "sqlite": {"claim": 6, "start": 5, "record": 5, "advance": 5},
    "postgresql": {"claim": 6, "start": 4, "record": 4, "advance": 4},
}


def _all(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
    return list(candidates)


def round_costs(url: str, settings: Settings, n: int) -> dict[str, int]:
    """Statements of each store call in rounds of ``n`` fresh no-op jobs."""
    client = DirectClient(settings)
    store = JobStore.from_url(url)
    spent: dict[str, int] = {}

    def counted(name: str, move: Callable[[], Any]) -> Any:
        with counting() as costs:
            done = move()
        spent[name] = len(costs.statements)
        return done

    def claimed_round() -> tuple[DispatchStore, list[Start], list[Outcome]]:
        client.submit_many([("noop", {})] * n)
        dispatch = DispatchStore(store)
        claimed = counted("claim", lambda: dispatch.claim(OWNER, 60.0, {"default": n}, _all, n))
        assert len(claimed) == n
        starts = [(job.id, job.attempt, utcnow()) for job in claimed]
        ends = [Outcome(job.id, job.attempt, JobStatus.COMPLETED, {}) for job in claimed]
        return dispatch, starts, ends

    try:
        dispatch, starts, ends = claimed_round()
        assert counted("start", lambda: dispatch.start(OWNER, starts)) == n
        assert counted("record", lambda: dispatch.record(ends)) == n
        dispatch, starts, ends = claimed_round()  # a bundle's: its starts and ends at once
        assert counted("advance", lambda: dispatch.advance(OWNER, starts, ends)) == (n, n)
    finally:
        store.dispose()
        client.close()
    return spent


def test_a_dispatcher_round_costs_the_same_statements_for_one_job_or_many(
    db_url: str, settings: Settings
) -> None:
    one = round_costs(db_url, settings, 1)
    many = round_costs(db_url, settings, 100)
    assert one == many
    dialect = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    assert many == ROUND_STATEMENTS[dialect]


# -- the pool's calls per bundle ----------------------------------------------------------


def test_tiny_jobs_reach_the_workers_pool_in_bundles(
    raypipe: DirectClient, settings: Settings
) -> None:
    """400 no-ops released at once: the ``workers`` pool's actor takes them in a few calls
    (bundles of up to 200), not one call per job."""
    queues = QueueStore(raypipe.store.engine)
    raypipe.submit("noop", {}).wait(timeout=120)  # the pool's actor is up
    [actor] = pool_actors(settings, "workers")
    before = ray.get(actor.info.remote())
    queues.pause(settings, "default")
    handles = raypipe.submit_many([("noop", {})] * 400)
    queues.resume(settings, "default")
    ids = [handle.id for handle in handles]
    wait_for(
        lambda: raypipe.store.count_by_status(ids).get(JobStatus.COMPLETED) == 400,
        timeout=120,
        what="400 no-ops completed",
    )
    after = ray.get(actor.info.remote())
    assert after["attempts"] - before["attempts"] == 400
    calls = after["calls"] - before["calls"]
    assert calls <= 10, f"{calls} actor calls for 400 jobs"
