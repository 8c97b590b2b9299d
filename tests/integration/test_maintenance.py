"""Built-in maintenance on real SQLite and PostgreSQL, with real artifact files: pruning
removes exactly the old finished jobs with their rows and files, the orphan sweep only
orphans past the grace period, and the stuck report each kind of stuck job."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

import raypipe.processors.maintenance as processors
from raypipe import registry
from raypipe.artifacts import ArtifactStore
from raypipe.commands import maintenance as commands
from raypipe.config import Settings
from raypipe.context import JobContext
from raypipe.exceptions import InvalidInput
from raypipe.jobs import ErrorInfo, JobStatus, Outcome, utcnow
from raypipe.store import DispatchStore, JobStore, create_engine
from raypipe.store.access import AccessStore
from raypipe.store.maintenance import PruneReport, orphans, prune, stuck
from raypipe.store.tables import (
    batches,
    jobs,
    metadata,
    schedules,
    webhook_attempts,
    webhook_deliveries,
    webhook_secrets,
)
from raypipe.submission import prepare
from raypipe.webhooks.events import outbox_row

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    registry.load(settings.processor_modules)
    store = JobStore(create_engine(settings.database_url), clock=Clock(START))
    yield store
    store.dispose()


@pytest.fixture
def artifacts(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_url)


def _clock(store: JobStore) -> Clock:
    assert isinstance(store.clock, Clock)
    return store.clock


def submit(store: JobStore, settings: Settings, tenant: str = "default", **spec: Any) -> str:
    [row] = prepare([{"type": "noop", "payload": {}, **spec}], settings, store.clock(), tenant)
    [(job, _new)] = store.insert([row])
    return job.id


def hold(store: JobStore, settings: Settings, *ids: str, lease_s: float = 3600.0) -> list[Any]:
    """Claim exactly ``ids``: held, still queued until started."""
    wanted = set(ids)
    dispatch = DispatchStore(store)
    claimed = dispatch.claim(
        "test-owner",
        lease_s,
        {queue: 1000 for queue in settings.queues},
        lambda candidates, _free: [c for c in candidates if c.id in wanted],
        1000,
    )
    assert {c.id for c in claimed} == wanted
    return claimed


def claim(store: JobStore, settings: Settings, *ids: str, lease_s: float = 3600.0) -> list[Any]:
    """Claim exactly ``ids`` and start them now: processing."""
    claimed = hold(store, settings, *ids, lease_s=lease_s)
    now = store.clock()
    dispatch = DispatchStore(store)
    assert dispatch.start("test-owner", [(c.id, c.attempt, now) for c in claimed]) == len(ids)
    return claimed


def finish(store: JobStore, settings: Settings, status: JobStatus, *ids: str, **kw: Any) -> None:
    claimed = claim(store, settings, *ids)
    outcomes = [Outcome(c.id, c.attempt, status, **kw) for c in claimed]
    dispatch = DispatchStore(store)
    assert dispatch.record(outcomes) == len(ids)


def execute(store: JobStore, statement: sa.Executable, rows: Any = None) -> None:
    with store.engine.begin() as conn:
        conn.execute(statement, rows)


def snapshot(store: JobStore) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table."""
    with store.engine.connect() as conn:
        return {
            table.name: [dict(row._mapping) for row in conn.execute(sa.select(table))]
            for table in metadata.sorted_tables
        }


def canonical(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {
        name: sorted(json.dumps(row, default=str, sort_keys=True) for row in rows)
        for name, rows in tables.items()
    }


def files(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under ``root``."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in root.rglob("*")
    }


# -- pruning -------------------------------------------------------------------------------


def build_history(store: JobStore, settings: Settings, artifacts: ArtifactStore) -> dict[str, Any]:
    """Jobs old and new in every status, two tenants, batches, deliveries, files; returns
    the ids that pruning 30 days after ``START + 40 days`` must remove."""
    clock = _clock(store)
    clock.now = START
    old_done = submit(store, settings)
    old_failed = submit(store, settings, tenant="acme")
    old_cancelled = submit(store, settings)
    old_retrying = submit(store, settings)
    old_running = submit(store, settings)
    submit(store, settings)  # queued since START: stays
    in_old_batch = [submit(store, settings) for _ in range(2)]
    in_running_batch = [submit(store, settings), submit(store, settings)]
    in_recent_batch = submit(store, settings)
    lost_batch = submit(store, settings)

    finish(store, settings, JobStatus.COMPLETED, old_done, *in_old_batch, result={"ok": 1})
    finish(store, settings, JobStatus.COMPLETED, in_running_batch[0], in_recent_batch, lost_batch)
    # Two attempts: a retry, then a permanent failure.
    boom = ErrorInfo("RuntimeError", "boom")
    finish(store, settings, JobStatus.QUEUED, old_failed, old_retrying, error=boom, run_at=START)
    finish(store, settings, JobStatus.FAILED, old_failed, error=boom)
    store.request_cancel(old_cancelled)
    claim(store, settings, old_running)
    for tenant, job_id in [
        ("default", old_done),
        ("acme", old_failed),
        ("default", old_retrying),
        ("default", old_running),
        ("default", in_old_batch[0]),
        ("default", in_recent_batch),
    ]:
        artifacts.write(tenant, job_id, "result.json", b'{"rows": 3}', 1)
        artifacts.write(tenant, job_id, "vectors.npy", os.urandom(100), 1)

    clock.now = START + 35 * DAY
    new_done = submit(store, settings)
    new_failed = submit(store, settings, tenant="acme")
    finish(store, settings, JobStatus.COMPLETED, new_done, result={})
    finish(store, settings, JobStatus.FAILED, new_failed, error=boom)
    artifacts.write("default", new_done, "result.json", b"{}", 1)
    artifacts.write("acme", new_failed, "partial.txt", b"half", 1)
    artifacts.write("default", str(uuid.uuid4()), "orphan.txt", b"nobody's", 1)

    # Batches, written directly: finished long ago, still running, finished recently,
    # and one whose jobs were all deleted already.
    old_batch, running_batch, recent_batch, empty_batch = (str(uuid.uuid4()) for _ in range(4))
    execute(
        store,
        batches.insert(),
        [
            _batch(old_batch, "completed", START + timedelta(hours=1)),
            _batch(running_batch, "running", None),
            _batch(recent_batch, "completed", START + 35 * DAY),
            _batch(empty_batch, "completed", START),
        ],
    )
    for batch_id, members in [
        (old_batch, in_old_batch),
        (running_batch, in_running_batch),
        (recent_batch, [in_recent_batch]),
        (str(uuid.uuid4()), [lost_batch]),  # no such batch row: the job stands alone
    ]:
        execute(store, sa.update(jobs).where(jobs.c.id.in_(members)).values(batch_id=batch_id))

    deliveries = [
        outbox_row("default", "job.completed", "https://example.com/h", {}, START, job_id=old_done),
        outbox_row("acme", "job.failed", "https://example.com/h", {}, START, job_id=old_failed),
        outbox_row("default", "batch.completed", "https://e.com", {}, START, batch_id=old_batch),
        outbox_row("default", "job.completed", "https://e.com", {}, clock.now, job_id=new_done),
        outbox_row("default", "batch.completed", "https://e.com", {}, START, batch_id=recent_batch),
    ]
    execute(store, webhook_deliveries.insert(), deliveries)
    execute(
        store,
        webhook_attempts.insert(),
        [
            {"delivery_id": d["id"], "attempt": n, "started_at": START, "duration_ms": 5.0}
            for d in deliveries
            for n in (1, 2)
        ],
    )
    # Rows of other kinds, which pruning must not touch.
    execute(
        store, webhook_secrets.insert(), [{"tenant": "acme", "secret": "s", "created_at": START}]
    )
    AccessStore(store.engine).create_key("acme", admin=True)
    execute(
        store,
        schedules.insert(),
        [
            {
                "id": str(uuid.uuid4()),
                "tenant": "default",
                "name": "nightly",
                "cron": "0 3 * * *",
                "timezone": "UTC",
                "spec": {"type": "noop"},
                "missed": "skip",
                "enabled": True,
                "source": "api",
                "created_at": START,
                "updated_at": START,
            }
        ],
    )
    return {
        "jobs": {old_done, old_failed, old_cancelled, lost_batch, *in_old_batch},
        "batches": {old_batch, empty_batch},
        "folders": {("default", old_done), ("acme", old_failed), ("default", in_old_batch[0])},
    }


def _batch(batch_id: str, status: str, finished_at: datetime | None) -> dict[str, Any]:
    return {
        "id": batch_id,
        "tenant": "default",
        "total": 2,
        "status": status,
        "tags": [],
        "created_at": START,
        "updated_at": finished_at or START,
        "finished_at": finished_at,
    }


def without(
    tables: dict[str, list[dict[str, Any]]], job_ids: set[str], batch_ids: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """``tables`` less the given jobs and batches with everything that belongs to them."""
    deliveries = {
        d["id"]
        for d in tables["webhook_deliveries"]
        if d["job_id"] in job_ids or d["batch_id"] in batch_ids
    }
    gone = {
        "jobs": lambda row: row["id"] in job_ids,
        "job_payloads": lambda row: row["job_id"] in job_ids,
        "attempts": lambda row: row["job_id"] in job_ids,
        "job_events": lambda row: row["job_id"] in job_ids,
        "webhook_deliveries": lambda row: row["id"] in deliveries,
        "webhook_attempts": lambda row: row["delivery_id"] in deliveries,
        "batches": lambda row: row["id"] in batch_ids,
    }
    return {
        name: [row for row in rows if not (name in gone and gone[name](row))]
        for name, rows in tables.items()
    }


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_pruning_removes_old_finished_jobs_with_their_rows_and_files_and_nothing_else(
    settings: Settings, store: JobStore, artifacts: ArtifactStore, batch_size: int
) -> None:
    pruned = build_history(store, settings, artifacts)
    root = Path(settings.artifacts_url)
    now = START + 40 * DAY
    before, tree = snapshot(store), files(root)

    dry = prune(store.engine, artifacts, settings, now, dry_run=True, batch_size=batch_size)
    assert canonical(snapshot(store)) == canonical(before)
    assert files(root) == tree

    report = prune(store.engine, artifacts, settings, now, batch_size=batch_size)
    expected = without(before, pruned["jobs"], pruned["batches"])
    assert canonical(snapshot(store)) == canonical(expected)
    folders = {f"{tenant}/{job_id}" for tenant, job_id in pruned["folders"]}
    inside = tuple(f"{folder}/" for folder in folders)
    gone = {p for p in tree if p in folders or p.startswith(inside)}
    assert files(root) == {p: data for p, data in tree.items() if p not in gone}

    removed = {name: len(before[name]) - len(expected[name]) for name in before}
    assert report == PruneReport(
        cutoff=now - 30 * DAY,
        dry_run=False,
        jobs=len(pruned["jobs"]),
        attempts=removed["attempts"],
        events=removed["job_events"],
        deliveries=removed["webhook_deliveries"],
        batches=len(pruned["batches"]),
        artifact_folders=len(folders),
        artifact_bytes=sum(len(tree[p] or b"") for p in gone),
    )
    assert (report.jobs, report.attempts, report.deliveries, report.batches) == (6, 6, 3, 2)
    assert report.artifact_bytes == 3 * (11 + 100)
    assert dry == replace(report, dry_run=True)
    assert prune(store.engine, artifacts, settings, now, batch_size=batch_size) == PruneReport(
        cutoff=now - 30 * DAY, dry_run=False
    )


def test_retention_can_be_overridden_and_the_report_is_json(
    settings: Settings, store: JobStore, artifacts: ArtifactStore
) -> None:
    old = submit(store, settings)
    finish(store, settings, JobStatus.COMPLETED, old, result={})
    _clock(store).now = START + 2 * DAY
    recent = submit(store, settings)
    finish(store, settings, JobStatus.COMPLETED, recent, result={})

    now = START + 3 * DAY
    assert prune(store.engine, artifacts, settings, now).jobs == 0  # 30 days' retention
    report = prune(store.engine, artifacts, settings, now, older_than_days=2.5)
    assert report.to_dict() == {
        "cutoff": "2025-01-01T12:00:00Z",
        "dry_run": False,
        "jobs": 1,
        "attempts": 1,
        "events": 3,
        "deliveries": 0,
        "batches": 0,
        "artifact_folders": 0,
        "artifact_bytes": 0,
    }
    assert [j.id for j in store.list()] == [recent]


# -- orphaned artifacts -----------------------------------------------------------------


def _age(folder: Path, at: datetime) -> None:
    for path in folder.rglob("*"):
        os.utime(path, (at.timestamp(), at.timestamp()))


def test_the_orphan_sweep_removes_only_folders_without_a_job_past_the_grace(
    settings: Settings, store: JobStore, artifacts: ArtifactStore
) -> None:
    now = utcnow()
    long_ago, lately = now - timedelta(hours=2), now - timedelta(minutes=10)
    root = Path(settings.artifacts_url)
    own = submit(store, settings, tenant="one")
    artifacts.write("one", own, "kept.txt", b"mine", 1)
    old_orphan, recent_orphan, half_orphan = (str(uuid.uuid4()) for _ in range(3))
    artifacts.write("one", old_orphan, "a.txt", b"12345", 1)
    artifacts.write("one", old_orphan, "b.txt", b"678", 1)
    artifacts.write("tenant/with space", recent_orphan, "c.txt", b"recent", 1)
    artifacts.write("two", half_orphan, "old.txt", b"old", 1)
    artifacts.write("two", half_orphan, "new.txt", b"new", 1)
    artifacts.write("two", own, "misplaced.txt", b"not served", 1)  # its job is tenant one's
    (root / "one" / "notes").mkdir()
    (root / "one" / "notes" / "readme.txt").write_text("not raypipe's")
    (root / "stray.txt").write_text("not raypipe's either")
    _age(root, long_ago)
    _age(root / "tenant%2Fwith%20space" / recent_orphan, lately)
    os.utime(root / "two" / half_orphan / "1" / "new.txt", (lately.timestamp(),) * 2)
    tree = files(root)

    dry = orphans(store.engine, artifacts, settings, now, dry_run=True)
    assert files(root) == tree
    report = orphans(store.engine, artifacts, settings, now)

    gone = {f"one/{old_orphan}", f"two/{own}"}
    assert files(root) == {p: d for p, d in tree.items() if not p.startswith(tuple(gone))}
    assert report.to_dict() == {
        "dry_run": False,
        "scanned": 5,
        "removed": 2,
        "removed_bytes": 8 + 10,
        "spared": 2,
    }
    assert dry == replace(report, dry_run=True)
    # Once the grace is over, the recent ones go too; the job's own folder never does.
    later = orphans(store.engine, artifacts, settings, now + timedelta(hours=1))
    assert (later.scanned, later.removed, later.spared) == (3, 2, 0)
    assert sorted(files(root)) == [
        "one",
        f"one/{own}",
        f"one/{own}/1",
        f"one/{own}/1/kept.txt",
        "one/notes",
        "one/notes/readme.txt",
        "stray.txt",
        "tenant%2Fwith%20space",
        "two",
    ]


def test_the_orphan_sweep_copes_with_no_artifacts_at_all(
    settings: Settings, store: JobStore, artifacts: ArtifactStore
) -> None:
    assert not Path(settings.artifacts_url).exists()
    assert orphans(store.engine, artifacts, settings, utcnow()).scanned == 0


# -- stuck jobs ---------------------------------------------------------------------------


def test_the_stuck_report_finds_each_kind_and_nothing_else(
    settings: Settings, store: JobStore
) -> None:
    clock = _clock(store)
    now = START + timedelta(hours=1)
    lease_ttl = settings.engine.lease_ttl_s  # 3 s in the tests' settings
    expired = submit(store, settings)
    expired_and_overdue = submit(store, settings, timeout_s=10)
    overdue = submit(store, settings, timeout_s=3600 - lease_ttl - 1)
    within_timeout = submit(store, settings, timeout_s=3600 - lease_ttl + 1)
    claim(store, settings, expired, expired_and_overdue, lease_s=60)
    claim(store, settings, overdue, within_timeout, lease_s=7200)
    waiting = sorted(
        job.id
        for job, _ in store.insert(prepare([{"type": "noop", "payload": {}}] * 21, settings, START))
    )
    delayed = submit(store, settings, delay_s=3 * 3600)
    done = submit(store, settings)
    finish(store, settings, JobStatus.COMPLETED, done, result={})
    clock.now = START + timedelta(minutes=30)
    submit(store, settings)  # runnable for half an hour: not yet stuck
    claim(store, settings, submit(store, settings), lease_s=7200)  # running for half an hour

    report = stuck(store.engine, settings, now)

    def ids(found: Any) -> list[str]:
        return [job.id for job in found.examples]

    assert report.lease_expired.count == 2
    assert sorted(ids(report.lease_expired)) == sorted([expired, expired_and_overdue])
    assert report.overrunning.count == 1 and ids(report.overrunning) == [overdue]
    assert report.waiting.count == 21
    assert ids(report.waiting) == waiting[:20]  # the first 20, oldest first, then by id
    assert report.total == 24
    data = report.to_dict()
    assert data["checked_at"] == "2025-01-01T01:00:00Z"
    assert data["lease_expired"]["examples"][0] == {
        "id": report.lease_expired.examples[0].id,
        "type": "noop",
        "queue": "default",
        "tenant": "default",
        "since": "2025-01-01T00:01:00Z",
    }
    assert data["overrunning"]["examples"][0]["since"] == "2025-01-01T00:00:00Z"
    assert delayed not in ids(report.waiting) and within_timeout not in ids(report.overrunning)
    assert stuck(store.engine, settings, START).total == 0


def test_held_jobs_not_started_are_stuck_by_their_lease(
    settings: Settings, store: JobStore
) -> None:
    """A claimed job its worker never starts: lost once its lease runs out, waiting while
    a live lease keeps it; never overrunning, which counts from a start."""
    now = START + timedelta(hours=2)
    lapsed, kept = submit(store, settings, timeout_s=10), submit(store, settings, timeout_s=10)
    hold(store, settings, lapsed, lease_s=60)
    hold(store, settings, kept, lease_s=3 * 3600)
    report = stuck(store.engine, settings, now)
    assert [job.id for job in report.lease_expired.examples] == [lapsed]
    assert [job.id for job in report.waiting.examples] == [kept]
    assert (report.overrunning.count, report.total) == (0, 2)


# -- the job types --------------------------------------------------------------------------


def test_the_maintenance_job_types_run_and_return_their_reports(
    settings: Settings, store: JobStore, artifacts: ArtifactStore
) -> None:
    real_now = utcnow()
    clock = _clock(store)
    clock.now = real_now - 40 * DAY
    old = submit(store, settings)
    finish(store, settings, JobStatus.COMPLETED, old, result={})
    artifacts.write("default", old, "out.txt", b"old", 1)
    clock.now = real_now - timedelta(hours=2)
    waiting = submit(store, settings)
    orphan = str(uuid.uuid4())
    artifacts.write("default", orphan, "x.txt", b"orphan", 1)
    _age(Path(settings.artifacts_url) / "default" / orphan, real_now - timedelta(hours=2))

    def run(job_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        [row] = prepare([{"type": job_type, "payload": payload}], settings, real_now, "ops")
        assert row["queue"] == "maintenance"
        spec = registry.get(job_type)
        ctx = JobContext.local(job_type, settings, tenant="ops")
        result = spec.fn(spec.payload_model.model_validate(row["payload"]), ctx)
        return json.loads(json.dumps(result))

    dry = run("maintenance.prune", {"dry_run": True})
    assert (dry["dry_run"], dry["jobs"], dry["artifact_folders"]) == (True, 1, 1)
    done = run("maintenance.prune", {"older_than_days": 30})
    assert {k: done[k] for k in ("jobs", "attempts", "artifact_bytes")} == {
        "jobs": 1,
        "attempts": 1,
        "artifact_bytes": 3,
    }
    assert [j.id for j in store.list()] == [waiting]
    assert run("maintenance.orphans", {"dry_run": True})["removed"] == 1
    assert run("maintenance.orphans", {})["removed"] == 1
    assert not (Path(settings.artifacts_url) / "default" / orphan).exists()
    report = run("maintenance.stuck", {})
    assert report["total"] == 1 and report["waiting"]["examples"][0]["id"] == waiting
    assert processors.QUEUE == "maintenance"
    with pytest.raises(InvalidInput) as caught:
        prepare([{"type": "maintenance.prune", "payload": {"days": 3}}], settings, real_now)
    assert caught.value.details[0]["loc"] == ["payload", "days"]


# -- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[typer.Typer]:
    """The maintenance commands on a Typer of their own, reading the test's settings from
    the environment as the real command does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYPIPE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RAYPIPE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAYPIPE_ARTIFACTS_URL", settings.artifacts_url)
    app = typer.Typer()
    app.command("prune")(commands.prune)
    app.command("orphans")(commands.orphans)
    app.command("stuck")(commands.stuck)
    yield app


def test_the_commands_prune_sweep_and_report_stuck_jobs(
    cli: typer.Typer, settings: Settings, store: JobStore, artifacts: ArtifactStore
) -> None:
    runner = CliRunner()
    real_now = utcnow()
    _clock(store).now = real_now - 40 * DAY
    old = submit(store, settings)
    finish(store, settings, JobStatus.COMPLETED, old, result={})
    artifacts.write("default", old, "out.txt", b"x" * 1500, 1)

    result = runner.invoke(cli, ["stuck"])
    assert (result.exit_code, result.output) == (0, "nothing is stuck\n")

    result = runner.invoke(cli, ["prune", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jobs"] == 1
    assert store.get(old).status is JobStatus.COMPLETED

    result = runner.invoke(cli, ["prune", "--older-than", "30"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pruned 1 jobs finished before ")
    assert "1 artifact folders (1.5 kB)" in result.output
    assert store.list() == []

    result = runner.invoke(cli, ["prune", "--older-than", "-1"])
    assert result.exit_code == 2

    result = runner.invoke(cli, ["orphans", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scanned"] == 0

    _clock(store).now = real_now - timedelta(hours=2)
    waiting = submit(store, settings)
    result = runner.invoke(cli, ["stuck"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "waiting: 1"
    assert waiting in result.output
    result = runner.invoke(cli, ["stuck", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["waiting"]["count"] == 1
