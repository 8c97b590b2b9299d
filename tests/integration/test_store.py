"""The store on real SQLite and PostgreSQL: guarded transitions, idempotency, bad input."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.exceptions import Conflict, InvalidInput, NotFound, SchemaOutOfDate
from raypipe.jobs import (
    CANCELLED_ON_REQUEST,
    AttemptStatus,
    ClaimedJob,
    ErrorInfo,
    JobStatus,
    Outcome,
)
from raypipe.store import DispatchStore, JobStore, create_engine, schema_version
from raypipe.store.dispatch import Candidate
from raypipe.store.queues import QueueStore
from raypipe.store.tables import job_payloads, webhook_deliveries

OWNER = "test-owner"
QUEUES = {"default": 100, "solo": 1, "pair": 2}


@pytest.fixture
def client(settings: Settings) -> DirectClient:
    client = DirectClient(settings)
    yield client
    client.close()


def _take_free(candidates: Sequence[Candidate], free: dict[str, int]) -> list[Candidate]:
    """Candidates in order while their queue has a free slot (no resources to fit)."""
    left = dict(free)
    chosen = []
    for candidate in candidates:
        if left.get(candidate.queue, 0) > 0:
            left[candidate.queue] -= 1
            chosen.append(candidate)
    return chosen


def _claim_all(store: JobStore, owner: str = OWNER, lease_ttl_s: float = 30.0) -> list[ClaimedJob]:
    dispatch = DispatchStore(store)
    return dispatch.claim(owner, lease_ttl_s, QUEUES, _take_free, 1000)


def _claim(store: JobStore, *ids: str) -> list[ClaimedJob]:
    """Claim exactly ``ids``, leaving every other job unheld."""
    wanted = set(ids)
    dispatch = DispatchStore(store)
    claimed = dispatch.claim(
        OWNER, 30.0, QUEUES, lambda c, _f: [x for x in c if x.id in wanted], 100
    )
    assert {c.id for c in claimed} == wanted
    return claimed


def _start(store: JobStore, claimed: Sequence[ClaimedJob], at: datetime | None = None) -> int:
    when = at or store.clock()
    dispatch = DispatchStore(store)
    return dispatch.start(OWNER, [(c.id, c.attempt, when) for c in claimed])


def test_a_stale_attempt_never_overwrites_a_newer_one(client: DirectClient) -> None:
    store = client.store
    job = client.submit("noop", {})
    [first] = _claim_all(store)
    assert first.attempt == 1
    retry_at = store.clock() - timedelta(seconds=1)
    error = ErrorInfo("RuntimeError", "boom")
    dispatch = DispatchStore(store)
    assert (
        dispatch.record([Outcome(job.id, 1, JobStatus.QUEUED, error=error, run_at=retry_at)]) == 1
    )
    [second] = _claim_all(store)
    assert second.attempt == 2
    # Attempt 1 reports again, late: nothing changes.
    assert dispatch.record([Outcome(job.id, 1, JobStatus.COMPLETED, result={"late": True})]) == 0
    current = store.get(job.id)
    assert (current.status, current.attempt, current.result) == (JobStatus.QUEUED, 2, None)
    assert dispatch.record([Outcome(job.id, 2, JobStatus.COMPLETED, result={"ok": 1})]) == 1
    # A second outcome for the same attempt changes nothing either.
    assert dispatch.record([Outcome(job.id, 2, JobStatus.FAILED, error=error)]) == 0
    final = store.get(job.id)
    assert (final.status, final.result, final.progress) == (JobStatus.COMPLETED, {"ok": 1}, 100.0)
    assert [a.status.value for a in store.attempts(job.id)] == ["failed", "completed"]


def test_claims_respect_queue_limits_and_priority(client: DirectClient) -> None:
    low = client.submit("noop", {}, queue="solo", priority=1)
    high = client.submit("noop", {}, queue="solo", priority=9)
    claimed = _claim_all(client.store)
    assert [c.id for c in claimed] == [high.id]
    assert _claim_all(client.store) == []
    dispatch = DispatchStore(client.store)
    dispatch.record([Outcome(high.id, 1, JobStatus.COMPLETED, result={})])
    assert [c.id for c in _claim_all(client.store)] == [low.id]


def test_a_paused_queue_claims_nothing_until_resumed(client: DirectClient) -> None:
    queues = QueueStore(client.store.engine, client.store.clock)
    held = client.submit("noop", {}, queue="solo")
    since = queues.pause(client.settings, "solo")
    assert queues.pause(client.settings, "solo") == since  # pausing again changes nothing
    waiting = client.submit("noop", {}, queue="solo")
    other = client.submit("noop", {})
    assert [c.id for c in _claim_all(client.store)] == [other.id]
    assert queues.paused() == {"solo": since}
    queues.resume(client.settings, "solo")
    queues.resume(client.settings, "solo")  # resuming a running queue changes nothing
    assert [c.id for c in _claim_all(client.store)] == [held.id]
    assert waiting.status() is JobStatus.QUEUED  # solo runs one at a time
    with pytest.raises(NotFound, match="no queue 'nope': the configured queues are"):
        queues.pause(client.settings, "nope")


def test_delayed_jobs_wait_for_their_time(client: DirectClient) -> None:
    client.submit("noop", {}, delay_s=3600)
    assert _claim_all(client.store) == []


def test_an_expired_lease_is_found(client: DirectClient) -> None:
    store = client.store
    held, started = client.submit("noop", {}), client.submit("noop", {})
    claimed = _claim_all(store, "gone", lease_ttl_s=-1.0)
    dispatch = DispatchStore(store)
    assert dispatch.start("gone", [(started.id, 1, store.clock())]) == 1
    # Held jobs are lost whether their worker started them or not.
    lost = dispatch.lost_jobs(expired=True)
    assert sorted(j.id for j in lost) == sorted([held.id, started.id])
    assert {j.status for j in lost} == {JobStatus.QUEUED, JobStatus.PROCESSING}
    assert store.count_stuck() == 2
    assert dispatch.renew_leases("gone", 60) == 2
    assert dispatch.lost_jobs(expired=True) == [] and store.count_stuck() == 0
    dispatch.record([Outcome(c.id, c.attempt, JobStatus.COMPLETED, result={}) for c in claimed])
    assert dispatch.renew_leases("gone", 60) == 0
    assert dispatch.lost_jobs(expired=False) == []


def test_concurrent_duplicate_submissions_make_one_job(client: DirectClient) -> None:
    def submit(_: int) -> str:
        return client.submit("sleep", {"seconds": 1}, idempotency_key="dup-key").id

    with ThreadPoolExecutor(max_workers=32) as pool:
        ids = set(pool.map(submit, range(500)))
    assert len(ids) == 1
    assert client.store.count_by_status() == {JobStatus.QUEUED: 1}
    with pytest.raises(Conflict, match="dup-key"):
        client.submit("sleep", {"seconds": 2}, idempotency_key="dup-key")
    assert client.store.count_by_status() == {JobStatus.QUEUED: 1}


def test_idempotency_keys_belong_to_a_tenant(settings: Settings) -> None:
    one, two = DirectClient(settings, tenant="one"), DirectClient(settings, tenant="two")
    a = one.submit("noop", {}, idempotency_key="k")
    b = two.submit("noop", {}, idempotency_key="k")
    assert a.id != b.id
    with pytest.raises(NotFound):
        two.get_job(a.id)
    one.close()
    two.close()


@pytest.mark.parametrize(
    ("spec", "loc", "words"),
    [
        ({"type": "nope", "payload": {}}, ["type"], "unknown job type"),
        ({"type": "sleep", "payload": {"seconds": -1}}, ["payload", "seconds"], "greater than"),
        ({"type": "sleep", "payload": {"steps": "many"}}, ["payload", "steps"], "integer"),
        ({"type": "noop", "payload": {}, "priority": -1}, ["priority"], "greater than"),
        ({"type": "noop", "payload": {}, "queue": "missing"}, ["queue"], "unknown queue"),
        ({"type": "noop", "payload": {"extra": 1}}, ["payload", "extra"], "not permitted"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    client: DirectClient, spec: dict, loc: list, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.submit_many([spec])
    assert caught.value.details[0]["loc"] == loc
    assert words in caught.value.message.lower()
    assert ".".join(map(str, loc)) in caught.value.message
    assert client.store.count_by_status() == {}


def test_one_bad_job_in_a_batch_writes_none(client: DirectClient) -> None:
    specs = [("noop", {}), ("sleep", {"seconds": -5}), ("noop", {})]
    with pytest.raises(InvalidInput) as caught:
        client.submit_many(specs)
    assert caught.value.details[0]["loc"] == [1, "payload", "seconds"]
    assert client.store.count_by_status() == {}


def test_unknown_type_lists_the_known_ones(client: DirectClient) -> None:
    with pytest.raises(InvalidInput, match=r"known: .*noop.*sleep"):
        client.submit("embed.nothing", {})


def test_cancel_and_retry_guard_their_states(client: DirectClient) -> None:
    job = client.submit("noop", {})
    with pytest.raises(Conflict, match="only failed or cancelled"):
        job.retry()
    assert job.cancel().status is JobStatus.CANCELLED
    again = job.retry()
    assert (again.status, again.error, again.finished_at) == (JobStatus.QUEUED, None, None)
    with pytest.raises(NotFound):
        client.get_job("no-such-job")


def test_a_schema_behind_the_code_is_refused_with_the_fix(settings: Settings) -> None:
    from alembic import command

    command.downgrade(schema_version.alembic_config(settings.database_url), "base")
    engine = create_engine(settings.database_url)
    with pytest.raises(SchemaOutOfDate, match="raypipe migrate"):
        DirectClient(settings)
    schema_version.upgrade(engine)
    DirectClient(settings).close()
    engine.dispose()


def test_migrations_create_exactly_the_declared_schema(settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from raypipe.store.tables import metadata

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_status_values_are_constrained_in_the_database(client: DirectClient) -> None:
    job = client.submit("noop", {})
    with pytest.raises(sa.exc.DBAPIError), client.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET status = 'exploded' WHERE id = :id"), {"id": job.id})


def test_every_status_change_and_progress_step_is_an_event(client: DirectClient) -> None:
    store = client.store
    job = client.submit("noop", {})
    claimed = _claim_all(store)
    assert [c.id for c in claimed] == [job.id]
    assert _start(store, claimed) == 1
    dispatch = DispatchStore(store)
    assert (
        dispatch.write_progress(
            [{"id": job.id, "attempt": 1, "progress": 40.0, "message": "half", "stage": "s"}]
        )
        == 1
    )
    # A report from an attempt that is not running writes neither row nor event.
    assert (
        dispatch.write_progress(
            [{"id": job.id, "attempt": 7, "progress": 90.0, "message": "x", "stage": None}]
        )
        == 0
    )
    dispatch.record([Outcome(job.id, 1, JobStatus.COMPLETED, result={})])
    events = store.events(job.id)
    assert [(e["kind"], e["status"], e["progress"]) for e in events] == [
        ("status", "queued", 0.0),
        ("status", "processing", 0.0),
        ("progress", "processing", 40.0),
        ("status", "completed", 100.0),
    ]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert store.events(job.id, after=events[1]["id"])[0]["progress"] == 40.0


# -- claimed, then started ---------------------------------------------------------------


def test_a_claim_holds_the_job_queued_and_takes_its_queue_slot(client: DirectClient) -> None:
    store = client.store
    first = client.submit("noop", {}, queue="solo")
    second = client.submit("noop", {}, queue="solo")
    other = client.submit("noop", {})
    claimed = _claim_all(store)
    assert sorted(c.id for c in claimed) == sorted([first.id, other.id])
    held = store.get(first.id)
    assert (held.status, held.attempt, held.lease_owner) == (JobStatus.QUEUED, 1, OWNER)
    assert held.started_at is None and held.lease_expires_at is not None
    # No attempt row until the attempt starts (or ends), and no status event: still queued.
    assert store.attempts(first.id) == []
    assert [e["status"] for e in store.events(first.id)] == ["queued"]
    # Neither claimable again, nor leaving room in its queue for the next.
    assert _claim_all(store) == []
    dispatch = DispatchStore(store)
    assert dispatch.running_by_queue() == {"solo": 1, "default": 1}
    assert store.get(second.id).lease_owner is None
    stats = store.queue_stats()
    assert (stats["solo"]["depth"], stats["solo"]["running"]) == (2, 0)


def test_a_start_moves_the_job_to_processing_at_the_reported_time(
    client: DirectClient,
) -> None:
    store = client.store
    job = client.submit("noop", {})
    claimed = _claim_all(store)
    at = store.clock() - timedelta(seconds=5)
    assert _start(store, claimed, at) == 1
    started = store.get(job.id)
    assert (started.status, started.started_at) == (JobStatus.PROCESSING, at)
    assert [a.started_at for a in store.attempts(job.id)] == [at]
    events = store.events(job.id)
    assert [(e["status"], e["attempt"]) for e in events] == [("queued", 0), ("processing", 1)]
    # A repeated report changes nothing, and writes no second event.
    assert _start(store, claimed, at + timedelta(seconds=1)) == 0
    assert store.get(job.id).started_at == at
    assert len(store.events(job.id)) == 2
    assert store.queue_stats()["default"]["running"] == 1
    # A tenant sees its own jobs in the queues, nobody else's.
    assert store.queue_stats(job.refresh().tenant)["default"]["running"] == 1
    assert store.queue_stats("someone-else") == {}


def test_a_stale_start_changes_nothing(client: DirectClient) -> None:
    store = client.store
    job = client.submit("noop", {})
    [claimed] = _claim_all(store)
    now = store.clock()
    dispatch = DispatchStore(store)
    assert dispatch.start(OWNER, [(job.id, 2, now)]) == 0
    assert dispatch.start("someone-else", [(job.id, 1, now)]) == 0
    retry_at = now - timedelta(seconds=1)
    dispatch.record(
        [Outcome(job.id, 1, JobStatus.QUEUED, error=ErrorInfo("E", "x"), run_at=retry_at)]
    )
    # Attempt 1 was requeued before its start report was written.
    assert dispatch.start(OWNER, [(job.id, 1, now)]) == 0
    requeued = store.get(job.id)
    assert (requeued.status, requeued.lease_owner, requeued.started_at) == (
        JobStatus.QUEUED,
        None,
        None,
    )
    [second] = _claim_all(store)
    # Of one job's reports, the stale attempt's never wins over the current one's.
    assert dispatch.start(OWNER, [(job.id, 2, now), (job.id, 1, retry_at)]) == 1
    assert store.get(job.id).started_at == now
    dispatch.record([Outcome(job.id, 2, JobStatus.COMPLETED, result={})])
    assert dispatch.start(OWNER, [(job.id, 2, now)]) == 0
    assert store.get(job.id).status is JobStatus.COMPLETED
    assert (claimed.attempt, second.attempt) == (1, 2)


def test_an_attempt_that_ends_before_its_start_report_is_recorded(client: DirectClient) -> None:
    store = client.store
    job = client.submit("noop", {})
    assert [c.id for c in _claim_all(store)] == [job.id]
    dispatch = DispatchStore(store)
    assert dispatch.record([Outcome(job.id, 1, JobStatus.COMPLETED, result={"ok": 1})]) == 1
    done = store.get(job.id)
    assert (done.status, done.result, done.lease_owner) == (JobStatus.COMPLETED, {"ok": 1}, None)
    [attempt] = store.attempts(job.id)
    assert (attempt.status, attempt.started_at) == (AttemptStatus.COMPLETED, None)
    assert attempt.finished_at is not None
    assert dispatch.record([Outcome(job.id, 1, JobStatus.FAILED, error=ErrorInfo("E", "x"))]) == 0
    assert [e["status"] for e in store.events(job.id)] == ["queued", "completed"]


def test_cancelling_a_held_job_asks_its_dispatcher(client: DirectClient) -> None:
    store = client.store
    held = client.submit("noop", {}, queue="solo")
    unheld = client.submit("noop", {}, queue="solo")
    _claim_all(store)
    asked = store.request_cancel(held.id)
    assert (asked.status, asked.cancel_requested) == (JobStatus.QUEUED, True)
    dispatch = DispatchStore(store)
    assert dispatch.cancel_requests(OWNER) == [(held.id, 1)]
    assert dispatch.cancel_requests("someone-else") == []
    now = store.request_cancel(unheld.id)
    assert (now.status, now.finished_at is not None) == (JobStatus.CANCELLED, True)
    assert now.lease_owner is None
    # The same end as a batch's cancel and the dispatcher's stop write: one state move.
    assert (now.error.type, now.error.message) == (
        CANCELLED_ON_REQUEST.type,
        CANCELLED_ON_REQUEST.message,
    )
    assert [e["status"] for e in store.events(unheld.id)] == ["queued", "cancelled"]
    # The dispatcher stops the held one (before its start): it ends cancelled.
    dispatch.record([Outcome(held.id, 1, JobStatus.CANCELLED, error=CANCELLED_ON_REQUEST)])
    assert store.get(held.id).status is JobStatus.CANCELLED
    assert dispatch.cancel_requests(OWNER) == []


def test_set_waiting_touches_only_unheld_queued_jobs(client: DirectClient) -> None:
    store = client.store
    held, started, done, waiting = (client.submit("noop", {}) for _ in range(4))
    claimed = _claim(store, held.id, started.id, done.id)
    _start(store, [c for c in claimed if c.id == started.id])
    dispatch = DispatchStore(store)
    dispatch.record([Outcome(done.id, 1, JobStatus.COMPLETED, result={})])
    everyone = [held.id, started.id, done.id, waiting.id, "no-such-job"]
    assert dispatch.set_waiting({job_id: "waiting for 1 CPU" for job_id in everyone}) == 1
    assert {job_id: store.get(job_id).message for job_id in everyone[:4]} == {
        held.id: None,
        started.id: None,
        done.id: None,
        waiting.id: "waiting for 1 CPU",
    }
    assert dispatch.set_waiting({waiting.id: "waiting for 1 CPU"}) == 0  # already so
    assert dispatch.set_waiting({waiting.id: None}) == 1
    assert store.get(waiting.id).message is None
    assert dispatch.set_waiting({}) == 0


def test_queue_stats_count_what_queued_jobs_wait_for(client: DirectClient) -> None:
    store = client.store
    cpu, cpu_too, gpu, retried, held, started = (client.submit("noop", {}) for _ in range(6))
    _start(store, [c for c in _claim(store, held.id, started.id) if c.id == started.id])
    dispatch = DispatchStore(store)
    dispatch.set_waiting(
        {
            cpu.id: "waiting for 1 CPU",
            cpu_too.id: "waiting for 1 CPU",
            gpu.id: "waiting for 1 GPU",
            retried.id: "retrying after a timeout",  # a job's own message, not a wait
        }
    )
    [entry] = store.queue_stats().values()
    assert entry["waiting"] == {"waiting for 1 CPU": 2, "waiting for 1 GPU": 1}
    assert (entry["depth"], entry["running"]) == (5, 1)
    assert entry["oldest_waiting_s"] is not None and entry["oldest_waiting_s"] >= 0


def test_a_start_and_an_end_in_one_round_are_written_once(client: DirectClient) -> None:
    store = client.store
    job, other = client.submit("noop", {}), client.submit("noop", {})
    claimed = _claim_all(store)
    at = store.clock() - timedelta(seconds=2)
    ended = [Outcome(job.id, 1, JobStatus.COMPLETED, result={"n": 1})]
    dispatch = DispatchStore(store)
    assert dispatch.advance(OWNER, [(c.id, c.attempt, at) for c in claimed], ended) == (
        2,
        1,
    )
    done = store.get(job.id)
    assert (done.status, done.started_at, done.result) == (JobStatus.COMPLETED, at, {"n": 1})
    [attempt] = store.attempts(job.id)
    assert (attempt.status, attempt.started_at) == (AttemptStatus.COMPLETED, at)
    assert attempt.finished_at is not None and attempt.finished_at >= at
    assert [e["status"] for e in store.events(job.id)] == ["queued", "processing", "completed"]
    assert [a.status for a in store.attempts(other.id)] == [AttemptStatus.RUNNING]
    assert dispatch.record([Outcome(other.id, 1, JobStatus.FAILED, error=ErrorInfo("E", "x"))]) == 1
    [attempt] = store.attempts(other.id)
    assert (attempt.status, attempt.started_at, attempt.error and attempt.error.type) == (
        AttemptStatus.FAILED,
        at,
        "E",
    )


def test_the_migration_down_keeps_attempts_not_started(settings: Settings) -> None:
    """Downgrading below 0005 fills in the start of attempts that never reported one."""
    from alembic import command

    client = DirectClient(settings)
    job = client.submit("noop", {})
    _claim_all(client.store)
    dispatch = DispatchStore(client.store)
    dispatch.record([Outcome(job.id, 1, JobStatus.FAILED, error=ErrorInfo("E", "x"))])
    client.close()
    engine = create_engine(settings.database_url)
    command.downgrade(schema_version.alembic_config(settings.database_url), "0004")
    with engine.connect() as conn:
        started = conn.execute(sa.text("SELECT started_at FROM attempts")).scalar_one()
    assert started is not None
    schema_version.upgrade(engine)
    assert JobStore(engine).get(job.id).status is JobStatus.FAILED
    engine.dispose()


def test_the_migration_to_0006_drops_rows_of_attempts_claimed_not_begun(
    settings: Settings,
) -> None:
    """0.5.0 wrote an attempt row at the claim; its start now inserts it."""
    from alembic import command

    client = DirectClient(settings)
    held, ended = client.submit("noop", {}), client.submit("noop", {})
    claimed = {c.id: c for c in _claim_all(client.store)}
    dispatch = DispatchStore(client.store)
    dispatch.record([Outcome(ended.id, 1, JobStatus.FAILED, error=ErrorInfo("E", "x"))])
    client.close()
    engine = create_engine(settings.database_url)
    command.downgrade(schema_version.alembic_config(settings.database_url), "0005")
    with engine.begin() as conn:  # what a claim of 0.5.0 left
        conn.execute(
            sa.text(
                "INSERT INTO attempts (job_id, attempt, status, lease_owner)"
                " VALUES (:id, 1, 'running', :owner)"
            ),
            {"id": held.id, "owner": OWNER},
        )
    schema_version.upgrade(engine)
    store = JobStore(engine)
    assert store.attempts(held.id) == []
    assert [a.status for a in store.attempts(ended.id)] == [AttemptStatus.FAILED]
    assert _start(store, [claimed[held.id]]) == 1
    assert [a.status for a in store.attempts(held.id)] == [AttemptStatus.RUNNING]
    engine.dispose()


def test_the_migration_to_0007_moves_payloads_out_of_job_rows_and_back(
    settings: Settings,
) -> None:
    """0.6.0 kept each payload in its job's row; 0007 moves them, and back on the way down."""
    from alembic import command

    client = DirectClient(settings)
    job = client.submit("sleep", {"seconds": 0.5, "steps": 2})
    client.close()
    engine = create_engine(settings.database_url)
    config = schema_version.alembic_config(settings.database_url)
    command.downgrade(config, "0006")
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT payload FROM jobs")).scalar_one()
    assert (kept if isinstance(kept, dict) else json.loads(kept)) == {"seconds": 0.5, "steps": 2}
    schema_version.upgrade(engine)
    store = JobStore(engine)
    assert store.get(job.id).payload == {"seconds": 0.5, "steps": 2}
    assert [c.payload for c in _claim_all(store)] == [{"seconds": 0.5, "steps": 2}]
    dispatch = DispatchStore(store)
    dispatch.record([Outcome(job.id, 1, JobStatus.COMPLETED)])
    store.delete(job.id)
    with engine.connect() as conn:  # a job's payload goes with it
        assert conn.execute(sa.select(sa.func.count()).select_from(job_payloads)).scalar() == 0
    engine.dispose()


def test_deleting_a_job_deletes_its_webhook_deliveries(client: DirectClient) -> None:
    # The delivery's body carries the job's result: it must not outlive the job.
    store = client.store
    job = client.submit("noop", {}, webhook_url="https://hooks.example.com/raypipe")
    _claim(store, job.id)
    dispatch = DispatchStore(store)
    dispatch.record([Outcome(job.id, 1, JobStatus.COMPLETED, result={"secret": 1})])
    deliveries = sa.select(sa.func.count()).where(webhook_deliveries.c.job_id == job.id)
    with store.engine.connect() as conn:
        assert conn.execute(deliveries).scalar_one() == 1
    store.delete(job.id)
    with store.engine.connect() as conn:
        assert conn.execute(deliveries).scalar_one() == 0


def test_a_fair_claim_reads_every_waiting_tenant_however_deep_one_tenants_backlog(
    settings: Settings,
) -> None:
    flood = DirectClient(settings, tenant="flood")
    late = DirectClient(settings, tenant="late")
    try:
        flood.submit_many([("noop", {})] * 30)
        late_ids = {handle.id for handle in late.submit_many([("noop", {})] * 2)}
        dispatch = DispatchStore(flood.store)
        seen: list[list[str]] = []

        def rank(tenants: list[str]) -> list[str]:
            seen.append(list(tenants))
            return sorted(tenants, key=lambda tenant: tenant != "late")

        def take(candidates: Sequence[Candidate], free: dict[str, int]) -> list[Candidate]:
            return list(candidates)

        offered: list[str] = []

        def look(candidates: Sequence[Candidate], free: dict[str, int]) -> list[Candidate]:
            offered.extend(candidate.tenant for candidate in candidates)
            return []

        # First come, first served: the flood fills the pass's 4 places.
        assert dispatch.claim(OWNER, 30.0, QUEUES, look, 4) == []
        assert offered == ["flood"] * 4
        claimed = dispatch.claim(OWNER, 30.0, QUEUES, take, 4, rank=rank)
        assert seen == [["flood", "late"]]  # each waiting tenant once, in tenant order
        assert late_ids <= {job.id for job in claimed}
        assert len(claimed) == 6  # each of the two tenants read to its share: 2 × 4 / 2
        # With one tenant left waiting, the queue is read as one range again (no ranking).
        assert len(dispatch.claim(OWNER, 30.0, QUEUES, take, 100, rank=rank)) == 26
        assert seen == [["flood", "late"]]
    finally:
        flood.close()
        late.close()
