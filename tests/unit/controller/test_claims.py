"""The claim pass: admission against free CPUs and a small prefetch, priorities across the
backlog, skipped passes, and the autoscaler's demand."""

from __future__ import annotations

from raypipe.jobs import JobStatus
from tests.unit.controller.conftest import MakeRig


def test_admits_what_fits_plus_a_counted_prefetch_and_the_rest_says_what_it_waits_for(
    make_rig: MakeRig,
) -> None:
    rig = make_rig({"CPU": 2.0})
    jobs = rig.gates(6)
    rig.round()
    # Two CPUs free, and one task (0.5 per CPU, at least one) may wait in Ray's queue.
    assert rig.cluster.launched() == jobs[:3]
    assert [rig.job(j).message for j in jobs[3:]] == ["waiting for 1 CPU"] * 3
    assert all(rig.job(j).status is JobStatus.QUEUED for j in jobs)
    rig.cluster.start(*jobs[:2])
    rig.round()
    assert [rig.job(j).status for j in jobs[:3]] == [JobStatus.PROCESSING] * 2 + [JobStatus.QUEUED]
    assert rig.cluster.launched() == jobs[:3]  # nothing freed: nothing more admitted
    rig.cluster.finish(jobs[0])
    rig.cluster.start(jobs[2])  # the prefetched task takes the freed CPU
    rig.round()
    assert rig.job(jobs[0]).status is JobStatus.COMPLETED
    assert rig.cluster.launched() == jobs[:4]  # and the prefetch place is taken again
    assert rig.cluster.ended == [(jobs[0], 1, "completed")]


def test_the_highest_priority_of_the_whole_backlog_goes_first_whatever_its_age(
    make_rig: MakeRig,
) -> None:
    rig = make_rig({"CPU": 1.0})
    low = rig.gates(3, priority=0)
    high = rig.gates(2, priority=5)
    rig.round()
    assert rig.cluster.launched() == high  # one CPU, one prefetch place
    rig.cluster.start(*high)
    rig.cluster.finish(high[0])
    rig.round()
    assert rig.cluster.launched() == [*high, low[0]]  # then the oldest of the rest
    rig.cluster.start(low[0])
    rig.cluster.finish(high[1])
    rig.round()
    assert rig.cluster.launched() == [*high, *low[:2]]


def test_a_pass_is_skipped_while_nothing_that_waited_could_start(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 2.0})
    jobs = rig.gates(5)
    rig.round()
    rig.cluster.start(*jobs[:2])
    rig.round()  # starts recorded: the room did not grow
    assert rig.counters["claims_skipped"] == 1
    rig.round(after_s=0.1)
    assert rig.counters["claims_skipped"] == 2
    rig.cluster.finish(jobs[0])  # a CPU free again: the backlog is read...
    rig.round()
    assert rig.counters["claims_skipped"] == 2
    assert rig.cluster.launched() == jobs[:3]  # ...but the prefetched task takes it
    rig.cluster.start(jobs[2])  # a prefetch place free again
    rig.round()
    assert rig.counters["claims_skipped"] == 2
    assert rig.cluster.launched() == jobs[:4]
    rig.controller.poke()  # a submission or a cancel: the skip no longer holds
    rig.round()
    assert rig.counters["claims_skipped"] == 2
    rig.round(after_s=rig.settings.engine.poll_interval_s)  # nor beyond the polling interval
    assert rig.counters["claims_skipped"] == 2


def test_what_waits_for_resources_is_asked_of_the_autoscaler_and_withdrawn_when_it_starts(
    make_rig: MakeRig,
) -> None:
    rig = make_rig({"CPU": 2.0})
    tpu = rig.submit("test.tpu")
    rig.round()
    assert rig.cluster.requests == [[{"CPU": 1.0, "tpu": 1.0}]]
    assert rig.job(tpu).message == "waiting for 1 tpu; no node has tpu"
    assert rig.controller.claims.unrunnable == {"test.tpu": "waiting for 1 tpu; no node has tpu"}
    rig.controller.poke()
    rig.round()
    assert len(rig.cluster.requests) == 1  # only changes are sent
    rig.cluster.capacity["tpu"] = 1.0  # the autoscaler added a node
    rig.controller.poke()
    rig.round(after_s=10.0)  # the cluster's resources are read again
    assert rig.cluster.launched() == [tpu]
    assert rig.cluster.requests[-1] == []
    assert rig.controller.claims.unrunnable == {}


def test_a_low_priority_job_is_raised_as_it_waits_and_is_not_starved(make_rig: MakeRig) -> None:
    # A bound of 10 s (default 600) so that a few rounds on the fake clock span two.
    rig = make_rig({"CPU": 1.0}, priority_aging_s=10.0)
    running = rig.gates(1, priority=2)[0]
    rig.round()
    rig.cluster.start(running)
    low = rig.gates(1, priority=0)[0]
    stream = []
    for _ in range(3):  # a steady stream of priority 2 while the CPU is taken
        stream += rig.gates(1, priority=2)
        rig.round(after_s=10.0)
    assert rig.job(low).priority == 2  # raised a bound apart, up to the stream's
    assert rig.counters["priority_aged"] == 2
    assert [rig.job(j).priority for j in stream] == [2, 2, 2]
    # The first of the stream took the prefetch place (one task waits in Ray's queue)
    # before the low one was raised.
    assert rig.cluster.launched() == [running, stream[0]]
    rig.cluster.finish(running)
    rig.cluster.start(stream[0])
    rig.round()
    # as high as the rest of the stream now, and older: it goes next
    assert rig.cluster.launched() == [running, stream[0], low]
