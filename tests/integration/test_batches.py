"""Batches on both databases: one transaction, exact counts under concurrent completion,
one outcome, and callbacks (follow-up job, webhook delivery) that fire exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import ray
import sqlalchemy as sa

from raypipe import registry
from raypipe.batches import BatchStatus
from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.exceptions import Conflict, InvalidInput, RateLimited
from raypipe.jobs import CANCELLED_ON_REQUEST, JobStatus, Outcome
from raypipe.store import DispatchStore, JobStore, create_engine
from raypipe.store.batches import BatchStore
from raypipe.store.tables import jobs, webhook_deliveries
from raypipe.submission import prepare_batch
from tests.conftest import wait_for
from tests.integration.conftest import dispatcher

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
WEBHOOK = "https://hooks.example/batch"


def _stores(settings: Settings) -> tuple[JobStore, BatchStore]:
    registry.load(settings.processor_modules)
    store = JobStore(create_engine(settings.database_url), clock=lambda: T0)
    return store, BatchStore(store)


def _batch(settings: Settings, batches: BatchStore, n: int, **fields: Any) -> Any:
    body = {"jobs": [{"type": "noop", "payload": {}} for _ in range(n)], **fields}
    rows, extra = prepare_batch(body, settings, T0, "acme")
    return batches.create("acme", rows, **extra)[0]


def _claim_all(store: JobStore, n: int, start: bool = True) -> list[Any]:
    """Claim up to ``n`` jobs (the queue's only slots, so every candidate fits) and, unless
    told not to, start them: processing."""
    dispatch = DispatchStore(store)
    claimed = dispatch.claim("test-owner", 60, {"default": n}, lambda c, _free: list(c), n)
    if start:
        dispatch.start("test-owner", [(c.id, c.attempt, T0) for c in claimed])
    return claimed


def _follow_ups(store: JobStore, batch_id: str) -> list[Any]:
    return [
        job for job in store.list(type="test.echo", limit=100) if f"batch:{batch_id}" in job.tags
    ]


def _deliveries(store: JobStore, batch_id: str) -> list[Any]:
    with store.engine.connect() as conn:
        query = sa.select(webhook_deliveries).where(webhook_deliveries.c.batch_id == batch_id)
        return conn.execute(query).all()


def test_a_batch_is_written_in_one_transaction_in_order(settings: Settings) -> None:
    store, batches = _stores(settings)
    batch = _batch(settings, batches, 10_000, tags=["big"])
    assert batch.total == 10_000 and batch.status is BatchStatus.RUNNING
    assert batch.counts["queued"] == 10_000 and batch.progress == 0.0 and batch.eta_s is None
    listed = list(batches.jobs(batch.id, "acme"))
    assert [job.id for job in listed] == batch.job_ids
    assert [job.batch_index for job in listed] == list(range(10_000))
    assert {job.batch_id for job in listed} == {batch.id}
    assert store.count_by_status() == {JobStatus.QUEUED: 10_000}


def test_an_invalid_job_writes_nothing(settings: Settings) -> None:
    store, _batches = _stores(settings)
    body = {"jobs": [{"type": "noop"}, {"type": "nope"}, {"type": "sleep", "payload": {"x": 1}}]}
    with pytest.raises(InvalidInput) as error:
        prepare_batch(body, settings, T0)
    locs = [d["loc"][:2] for d in error.value.details]
    assert ["jobs", 1] in locs and ["jobs", 2] in locs
    assert store.count_by_status() == {}


def test_batch_limits_and_keys_are_refused(settings: Settings) -> None:
    small = settings.model_copy(update={"max_batch_jobs": 3})
    with pytest.raises(InvalidInput, match="at most 3 per batch"):
        prepare_batch({"jobs": [{"type": "noop"}] * 4}, small, T0)
    keyed = {"jobs": [{"type": "noop"}, {"type": "noop", "idempotency_key": "k"}]}
    with pytest.raises(InvalidInput) as error:
        prepare_batch(keyed, settings, T0)
    assert error.value.details[0]["loc"] == ["jobs", 1, "idempotency_key"]
    with pytest.raises(InvalidInput) as error:
        prepare_batch(
            {"jobs": [{"type": "noop"}], "webhook_url": "http://10.0.0.1/x"}, settings, T0
        )
    assert error.value.details[0]["loc"] == ["webhook_url"]


def test_progress_weights_running_jobs_and_eta_follows_the_rate(settings: Settings) -> None:
    store, batches = _stores(settings)
    batch = _batch(settings, batches, 4)
    claimed = _claim_all(store, 4)
    dispatch = DispatchStore(store)
    dispatch.record([Outcome(claimed[0].id, 1, JobStatus.COMPLETED, result={})])
    dispatch.write_progress(
        [{"id": claimed[1].id, "attempt": 1, "progress": 50.0, "message": None, "stage": None}]
    )
    store.clock = lambda: T0 + timedelta(seconds=30)
    now = batches.get(batch.id)
    assert now.counts == {"queued": 0, "processing": 3, "completed": 1, "failed": 0, "cancelled": 0}
    assert now.progress == pytest.approx(37.5)  # (100 + 50 + 0 + 0) / 4
    assert now.eta_s == pytest.approx(30 * 62.5 / 37.5, abs=0.1)


def test_concurrent_completion_keeps_counts_exact_and_fires_callbacks_once(
    settings: Settings,
) -> None:
    store, batches = _stores(settings)
    threads, rounds = 8, 10
    # The follow-ups go to another queue, out of the way of the claims below.
    then = {"type": "test.echo", "queue": "solo", "payload": {}, "with_result": "parent"}
    racers = [
        JobStore(create_engine(settings.database_url), clock=lambda: T0) for _ in range(threads)
    ]
    for _ in range(rounds):
        batch = _batch(settings, batches, threads * 3, then=then, webhook_url=WEBHOOK)
        claimed = _claim_all(store, threads * 3)
        # Every other job fails. Most end one by one; the last `threads` end at once, each
        # in its own transaction, so each sees the others' jobs still running.
        outcomes = [
            Outcome(job.id, 1, JobStatus.COMPLETED if i % 2 else JobStatus.FAILED, result={})
            for i, job in enumerate(claimed)
        ]
        dispatch = DispatchStore(store)
        dispatch.record(outcomes[:-threads])
        barrier = threading.Barrier(threads)

        def finish(own: JobStore, outcome: Outcome, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            DispatchStore(own).record([outcome])

        workers = [
            threading.Thread(target=finish, args=(own, outcome))
            for own, outcome in zip(racers, outcomes[-threads:], strict=True)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        final = batches.get(batch.id)
        assert final.counts == {
            "queued": 0,
            "processing": 0,
            "completed": len(claimed) // 2,
            "failed": len(claimed) // 2,
            "cancelled": 0,
        }
        assert final.status is BatchStatus.COMPLETED_WITH_FAILURES
        assert final.completions == 1 and final.progress == 100.0 and final.eta_s == 0.0
        [follow_up] = _follow_ups(store, batch.id)
        assert follow_up.payload["parent"]["counts"]["failed"] == len(claimed) // 2
        assert follow_up.batch_id is None  # the callback is not part of the batch
        [delivery] = _deliveries(store, batch.id)
        assert delivery.event == "batch.completed" and delivery.url == WEBHOOK
    for own in racers:
        own.dispose()


def test_cancel_and_retry_failed(settings: Settings) -> None:
    store, batches = _stores(settings)
    then = {"type": "test.echo", "queue": "solo", "payload": {}}  # not in the claims' way
    batch = _batch(settings, batches, 5, then=then)
    claimed = _claim_all(store, 2)
    dispatch = DispatchStore(store)
    dispatch.record([Outcome(claimed[0].id, 1, JobStatus.FAILED, result=None)])
    cancelling = batches.cancel(batch.id, "acme")
    # Queued jobs end at once; the running one is asked to stop, so the batch runs on.
    assert cancelling.counts["cancelled"] == 3 and cancelling.status is BatchStatus.RUNNING
    assert store.get(claimed[1].id).cancel_requested
    unclaimed = next(i for i in batch.job_ids if i not in {j.id for j in claimed})
    cancelled = store.get(unclaimed)
    assert (cancelled.status, cancelled.error) == (JobStatus.CANCELLED, CANCELLED_ON_REQUEST)
    assert [e["status"] for e in store.events(unclaimed)] == ["queued", "cancelled"]
    dispatch.record([Outcome(claimed[1].id, 1, JobStatus.CANCELLED)])
    done = batches.get(batch.id)
    assert done.status is BatchStatus.CANCELLED and done.completions == 1
    with pytest.raises(Conflict):
        batches.cancel(batch.id, "acme")
    again, retried = batches.retry_failed(batch.id, "acme")
    assert retried == 1 and again.status is BatchStatus.RUNNING and not again.cancel_requested
    assert again.counts["queued"] == 1
    [job] = _claim_all(store, 1)
    assert job.id == claimed[0].id and job.attempt == 2
    dispatch.record([Outcome(job.id, 2, JobStatus.COMPLETED, result={})])
    reopened = batches.get(batch.id)
    # Cancelled jobs stay cancelled: the batch completed with failures, a second time.
    assert reopened.status is BatchStatus.COMPLETED_WITH_FAILURES and reopened.completions == 2
    assert len(_follow_ups(store, batch.id)) == 2


def test_a_batch_is_made_once_per_idempotency_key(settings: Settings) -> None:
    store, batches = _stores(settings)

    def send(tags: list[str]) -> tuple[Any, bool]:
        body = {"jobs": [{"type": "noop"}, {"type": "noop"}], "tags": tags}
        rows, extra = prepare_batch(body, settings, T0, "acme", idempotency_key="k1")
        return batches.create("acme", rows, **extra)

    first, created = send(["a"])
    again, replayed = send(["a"])
    assert created and not replayed
    assert (again.id, again.job_ids, again.total) == (first.id, first.job_ids, 2)
    with pytest.raises(Conflict, match=first.id):
        send(["b"])
    assert [b.id for b in batches.list("acme")] == [first.id]
    assert len(store.list(tenant="acme")) == 2
    # The key is the tenant's: another tenant's batch under it is its own.
    rows, extra = prepare_batch({"jobs": [{"type": "noop"}]}, settings, T0, "other", True, "k1")
    other, made = batches.create("other", rows, **extra)
    assert made and other.id != first.id


def test_a_refused_charge_retries_nothing(settings: Settings) -> None:
    store, batches = _stores(settings)
    batch = _batch(settings, batches, 2)
    dispatch = DispatchStore(store)
    claimed = _claim_all(store, 2)
    dispatch.record([Outcome(job.id, 1, JobStatus.FAILED, result=None) for job in claimed])
    charged: list[int] = []

    def refuse(_conn: sa.Connection, cost: int) -> None:
        charged.append(cost)
        raise RateLimited("over the limit")

    with pytest.raises(RateLimited):
        batches.retry_failed(batch.id, "acme", refuse)
    with pytest.raises(RateLimited):
        store.retry(claimed[0].id, "acme", refuse)
    assert charged == [2, 1]
    assert batches.get(batch.id).counts["failed"] == 2
    _, retried = batches.retry_failed(batch.id, "acme", lambda _conn, cost: charged.append(cost))
    assert retried == 2 and charged == [2, 1, 2]


def test_cancel_asks_held_jobs_to_stop_even_before_they_start(settings: Settings) -> None:
    store, batches = _stores(settings)
    batch = _batch(settings, batches, 3)
    [held] = _claim_all(store, 1, start=False)
    cancelling = batches.cancel(batch.id, "acme")
    assert cancelling.counts["cancelled"] == 2 and cancelling.status is BatchStatus.RUNNING
    job = store.get(held.id)
    assert (job.status, job.cancel_requested) == (JobStatus.QUEUED, True)
    dispatch = DispatchStore(store)
    assert dispatch.cancel_requests("test-owner") == [(held.id, 1)]
    dispatch.record([Outcome(held.id, 1, JobStatus.CANCELLED)])
    assert batches.get(batch.id).status is BatchStatus.CANCELLED


def test_a_single_job_cancel_ends_the_batch_when_it_is_the_last(settings: Settings) -> None:
    store, batches = _stores(settings)
    batch = _batch(settings, batches, 1, webhook_url=WEBHOOK)
    store.request_cancel(batch.job_ids[0])
    ended = batches.get(batch.id)
    assert ended.status is BatchStatus.COMPLETED_WITH_FAILURES and ended.completions == 1
    assert len(_deliveries(store, batch.id)) == 1


def test_another_tenant_sees_no_batch(settings: Settings) -> None:
    _store, batches = _stores(settings)
    batch = _batch(settings, batches, 1)
    with pytest.raises(Exception, match="not found"):
        batches.get(batch.id, "someone-else")
    assert batches.get(batch.id, None).id == batch.id  # an admin sees it
    assert [b.id for b in batches.list("acme")] == [batch.id]
    assert batches.list("someone-else") == []


# -- with the dispatcher ------------------------------------------------------------------


def test_a_batch_runs_to_its_outcome(raypipe: DirectClient) -> None:
    specs = [("test.echo", {"result": {"i": i}}) for i in range(12)]
    specs.append(("fail", {"error": "PermanentError"}))
    batch = raypipe.submit_batch(
        iter(specs), then={"type": "test.echo", "payload": {}, "with_result": "parent"}
    )
    final = batch.wait(timeout=120)
    assert final.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert final.counts["completed"] == 12 and final.counts["failed"] == 1
    results = [job.result for job in batch.jobs(status="completed")]
    assert results == [{"i": i} for i in range(12)]
    follow_up = wait_for(lambda: _follow_ups(raypipe.store, batch.id), what="the batch's follow-up")
    assert len(follow_up) == 1


def test_the_callback_fires_once_across_a_dispatcher_restart(
    raypipe: DirectClient, tmp_path: Path
) -> None:
    batch = raypipe.submit_batch(
        [("sleep", {"seconds": 0.3, "steps": 3}) for _ in range(12)],
        then={"type": "test.echo", "payload": {}},
        webhook_url=WEBHOOK,
    )
    wait_for(lambda: batch.refresh().done >= 2, what="some jobs to end")
    ray.kill(dispatcher(raypipe.settings), no_restart=False)
    final = batch.wait(timeout=180)
    assert final.status is BatchStatus.COMPLETED and final.counts["completed"] == 12
    assert final.completions == 1
    wait_for(lambda: _follow_ups(raypipe.store, batch.id), what="the follow-up")
    assert len(_follow_ups(raypipe.store, batch.id)) == 1
    assert len(_deliveries(raypipe.store, batch.id)) == 1
    with raypipe.store.engine.connect() as conn:
        statuses = Counter(
            conn.execute(sa.select(jobs.c.status).where(jobs.c.batch_id == batch.id)).scalars()
        )
    assert statuses == {JobStatus.COMPLETED: 12}
