"""The chaos soak (issue 33): mixed jobs over HTTP while raypipe's processes are killed and
PostgreSQL is stopped, then every job, attempt, artifact and callback checked.

    python bench/chaos.py --jobs 10000 [--seed 33] [--kills 2] [--outage-s 20]

On a PostgreSQL server of its own (started, stopped and removed here: it needs the
server's binaries, ``RAYPIPE_TEST_PG_BIN``, and the test extras), a local Ray of its own
and the API on Ray Serve, ``--clients`` threads submit the jobs over HTTP: a tenth of
them one per ``POST /v1/jobs``, each with a ``webhook_url``, the rest in batches of
``--batch-size`` (``POST /v1/batches``), each batch with a ``then`` (a ``noop``) and a
``webhook_url``; the webhooks go to a receiver on loopback that records every request.
Every request carries an ``Idempotency-Key`` and is sent again under the same key after a
transport error, a 5xx or a 429, until answered, so a request whose answer was lost (the
replica killed under it, the database away) is never submitted twice. Submissions keep
about a fifth of the jobs unfinished (at least 200), so they go on while the faults
happen. The jobs: ``noop`` (the ``workers`` pool, in bundles), ``sleep`` (under a third
of a second), ``fail`` (a permanent error, or a retryable one until its second attempt),
``test.marked`` (writes an artifact naming its attempt, then sleeps) and ``embed.texts``
(three texts, on the ``embeddings`` pool). Each may take 10 attempts, more than the
faults can use up, so each job's end is known in advance.

The faults, at moments drawn from ``--seed`` (as fractions of the requests answered, so
that submissions still go on; printed first, and the same seed draws the same ones),
``--kills`` of each: SIGKILL to a worker process running a job's task, to a pool actor
with jobs on it, to the dispatcher, to the progress actor, and to the Serve replica while
a request is inside it; and once, PostgreSQL stopped (``immediate``, as in a crash) for
``--outage-s`` seconds, then started again.

Once every job, batch and webhook has ended, it checks, from the database, the artifact
store and the receiver: every job accepted is there and no other (but one ``then`` job
per batch), each ended as its kind must, with exactly one terminal event; attempts 1..n
of each job recorded once each, none left running, the last one the job's outcome; a job
lists its kind's artifact, of its completed attempt, with that attempt's bytes (a killed
attempt's files may stay in storage, unlisted: counted); every batch ended once and made
one ``then`` job and one ``batch.completed`` webhook, every single job one ``job.*``
webhook; every webhook was received, under one ``webhook-id`` per (job or batch, event),
and once (a redelivery would count, as the same id received again). Prints one table of
counts and the faults as they happened, and each problem found (then exits 1). No
reference and no ratio: tests/faults/test_chaos_soak.py runs it smaller, as a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tests.helpers (the private PostgreSQL server, the webhook receiver, finding processes to
# kill) and the fault tests' processors, which Ray's workers import too (PYTHONPATH, main()).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import httpx
import ray
import sqlalchemy as sa
from common import Table, free_port, parser, report

from raypipe.config import Settings, get_settings
from raypipe.jobs import AttemptStatus, JobStatus
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR
from raypipe.store import create_engine
from raypipe.store.tables import attempts, batches, job_events, jobs, webhook_deliveries
from tests.faults.processors import MARK
from tests.helpers import kills
from tests.helpers.postgres import PrivatePostgres, private_postgres, why_unavailable
from tests.helpers.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
TENANT = "chaos"
TERMINAL = [s.value for s in JobStatus if s.is_terminal]
#: Attempts each job may take: more than the faults can use up.
MAX_ATTEMPTS = 10
#: Answers after which a request is sent again under its key.
RETRIED = frozenset({429, 500, 502, 503, 504})
#: How long a kill waits for something to kill (a task running, a pool busy, a request).
TARGET_WAIT_S = 30.0
#: How long a request has been on its way when the replica is killed under it: past the
#: proxy, inside the replica (where a request spends tens of milliseconds).
REQUEST_INSIDE_S = 0.015
#: The faults, in the order the table lists them.
TASK, POOL, DISPATCHER, PROGRESS, REPLICA = (
    "task worker",
    "pool actor",
    "dispatcher",
    "progress actor",
    "Serve replica",
)
KILLS = (TASK, POOL, DISPATCHER, PROGRESS, REPLICA)
OUTAGE = "PostgreSQL stopped"
#: Faults happen between these fractions of the requests answered.
EARLIEST, LATEST = 0.05, 0.8


# -- what is submitted ---------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A kind of job in the mix: its share, its spec, how it must end, what it lists."""

    name: str
    weight: float
    spec: Callable[[random.Random], dict[str, Any]]
    ends: JobStatus
    artifact: str | None = None


MIX = (
    Kind("noop", 0.50, lambda r: {"type": "noop", "payload": {}}, JobStatus.COMPLETED),
    Kind(
        "sleep",
        0.12,
        lambda r: {"type": "sleep", "payload": {"seconds": round(r.uniform(0.05, 0.3), 2)}},
        JobStatus.COMPLETED,
    ),
    Kind(
        "fail, permanent",
        0.05,
        lambda r: {"type": "fail", "payload": {"error": "PermanentError"}},
        JobStatus.FAILED,
    ),
    Kind(
        "fail, then succeed",
        0.08,
        lambda r: {"type": "fail", "payload": {"error": "RetryableError", "succeed_on_attempt": 2}},
        JobStatus.COMPLETED,
    ),
    Kind(
        "marked",
        0.15,
        lambda r: {"type": "test.marked", "payload": {"seconds": round(r.uniform(0.05, 0.3), 2)}},
        JobStatus.COMPLETED,
        MARK,
    ),
    Kind(
        "embed",
        0.10,
        lambda r: {
            "type": "embed.texts",
            "payload": {"texts": [f"chaos text {r.randrange(10**6)}" for _ in range(3)]},
        },
        JobStatus.COMPLETED,
        "embeddings.npy",
    ),
)
KINDS = {kind.name: kind for kind in MIX}


@dataclass(frozen=True)
class Plan:
    """A soak's size, its faults, and the seed that draws both."""

    jobs: int
    seed: int = 33
    kills: int = 1
    outage_s: float = 20.0
    batch_size: int = 25
    singles: float = 0.1
    clients: int = 4
    timeout_s: float = 1800.0

    @property
    def backlog(self) -> int:
        """Unfinished jobs beyond which submitting waits: enough that the cluster has work
        while the API's replica is replaced (tens of seconds on a loaded machine)."""
        return max(2 * self.batch_size * self.clients, self.jobs // 5)


@dataclass
class Unit:
    """One request: a single job or a batch, sent until answered, under one key."""

    index: int
    key: str
    kinds: list[str]
    batch: bool
    body: dict[str, Any] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)
    batch_id: str | None = None
    #: Answered 200: an earlier send had made it, its answer lost.
    replayed: bool = False
    #: Why earlier sends got no answer to keep ("HTTP 503", "RemoteProtocolError").
    retried: Counter[str] = field(default_factory=Counter)
    error: str | None = None


def units(plan: Plan, rng: random.Random, hook: str) -> list[Unit]:
    """The requests in the order they are sent, with their jobs (drawn from ``rng``)."""
    kinds = rng.choices([k.name for k in MIX], [k.weight for k in MIX], k=plan.jobs)
    singles = round(plan.jobs * plan.singles)
    groups = [[name] for name in kinds[:singles]]
    rest = kinds[singles:]
    groups += [rest[at : at + plan.batch_size] for at in range(0, len(rest), plan.batch_size)]
    order = list(range(len(groups)))
    rng.shuffle(order)
    todo = []
    for index, group in enumerate(order):
        unit = Unit(
            index, f"chaos-{plan.seed}-{rng.getrandbits(64):016x}", groups[group], group >= singles
        )
        specs = [{**KINDS[k].spec(rng), "max_attempts": MAX_ATTEMPTS} for k in unit.kinds]
        unit.body = (
            {"jobs": specs, "webhook_url": hook, "then": {"type": "noop"}, "tags": ["chaos"]}
            if unit.batch
            else {**specs[0], "webhook_url": hook}
        )
        todo.append(unit)
    return todo


# -- submitting --------------------------------------------------------------------------


class Submitter:
    """``plan.clients`` threads, each sending the next unit until it is answered, while no
    more than ``plan.backlog`` jobs are unfinished."""

    def __init__(self, plan: Plan, todo: list[Unit], url: str, key: str, ended: Callable[[], int]):
        self.plan, self.todo, self.url, self.key, self.ended = plan, todo, url, key, ended
        self._lock = threading.Lock()
        self._next = 0
        self.submitted = 0
        self.answered = 0
        #: When each request on its way now was first sent (by unit index).
        self.sending: dict[int, float] = {}

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._client, name=f"chaos-client-{i}")
            for i in range(self.plan.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def under_way(self, age_s: float, timeout_s: float) -> bool:
        """Wait until a request has been on its way for ``age_s`` (inside the replica by
        then, not yet answered); whether one was, within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            if any(now - sent >= age_s for sent in list(self.sending.values())):
                return True
            time.sleep(0.002)
        return False

    def _client(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=30) as http:
            while True:
                with self._lock:
                    if self._next >= len(self.todo):
                        return
                    unit = self.todo[self._next]
                    self._next += 1
                while self.submitted - self.ended() > self.plan.backlog:
                    time.sleep(0.1)
                self.sending[unit.index] = time.monotonic()
                try:
                    self._send(http, unit)
                finally:
                    del self.sending[unit.index]
                    with self._lock:
                        self.submitted += len(unit.kinds)
                        self.answered += 1

    def _send(self, http: httpx.Client, unit: Unit) -> None:
        """POST the unit under its key until an answer says what became of it."""
        path = "/v1/batches" if unit.batch else "/v1/jobs"
        deadline = time.monotonic() + self.plan.timeout_s
        pause = 0.1
        while True:
            try:
                answer = http.post(path, json=unit.body, headers={"Idempotency-Key": unit.key})
            except httpx.TransportError as exc:
                why = type(exc).__name__
            else:
                if answer.status_code in (200, 202):
                    data = answer.json()
                    unit.replayed = answer.status_code == 200
                    unit.job_ids = list(data["job_ids"]) if unit.batch else [data["id"]]
                    unit.batch_id = data["id"] if unit.batch else None
                    return
                if answer.status_code not in RETRIED:  # the soak's own mistake
                    unit.error = f"HTTP {answer.status_code}: {answer.text[:300]}"
                    return
                why = f"HTTP {answer.status_code}"
            unit.retried[why] += 1
            if time.monotonic() > deadline:
                unit.error = f"unanswered after {self.plan.timeout_s:g}s (last: {why})"
                return
            time.sleep(pause)
            pause = min(1.0, pause * 2)


# -- the faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault of the schedule: what, once this fraction of the requests is answered."""

    what: str
    at: float


def schedule(plan: Plan, rng: random.Random) -> list[Fault]:
    """``plan.kills`` of each kill and one outage, at moments drawn from ``rng``."""
    faults = [
        Fault(what, rng.uniform(EARLIEST, LATEST)) for what in KILLS for _ in range(plan.kills)
    ]
    if plan.outage_s > 0:
        faults.append(Fault(OUTAGE, rng.uniform(EARLIEST, LATEST)))
    return sorted(faults, key=lambda fault: fault.at)


@dataclass
class Done:
    """A fault as it happened: when (seconds into the run), to which process."""

    what: str
    at_s: float
    target: str
    seconds: float = 0.0

    def line(self) -> str:
        took = f", {self.seconds:.1f} s" if self.seconds else ""
        return f"{self.at_s:6.1f} s: {self.what}: {self.target}{took}"


class Monitor(threading.Thread):
    """Counts the jobs by status every half second (from the database; while it is away,
    the last count stands), and says how far they are every ``every_s``."""

    def __init__(self, url: str, every_s: float = 10.0):
        super().__init__(daemon=True, name="chaos-monitor")
        self.engine = create_engine(url)
        self.every_s = every_s
        self.ended = 0
        self.unfinished = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        began = said = time.monotonic()
        while not self.stopping.wait(0.5):
            try:
                with self.engine.connect() as conn:
                    counts = {_value(status): n for status, n in conn.execute(query)}
            except sa.exc.SQLAlchemyError:
                continue
            self.ended = sum(counts.get(status, 0) for status in TERMINAL)
            self.unfinished = sum(n for status, n in counts.items() if status not in TERMINAL)
            if time.monotonic() - said >= self.every_s:
                said = time.monotonic()
                print(
                    f"{said - began:6.1f} s: {self.ended:,} jobs ended, {self.unfinished:,} not",
                    flush=True,
                )

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.engine.dispose()


class Chaos(threading.Thread):
    """Does the faults of the schedule, each once the submissions reach its moment."""

    def __init__(
        self,
        plan: Plan,
        faults: list[Fault],
        settings: Settings,
        server: PrivatePostgres,
        replica: tuple[str, str],
        submitter: Submitter,
    ):
        super().__init__(daemon=True, name="chaos")
        self.plan, self.faults, self.settings, self.server = plan, faults, settings, server
        self.replica, self.submitter = replica, submitter
        self.rng = random.Random(plan.seed)
        self.started = time.monotonic()
        self.done: list[Done] = []
        self.missed: list[str] = []
        self.stopping = threading.Event()
        self.error: str | None = None
        # Every worker of the node is the raylet's child, the dispatcher's process too.
        self.raylet = kills.parent_pid(kills.actor_pid(self._actor(DISPATCHER_ACTOR)))

    def run(self) -> None:
        try:
            for fault in self.faults:
                while self.submitter.answered < fault.at * len(self.submitter.todo):
                    if self.stopping.wait(0.05):
                        self.missed.append(f"{fault.what} at {fault.at:.0%}: not reached")
                        break
                else:
                    self._do(fault)
        except BaseException:  # reported by soak()
            self.error = traceback.format_exc()

    def _do(self, fault: Fault) -> None:
        at = time.monotonic() - self.started
        if fault.what == OUTAGE:
            self.server.stop("immediate")
            stopped = time.monotonic()
            time.sleep(self.plan.outage_s)
            self.server.start()
            took = time.monotonic() - stopped
            self.done.append(Done(OUTAGE, at, f"{self.plan.outage_s:g} s asked", took))
            return
        deadline = time.monotonic() + TARGET_WAIT_S
        while time.monotonic() < deadline and not self.stopping.is_set():
            target = self._find(fault.what)
            if target is not None and kills.sigkill(target[0]):
                self.done.append(Done(fault.what, at, f"{target[1]} (pid {target[0]})"))
                return
            time.sleep(0.05)
        self.missed.append(f"{fault.what} at {fault.at:.0%}: nothing to kill")

    def _find(self, what: str) -> tuple[int, str] | None:
        """(pid, what it is) of a process to kill for ``what``, or None for now."""
        try:
            if what == TASK:
                pids = kills.workers_running(self.raylet, "run_task") if self.raylet else []
                return (self.rng.choice(sorted(pids)), "ray::run_task") if pids else None
            if what == POOL:
                info = ray.get(self._actor(DISPATCHER_ACTOR).info.remote(), timeout=60)
                busy = sorted(
                    name
                    for pool in info["pools"].values()
                    if pool["busy"]
                    for name in pool["actors"]
                )
                if not busy:
                    return None
                name = self.rng.choice(busy)
                return kills.actor_pid(self._actor(name)), name
            if what == REPLICA:
                replicas = kills.serve_replicas(*self.replica)
                if not replicas:
                    return None
                pid = kills.actor_pid(replicas[0])
                # Under a request: its answer is lost, and the client sends it again.
                if not self.submitter.under_way(REQUEST_INSIDE_S, TARGET_WAIT_S):
                    return None
                return pid, "the API's replica, under a request"
            name = DISPATCHER_ACTOR if what == DISPATCHER else PROGRESS_ACTOR
            return kills.actor_pid(self._actor(name)), name
        except (ray.exceptions.RayError, ValueError):  # gone, or restarting: look again
            return None

    def _actor(self, name: str) -> ray.actor.ActorHandle:
        return ray.get_actor(name, namespace=self.settings.namespace)


# -- checking ------------------------------------------------------------------------------


def _value(status: Any) -> str:
    return str(getattr(status, "value", status))


def _spread(counts: Counter[int]) -> str:
    """A distribution, such as terminal events per job: "all 1" when it is one value."""
    if len(counts) == 1:
        return f"all {next(iter(counts))}"
    return "; ".join(f"{value}: {n:,} jobs" for value, n in sorted(counts.items()))


@dataclass
class Report:
    """What the soak found: the table's rows, the faults done, and every problem."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    outage_s: float = 0.0
    wall_s: float = 0.0
    #: Requests sent again under their key: the faults reached the submissions.
    retried: int = 0

    def row(self, what: str, value: object) -> None:
        self.rows.append((what, f"{value:,}" if isinstance(value, int) else str(value)))

    def problem(self, what: str, found: object) -> None:
        if found:
            self.problems.append(f"{what}: {found}")


@dataclass
class Found:
    """What the database holds at the end (every row: the server is the soak's own)."""

    jobs: dict[str, Any]
    ends: Counter[str]
    attempts: list[Any]
    batches: dict[str, Any]
    deliveries: list[Any]

    @classmethod
    def read(cls, url: str) -> Found:
        engine = create_engine(url)
        terminal_events = sa.select(job_events.c.job_id).where(
            job_events.c.kind == "status", job_events.c.status.in_(TERMINAL)
        )
        try:
            with engine.connect() as conn:
                return cls(
                    jobs={row.id: row for row in conn.execute(sa.select(jobs))},
                    ends=Counter(conn.execute(terminal_events).scalars()),
                    attempts=list(conn.execute(sa.select(attempts))),
                    batches={row.id: row for row in conn.execute(sa.select(batches))},
                    deliveries=list(conn.execute(sa.select(webhook_deliveries))),
                )
        finally:
            engine.dispose()


def check(
    report: Report, plan: Plan, todo: list[Unit], settings: Settings, receiver: Receiver
) -> None:
    """Compare what the database, the artifact store and the receiver hold with what was
    submitted; add the counts to ``report``, and whatever is wrong to its problems."""
    found = Found.read(settings.database_url)
    expected = {
        job_id: KINDS[kind] for u in todo for job_id, kind in zip(u.job_ids, u.kinds, strict=False)
    }
    check_jobs(report, plan, todo, found, expected)
    check_attempts(report, found)
    check_artifacts(report, found, expected, settings)
    check_callbacks(report, todo, found, receiver)
    retried = Counter[str]()
    for u in todo:
        retried.update(u.retried)
    report.retried = sum(1 for u in todo if u.retried)
    why = ", ".join(f"{n:,} {why}" for why, n in retried.most_common())
    report.row("requests sent again under their key", f"{report.retried:,} ({why or 'none'})")
    report.row("  of which made by an earlier send (200)", sum(1 for u in todo if u.replayed))


def check_jobs(
    report: Report, plan: Plan, todo: list[Unit], found: Found, expected: dict[str, Any]
) -> None:
    """Every job accepted is there, and no other but the batches' ``then`` jobs; each ended
    as its kind must, with one terminal event."""
    rows = found.jobs
    accepted = [job_id for u in todo for job_id in u.job_ids]
    batch_ids = {u.batch_id for u in todo if u.batch_id}
    report.problem("requests never answered", [f"{u.key}: {u.error}" for u in todo if u.error][:5])
    report.problem(
        "jobs accepted", None if len(accepted) == plan.jobs else f"{len(accepted)} of {plan.jobs}"
    )
    report.problem(
        "answers that did not name each job of their request",
        [u.key for u in todo if not u.error and len(u.job_ids) != len(u.kinds)][:5],
    )
    report.problem("job ids answered twice", len(accepted) - len(set(accepted)))
    report.problem("jobs answered but not in the database", sorted(set(accepted) - rows.keys())[:5])
    # A batch's `then` job is tagged with the batch; any other row is one nobody submitted
    # (a request made twice, say).
    follow_ups: Counter[str] = Counter()
    strays = []
    for job_id, row in rows.items():
        if job_id in expected:
            continue
        batch = next((t[6:] for t in row.tags or [] if t.startswith("batch:")), None)
        if batch in batch_ids and row.parent_id is None:
            follow_ups[batch] += 1
        else:
            strays.append(job_id)
    report.problem("jobs in the database that nobody submitted", strays[:5])
    report.problem(
        "batches without exactly one `then` job", [b for b in batch_ids if follow_ups[b] != 1][:5]
    )

    singles = sum(1 for u in todo if not u.batch)
    report.row("jobs submitted over HTTP", len(accepted))
    report.row("  alone (POST /v1/jobs)", singles)
    report.row(f"  in batches of {plan.batch_size} (POST /v1/batches)", len(accepted) - singles)
    kinds = Counter(kind.name for kind in expected.values())
    for kind in MIX:
        report.row(f"  {kind.name} (must end {kind.ends.value})", kinds[kind.name])
    report.row("`then` jobs of batches", sum(follow_ups.values()))
    statuses = Counter(_value(row.status) for row in rows.values())
    report.row("jobs in the database (those submitted and the `then` jobs)", len(rows))
    for status in TERMINAL:
        report.row(f"  {status}", statuses.get(status, 0))
    report.problem("jobs not ended", {s: n for s, n in statuses.items() if s not in TERMINAL})
    report.problem(
        "jobs by status do not add up to those submitted and the `then` jobs",
        None
        if sum(statuses.values()) == len(rows) == len(set(accepted)) + sum(follow_ups.values())
        else f"{dict(statuses)} in {len(rows)} rows",
    )
    must = {job_id: kind.ends.value for job_id, kind in expected.items()}
    must.update({job_id: JobStatus.COMPLETED.value for job_id in rows if job_id not in expected})
    report.problem(
        "jobs that did not end as they must",
        [
            f"{j} {_value(rows[j].status)}"
            for j, s in must.items()
            if j in rows and _value(rows[j].status) != s
        ][:5],
    )
    ends = found.ends
    report.row("terminal events per job", _spread(Counter(ends.get(job_id, 0) for job_id in rows)))
    report.problem(
        "jobs without exactly one terminal event", [j for j in rows if ends.get(j, 0) != 1][:5]
    )


def check_attempts(report: Report, found: Found) -> None:
    """Attempts 1..n of each job recorded once each, none left running, the last one the
    job's outcome (one completed attempt per completed job)."""
    recorded = Counter((t.job_id, t.attempt) for t in found.attempts)
    by_job: dict[str, dict[int, Any]] = {}
    for t in found.attempts:
        by_job.setdefault(t.job_id, {})[t.attempt] = t
    running = [t.job_id for t in found.attempts if _value(t.status) == AttemptStatus.RUNNING.value]
    gaps, wrong = [], []
    for job_id, row in found.jobs.items():
        numbers = by_job.get(job_id, {})
        if set(numbers) != set(range(1, row.attempt + 1)):
            gaps.append(f"{job_id}: {sorted(numbers)} of {row.attempt}")
            continue
        ended = [_value(numbers[n].status) for n in sorted(numbers)]
        final = _value(row.status)
        if ended[-1] != final or ended.count("completed") != int(final == "completed"):
            wrong.append(f"{job_id} {final}: {ended}")
    report.row("attempts recorded", len(found.attempts))
    report.row("attempts per (job, attempt number)", _spread(Counter(recorded.values())))
    report.row("attempts per job", _spread(Counter(len(by_job.get(j, {})) for j in found.jobs)))
    report.row("attempts left running", len(running))
    faulted = Counter(
        t.error_type
        for t in found.attempts
        if _value(t.status) == AttemptStatus.FAILED.value
        and t.error_type not in ("PermanentError", "RetryableError")
    )
    report.row(
        "attempts ended by a fault, by error",
        ", ".join(f"{n:,} {error}" for error, n in faulted.most_common()) or "none",
    )
    report.problem("(job, attempt) recorded twice", [k for k, n in recorded.items() if n > 1][:5])
    report.problem("attempts left running", running[:5])
    report.problem("jobs whose attempts are not 1..n once each", gaps[:5])
    report.problem("jobs whose last attempt is not their outcome", wrong[:5])


def check_artifacts(
    report: Report, found: Found, expected: dict[str, Kind], settings: Settings
) -> None:
    """A completed job lists its kind's artifact, written by its completed attempt, with
    that attempt's bytes; a killed attempt's files may lie in storage, never listed."""
    root = Path(settings.artifacts_url) / TENANT
    listed, stale, other_attempt = 0, 0, 0
    wrong: list[str] = []
    for job_id, kind in expected.items():
        row = found.jobs.get(job_id)
        if row is None:
            continue
        completed = _value(row.status) == JobStatus.COMPLETED.value
        entries = row.artifacts or []
        listed += len(entries)
        if completed:
            folders = {int(p.name) for p in (root / job_id).glob("*") if p.name.isdigit()}
            stale += len(folders - {row.attempt})
        want = [kind.artifact] if kind.artifact and completed else []
        if sorted(entry["name"] for entry in entries) != want:
            wrong.append(f"{job_id} ({kind.name}) lists {entries}")
            continue
        for entry in entries:
            if entry.get("attempt") != row.attempt:
                other_attempt += 1
                wrong.append(f"{job_id} lists attempt {entry.get('attempt')}'s {entry['name']}")
            elif entry["name"] == MARK:
                data = (root / job_id / str(row.attempt) / MARK).read_text()
                if data != f"{job_id} {row.attempt}":
                    wrong.append(f"{job_id}'s {MARK} of attempt {row.attempt} holds {data!r}")
    report.row("artifacts listed", listed)
    report.row("  of another attempt than the completed one", other_attempt)
    report.row("killed attempts' artifact folders (never listed)", stale)
    report.problem("artifacts listed wrong", wrong[:5])


def check_callbacks(report: Report, todo: list[Unit], found: Found, receiver: Receiver) -> None:
    """Each batch ended once, with one ``then`` job (:func:`check_jobs`) and one
    ``batch.completed`` webhook; each single job one ``job.<status>`` webhook; every
    webhook received, under one ``webhook-id``, once."""
    ours = {u.batch_id for u in todo if u.batch_id}
    report.problem("batches not in the database", sorted(ours - found.batches.keys())[:5])
    report.problem(
        "batches that did not end exactly once",
        [
            f"{b.id} {b.status} x{b.completions}"
            for b in found.batches.values()
            if b.status == "running" or b.completions != 1
        ][:5],
    )
    wanted = {(b, "batch.completed") for b in ours}
    wanted |= {
        (j, f"job.{_value(found.jobs[j].status)}")
        for u in todo
        if not u.batch
        for j in u.job_ids
        if j in found.jobs
    }
    made = Counter((d.batch_id or d.job_id, d.event) for d in found.deliveries)
    report.problem("callbacks not made exactly once", [k for k in wanted if made[k] != 1][:5])
    report.problem("callbacks nobody asked for", [k for k in made if k not in wanted][:5])
    report.problem(
        "webhooks not delivered",
        [f"{d.id} {d.status}: {d.last_error}" for d in found.deliveries if d.status != "delivered"][
            :5
        ],
    )
    ids: dict[tuple[str, str], set[str]] = {}
    received = Counter[str]()
    for request in list(receiver.requests):
        event = json.loads(request.body)
        webhook_id = request.headers.get("webhook-id", "")
        received[webhook_id] += 1
        ids.setdefault((event["data"]["id"], event["type"]), set()).add(webhook_id)
    again = sum(received.values()) - len(received)
    report.row("batches ended, each with one `then` job and one webhook", len(ours))
    report.row("webhooks made (batch.completed, job.*)", len(found.deliveries))
    report.row(
        "webhook-ids received per (job or batch, event)", _spread(Counter(map(len, ids.values())))
    )
    report.row("  the same webhook-id received again", again)
    report.problem(
        "webhooks made but never received",
        [d.id for d in found.deliveries if d.id not in received][:5],
    )
    report.problem(
        "events received under more than one webhook-id",
        [k for k, v in ids.items() if len(v) > 1][:5],
    )
    report.problem("webhooks received more than once", again)


# -- the run -----------------------------------------------------------------------------


def soak_settings(url: str, folder: Path, **overrides: Any) -> Settings:
    """Settings for a soak on ``url``: the fault tests' processors, pools small enough for
    a 2-CPU Ray beside tasks, quick retries, webhooks allowed to loopback (the receiver)."""
    return get_settings(
        **{
            "database_url": url,
            "data_dir": folder / "data",
            "namespace": f"chaos-{os.urandom(4).hex()}",
            "processor_modules": ["tests.faults.processors"],
            "pools": {
                "workers": {"num_cpus": 0.5, "max_size": 1},
                "embeddings": {"num_cpus": 0.5, "max_size": 1},
            },
            "poll_interval_s": 0.5,
            "lease_ttl_s": 5.0,
            "default_backoff_s": 0.2,
            "max_backoff_s": 2.0,
            "rate_limits": {},
            "webhook_allow_networks": ["127.0.0.0/8"],
            "webhook_poll_interval_s": 0.2,
            "webhook_backoff_s": 0.2,
            "webhook_max_backoff_s": 2.0,
            "webhook_timeout_s": 5.0,
            "webhook_max_attempts": 30,
            "maintenance_schedules": False,
            **overrides,
        }
    )


def settled(engine: sa.Engine, receiver: Receiver) -> bool:
    """Every job ended, and every webhook delivered and received."""
    try:
        with engine.connect() as conn:
            unfinished = conn.execute(
                sa.select(sa.func.count()).where(jobs.c.status.not_in(TERMINAL))
            ).scalar_one()
            made = conn.execute(sa.select(webhook_deliveries.c.id, webhook_deliveries.c.status))
            deliveries = made.all()
    except sa.exc.SQLAlchemyError:  # the database is away
        return False
    got = {request.headers.get("webhook-id") for request in list(receiver.requests)}
    return not unfinished and all(s == "delivered" and i in got for i, s in deliveries)


def soak(
    plan: Plan,
    settings: Settings,
    url: str,
    key: str,
    server: PrivatePostgres,
    replica: tuple[str, str],
    receiver: Receiver,
) -> Report:
    """Submit ``plan``'s jobs to the API at ``url`` with ``key`` while the faults happen,
    wait until everything has ended, and check it all.

    raypipe's actors run on ``settings`` (on ``server``'s database) in the Ray this process
    joined, the API on Serve as ``replica`` (application, deployment); the webhooks go to
    ``receiver``."""
    rng = random.Random(plan.seed)
    todo = units(plan, rng, receiver.url)
    faults = schedule(plan, rng)
    print(
        f"chaos soak, seed {plan.seed}: {plan.jobs:,} jobs in {len(todo):,} requests; faults at "
        + ", ".join(f"{fault.at:.0%} of the requests answered: {fault.what}" for fault in faults),
        flush=True,
    )
    monitor = Monitor(settings.database_url)
    submitter = Submitter(plan, todo, url, key, lambda: monitor.ended)
    chaos = Chaos(plan, faults, settings, server, replica, submitter)
    report = Report()
    monitor.start()
    chaos.start()
    try:
        submitter.run()
        deadline = chaos.started + plan.timeout_s
        while not (monitor.unfinished == 0 and settled(monitor.engine, receiver)):
            if time.monotonic() > deadline:
                report.problems.append(f"not everything ended within {plan.timeout_s:g} s")
                break
            time.sleep(0.5)
        report.wall_s = time.monotonic() - chaos.started
    finally:
        chaos.stopping.set()
        chaos.join()
        monitor.stop()
    check(report, plan, todo, settings, receiver)
    for done in chaos.done:
        report.kills[done.what] += 1
        report.outage_s += done.seconds
    for what in KILLS:
        report.row(f"kills: {what}", report.kills[what])
    report.row(f"{OUTAGE} (s)", f"{report.outage_s:.1f}")
    report.row("wall time (s)", f"{report.wall_s:.1f}")
    report.faults = [done.line() for done in chaos.done]
    report.problem("faults not done", chaos.missed)
    report.problem("the chaos thread failed", chaos.error)
    return report


def table(plan: Plan, report: Report) -> Table:
    """The soak's counts; under them the faults as they happened, and any problem."""
    return Table(
        title=(
            f"chaos soak: {plan.jobs:,} mixed jobs over HTTP on PostgreSQL, seed {plan.seed};"
            f" {plan.kills} of each kill, PostgreSQL stopped {plan.outage_s:g} s"
        ),
        columns=("what", "count"),
        rows=tuple(report.rows),
        notes=(
            "faults done:",
            *(f"  {line}" for line in report.faults),
            *(f"PROBLEM: {problem}" for problem in report.problems),
        ),
    )


@contextmanager
def cluster(num_cpus: int) -> Iterator[int]:
    """A local Ray of this process's own, with Serve's proxy on a free port: the port."""
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        ray.shutdown()


def run(plan: Plan, num_cpus: int) -> Report:
    """The whole soak on a PostgreSQL server, a Ray and a Serve of its own."""
    from ray import serve

    from raypipe.api.deployment import APP_NAME, DEPLOYMENT_NAME, build
    from raypipe.runtime import actors
    from raypipe.store.access import AccessStore

    with (
        tempfile.TemporaryDirectory() as folder,
        private_postgres(free_port()) as server,
        cluster(num_cpus) as port,
    ):
        settings = soak_settings(server.url, Path(folder))
        engine = create_engine(server.url)
        key = AccessStore(engine).create_key(TENANT)[0]
        engine.dispose()
        actors.start_actors(settings)
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        receiver = Receiver().start()
        try:
            api = f"http://127.0.0.1:{port}"
            return soak(plan, settings, api, key, server, (APP_NAME, DEPLOYMENT_NAME), receiver)
        finally:
            receiver.close()
            actors.stop_actors(settings)


def main() -> None:
    args: argparse.ArgumentParser = parser(__doc__, repeat=False)
    args.add_argument("--jobs", type=int, default=10_000)
    args.add_argument("--seed", type=int, default=33)
    args.add_argument("--kills", type=int, default=2, help="of each kind")
    args.add_argument("--outage-s", type=float, default=20.0)
    args.add_argument("--batch-size", type=int, default=25)
    args.add_argument("--clients", type=int, default=4)
    args.add_argument("--cpus", type=int, default=4, help="the local Ray's CPUs")
    options = args.parse_args()
    reason = why_unavailable()
    if reason is not None:
        raise SystemExit(f"no private PostgreSQL server: {reason}")
    # Ray's workers import the fault tests' processors from the repository.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    plan = Plan(
        jobs=options.jobs,
        seed=options.seed,
        kills=options.kills,
        outage_s=options.outage_s,
        batch_size=options.batch_size,
        clients=options.clients,
    )
    found = run(plan, options.cpus)
    report([table(plan, found)], options.json)
    if found.problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
