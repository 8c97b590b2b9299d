"""Unique jobs in the store, on SQLite and PostgreSQL: a job holds its slot while in its
window and lets it go when it leaves, by every path; a duplicate returns the holder, or
debounces it; concurrent duplicates make one job."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.exceptions import InvalidInput
from raypipe.handle import JobHandle
from raypipe.jobs import ErrorInfo, JobStatus, Outcome
from raypipe.store import DispatchStore
from raypipe.store.jobs import Replay
from raypipe.store.tables import jobs
from raypipe.submission import prepare
from tests.integration.test_store import OWNER, _claim, _start

ERROR = ErrorInfo("RuntimeError", "boom")


@pytest.fixture
def client(settings: Settings) -> Iterator[DirectClient]:
    client = DirectClient(settings)
    yield client
    client.close()


def _slot(client: DirectClient, job_id: str) -> str | None:
    with client.store.engine.connect() as conn:
        return conn.execute(sa.select(jobs.c.unique_slot).where(jobs.c.id == job_id)).scalar_one()


def _unique(client: DirectClient, key: str, while_: str = "queued", **options: object) -> JobHandle:
    return client.submit("sleep", {"seconds": 1}, unique_key=key, unique_while=while_, **options)


def _record(client: DirectClient, *outcomes: Outcome) -> None:
    assert DispatchStore(client.store).record(list(outcomes)) == len(outcomes)


def test_a_duplicate_returns_the_job_in_its_window(client: DirectClient) -> None:
    first = _unique(client, "doc-7")
    assert _unique(client, "doc-7").id == first.id
    # The key is the tenant's and the type's: another type or tenant makes its own.
    other_type = client.submit("noop", {}, unique_key="doc-7")
    other = DirectClient(client.settings, tenant="other")
    try:
        assert len({first.id, other_type.id, _unique(other, "doc-7").id}) == 3
    finally:
        other.close()
    assert _slot(client, first.id) == "doc-7"
    assert client.store.count_by_status() == {JobStatus.QUEUED: 3}


def test_the_slot_goes_at_the_start_while_queued_and_at_the_end_while_running(
    client: DirectClient,
) -> None:
    queued, running = _unique(client, "q"), _unique(client, "r", "running")
    claimed = _claim(client.store, queued.id, running.id)
    # Claimed, not started: still in both windows.
    assert _unique(client, "q").id == queued.id
    assert _start(client.store, claimed) == 2
    assert (_slot(client, queued.id), _slot(client, running.id)) == (None, "r")
    assert _unique(client, "q").id != queued.id
    assert _unique(client, "r", "running").id == running.id
    _record(client, Outcome(running.id, 1, JobStatus.COMPLETED, result={}))
    assert _slot(client, running.id) is None
    assert _unique(client, "r", "running").id != running.id


@pytest.mark.parametrize(
    "end",
    [
        Outcome("", 1, JobStatus.COMPLETED, result={}),
        Outcome("", 1, JobStatus.FAILED, error=ERROR),
        Outcome("", 1, JobStatus.CANCELLED),
    ],
    ids=lambda o: o.status.value,
)
@pytest.mark.parametrize("started", [True, False], ids=["started", "not-started"])
def test_every_end_of_an_attempt_lets_the_slot_go(
    client: DirectClient, end: Outcome, started: bool
) -> None:
    job = _unique(client, "k", "running")
    claimed = _claim(client.store, job.id)
    if started:
        _start(client.store, claimed)
    _record(client, Outcome(job.id, 1, end.status, result=end.result, error=end.error))
    assert client.store.get(job.id).status is end.status
    assert _slot(client, job.id) is None


def test_a_cancelled_queued_job_lets_its_slot_go(client: DirectClient) -> None:
    job = _unique(client, "k")
    assert client.cancel_job(job.id).status is JobStatus.CANCELLED
    assert _slot(client, job.id) is None
    assert _unique(client, "k").id != job.id


def test_a_start_and_an_end_in_one_round_let_the_slot_go(client: DirectClient) -> None:
    """A bundled tiny job: its start and its end are reported together."""
    done, again = _unique(client, "done", "running"), _unique(client, "again")
    _claim(client.store, done.id, again.id)
    now = client.store.clock()
    DispatchStore(client.store).advance(
        OWNER,
        [(done.id, 1, now), (again.id, 1, now)],
        [
            Outcome(done.id, 1, JobStatus.COMPLETED, result={}),
            # Queued again after it began: out of its ``queued`` window all the same.
            Outcome(again.id, 1, JobStatus.QUEUED, error=ERROR, run_at=now),
        ],
    )
    assert (_slot(client, done.id), _slot(client, again.id)) == (None, None)


def test_a_retry_keeps_the_slot_until_the_window_ends_and_never_takes_it_back(
    client: DirectClient,
) -> None:
    # Queued again before it began (its launch failed): still in its window.
    waiting = _unique(client, "w")
    _claim(client.store, waiting.id)
    later = client.store.clock() + timedelta(seconds=60)
    _record(client, Outcome(waiting.id, 1, JobStatus.QUEUED, error=ERROR, run_at=later))
    assert _slot(client, waiting.id) == "w"
    # A running-window job retried after it began keeps its slot until it ends.
    running = _unique(client, "r", "running")
    _start(client.store, _claim(client.store, running.id))
    now = client.store.clock()
    _record(client, Outcome(running.id, 1, JobStatus.QUEUED, error=ERROR, run_at=now))
    assert _slot(client, running.id) == "r"
    _claim(client.store, running.id)
    _record(client, Outcome(running.id, 2, JobStatus.FAILED, error=ERROR))
    # A user's retry of the failed job does not make it unique again.
    client.retry_job(running.id)
    assert client.store.get(running.id).status is JobStatus.QUEUED
    assert _slot(client, running.id) is None
    assert _unique(client, "r", "running").id != running.id


def test_replace_debounces_the_queued_job(client: DirectClient) -> None:
    first = _unique(client, "doc", delay_s=5)
    skipped = client.submit("sleep", {"seconds": 2}, unique_key="doc", delay_s=60)
    assert skipped.id == first.id
    assert client.store.get(first.id).payload == {"seconds": 1}
    before = client.store.clock()
    replaced = client.submit(
        "sleep", {"seconds": 3}, unique_key="doc", on_duplicate="replace", delay_s=120
    )
    assert replaced.id == first.id
    job = client.store.get(first.id)
    assert job.payload == {"seconds": 3}
    assert before + timedelta(seconds=119) <= job.run_at <= before + timedelta(seconds=125)
    assert client.store.count_by_status() == {JobStatus.QUEUED: 1}


def test_replace_leaves_a_claimed_job_as_it_is(client: DirectClient) -> None:
    first = _unique(client, "doc", "running")
    _claim(client.store, first.id)
    replaced = _unique(client, "doc", "running", on_duplicate="replace", delay_s=300)
    assert replaced.id == first.id
    job = client.store.get(first.id)
    assert job.payload == {"seconds": 1} and job.run_at < client.store.clock()


def test_duplicates_in_one_submission_return_the_first(client: DirectClient) -> None:
    spec = {"type": "sleep", "payload": {"seconds": 1}, "unique_key": "bulk"}
    replace = {**spec, "payload": {"seconds": 4}, "on_duplicate": "replace"}
    specs = [spec, spec, replace, {"type": "noop"}]
    rows = prepare(specs, client.settings, client.store.clock())
    rows[2]["on_duplicate"] = "replace"  # what the submitter adds from the spec
    (one, new), (two, dup), (three, _), (plain, _) = client.store.insert(rows)
    assert (new, dup) == (None, Replay.UNIQUE)
    assert one.id == two.id == three.id != plain.id
    # Every answer shows the job as it is now.
    assert one.payload == two.payload == three.payload == {"seconds": 4}
    assert client.store.get(one.id).payload == {"seconds": 4}
    assert client.store.count_by_status() == {JobStatus.QUEUED: 2}


def test_concurrent_duplicates_make_one_job(settings: Settings) -> None:
    clients = [DirectClient(settings) for _ in range(20)]
    start = threading.Barrier(len(clients))

    def submit(client: DirectClient) -> str:
        start.wait()
        return _unique(client, "race").id

    try:
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            ids = set(pool.map(submit, clients))
        assert len(ids) == 1
        assert clients[0].store.count_by_status() == {JobStatus.QUEUED: 1}
    finally:
        for client in clients:
            client.close()


def test_a_fire_whose_slot_is_taken_makes_no_job(client: DirectClient) -> None:
    """What schedules' fires do: written inside a larger transaction, never failing it."""
    held = _unique(client, "cron")
    store, now = client.store, client.store.clock()
    spec = {"type": "sleep", "payload": {"seconds": 1}, "unique_key": "cron"}
    rows = prepare([spec, {"type": "noop"}], client.settings, now)
    with store.engine.begin() as conn:
        store.add(conn, rows, now)
    assert store.count_by_status() == {JobStatus.QUEUED: 2}
    assert store.list(type="sleep")[0].id == held.id


def test_unique_options_need_a_key_and_a_batch_takes_none(client: DirectClient) -> None:
    with pytest.raises(InvalidInput, match="on_duplicate needs a unique_key"):
        client.submit("noop", {}, on_duplicate="replace")
    with pytest.raises(InvalidInput) as caught:
        client.submit_batch([{"type": "noop"}, {"type": "noop", "unique_key": "k"}])
    assert caught.value.details == [
        {"loc": ["jobs", 1, "unique_key"], "msg": "not supported inside a batch"}
    ]
    assert client.store.count_by_status() == {}
