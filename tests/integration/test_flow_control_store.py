"""The claim's SQL for concurrency keys and run limits on real SQLite and PostgreSQL: held
jobs counted per (tenant, queue, key), saturated pairs and full or paused run keys left out
of the candidate read (and NULL keys never), run starts written, counted per window and
pruned, and the waiting messages of the jobs left unread."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
import sqlalchemy as sa

from raypipe import registry
from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.flow_control import FlowControl, FlowLimits
from raypipe.store import DispatchStore
from raypipe.store.dispatch import Candidate
from raypipe.store.tables import run_starts

OWNER = "test-owner"
QUEUES = {"default": 100}


@pytest.fixture
def client(settings: Settings) -> Iterator[DirectClient]:
    client = DirectClient(settings)
    yield client
    client.close()


def flow_of(settings: Settings) -> FlowControl:
    processors = registry.load(settings.processor_modules)
    return FlowControl(FlowLimits.of(settings, processors))


def test_saturated_pairs_are_not_read_and_jobs_without_a_key_always_are(
    settings: Settings, client: DirectClient
) -> None:
    other = DirectClient(settings, tenant="other")
    try:
        held = client.submit("noop", concurrency_key="u1").id
        flood = {client.submit("noop", concurrency_key="u1").id for _ in range(3)}
        plain = client.submit("noop").id
        u2 = client.submit("noop", concurrency_key="u2").id
        others = other.submit("noop", concurrency_key="u1").id
        dispatch = DispatchStore(client.store)
        flow = flow_of(settings)
        taken = dispatch.claim(OWNER, 30.0, QUEUES, lambda c, _f: c[:1], 1, flow=flow)
        assert [job.id for job in taken] == [held]
        offered: list[str] = []

        def look(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
            offered.extend(candidate.id for candidate in candidates)
            return []

        dispatch.claim(OWNER, 30.0, QUEUES, look, 100, flow=flow)
        assert flow.state is not None
        assert flow.state.held == {("default", "default", "u1"): 1}
        # One tenant's u1 is at its limit: its jobs stay unread; the other tenant's u1,
        # another key and a job without a key are read.
        assert set(offered) == {plain, u2, others}
        assert not flood & set(offered)
        dispatch.set_held_back({("default", "default", "u1"): ("waiting for u1", frozenset())}, {})
        assert {client.get_job(job_id).message for job_id in flood} == {"waiting for u1"}
        assert client.get_job(held).message is None  # a held job keeps its own
        assert other.get_job(others).message is None
    finally:
        other.close()


def test_run_starts_are_written_counted_per_window_and_a_full_key_is_not_read(
    settings: Settings, client: DirectClient
) -> None:
    jobs = [client.submit("test.limited").id for _ in range(7)]
    assert {client.get_job(job_id).run_key for job_id in jobs} == {"test.limited"}
    plain = client.submit("noop").id
    dispatch = DispatchStore(client.store)
    flow = flow_of(settings)

    def keyed_first(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
        return [c for c in candidates if c.run_key][:5]  # what admission admits (5 per 2 s)

    assert len(dispatch.claim(OWNER, 30.0, QUEUES, keyed_first, 100, flow=flow)) == 5
    with client.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(run_starts)).scalar() == 5
    offered: list[str] = []

    def look(candidates: Sequence[Candidate], _free: dict[str, int]) -> list[Candidate]:
        offered.extend(candidate.id for candidate in candidates)
        return []

    dispatch.claim(OWNER, 30.0, QUEUES, look, 100, flow=flow)
    assert offered == [plain]  # the key is full in its window: its jobs are not read
    assert flow.state is not None
    [(window, key)] = flow.state.starts
    assert (window, key, flow.state.starts[(window, key)].count) == (2.0, "test.limited", 5)
    assert flow.state.full_run_keys(flow.limits) == {
        "test.limited": flow.state.starts[(window, key)].oldest + timedelta(seconds=2)
    }


def test_a_paused_key_is_not_read_until_its_pause_ends_and_old_starts_are_pruned(
    settings: Settings, client: DirectClient
) -> None:
    job = client.submit("test.limited").id
    dispatch = DispatchStore(client.store)
    now = dispatch.clock()
    dispatch.pause_run_key("test.limited", now + timedelta(hours=1))
    dispatch.pause_run_key("test.limited", now + timedelta(seconds=1))  # an earlier one: kept
    flow = flow_of(settings)
    take = lambda c, _f: list(c)  # noqa: E731
    assert dispatch.claim(OWNER, 30.0, QUEUES, take, 100, flow=flow) == []
    assert flow.state is not None
    assert flow.state.paused == {"test.limited": now + timedelta(hours=1)}
    dispatch.pause_run_key("test.limited", now - timedelta(seconds=1))  # over: changes nothing
    with client.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE run_pauses SET until = :at"), {"at": now})
        conn.execute(
            run_starts.insert(), [{"key": "gone", "started_at": now - timedelta(seconds=60)}]
        )
    assert [c.id for c in dispatch.claim(OWNER, 30.0, QUEUES, take, 100, flow=flow)] == [job]
    with client.store.engine.connect() as conn:
        rows = conn.execute(sa.select(run_starts.c.key)).scalars().all()
        pauses = conn.execute(sa.text("SELECT count(*) FROM run_pauses")).scalar()
    assert rows == ["test.limited"] and pauses == 0  # pruned at the claim: once a window
