"""raypipe's metrics on Ray's metrics endpoint, for the Ray dashboard, Prometheus and Grafana.

Ray exports ``ray.util.metrics`` from every process, with a ``ray_`` prefix and a ``_total``
suffix on counters. Its metric objects can only be made in a process connected to Ray, so
each process makes them on first use; in a process without Ray (a FastAPI test client, the
CLI) every function here does nothing. Callers hand over whole batches: each function adds
up by tag set first, so a round of a thousand jobs costs a few metric calls.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from raypipe.jobs import ClaimedJob, JobStatus, Outcome

JOB_TAGS = ("type", "queue")
#: Attempt durations in seconds, from a no-op to an hour-long mesh.
DURATION_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]


class Spec(NamedTuple):
    kind: str  # "counter", "gauge" or "histogram"
    description: str
    tags: tuple[str, ...] = ()


JOBS_SUBMITTED = "raypipe_jobs_submitted"
JOBS_STARTED = "raypipe_jobs_started"
JOBS_FINISHED = "raypipe_jobs_finished"
JOB_RETRIES = "raypipe_job_retries"
ATTEMPT_DURATION = "raypipe_attempt_duration_seconds"
JOBS_IN_FLIGHT = "raypipe_jobs_in_flight"
QUEUE_DEPTH = "raypipe_queue_depth"
QUEUE_OLDEST_WAITING = "raypipe_queue_oldest_waiting_seconds"
WEBHOOK_DELIVERIES = "raypipe_webhook_deliveries"
PROGRESS_BACKLOG = "raypipe_progress_backlog"

#: Every metric raypipe exports (the Grafana dashboard's test checks its queries against it).
SPECS: dict[str, Spec] = {
    JOBS_SUBMITTED: Spec("counter", "Jobs accepted over HTTP (single, bulk and batch).", JOB_TAGS),
    JOBS_STARTED: Spec("counter", "Jobs whose first attempt the dispatcher started.", JOB_TAGS),
    JOBS_FINISHED: Spec(
        "counter",
        "Jobs that reached a terminal status (completed, failed, cancelled).",
        (*JOB_TAGS, "status"),
    ),
    JOB_RETRIES: Spec("counter", "Failed attempts sent back to the queue to run again.", JOB_TAGS),
    ATTEMPT_DURATION: Spec(
        "histogram",
        "Seconds from submitting an attempt to Ray until it ended; status is the job's next"
        " status, 'retried' when it goes back to the queue.",
        (*JOB_TAGS, "status"),
    ),
    JOBS_IN_FLIGHT: Spec("gauge", "Attempts a dispatcher is running now.", ("queue",)),
    QUEUE_DEPTH: Spec(
        "gauge", "Queued jobs, including those waiting for a later run_at.", ("queue",)
    ),
    QUEUE_OLDEST_WAITING: Spec(
        "gauge", "Seconds the oldest runnable queued job has waited past its run_at.", ("queue",)
    ),
    WEBHOOK_DELIVERIES: Spec(
        "counter",
        "Webhook delivery attempts, by event and outcome (delivered, retried, failed, stale,"
        " error).",
        ("event", "outcome"),
    ),
    PROGRESS_BACKLOG: Spec(
        "gauge", "Progress updates the progress actor holds that are not yet in the database."
    ),
}


class JobLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def tenant(self) -> str: ...


class Ended(NamedTuple):
    """One attempt's end as the dispatcher records it, with how long it ran if it ran here."""

    job: JobLike
    outcome: Outcome
    duration_s: float | None = None


_made: dict[str, Any] | None = None
_lock = threading.Lock()
#: Per gauge, the queues set so far: one that empties (or is no longer configured) goes to zero.
_seen: dict[str, set[str]] = {}


def _instruments() -> dict[str, Any] | None:
    """This process's metric objects, made on first use once Ray is up; None without Ray."""
    global _made
    if _made is not None:
        return _made
    import ray
    from ray.util import metrics

    if not ray.is_initialized():
        return None
    kinds = {"counter": metrics.Counter, "gauge": metrics.Gauge}
    with _lock:
        if _made is None:
            made: dict[str, Any] = {}
            for name, spec in SPECS.items():
                if spec.kind == "histogram":
                    made[name] = metrics.Histogram(
                        name, spec.description, boundaries=DURATION_BUCKETS_S, tag_keys=spec.tags
                    )
                else:
                    made[name] = kinds[spec.kind](name, spec.description, tag_keys=spec.tags)
            _made = made
    return _made


def _add(name: str, counts: Mapping[tuple[str, ...], int]) -> None:
    made = _instruments()
    if made is None:
        return
    tags = SPECS[name].tags
    for values, count in counts.items():
        made[name].inc(count, tags=dict(zip(tags, values, strict=True)))


def _set_by_queue(name: str, values: Mapping[str, float], queues: Iterable[str]) -> None:
    made = _instruments()
    if made is None:
        return
    seen = _seen.setdefault(name, set())
    seen.update(queues)
    seen.update(values)
    for queue in seen:
        made[name].set(values.get(queue, 0), tags={"queue": queue})


def record_submitted(jobs: Iterable[tuple[str, str]]) -> None:
    """Count newly written jobs, given as (type, queue) pairs."""
    _add(JOBS_SUBMITTED, Counter(jobs))


def record_started(jobs: Iterable[ClaimedJob]) -> None:
    """Count claimed jobs that start their first attempt."""
    _add(JOBS_STARTED, Counter((job.type, job.queue) for job in jobs if job.attempt == 1))


def record_outcomes(ends: Iterable[Ended]) -> None:
    """Count finished jobs and retries, and observe the durations of attempts that ran."""
    finished: Counter[tuple[str, ...]] = Counter()
    retried: Counter[tuple[str, ...]] = Counter()
    durations: list[tuple[float, dict[str, str]]] = []
    for job, outcome, duration_s in ends:
        queued = outcome.status is JobStatus.QUEUED
        status = "retried" if queued else outcome.status.value
        if queued:
            retried[job.type, job.queue] += 1
        else:
            finished[job.type, job.queue, status] += 1
        if duration_s is not None:
            durations.append((duration_s, {"type": job.type, "queue": job.queue, "status": status}))
    _add(JOBS_FINISHED, finished)
    _add(JOB_RETRIES, retried)
    made = _instruments()
    if made is not None:
        for duration_s, tags in durations:
            made[ATTEMPT_DURATION].observe(duration_s, tags=tags)


def observe_in_flight(jobs: Iterable[JobLike], queues: Iterable[str]) -> None:
    """Set the in-flight gauge of every configured queue from the jobs a dispatcher runs."""
    _set_by_queue(JOBS_IN_FLIGHT, Counter(job.queue for job in jobs), queues)


def observe_queues(stats: Mapping[str, Mapping[str, Any]], queues: Iterable[str]) -> None:
    """Set every configured queue's depth and oldest wait from ``JobStore.queue_stats()``."""
    _set_by_queue(QUEUE_DEPTH, {queue: s["depth"] for queue, s in stats.items()}, queues)
    _set_by_queue(
        QUEUE_OLDEST_WAITING,
        {queue: s["oldest_waiting_s"] or 0.0 for queue, s in stats.items()},
        queues,
    )


def record_webhook(event: str, outcome: str) -> None:
    """Count one webhook delivery attempt."""
    _add(WEBHOOK_DELIVERIES, {(event, outcome): 1})


def observe_progress_backlog(pending: int) -> None:
    """Set how many progress updates wait for the progress actor's next database write."""
    made = _instruments()
    if made is not None:
        made[PROGRESS_BACKLOG].set(pending)
