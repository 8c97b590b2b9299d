"""Cron schedules on real SQLite and PostgreSQL, with an injected clock: each instant fires
exactly once, on time, whatever restarts or concurrent dispatchers do."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from raypipe.config import ScheduleConfig, Settings
from raypipe.config_groups import RateLimit
from raypipe.cron import Schedule
from raypipe.exceptions import Conflict, InvalidInput, NotFound
from raypipe.jobs import JobRecord, JobStatus
from raypipe.store import create_engine
from raypipe.store.schedules import ScheduleStore

START = datetime(2025, 1, 1, 10, 0, 30, tzinfo=timezone.utc)
EVERY_5 = "*/5 * * * *"
FIRST = datetime(2025, 1, 1, 10, 5, tzinfo=timezone.utc)
PERIOD = timedelta(minutes=5)

OpenStore = Callable[[], ScheduleStore]


class FakeClock:
    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_store(settings: Settings, clock: FakeClock) -> Iterator[OpenStore]:
    """Makes stores on engines of their own: each one is a dispatcher (re)started."""
    engines = []

    def make() -> ScheduleStore:
        engine = create_engine(settings.database_url)
        engines.append(engine)
        return ScheduleStore(engine, clock=clock)

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def store(open_store: OpenStore) -> ScheduleStore:
    return open_store()


def jobs_of(store: ScheduleStore, name: str) -> list[JobRecord]:
    return sorted(
        store.jobs.list(tag=f"schedule:{name}", limit=10_000), key=lambda j: j.idempotency_key
    )


def create(store: ScheduleStore, settings: Settings, **fields: Any) -> Schedule:
    values = {
        "tenant": "acme",
        "name": "report",
        "cron": EVERY_5,
        "spec": {"type": "sleep", "payload": {"seconds": 0.5}, "tags": ["nightly"]},
        "admin": True,
        **fields,
    }
    return store.create(settings, **values)


# -- firing ------------------------------------------------------------------------------


def test_a_schedule_fires_on_time_exactly_once(
    store: ScheduleStore, open_store: OpenStore, settings: Settings, clock: FakeClock
) -> None:
    schedule = create(store, settings)
    assert schedule.next_fire_at == FIRST
    assert store.next_fire_at() == FIRST

    clock.set(FIRST - timedelta(milliseconds=1))
    assert store.fire_due(settings) == []  # not a moment early

    clock.set(FIRST)
    [job_id] = store.fire_due(settings)
    job = store.jobs.get(job_id)
    assert (job.status, job.type, job.tenant) == (JobStatus.QUEUED, "sleep", "acme")
    assert job.payload == {"seconds": 0.5}
    assert job.tags == ["nightly", "schedule:report"]
    assert job.idempotency_key == f"schedule:{schedule.id}:2025-01-01T10:05:00Z"
    assert job.run_at == FIRST
    assert [e["status"] for e in store.jobs.events(job_id)] == ["queued"]

    # Again at the same instant, later within the period, and after a restart: nothing.
    assert store.fire_due(settings) == []
    clock.set(FIRST + PERIOD - timedelta(seconds=1))
    assert store.fire_due(settings) == []
    assert open_store().fire_due(settings) == []

    after = store.get(schedule.id)
    assert (after.fires, after.last_fire_at, after.last_job_id) == (1, FIRST, job_id)
    assert after.next_fire_at == FIRST + PERIOD
    assert [j.id for j in jobs_of(store, "report")] == [job_id]

    clock.set(FIRST + PERIOD + timedelta(seconds=2))  # a dispatcher round late
    [second] = open_store().fire_due(settings)
    assert store.jobs.get(second).idempotency_key.endswith("10:10:00Z")


@pytest.mark.parametrize(
    ("missed", "fired"),
    [
        ("skip", [FIRST + 5 * PERIOD]),
        ("run_once", [FIRST + 5 * PERIOD]),
        ("run_all", [FIRST + i * PERIOD for i in range(6)]),
    ],
)
def test_missed_fires_after_an_outage_follow_the_policy(
    store: ScheduleStore,
    settings: Settings,
    clock: FakeClock,
    missed: str,
    fired: list[datetime],
) -> None:
    schedule = create(store, settings, missed=missed)
    clock.set(FIRST + 5 * PERIOD + timedelta(seconds=30))  # five periods with no dispatcher
    ids = store.fire_due(settings)
    jobs = jobs_of(store, "report")
    assert sorted(ids) == sorted(j.id for j in jobs)
    assert [j.idempotency_key.split(":", 2)[2] for j in jobs] == [
        t.isoformat().replace("+00:00", "Z") for t in fired
    ]
    after = store.get(schedule.id)
    assert (after.fires, after.last_fire_at) == (len(fired), fired[-1])
    assert after.next_fire_at == FIRST + 6 * PERIOD
    assert store.fire_due(settings) == []


def test_skip_fires_nothing_when_the_latest_instant_is_past_the_grace(
    store: ScheduleStore, settings: Settings, clock: FakeClock
) -> None:
    schedule = create(store, settings, missed="skip")
    clock.set(FIRST + 2 * PERIOD + timedelta(minutes=2))
    assert store.fire_due(settings) == []
    after = store.get(schedule.id)
    assert (after.fires, after.next_fire_at) == (0, FIRST + 3 * PERIOD)


def test_a_fire_that_finds_its_unique_job_waiting_makes_none(
    store: ScheduleStore, settings: Settings, clock: FakeClock
) -> None:
    spec = {"type": "sleep", "payload": {"seconds": 0.5}, "unique_key": "report"}
    schedule = create(store, settings, spec=spec, missed="run_all")
    clock.set(FIRST)
    [first] = store.fire_due(settings)

    # The first job still waits: neither the next instant nor two missed ones make a job.
    clock.set(FIRST + PERIOD)
    assert store.fire_due(settings) == []
    clock.set(FIRST + 3 * PERIOD)
    assert store.fire_due(settings) == []
    after = store.get(schedule.id)
    assert (after.fires, after.last_job_id, after.last_fire_at) == (1, first, FIRST + 3 * PERIOD)
    assert after.next_fire_at == FIRST + 4 * PERIOD
    assert [j.id for j in jobs_of(store, "report")] == [first]


def test_concurrent_dispatchers_fire_each_instant_once(
    open_store: OpenStore, settings: Settings, clock: FakeClock
) -> None:
    stores = [open_store() for _ in range(4)]
    names = [f"s{i}" for i in range(12)]
    for index, name in enumerate(names):
        create(stores[0], settings, name=name, missed="run_all" if index % 2 else "run_once")
    fired: list[str] = []
    errors: list[BaseException] = []
    rounds = 6
    for round_ in range(rounds):
        # Outages of varying length, so some rounds catch up several instants.
        clock.set(FIRST + (2 * round_) * PERIOD + timedelta(seconds=round_))
        barrier = threading.Barrier(len(stores))

        def fire(store: ScheduleStore, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                fired.extend(store.fire_due(settings))
            except BaseException as exc:  # reported below, with the test's own assertion
                errors.append(exc)

        threads = [threading.Thread(target=fire, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    jobs = [j for name in names for j in jobs_of(stores[0], name)]
    assert sorted(fired) == sorted(j.id for j in jobs)
    keys = Counter(j.idempotency_key for j in jobs)
    assert max(keys.values()) == 1
    last = FIRST + (2 * (rounds - 1)) * PERIOD
    for schedule in stores[0].list("acme"):
        # run_all fired every instant up to the last round; run_once one per round.
        expected = 2 * (rounds - 1) + 1 if schedule.missed == "run_all" else rounds
        assert (schedule.fires, schedule.last_fire_at) == (expected, last)


def test_a_schedule_whose_spec_broke_is_disabled_and_the_others_still_fire(
    store: ScheduleStore, settings: Settings, clock: FakeClock
) -> None:
    broken = create(store, settings, name="solo-report", spec={"type": "noop", "queue": "solo"})
    fine = create(store, settings, name="fine")
    without_solo = settings.model_copy(
        update={"queues": {k: v for k, v in settings.queues.items() if k != "solo"}}
    )
    clock.set(FIRST)
    [job_id] = store.fire_due(without_solo)
    assert store.jobs.get(job_id).tags == ["nightly", "schedule:fine"]
    after = store.get(broken.id)
    assert (after.enabled, after.next_fire_at, after.fires) == (False, None, 0)
    assert store.get(fine.id).fires == 1
    assert store.next_fire_at() == FIRST + PERIOD
    # Resuming validates again: the reason shows.
    with pytest.raises(InvalidInput) as exc:
        store.update(broken.id, "acme", without_solo, admin=True, enabled=True)
    assert exc.value.details[0]["loc"] == ["job", "queue"]
    resumed = store.update(broken.id, "acme", settings, admin=True, enabled=True)
    assert resumed.next_fire_at == FIRST + PERIOD


# -- management ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"cron": "* * * * * *"}, ["cron"]),
        ({"cron": "@reboot"}, ["cron"]),
        ({"timezone": "Mars/Olympus"}, ["timezone"]),
        ({"name": "no spaces"}, ["name"]),
        ({"missed": "sometimes"}, ["missed"]),
        ({"spec": {"type": "no.such.type"}}, ["job", "type"]),
        ({"spec": {"type": "sleep", "payload": {"seconds": "x"}}}, ["job", "payload", "seconds"]),
        ({"spec": {"type": "noop", "queue": "nope"}}, ["job", "queue"]),
        ({"spec": {"type": "noop", "run_at": "2030-01-01T00:00:00Z"}}, ["job", "run_at"]),
        ({"spec": {"type": "noop", "idempotency_key": "k"}}, ["job", "idempotency_key"]),
        ({"spec": {"type": "noop", "tags": [f"t{i}" for i in range(50)]}}, ["job", "tags"]),
    ],
)
def test_invalid_schedules_are_refused_with_the_field(
    store: ScheduleStore, settings: Settings, fields: dict, loc: list
) -> None:
    with pytest.raises(InvalidInput) as exc:
        create(store, settings, **fields)
    assert exc.value.details[0]["loc"] == loc
    assert store.list() == []


def test_every_problem_is_reported_at_once(store: ScheduleStore, settings: Settings) -> None:
    with pytest.raises(InvalidInput) as exc:
        create(store, settings, cron="bad", timezone="Nowhere/X", spec={"type": "nope"})
    assert [d["loc"] for d in exc.value.details] == [["cron"], ["timezone"], ["job", "type"]]


def test_names_are_unique_per_tenant_and_reads_are_tenant_scoped(
    store: ScheduleStore, settings: Settings
) -> None:
    mine = create(store, settings)
    with pytest.raises(Conflict):
        create(store, settings)
    theirs = create(store, settings, tenant="other")
    assert store.get(mine.id, "acme") == mine
    with pytest.raises(NotFound):
        store.get(theirs.id, "acme")
    with pytest.raises(NotFound):
        store.update(theirs.id, "acme", settings, admin=True, enabled=False)
    with pytest.raises(NotFound):
        store.delete(theirs.id, "acme")
    assert [s.id for s in store.list("acme")] == [mine.id]
    assert {s.id for s in store.list()} == {mine.id, theirs.id}
    assert store.find(mine.id) == mine
    assert store.find("report", "other") == theirs
    with pytest.raises(Conflict):
        store.find("report")  # two tenants use the name
    with pytest.raises(NotFound):
        store.get("x" * 100)


def test_pause_resume_and_edits_count_from_now(
    store: ScheduleStore, settings: Settings, clock: FakeClock
) -> None:
    schedule = create(store, settings, missed="run_all")
    paused = store.update(schedule.id, "acme", settings, admin=True, enabled=False)
    assert (paused.enabled, paused.next_fire_at) == (False, None)
    assert store.next_fire_at() is None
    clock.set(FIRST + 3 * PERIOD + timedelta(seconds=10))
    assert store.fire_due(settings) == []
    resumed = store.update(schedule.id, "acme", settings, admin=True, enabled=True)
    assert resumed.next_fire_at == FIRST + 4 * PERIOD  # no catch-up for a pause
    assert store.fire_due(settings) == []

    hourly = store.update(schedule.id, "acme", settings, admin=True, cron="0 * * * *")
    assert hourly.next_fire_at == datetime(2025, 1, 1, 11, tzinfo=timezone.utc)
    edited = store.update(
        schedule.id,
        "acme",
        settings,
        admin=True,
        spec={"type": "noop"},
        missed="skip",
        timezone="UTC",
    )
    assert (edited.spec, edited.missed, edited.next_fire_at) == (
        {"type": "noop"},
        "skip",
        hourly.next_fire_at,
    )
    assert store.get(schedule.id) == edited
    with pytest.raises(InvalidInput):
        store.update(schedule.id, "acme", settings, admin=True, cron="61 * * * *")
    assert store.get(schedule.id) == edited

    removed = store.delete(schedule.id, "acme")
    assert removed.id == schedule.id
    with pytest.raises(NotFound):
        store.get(schedule.id)


# -- configuration ----------------------------------------------------------------------------


def configured(settings: Settings, **schedules: ScheduleConfig) -> Settings:
    return settings.model_copy(update={"schedules": schedules, "maintenance_schedules": False})


def test_sync_creates_updates_and_removes_configured_schedules(
    store: ScheduleStore, open_store: OpenStore, settings: Settings, clock: FakeClock
) -> None:
    api_made = create(store, settings, name="by-api")
    hourly = ScheduleConfig(cron="0 * * * *", job={"type": "noop"})
    report = store.sync(configured(settings, cleanup=hourly))
    assert (report.created, report.updated, report.deleted, report.problems) == (
        ["cleanup"],
        [],
        [],
        [],
    )
    [cleanup] = [s for s in store.list() if s.name == "cleanup"]
    assert (cleanup.source, cleanup.tenant, cleanup.missed) == ("config", "default", "run_once")
    assert cleanup.next_fire_at == datetime(2025, 1, 1, 11, tzinfo=timezone.utc)

    # A restart with the same configuration changes nothing, even hours later.
    clock.set(START + timedelta(hours=3))
    again = open_store().sync(configured(settings, cleanup=hourly))
    assert (again.created, again.updated, again.deleted) == ([], [], [])
    assert store.get(cleanup.id) == cleanup

    # A new job spec keeps the due time (what is due still fires); a new cron counts from now.
    new_job = hourly.model_copy(update={"job": {"type": "sleep", "payload": {"seconds": 1}}})
    assert store.sync(configured(settings, cleanup=new_job)).updated == ["cleanup"]
    assert store.get(cleanup.id).next_fire_at == cleanup.next_fire_at
    store.fire_due(configured(settings, cleanup=new_job))
    assert [j.type for j in jobs_of(store, "cleanup")] == ["sleep"]
    daily = new_job.model_copy(update={"cron": "@daily", "timezone": "Europe/Paris"})
    store.sync(configured(settings, cleanup=daily))
    assert store.get(cleanup.id).next_fire_at == datetime(2025, 1, 1, 23, tzinfo=timezone.utc)

    # Gone from the configuration: gone from the database; API-made schedules stay.
    report = store.sync(configured(settings))
    assert report.deleted == ["cleanup"]
    assert [s.id for s in store.list()] == [api_made.id]


def test_sync_pauses_and_conflicts(store: ScheduleStore, settings: Settings) -> None:
    create(store, settings, name="taken", tenant="default")
    entries = {
        "taken": ScheduleConfig(cron="0 * * * *", job={"type": "noop"}),
        "broken": ScheduleConfig(cron="0 * * * * *", job={"type": "noop"}),
        "off": ScheduleConfig(cron="0 * * * *", job={"type": "noop"}, enabled=False),
        "on": ScheduleConfig(cron="0 * * * *", job={"type": "noop"}),
    }
    report = store.sync(configured(settings, **entries))
    assert report.created == ["off", "on"]
    assert [p.split(":")[0] for p in report.problems] == [
        "schedules.taken.name",
        "schedules.broken.cron",
    ]
    by_name = {s.name: s for s in store.list("default")}
    assert by_name["taken"].source == "api"
    assert (by_name["off"].enabled, by_name["off"].next_fire_at) == (False, None)

    # Configured schedules may be paused (the pause outlives restarts), not edited or deleted.
    on = by_name["on"]
    store.update(on.id, None, settings, admin=True, enabled=False)
    with pytest.raises(Conflict, match="configuration"):
        store.update(on.id, None, settings, admin=True, cron="5 * * * *")
    with pytest.raises(Conflict, match="configuration"):
        store.delete(on.id)
    report = store.sync(configured(settings, **entries))
    assert report.paused == ["on"]
    assert report.updated == []
    assert store.get(on.id).enabled is False
    # The configuration can switch one off for good.
    store.update(on.id, None, settings, admin=True, enabled=True)
    off_now = {**entries, "on": entries["on"].model_copy(update={"enabled": False})}
    assert store.sync(configured(settings, **off_now)).updated == ["on"]
    assert store.get(on.id).enabled is False


def test_built_in_maintenance_is_scheduled_unless_switched_off(
    store: ScheduleStore, settings: Settings
) -> None:
    report = store.sync(settings.model_copy(update={"maintenance_schedules": True}))
    names = ["maintenance.orphans", "maintenance.prune", "maintenance.stuck"]
    assert (sorted(report.created), report.problems) == (names, [])
    # The configuration may redefine one; switching maintenance off removes the others.
    nightly = ScheduleConfig(cron="0 1 * * *", job={"type": "maintenance.prune"})
    only_prune = settings.model_copy(
        update={"schedules": {"maintenance.prune": nightly}, "maintenance_schedules": False}
    )
    report = store.sync(only_prune)
    assert (report.updated, sorted(report.deleted)) == (["maintenance.prune"], names[::2])
    [prune] = store.list()
    assert (prune.name, prune.cron, prune.tenant) == ("maintenance.prune", "0 1 * * *", "default")


def test_only_admins_schedule_admin_only_job_types(
    store: ScheduleStore, settings: Settings
) -> None:
    spec = {"type": "maintenance.stuck"}
    with pytest.raises(InvalidInput) as exc:
        create(store, settings, spec=spec, admin=False)
    assert exc.value.details[0]["loc"] == ["job", "type"]
    schedule = create(store, settings, spec=spec, admin=True)
    for change in ({"enabled": False}, {"missed": "skip"}):
        with pytest.raises(InvalidInput):
            store.update(schedule.id, "acme", settings, admin=False, **change)
    assert store.get(schedule.id) == schedule
    assert store.update(schedule.id, "acme", settings, admin=True, enabled=False).enabled is False
    # Nor may a tenant turn its own schedule into one of an admin-only type.
    own = create(store, settings, name="own", spec={"type": "noop"}, admin=False)
    with pytest.raises(InvalidInput) as exc:
        store.update(own.id, "acme", settings, admin=False, spec={"type": "maintenance.prune"})
    assert exc.value.details[0]["loc"] == ["job", "type"]
    assert store.get(own.id) == own


def test_a_tenants_schedules_are_bounded(store: ScheduleStore, settings: Settings) -> None:
    # A cap of 2 rather than the default 100, so that the test makes three rows, not 101.
    capped = settings.model_copy(update={"max_schedules_per_tenant": 2})
    create(store, capped, name="one")
    create(store, capped, name="two")
    with pytest.raises(Conflict, match="RAYPIPE_MAX_SCHEDULES_PER_TENANT"):
        create(store, capped, name="three")
    assert [s.name for s in store.list("acme")] == ["one", "two"]
    assert create(store, capped, name="three", tenant="other").tenant == "other"


def test_a_tenants_fires_are_charged_to_its_submit_rate_limit(
    store: ScheduleStore, settings: Settings, clock: FakeClock
) -> None:
    # A submit limit of 4 an hour rather than the default 100,000 a minute, so that two
    # catch-ups of six jobs each pass it.
    limited = settings.model_copy(
        update={"rate_limits": {"submit": RateLimit(limit=4, window_s=3600)}}
    )
    for name in ("one", "two"):
        create(store, limited, name=name, missed="run_all")
    create(store, limited, name="theirs", tenant="other", missed="run_all")
    clock.set(FIRST + 5 * PERIOD + timedelta(seconds=30))  # six instants missed each
    store.fire_due(limited)
    fired = [len(jobs_of(store, name)) for name in ("one", "two", "theirs")]
    assert sorted(fired[:2]) == [0, 4]  # acme's four, the latest instants of one schedule
    assert fired[2] == 4  # another tenant's window is its own: four of its six too
    # The schedules moved past what they did not fire: nothing is owed next round.
    assert all(s.next_fire_at == FIRST + 6 * PERIOD for s in store.list("acme"))
    assert store.fire_due(limited) == []
