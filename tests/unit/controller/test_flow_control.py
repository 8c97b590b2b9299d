"""Concurrency keys and run limits in the claim pass, on the fake cluster and clock: jobs
of one key never run together while other keys' do, a flood of one key hides no other
key's job, key limits from the queue and from a processor, a run limit's sliding window,
and a run key paused by its service."""

from __future__ import annotations

from datetime import datetime, timedelta

from raypipe.flow_control import clock_time
from raypipe.jobs import JobStatus
from tests.helpers.fake_cluster import Rig
from tests.unit.controller.conftest import MakeRig


def finish_all(rig: Rig, job_ids: list[str]) -> None:
    """Start and end these launched attempts (Ray's part)."""
    for job_id in job_ids:
        rig.cluster.start(job_id)
        rig.cluster.finish(job_id)


def key_of(rig: Rig, job_ids: list[str]) -> dict[str, str | None]:
    return {job_id: rig.job(job_id).concurrency_key for job_id in job_ids}


def test_jobs_of_one_key_never_run_together_and_other_keys_do(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 8.0})
    a = rig.gates(3, concurrency_key="a")
    b = rig.gates(2, concurrency_key="b")
    free = rig.gates(2)
    rig.round()
    assert rig.cluster.launched() == [a[0], b[0], *free]
    message = "waiting for concurrency key 'a' (1 running, limit 1)"
    assert [rig.job(j).message for j in a[1:]] == [message] * 2
    assert all(rig.job(j).status is JobStatus.QUEUED for j in [*a[1:], *b[1:]])
    rig.cluster.start(a[0], b[0])
    rig.round(after_s=1.0)
    assert rig.cluster.launched() == [a[0], b[0], *free]  # held keys stay held
    rig.cluster.finish(a[0])
    rig.round()
    assert rig.cluster.launched()[-1] == a[1]  # the key's next job, once its first ended
    assert rig.job(a[2]).message == message


def test_a_flood_of_one_key_does_not_hide_another_keys_job(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0})
    flood = [
        h.id
        for h in rig.client.submit_many(
            [{"type": "test.gate", "payload": {"folder": "-"}, "concurrency_key": "u1"}] * 1000
        )
    ]
    u2 = rig.submit("test.gate", {"folder": "-"}, concurrency_key="u2")
    rig.round()  # the first rows read are all u1's: one of them starts
    rig.round()  # u1 is at its limit: its jobs are not read, u2's is
    first = rig.cluster.launched()[0]  # the flood's jobs are as old as one another
    assert rig.cluster.launched() == [first, u2]
    waiting = "waiting for concurrency key 'u1' (1 running, limit 1)"
    rest = [j for j in flood if j != first]
    assert {rig.job(j).message for j in (rest[0], rest[500], rest[-1])} == {waiting}
    running = first
    for _ in range(3):  # u1's then run one at a time
        finish_all(rig, [running])
        rig.round()
        running = rig.cluster.launched()[-1]
        assert running in rest
        assert sum(rig.job(j).lease_owner is not None for j in flood) == 1


def test_a_queues_key_limit_lets_that_many_run_at_once(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 8.0}, queues={"wide": {"concurrency": 10, "key_limit": 2}})
    jobs = rig.gates(4, concurrency_key="k", queue="wide")
    rig.round()
    assert rig.cluster.launched() == jobs[:2]
    assert rig.job(jobs[2]).message == "waiting for concurrency key 'k' (2 running, limit 2)"
    finish_all(rig, jobs[:1])
    rig.round()
    assert rig.cluster.launched() == jobs[:3]


def test_a_processors_key_limit_and_key_from_its_payload(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 8.0})
    pairs = [rig.submit("test.keyed_pairs", {"key": "doc-7"}) for _ in range(3)]
    ones = [rig.submit("test.keyed", {"key": "doc-7"}) for _ in range(2)]
    assert set(key_of(rig, pairs + ones).values()) == {"doc-7"}
    rig.round()
    # Each type's own limit, over the key's jobs of both types: 2 for test.keyed_pairs;
    # test.keyed's limit of 1 is reached already.
    assert rig.cluster.launched() == pairs[:2]
    assert rig.job(ones[0]).message == "waiting for concurrency key 'doc-7' (2 running, limit 1)"
    assert rig.job(pairs[2]).message == "waiting for concurrency key 'doc-7' (2 running, limit 2)"
    finish_all(rig, pairs[:2])
    rig.round()
    assert rig.cluster.launched() == [*pairs[:2], pairs[2]]  # the oldest first, within limits


def test_a_run_limit_allows_n_starts_in_any_window_and_the_rest_wait_for_it(
    make_rig: MakeRig,
) -> None:
    rig = make_rig({"CPU": 4.0})
    jobs = [rig.submit("test.limited") for _ in range(12)]
    starts: dict[str, datetime] = {}
    rig.round()
    first = rig.clock.wall()
    assert len(rig.cluster.launched()) == 5
    waiting = rig.job(jobs[5])
    next_start = clock_time(first + timedelta(seconds=2))
    assert waiting.status is JobStatus.QUEUED
    assert waiting.message == f"waiting for run limit 'test.limited': next start at {next_start}"
    assert rig.controller.ctx.next_due == first + timedelta(seconds=2)  # the loop wakes then
    for _ in range(40):  # 6 seconds, a round every 0.15 s
        launched = rig.cluster.launched()
        for job_id in launched:
            if job_id not in starts:
                starts[job_id] = rig.clock.wall()
                finish_all(rig, [job_id])
        rig.round(after_s=0.15)
    assert sorted(starts) == sorted(jobs)
    times = sorted(starts.values())
    for at in times:
        assert sum(at <= t < at + timedelta(seconds=2) for t in times) <= 5
    assert len({t for t in times if t < first + timedelta(seconds=2)}) == 1  # 5 at once
    assert all(rig.job(j).status is JobStatus.COMPLETED for j in jobs)


def test_a_paused_run_key_starts_nothing_until_its_pause_ends(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0})
    until = rig.clock.wall() + timedelta(seconds=3)
    rig.store.pause_run_key("test.limited", until)
    jobs = [rig.submit("test.limited") for _ in range(2)]
    rig.round()
    assert rig.cluster.launched() == []
    paused = (
        f"waiting for run limit 'test.limited': paused by its service until {clock_time(until)}"
    )
    assert [rig.job(j).message for j in jobs] == [paused] * 2
    rig.round(after_s=2.9)
    assert rig.cluster.launched() == []
    rig.round(after_s=0.2)
    assert rig.cluster.launched() == jobs
