"""Priority aging on both databases: a queued job is raised one step per bound waited,
below its queue's highest waiting priority; nothing else moves."""

from __future__ import annotations

from datetime import timedelta

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.store import aging


def test_a_waiting_job_is_raised_one_step_per_bound_below_its_queues_highest(
    settings: Settings,
) -> None:
    client = DirectClient(settings)
    try:
        low = client.submit("noop", {}, priority=0).id
        mid = client.submit("noop", {}, priority=3).id
        top = client.submit("noop", {}, priority=5).id
        alone = client.submit("noop", {}, queue="solo", priority=0).id
        later = client.submit("noop", {}, priority=0, delay_s=3600).id
        store = client.store
        now = store.get(low).created_at
        assert aging.age(store.engine, 600, now + timedelta(seconds=599)) == 0
        assert aging.age(store.engine, 600, now + timedelta(seconds=601)) == 2

        def priorities() -> list[int]:
            return [store.get(job_id).priority for job_id in (low, mid, top, alone, later)]

        # raised: low and mid; top is its queue's highest; alone is its queue's only job;
        # later is not due yet
        assert priorities() == [1, 4, 5, 0, 0]
        # the next step is a bound after the last one
        assert aging.age(store.engine, 600, now + timedelta(seconds=1000)) == 0
        assert aging.age(store.engine, 600, now + timedelta(seconds=1202)) == 2
        assert priorities() == [2, 5, 5, 0, 0]
        # mid reached the top: only low goes on
        assert aging.age(store.engine, 600, now + timedelta(seconds=1803)) == 1
        assert priorities() == [3, 5, 5, 0, 0]
    finally:
        client.close()
