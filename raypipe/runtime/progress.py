"""Live progress and job logs: a per-process reporter that coalesces progress and ships log
lines, and the actor that keeps both and flushes them to the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ray

from raypipe import metrics
from raypipe.config import Settings
from raypipe.job_logs import LogBuffer, LogLine, Trim
from raypipe.jobs import JobStatus, ProgressState
from raypipe.store import DispatchStore
from raypipe.store.logs import LogStore

log = logging.getLogger(__name__)

#: How many finished jobs' last states the actor keeps for late readers.
FINISHED_KEPT = 10_000
#: How old a logged line is when it is shipped, and the least time between two sends: a
#: job logging in a tight loop is shipped in batches, not one actor call per line, and an
#: attempt that ends sooner after its lines carries them in its outcome (no actor call,
#: nothing to wait for).
SEND_GAP_S = 0.05
#: The longest an ended attempt waits for its shipped lines to be written before its
#: outcome goes (only the actor or the database being away makes it wait that long).
LOG_WRITE_WAIT_S = 10.0
#: Log lines the actor holds while the database is away; beyond, the oldest are dropped.
LOG_BACKLOG_MAX = 200_000


class ProgressReporter:
    """Ships the newest progress of each job in this process once per interval, and the
    lines its jobs log soon after they are logged.

    A processor's ``ctx.progress()`` only replaces an entry in a dict; a daemon
    thread sends whatever changed in one fire-and-forget actor call, and learns
    from the previous call's answer which of its jobs were cancelled. What a worker logs
    is with the actor ``SEND_GAP_S`` (to twice that) later, not only when its attempt
    ends, so a crash keeps it.

    An attempt's log is complete by the time its end can be read: when it ends, the lines
    it has not shipped travel in its outcome (written in the transaction that records
    it), and if it shipped some, :meth:`end` waits until the actor has written them.
    """

    def __init__(self, actor: ray.actor.ActorHandle, interval_s: float, log_max_bytes: int):
        self._actor = actor
        self._interval_s = interval_s
        self._wake = threading.Event()
        self.logs = LogBuffer(log_max_bytes, self._logged)
        self._pending: dict[str, ProgressState] = {}
        self._last: dict[str, ProgressState] = {}
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._last_ref: ray.ObjectRef | None = None
        self._thread: threading.Thread | None = None
        #: Held while lines are taken and sent: an ending attempt then sees each of its
        #: lines either still pending or in a call listed in ``_log_calls``.
        self._shipping = threading.Lock()
        #: Log calls sent whose taking by the actor was not seen yet.
        self._log_calls: list[ray.ObjectRef] = []

    def report(self, state: ProgressState) -> None:
        with self._lock:
            self._pending[state.job_id] = state
            self._last[state.job_id] = state
        self._start()

    def _logged(self) -> None:
        self._wake.set()
        self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="raypipe-progress"
                )
                self._thread.start()

    def end(
        self, job_id: str, attempt: int, completed: bool, carried: bool = True
    ) -> tuple[ProgressState | None, tuple[LogLine, ...]]:
        """The attempt ended: its last report, handed back with a completed attempt's result
        (a report sent as the attempt ends would reach the database after its outcome),
        and its log lines not shipped yet, for its outcome to carry.

        A completed attempt's unsent report is that last one, which its outcome carries,
        so it is not sent as well (for jobs shorter than the report interval, one actor
        message and one write per job saved); a failed attempt's is sent now, as its
        outcome carries no progress. Lines it shipped before are written before this
        returns (an attempt that logged nothing, or only just before it ended, waits for
        nothing). ``carried=False``: no outcome will carry its lines (it was interrupted),
        so they are written now as well."""
        with self._lock:
            last = self._last.pop(job_id, None)
            if completed:
                self._pending.pop(job_id, None)
        with self._shipping:
            tail = self.logs.end(job_id, attempt)
            sent = list(self._log_calls) if tail.shipped else []
        if not completed:
            self._send_progress()
        lines = () if carried else tail.lines
        if tail.shipped or lines:
            self._write_now(sent, lines, [tail.trim] if tail.trim else [])
        return last, tail.lines if carried else ()

    def _write_now(
        self, sent: list[ray.ObjectRef], lines: Sequence[LogLine], trims: list[Trim]
    ) -> None:
        """Have the actor write ``lines`` with what it holds, once it took the log calls
        ``sent`` before: an attempt's lines then reach the database before its outcome."""
        try:
            if sent:
                ray.wait(sent, num_returns=len(sent), timeout=LOG_WRITE_WAIT_S)
            written = (
                ray.get(self._actor.write_logs.remote(lines, trims), timeout=LOG_WRITE_WAIT_S)
                is True
            )
        except ray.exceptions.RayError:
            written = False
        if not written:
            log.warning(
                "an attempt's log lines could not be written before its end: they follow"
                " when the progress actor and the database can take them"
            )

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancelled

    def flush(self) -> None:
        """Send the progress and the log lines pending now."""
        self._send_progress()
        self._send_logs()

    def _send_progress(self) -> None:
        self._collect_cancellations()
        with self._lock:
            batch, self._pending = list(self._pending.values()), {}
        if batch:
            self._last_ref = self._actor.report.remote([s.to_dict() for s in batch])

    def _send_logs(self, logged_by: float = math.inf) -> bool:
        """Ship the lines logged by ``logged_by``; whether there were any."""
        with self._shipping:
            lines, trims = self.logs.take(logged_by)
            if not lines and not trims:
                return False
            calls = self._log_calls
            if calls:
                _, calls = ray.wait(calls, num_returns=len(calls), timeout=0)
            self._log_calls = [*calls, self._actor.log.remote(lines, trims)]
            return True

    def _collect_cancellations(self) -> None:
        ref = self._last_ref
        if ref is None:
            return
        ready, _ = ray.wait([ref], timeout=0)
        if ready:
            self._last_ref = None
            try:
                self._cancelled.update(ray.get(ready[0]))
            except ray.exceptions.RayError:
                log.warning("progress actor unavailable; reports will resume when it is back")

    def _run(self) -> None:
        sent_at = -math.inf
        while True:
            # Until the interval's progress, or the oldest line waiting is SEND_GAP_S old
            # and as long has passed since the last send.
            oldest = self.logs.oldest()
            pause = self._interval_s
            if oldest is not None:
                pause = min(pause, max(oldest, sent_at) + SEND_GAP_S - time.monotonic())
            if pause > 0:
                self._wake.wait(pause)
            self._wake.clear()
            try:
                self._send_progress()
                if self._send_logs(time.monotonic() - SEND_GAP_S):
                    sent_at = time.monotonic()
            except Exception:  # keep reporting alive whatever one send did
                log.exception("progress flush failed")


class ProgressActor:
    """Keeps the latest progress of running jobs, wakes readers, and batches writes to the database.

    Reports arrive fire-and-forget; the database sees one UPDATE batch per flush
    interval, guarded by attempt and status so a stale report never lands.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._store: DispatchStore | None = None
        self._states: dict[str, ProgressState] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._dirty: set[str] = set()
        self._cancelled: set[str] = set()
        self._changed: asyncio.Condition | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_failing = False
        self._logs: LogStore | None = None
        self._log_flush_failing = False
        self._log_lines: list[LogLine] = []
        self._log_trims: dict[tuple[str, int], Trim] = {}
        #: Each recent attempt's newest trim: what its late lines are filtered by.
        self._trimmed: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._log_lock = asyncio.Lock()
        self.messages = 0
        self.updates = 0
        self.flushes = 0

    def _start(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        return self._changed

    async def report(self, states: list[dict[str, Any]]) -> list[str]:
        """Take a batch of reports; returns which of those jobs are cancelled."""
        changed = self._start()
        self.messages += 1
        for raw in states:
            job_id = raw["id"]
            current = self._states.get(job_id)
            done = self._finished.get(job_id)
            if (done and done["attempt"] >= raw["attempt"]) or (
                current and current.attempt > raw["attempt"]
            ):
                continue
            if done:
                del self._finished[job_id]
            seq = current.seq + 1 if current else 1
            self._states[job_id] = ProgressState(
                job_id, raw["attempt"], raw["progress"], raw["message"], raw["stage"], seq
            )
            self._dirty.add(job_id)
            self.updates += 1
        async with changed:
            changed.notify_all()
        return [s["id"] for s in states if s["id"] in self._cancelled]

    async def log(self, lines: list[LogLine], trims: list[Trim]) -> None:
        """Take log lines and trims from a worker; written at the next flush.

        Calls from one worker may run out of order: a batch that arrives after a trim
        that covers its lines (sent later) has them dropped here, as the trim would have."""
        self._start()
        for trim in trims:
            key = (trim.job_id, trim.attempt)
            if trim.seq > self._trimmed.get(key, 0):
                self._trimmed[key] = trim.seq
                self._log_trims[key] = trim
            self._trimmed.move_to_end(key)
        while len(self._trimmed) > FINISHED_KEPT:
            self._trimmed.popitem(last=False)
        self._log_lines.extend(
            line for line in lines if line.seq > self._trimmed.get((line.job_id, line.attempt), 0)
        )
        if len(self._log_lines) > LOG_BACKLOG_MAX:
            log.warning("log backlog over %d lines: dropping the oldest", LOG_BACKLOG_MAX)
            del self._log_lines[: len(self._log_lines) - LOG_BACKLOG_MAX]

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The latest live state of a job, or its last state if it finished recently."""
        self._start()
        state = self._states.get(job_id)
        return state.to_dict() if state else self._finished.get(job_id)

    async def wait(self, job_id: str, after_seq: int, timeout_s: float) -> dict[str, Any] | None:
        """Wait until the job's state passes ``after_seq``, it finishes, or time runs out."""
        changed = self._start()

        def moved() -> bool:
            state = self._states.get(job_id)
            return job_id in self._finished or (state is not None and state.seq > after_seq)

        async with changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait_for(moved), timeout_s)
        return await self.get(job_id)

    async def cancel(self, job_ids: list[str]) -> None:
        """Mark jobs cancelled so their processors' ``ctx.is_cancelled()`` turns true."""
        self._start()
        self._cancelled.update(job_ids)

    async def finished(self, ends: list[tuple[str, int, str]]) -> None:
        """The dispatcher recorded these (id, attempt, status): drop live state, wake readers."""
        changed = self._start()
        for job_id, attempt, status in ends:
            state = self._states.pop(job_id, None)
            self._dirty.discard(job_id)
            self._cancelled.discard(job_id)
            if JobStatus(status) is JobStatus.QUEUED:
                continue  # a retry: the next attempt reports afresh
            last = state.to_dict() if state else {"id": job_id, "seq": 0}
            self._finished[job_id] = {**last, "attempt": attempt, "status": status}
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        async with changed:
            changed.notify_all()
        await self.flush_logs()  # what crashed attempts shipped reaches readers soon after

    async def write_logs(self, lines: list[LogLine], trims: list[Trim]) -> bool:
        """Take an ended attempt's last lines and trims, and write them with everything held
        now: its worker waits for this before its outcome goes. Whether they are written."""
        await self.log(lines, trims)
        return await self.flush_logs()

    async def flush_logs(self) -> bool:
        """Write the log lines and trims held now (one flush at a time, in order); whether
        they are written (else they are kept for the next flush)."""
        async with self._log_lock:
            lines, self._log_lines = self._log_lines, []
            trims, self._log_trims = list(self._log_trims.values()), {}
            if not lines and not trims:
                return True
            if self._logs is None:
                self._logs = LogStore(self._dispatch_store().engine)
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self._logs.append, lines, trims)
            except Exception:
                if not self._log_flush_failing:
                    log.exception("log flush failed; retrying quietly until it succeeds")
                self._log_flush_failing = True
                self._log_lines[:0] = lines
                for trim in trims:
                    self._log_trims.setdefault((trim.job_id, trim.attempt), trim)
                return False
            self._log_flush_failing = False
            return True

    def _dispatch_store(self) -> DispatchStore:
        if self._store is None:
            self._store = DispatchStore.from_url(self._settings.database_url)
        return self._store

    async def flush(self) -> int:
        """Write dirty states to the database now; returns how many rows changed."""
        self._start()
        batch = [self._states[j].to_dict() for j in self._dirty if j in self._states]
        self._dirty.clear()
        if not batch:
            return 0
        store = self._dispatch_store()
        loop = asyncio.get_running_loop()
        try:
            written = await loop.run_in_executor(None, store.write_progress, batch)
        except Exception:
            # One traceback per outage, not one per flush interval.
            if not self._flush_failing:
                log.exception("progress flush failed; retrying quietly until it succeeds")
            self._flush_failing = True
            self._dirty.update(s["id"] for s in batch)
            return 0
        if self._flush_failing:
            log.warning("progress flush succeeded again")
            self._flush_failing = False
        self.flushes += 1
        return written

    async def stats(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "updates": self.updates,
            "flushes": self.flushes,
            "live": len(self._states),
            "backlog": len(self._dirty),
        }

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.engine.progress_flush_interval_s)
            metrics.observe_progress_backlog(len(self._dirty))
            await self.flush()
            await self.flush_logs()
