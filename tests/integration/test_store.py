"""The store on real SQLite and PostgreSQL: guarded transitions, idempotency, bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.exceptions import Conflict, InvalidInput, NotFound, SchemaOutOfDate
from raypipe.jobs import ErrorInfo, JobStatus, Outcome
from raypipe.scheduling import choose_claims
from raypipe.store import JobStore, create_engine
from raypipe.store import schema as store_schema


@pytest.fixture
def client(settings: Settings) -> DirectClient:
    client = DirectClient(settings)
    yield client
    client.close()


def _claim_all(store: JobStore, owner: str = "test-owner") -> list:
    def take_all(candidates, free):
        return choose_claims(candidates, free, {}, lambda _t: {}, 1000)

    return store.claim(owner, 30.0, {"default": 100, "solo": 1, "pair": 2}, take_all, 1000)


def test_a_stale_attempt_never_overwrites_a_newer_one(client: DirectClient) -> None:
    store = client.store
    job = client.submit("noop", {})
    [first] = _claim_all(store)
    assert first.attempt == 1
    retry_at = store.clock() - timedelta(seconds=1)
    error = ErrorInfo("RuntimeError", "boom")
    assert store.record([Outcome(job.id, 1, JobStatus.QUEUED, error=error, run_at=retry_at)]) == 1
    [second] = _claim_all(store)
    assert second.attempt == 2
    # Attempt 1 reports again, late: nothing changes.
    assert store.record([Outcome(job.id, 1, JobStatus.COMPLETED, result={"late": True})]) == 0
    current = store.get(job.id)
    assert (current.status, current.attempt, current.result) == (JobStatus.PROCESSING, 2, None)
    assert store.record([Outcome(job.id, 2, JobStatus.COMPLETED, result={"ok": 1})]) == 1
    # A second outcome for the same attempt changes nothing either.
    assert store.record([Outcome(job.id, 2, JobStatus.FAILED, error=error)]) == 0
    final = store.get(job.id)
    assert (final.status, final.result, final.progress) == (JobStatus.COMPLETED, {"ok": 1}, 100.0)
    assert [a.status.value for a in store.attempts(job.id)] == ["failed", "completed"]


def test_claims_respect_queue_limits_and_priority(client: DirectClient) -> None:
    low = client.submit("noop", {}, queue="solo", priority=1)
    high = client.submit("noop", {}, queue="solo", priority=9)
    claimed = _claim_all(client.store)
    assert [c.id for c in claimed] == [high.id]
    assert _claim_all(client.store) == []
    client.store.record([Outcome(high.id, 1, JobStatus.COMPLETED, result={})])
    assert [c.id for c in _claim_all(client.store)] == [low.id]


def test_delayed_jobs_wait_for_their_time(client: DirectClient) -> None:
    client.submit("noop", {}, delay_s=3600)
    assert _claim_all(client.store) == []


def test_an_expired_lease_is_found(client: DirectClient) -> None:
    job = client.submit("noop", {})
    client.store.claim(
        "gone", -1.0, {"default": 10}, lambda c, f: choose_claims(c, f, {}, lambda _t: {}, 10), 10
    )
    lost = client.store.lost_jobs(expired=True)
    assert [j.id for j in lost] == [job.id]
    assert client.store.renew_leases("gone", 60) == 1
    assert client.store.lost_jobs(expired=True) == []


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

    command.downgrade(store_schema.alembic_config(settings.database_url), "base")
    engine = create_engine(settings.database_url)
    with pytest.raises(SchemaOutOfDate, match="raypipe migrate"):
        DirectClient(settings)
    store_schema.upgrade(engine)
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
    assert [c.id for c in _claim_all(store)] == [job.id]
    assert (
        store.write_progress(
            [{"id": job.id, "attempt": 1, "progress": 40.0, "message": "half", "stage": "s"}]
        )
        == 1
    )
    # A report from an attempt that is not running writes neither row nor event.
    assert (
        store.write_progress(
            [{"id": job.id, "attempt": 7, "progress": 90.0, "message": "x", "stage": None}]
        )
        == 0
    )
    store.record([Outcome(job.id, 1, JobStatus.COMPLETED, result={})])
    events = store.events(job.id)
    assert [(e["kind"], e["status"], e["progress"]) for e in events] == [
        ("status", "queued", 0.0),
        ("status", "processing", 0.0),
        ("progress", "processing", 40.0),
        ("status", "completed", 100.0),
    ]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert store.events(job.id, after=events[1]["id"])[0]["progress"] == 40.0
