"""Fair share in the claim pass, on the fake cluster and clock: tenants flooding one queue
get resource-seconds in the ratio of their weights, a newcomer does not wait behind a
flood, a tenant alone gets everything, and a scarce resource is charged as such."""

from __future__ import annotations

from collections import Counter

import pytest

from raypipe.direct import DirectClient
from tests.helpers.fake_cluster import Rig
from tests.unit.controller.conftest import MakeRig


class Tenants:
    """Submits ``test.gate`` jobs (1 CPU each) as several tenants, and plays Ray's part:
    a launched task starts once a CPU is free (first launched, first started) and ends
    ``duration`` seconds later. Counts each tenant's CPU-seconds."""

    def __init__(self, rig: Rig, cpus: int, duration: float):
        self.rig = rig
        self.cpus = cpus
        self.duration = duration
        self.tenant_of: dict[str, str] = {}
        self.held: Counter[str] = Counter()
        self.first_started: dict[str, float] = {}
        self._clients: dict[str, DirectClient] = {}
        self._seen = 0
        self._ready: list[str] = []
        self._running: dict[str, float] = {}
        self.now = 0.0

    def submit(self, tenant: str, count: int) -> list[str]:
        client = self._clients.get(tenant)
        if client is None:
            client = self._clients[tenant] = DirectClient(self.rig.settings, tenant=tenant)
        ids = [h.id for h in client.submit_many([("test.gate", {"folder": "-"})] * count)]
        self.tenant_of.update(dict.fromkeys(ids, tenant))
        return ids

    def run(self, seconds: float, tick: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.rig.round(after_s=tick)
            self.now += tick
            launched = self.rig.cluster.launched()
            self._ready += launched[self._seen :]
            self._seen = len(launched)
            for job_id, at in list(self._running.items()):
                if self.now - at >= self.duration - 1e-9:
                    self.rig.cluster.finish(job_id)
                    del self._running[job_id]
            while self._ready and len(self._running) < self.cpus:
                job_id = self._ready.pop(0)
                self.rig.cluster.start(job_id)
                self._running[job_id] = self.now
                self.first_started.setdefault(job_id, self.now)
            for job_id in self._running:
                self.held[self.tenant_of[job_id]] += tick

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def test_weights_one_and_three_get_cpu_seconds_one_to_three(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0}, tenant_weights={"heavy": 3})
    tenants = Tenants(rig, cpus=4, duration=1.0)
    try:
        tenants.submit("light", 150)
        tenants.submit("heavy", 150)
        tenants.run(10.0)  # the first jobs ran before either tenant had any usage
        before = Counter(tenants.held)
        tenants.run(30.0)
        window = {tenant: tenants.held[tenant] - before[tenant] for tenant in ("light", "heavy")}
        assert window["heavy"] / window["light"] == pytest.approx(3.0, rel=0.1)
        assert sum(window.values()) == pytest.approx(4 * 30.0, rel=0.02)  # nothing idle
    finally:
        tenants.close()


def test_a_newcomer_starts_within_a_few_jobs_of_arriving_behind_a_flood(
    make_rig: MakeRig,
) -> None:
    rig = make_rig({"CPU": 2.0})
    tenants = Tenants(rig, cpus=2, duration=1.0)
    try:
        tenants.submit("flood", 100)
        tenants.run(5.0)
        arrived = tenants.now
        late = tenants.submit("late", 3)
        tenants.run(5.0)
        waits = [tenants.first_started[job_id] - arrived for job_id in late]
        # A CPU frees every half second; the flood's prefetched tasks go first.
        assert max(waits) <= 3 * tenants.duration
    finally:
        tenants.close()


def test_first_come_first_served_when_fair_share_is_off(make_rig: MakeRig) -> None:
    # The contrast that shows the test above measures fair share: off, the late tenant
    # waits behind the whole flood.
    rig = make_rig({"CPU": 2.0}, fair_share=False)
    tenants = Tenants(rig, cpus=2, duration=1.0)
    try:
        tenants.submit("flood", 20)
        tenants.run(2.0)
        late = tenants.submit("late", 1)
        tenants.run(6.0)
        assert late[0] not in tenants.first_started
    finally:
        tenants.close()


def test_a_tenant_alone_gets_every_cpu(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0}, tenant_weights={"other": 100})
    tenants = Tenants(rig, cpus=4, duration=1.0)
    try:
        tenants.submit("alone", 60)
        tenants.run(10.0)
        assert tenants.held["alone"] == pytest.approx(4 * 10.0 - 4 * 0.25, rel=0.05)
    finally:
        tenants.close()


def test_a_scarce_resource_is_charged_as_its_share_of_the_cluster(make_rig: MakeRig) -> None:
    rig = make_rig({"CPU": 4.0, "tpu": 1.0})
    tpu = DirectClient(rig.settings, tenant="accelerated")
    try:
        job = tpu.submit("test.tpu", {}).id
        cpu = rig.submit("test.gate", {"folder": "-"})
        rig.round()
        rig.cluster.start(job, cpu)
        rig.round()
        rig.round(after_s=10.0)
        fair = rig.controller.claims.fair
        assert fair is not None
        now = rig.clock.monotonic()
        # ten seconds of the only tpu and one of four CPUs, against one of four CPUs
        assert fair.usage("accelerated", now) == pytest.approx(10 * 1.25, rel=0.01)
        assert fair.usage("default", now) == pytest.approx(10 * 0.25, rel=0.01)
    finally:
        tpu.close()
