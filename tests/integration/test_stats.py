"""Statistics on real SQLite and PostgreSQL, checked against figures computed here in Python
from the same rows: a seeded, varied history of jobs and attempts across tenants, types and
queues, with retries, several error types, open jobs and rows outside the window, and the
jobs that ended over time (the series), in buckets cut at multiples of their width."""

from __future__ import annotations

import bisect
import json
import math
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from raypipe.commands.stats import stats as stats_command
from raypipe.commands.stats import when
from raypipe.config import Settings
from raypipe.exceptions import InvalidInput
from raypipe.jobs import AttemptStatus, JobStatus, utcnow
from raypipe.store import create_engine
from raypipe.store.stats import (
    BUCKET_WIDTHS_S,
    SERIES_BUCKETS,
    StatsStore,
    bucket_width,
    buckets,
    window,
)
from raypipe.store.tables import attempts, jobs

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)
HOUR = 60 * MINUTE
DAY = 24 * HOUR
TENANTS = ("acme", "globex", "initech")
TYPES = ("embed.texts", "mesh.from_image", "noop")
QUEUES = ("default", "embeddings", "mesh")
ERROR_TYPES = ("RetryableError", "ValueError", "WorkerCrashed", None)
TERMINAL = ("completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "timed_out", "cancelled")


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = create_engine(settings.database_url)
    yield engine
    engine.dispose()


# -- a history of jobs and attempts ------------------------------------------------------


def _ms(rng: random.Random, low_s: float, high_s: float) -> timedelta:
    """Whole milliseconds: the resolution both databases keep exactly."""
    return timedelta(milliseconds=rng.randint(int(low_s * 1000), int(high_s * 1000)))


def _job(rng: random.Random, created: datetime) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128))),
        "tenant": rng.choice(TENANTS),
        "type": rng.choice(TYPES),
        "queue": rng.choice(QUEUES),
        "priority": 0,
        "tags": [],
        "max_attempts": 5,
        "timeout_s": 600.0,
        "request_hash": "0" * 64,
        "created_at": created,
        "updated_at": created,
        "run_at": created,
        "attempt": 0,
    }


def history(seed: int = 20250314, count: int = 260) -> tuple[list[dict], list[dict]]:
    """Jobs created over the 40 hours before NOW, each with 0 to 4 attempts: retries after
    failures and timeouts, then an ending (or none yet). About 10% of attempts have no
    ``ready_at``, as rows written before it was recorded."""
    rng = random.Random(seed)
    all_jobs: list[dict] = []
    all_attempts: list[dict] = []
    for _ in range(count):
        job = _job(rng, NOW - _ms(rng, 0, 40 * 3600))
        ending = rng.choices(
            ("completed", "failed", "cancelled", "processing", "queued"), (50, 15, 8, 10, 17)
        )[0]
        tries = rng.randint(0, 2) if ending in ("queued", "cancelled") else rng.randint(1, 4)
        ready = job["created_at"]
        for number in range(1, tries + 1):
            started = ready + _ms(rng, 0, 90)
            last = number == tries
            if last and ending == "processing":
                status = "running"
            elif last and ending in ("completed", "cancelled"):
                status = ending
            else:
                status = rng.choice(("failed", "timed_out"))
            finished = None if status == "running" else started + _ms(rng, 0.05, 900)
            error = {"failed": rng.choice(ERROR_TYPES), "timed_out": "JobTimeout"}.get(status)
            all_attempts.append(
                {
                    "job_id": job["id"],
                    "attempt": number,
                    "status": AttemptStatus(status),
                    "started_at": started,
                    "finished_at": finished,
                    "error_type": error,
                    "ready_at": None if rng.random() < 0.1 else ready,
                }
            )
            job.update(attempt=number, started_at=started)
            if finished is not None:
                ready = finished + _ms(rng, 0, 120)  # the retry's backoff
        job["status"] = JobStatus(ending)
        if ending == "queued":
            # Waiting for a retry, or submitted with a delay.
            job["run_at"] = NOW + _ms(rng, 1, 3600) if rng.random() < 0.3 else ready
        elif ending in TERMINAL:
            job["finished_at"] = all_attempts[-1]["finished_at"] if tries else ready
        all_jobs.append(job)
    # Completed exactly at the window's bounds (`since` counts, `until` does not), at a
    # bucket's bound and just before it.
    for at in (NOW - DAY, NOW, NOW - 6 * HOUR, NOW - 6 * HOUR - timedelta(milliseconds=1)):
        job = _job(rng, at - timedelta(seconds=30))
        job.update(status=JobStatus.COMPLETED, attempt=1, started_at=at - DAY / 1000)
        job["finished_at"] = at
        all_jobs.append(job)
        all_attempts.append(
            {
                "job_id": job["id"],
                "attempt": 1,
                "status": AttemptStatus.COMPLETED,
                "started_at": job["started_at"],
                "finished_at": at,
                "error_type": None,
                "ready_at": job["created_at"],
            }
        )
    return all_jobs, all_attempts


def insert(engine: sa.Engine, job_rows: list[dict], attempt_rows: list[dict]) -> None:
    columns = ("started_at", "finished_at")
    with engine.begin() as conn:
        conn.execute(jobs.insert(), [{c: None for c in columns} | row for row in job_rows])
        if attempt_rows:
            conn.execute(attempts.insert(), attempt_rows)


# -- the same figures, computed here ------------------------------------------------------


def _nearest_rank(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(Fraction(percent, 100) * len(ordered)) - 1]


def _distribution(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    return {
        "count": len(values),
        "mean": sum(values) / len(values),
        "p50": _nearest_rank(values, 50),
        "p95": _nearest_rank(values, 95),
        "max": max(values),
    }


def _utc_text(at: datetime) -> str:
    return (
        at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{at.microsecond:06d}" * bool(at.microsecond)) + "Z"
    )


def _series(ended: list[dict], since: datetime, until: datetime) -> dict[str, Any]:
    """The jobs ``ended`` in the window, per bucket: the window cut at every multiple of the
    bucket width since the epoch (the width's choice is tested on its own)."""
    width = bucket_width(since, until)
    seconds = [(at - EPOCH).total_seconds() for at in (since, until)]
    cuts = range(math.floor(seconds[0] / width) + 1, math.ceil(seconds[1] / width))
    edges = [since, *(EPOCH + timedelta(seconds=width * n) for n in cuts), until]
    counts = [Counter[str]() for _ in edges[1:]]
    for job in ended:
        counts[bisect.bisect_right(edges, job["finished_at"]) - 1][job["status"].value] += 1
    return {
        "bucket_s": width,
        "buckets": [
            {"start": _utc_text(start), "end": _utc_text(end), **{s: n[s] for s in TERMINAL}}
            for (start, end), n in zip(pairwise(edges), counts, strict=True)
        ],
    }


def expected(
    job_rows: list[dict],
    attempt_rows: list[dict],
    since: datetime,
    until: datetime,
    **filters: str | None,
) -> dict[str, Any]:
    chosen = {
        job["id"]: job
        for job in job_rows
        if all(value is None or job[key] == value for key, value in filters.items())
    }
    mine = [a for a in attempt_rows if a["job_id"] in chosen]

    def inside(at: datetime | None) -> bool:
        return at is not None and since <= at < until

    finished = [a for a in mine if inside(a["finished_at"])]
    by_status = Counter(a["status"].value for a in finished)
    ended_jobs = [j for j in chosen.values() if inside(j.get("finished_at"))]
    ended = Counter(j["status"].value for j in ended_jobs)
    decided = ended["completed"] + ended["failed"]
    retried = [a for a in finished if a["attempt"] > 1]
    errors = Counter(
        a["error_type"] or "unknown"
        for a in finished
        if a["status"].value in ("failed", "timed_out")
    )
    hours = (until - since).total_seconds() / 3600

    queues: dict[str, dict[str, Any]] = {}
    for job in chosen.values():
        if job["status"].value in ("queued", "processing"):
            queue = queues.setdefault(job["queue"], {"queued": [], "running": 0, "waits": []})
            if job["status"].value == "queued":
                queue["queued"].append(job["run_at"])
            else:
                queue["running"] += 1
    for a in mine:
        if inside(a["started_at"]) and a["ready_at"] is not None:
            queue = queues.setdefault(
                chosen[a["job_id"]]["queue"], {"queued": [], "running": 0, "waits": []}
            )
            queue["waits"].append((a["started_at"] - a["ready_at"]).total_seconds())

    def queue_figures(name: str, queue: dict[str, Any]) -> dict[str, Any]:
        runnable = [at for at in queue["queued"] if at <= NOW]
        return {
            "queue": name,
            "depth": len(queue["queued"]),
            "runnable": len(runnable),
            "running": queue["running"],
            "oldest_waiting_s": round((NOW - min(runnable)).total_seconds(), 3)
            if runnable
            else None,
            "wait_s": _distribution(queue["waits"]),
        }

    return {
        "window": {"since": _utc_text(since), "until": _utc_text(until), "hours": hours},
        "filters": {"tenant": None, "type": None, "queue": None, **filters},
        "attempts": {"total": len(finished), **{s: by_status[s] for s in FINISHED}},
        "jobs": {"total": sum(ended.values()), **{s: ended[s] for s in TERMINAL}},
        "success_rate": ended["completed"] / decided if decided else None,
        "duration_s": _distribution(
            [
                (a["finished_at"] - a["started_at"]).total_seconds()
                for a in finished
                if a["status"].value == "completed"
            ]
        ),
        "throughput_per_hour": sum(ended.values()) / hours,
        "retries": len(retried),
        "retried_jobs": len({a["job_id"] for a in retried}),
        "errors": [
            {"type": kind, "count": n}
            for kind, n in sorted(errors.items(), key=lambda item: (-item[1], item[0]))
        ],
        "queues": [queue_figures(name, queues[name]) for name in sorted(queues)],
        "series": _series(ended_jobs, since, until),
    }


def assert_matches(actual: Any, wanted: Any, where: str = "stats") -> None:
    """Equal, with floats within 1e-6 (sums are added in a different order)."""
    if isinstance(wanted, dict):
        assert isinstance(actual, dict) and actual.keys() == wanted.keys(), where
        for key in wanted:
            assert_matches(actual[key], wanted[key], f"{where}.{key}")
    elif isinstance(wanted, list):
        assert isinstance(actual, list) and len(actual) == len(wanted), (where, actual, wanted)
        for index, (got, want) in enumerate(zip(actual, wanted, strict=True)):
            assert_matches(got, want, f"{where}[{index}]")
    elif isinstance(wanted, float):
        assert actual == pytest.approx(wanted, abs=1e-6), where
    else:
        assert actual == wanted, where


# -- tests ------------------------------------------------------------------------------


def test_statistics_match_counts_computed_independently(engine: sa.Engine) -> None:
    job_rows, attempt_rows = history()
    insert(engine, job_rows, attempt_rows)
    store = StatsStore(engine, clock=lambda: NOW)

    everything = expected(job_rows, attempt_rows, NOW - DAY, NOW)
    # The data exercises every figure, and the window leaves rows out.
    assert 0 < everything["attempts"]["total"] < len(attempt_rows)
    assert all(everything["attempts"][s] > 0 for s in FINISHED)
    assert all(everything["jobs"][s] > 0 for s in TERMINAL)
    assert everything["retried_jobs"] > 5 and everything["retries"] > everything["retried_jobs"]
    assert len(everything["errors"]) == 5  # four types and the unknown
    assert everything["duration_s"]["p50"] < everything["duration_s"]["p95"]
    assert len(everything["queues"]) == 3
    series = everything["series"]
    assert (series["bucket_s"], len(series["buckets"])) == (1800, 48)
    assert all(sum(1 for b in series["buckets"] if b[s]) > 5 for s in TERMINAL)
    assert all(
        q["depth"] > q["runnable"] > 0 and q["wait_s"]["count"] for q in everything["queues"]
    )
    assert_matches(store.compute().to_dict(), everything)

    cases: list[dict[str, Any]] = [
        {"tenant": "acme"},
        {"type": "noop", "queue": "mesh"},
        {"tenant": "globex", "type": "embed.texts"},
        {"tenant": "initech", "type": "mesh.from_image", "queue": "default"},
        {"queue": "no-such-queue"},
    ]
    for filters in cases:
        wanted = expected(job_rows, attempt_rows, NOW - DAY, NOW, **filters)
        assert_matches(store.compute(**filters).to_dict(), wanted, f"stats{filters}")

    since, until = NOW - timedelta(hours=30), NOW - timedelta(hours=2, milliseconds=1)
    wanted = expected(job_rows, attempt_rows, since, until, tenant="acme")
    assert_matches(store.compute(tenant="acme", since=since, until=until).to_dict(), wanted)

    # Ends inside buckets: the first and the last bucket are cut to the window.
    since, until = NOW - timedelta(hours=5, seconds=7, milliseconds=250), NOW - 90 * MINUTE
    wanted = expected(job_rows, attempt_rows, since, until)
    assert wanted["series"]["bucket_s"] == 300
    assert wanted["series"]["buckets"][0]["start"] == _utc_text(since)
    assert_matches(store.compute(since=since, until=until).to_dict(), wanted)


def test_an_empty_window_reports_zeros_and_nones(engine: sa.Engine) -> None:
    job_rows, attempt_rows = history(count=40)
    insert(engine, job_rows, attempt_rows)
    since = NOW - timedelta(days=300)
    found = StatsStore(engine, clock=lambda: NOW).compute(since=since, until=since + DAY)

    empty = {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    data = found.to_dict()
    assert data["attempts"] == {"total": 0, **dict.fromkeys(FINISHED, 0)}
    assert data["jobs"] == {"total": 0, **dict.fromkeys(TERMINAL, 0)}
    assert (data["success_rate"], data["throughput_per_hour"]) == (None, 0.0)
    assert (data["retries"], data["retried_jobs"], data["errors"]) == (0, 0, [])
    assert data["duration_s"] == empty
    # Queues still show what is open now; no attempt started in that window.
    assert data["queues"] and all(q["wait_s"] == empty for q in data["queues"])
    assert data == expected(job_rows, attempt_rows, since, since + DAY)


def test_an_empty_database(engine: sa.Engine) -> None:
    data = StatsStore(engine, clock=lambda: NOW).compute(tenant="acme").to_dict()
    assert data == expected([], [], NOW - DAY, NOW, tenant="acme")
    assert data["queues"] == [] and data["duration_s"]["mean"] is None


def test_the_window_defaults_and_limits() -> None:
    assert window(None, None, NOW) == (NOW - DAY, NOW)
    assert window(None, NOW - DAY, NOW) == (NOW - 2 * DAY, NOW - DAY)
    assert window(NOW - timedelta(days=366), None, NOW) == (NOW - timedelta(days=366), NOW)
    refused = [
        (NOW, NOW, "since: must be before until"),
        (NOW + DAY, None, "since: must be before until"),
        (NOW - timedelta(days=366, seconds=1), None, "since: the window may span at most 366"),
        (None, datetime.min.replace(tzinfo=timezone.utc), "until: out of range"),
    ]
    for since, until, message in refused:
        with pytest.raises(InvalidInput, match=message) as caught:
            window(since, until, NOW)
        assert caught.value.details[0]["loc"] == [message.split(":")[0]]


def test_the_series_buckets_follow_the_window() -> None:
    widths = {
        timedelta(milliseconds=1): 1,
        timedelta(seconds=61): 2,
        HOUR: 60,
        DAY: 1800,
        7 * DAY: 3 * 3600,
        366 * DAY: 7 * 86400,
    }
    for span, width in widths.items():
        assert bucket_width(NOW - span, NOW) == width, span
    rng = random.Random(7)
    for width in BUCKET_WIDTHS_S:
        for _ in range(20):
            since = NOW - _ms(rng, 0, 10**6)
            until = since + _ms(rng, 0.001, width * SERIES_BUCKETS)
            assert bucket_width(since, until) <= width
            found = list(buckets(since, until, width))
            assert 1 <= len(found) <= SERIES_BUCKETS + 1
            numbers, starts, ends = zip(*found, strict=True)
            assert numbers == tuple(range(numbers[0], numbers[0] + len(found)))
            assert (starts[0], ends[-1]) == (since, until) and starts[1:] == ends[:-1]
            step = timedelta(seconds=width)
            assert all((end - EPOCH) % step == timedelta(0) for end in ends[:-1])


def test_command_line_times() -> None:
    assert when("--since", "90m", NOW) == NOW - timedelta(minutes=90)
    assert when("--since", "7d", NOW) == NOW - timedelta(days=7)
    assert when("--since", "1.5h", NOW) == NOW - timedelta(minutes=90)
    assert when("--since", "2025-03-01T00:00:00+01:00", NOW) == datetime(
        2025, 2, 28, 23, tzinfo=timezone.utc
    )
    assert when("--until", "2025-03-01", NOW) == datetime(2025, 3, 1, tzinfo=timezone.utc)
    assert when("--until", None, NOW) is None
    for bad in ("yesterday", "5w", "-3h", "99999999999d"):
        with pytest.raises(InvalidInput, match="--since: give a span before now"):
            when("--since", bad, NOW)


def test_the_stats_command(
    engine: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command reads the real clock: a small history relative to it.
    now = utcnow().replace(microsecond=0)
    rng = random.Random(5)
    job_rows, attempt_rows = [], []
    for minutes_ago, status, error in [
        (10, "completed", None),
        (20, "completed", None),
        (30, "failed", "ValueError"),
        (100, "completed", None),  # before --since 90m
    ]:
        finished = now - timedelta(minutes=minutes_ago)
        job = _job(rng, finished - timedelta(minutes=5))
        job.update(tenant="acme", queue="default", status=JobStatus(status), attempt=1)
        job.update(started_at=finished - timedelta(seconds=4), finished_at=finished)
        job_rows.append(job)
        attempt_rows.append(
            {
                "job_id": job["id"],
                "attempt": 1,
                "status": AttemptStatus(status),
                "started_at": job["started_at"],
                "finished_at": finished,
                "error_type": error,
                "ready_at": finished - timedelta(seconds=6),
            }
        )
    insert(engine, job_rows, attempt_rows)
    monkeypatch.setenv("RAYPIPE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RAYPIPE_DATA_DIR", str(settings.data_dir))
    app = typer.Typer()
    app.command()(stats_command)
    runner = CliRunner()

    done = runner.invoke(app, ["--since", "90m", "--tenant", "acme", "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["jobs"] == {"total": 3, "completed": 2, "failed": 1, "cancelled": 0}
    assert data["success_rate"] == pytest.approx(2 / 3)
    assert data["throughput_per_hour"] == pytest.approx(2.0)
    assert data["duration_s"] == {"count": 2, "mean": 4.0, "p50": 4.0, "p95": 4.0, "max": 4.0}
    assert data["errors"] == [{"type": "ValueError", "count": 1}]
    assert data["queues"][0]["wait_s"]["mean"] == pytest.approx(2.0)
    assert data["filters"] == {"tenant": "acme", "type": None, "queue": None}

    done = runner.invoke(app, [])
    assert done.exit_code == 0, done.output
    lines = {line.split()[0]: line for line in done.output.splitlines() if line.strip()}
    assert "4 ended: 3 completed, 1 failed, 0 cancelled" in lines["jobs"]
    assert "75.0%" in lines["success"]
    assert "ValueError 1" in lines["errors"]
    assert lines["default"].split()[:4] == ["default", "0", "0", "0"]

    done = runner.invoke(app, ["--since", "last week"])
    assert isinstance(done.exception, InvalidInput)
    assert "--since: give a span before now" in done.exception.message
