"""Concurrency keys and run limits: which of a claim's candidates their keys let start.

A concurrency key caps how many of a tenant's jobs with that key one queue holds at once
(claimed or running: its key limit). A run limit caps the starts of jobs with one run key
per sliding window, across the cluster; a service that answers 429 pauses its run key
until its ``Retry-After``. Jobs held back stay queued, saying what they wait for; they
never fail for it.

The claim reads what is held and what started, in its transaction
(:mod:`raypipe.store.flow_control`); this module decides, as pure functions of what it
is told: which (tenant, key) pairs and run keys the candidate read leaves out (so that a
flood of one key never hides another key's jobs), and within one pass which candidates
their keys hold back, counting those it admits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Protocol

from raypipe.config_groups import RunLimit
from raypipe.lifecycle import WAITING_PREFIX
from raypipe.metrics import JobLike

if TYPE_CHECKING:
    from raypipe.config import Settings
    from raypipe.registry import ProcessorSpec

#: (tenant, queue, concurrency key): the jobs one key limit counts.
KeyPair = tuple[str, str, str]


class Keyed(JobLike, Protocol):
    """What flow control reads of a candidate: its type, queue and tenant, and its keys."""

    @property
    def concurrency_key(self) -> str | None: ...

    @property
    def run_key(self) -> str | None: ...


@dataclass(frozen=True)
class RunUse:
    """Starts of one run key within one window: how many, and the oldest of them."""

    count: int
    oldest: datetime


@dataclass(frozen=True)
class FlowLimits:
    """The limits a claim enforces, worked out once from the processors and the queues."""

    #: (job type, queue) -> the key limit of its jobs (the processor's, else the queue's).
    key_limit: Callable[[str, str], int]
    #: (job type, queue) -> the run limit its jobs count against, if any.
    run_limit: Callable[[str, str], RunLimit | None]
    #: Queue -> its key limit, which jobs of types without one of their own have.
    queue_key_limit: Mapping[str, int]
    #: Job type -> its processor's own key limit (the types that have one).
    own_key_limits: Mapping[str, int] = field(default_factory=dict)
    #: Every run limit configured: their windows are counted at each claim.
    run_limits: Sequence[RunLimit] = ()

    @classmethod
    def of(cls, settings: Settings, processors: Mapping[str, ProcessorSpec]) -> FlowLimits:
        """The limits of these processors in the configured queues."""

        @cache
        def limits(job_type: str, queue: str) -> tuple[int, RunLimit | None]:
            spec = processors.get(job_type)
            if spec is not None:
                return spec.limits(settings, queue)
            return settings.queues[queue].key_limit, settings.queues[queue].run_limit

        configured = [spec.own_run_limit(settings) for spec in processors.values()]
        configured += [config.run_limit for config in settings.queues.values()]
        distinct = {(r.key, r.limit, r.window_s): r for r in configured if r is not None}
        return cls(
            key_limit=lambda job_type, queue: limits(job_type, queue)[0],
            run_limit=lambda job_type, queue: limits(job_type, queue)[1],
            queue_key_limit={name: config.key_limit for name, config in settings.queues.items()},
            own_key_limits={
                name: spec.key_limit for name, spec in processors.items() if spec.key_limit
            },
            run_limits=list(distinct.values()),
        )

    @property
    def windows(self) -> list[float]:
        return sorted({limit.window_s for limit in self.run_limits})

    @property
    def longest_window_s(self) -> float:
        return max((limit.window_s for limit in self.run_limits), default=0.0)


@dataclass(frozen=True)
class FlowState:
    """What one claim read of the keys, in its transaction."""

    now: datetime
    #: Held jobs (claimed or running) per (tenant, queue, concurrency key).
    held: Mapping[KeyPair, int] = field(default_factory=dict)
    #: Starts per (window in seconds, run key), within that window back from ``now``.
    starts: Mapping[tuple[float, str], RunUse] = field(default_factory=dict)
    #: Run key -> until when its service asked for no more calls.
    paused: Mapping[str, datetime] = field(default_factory=dict)

    def saturated(self, limits: FlowLimits) -> dict[KeyPair, frozenset[str]]:
        """Pairs held to their queue's key limit (-> the types whose own larger limit
        still lets theirs start): the candidate read skips the pair's other jobs, which
        could not start."""
        return {
            pair: frozenset(t for t, limit in limits.own_key_limits.items() if limit > count)
            for pair, count in self.held.items()
            if count >= limits.queue_key_limit.get(pair[1], 1)
        }

    def full_run_keys(self, limits: FlowLimits) -> dict[str, datetime]:
        """Run keys no job could start under (-> when the next start may be free): paused,
        or full under each limit it may count against: the limits that name it, else (a
        key taken from a payload, known only from its jobs) every limit."""
        full: dict[str, datetime] = {
            key: until for key, until in self.paused.items() if until > self.now
        }
        for key in {key for _, key in self.starts}:
            own = [limit for limit in limits.run_limits if limit.key == key]
            frees = [self.free_at(limit, key, 0) for limit in own or limits.run_limits]
            if frees and all(at is not None for at in frees):
                free = min(at for at in frees if at is not None)
                full[key] = max(free, full.get(key, free))
        return full

    def free_at(self, limit: RunLimit, key: str, admitted: int) -> datetime | None:
        """When ``key``'s next start is free under ``limit`` with ``admitted`` more started
        in this pass; None when one is free now (and it is not paused)."""
        paused = self.paused.get(key)
        if paused is not None and paused > self.now:
            return paused
        use = self.starts.get((limit.window_s, key))
        if (use.count if use else 0) + admitted < limit.limit:
            return None
        # The oldest start in the window leaves it first (the starts of this pass are newer).
        oldest = use.oldest if use else self.now
        return oldest + timedelta(seconds=limit.window_s)


@dataclass
class FlowPass:
    """Flow control over one admission pass: what the claim read, plus what it admits."""

    limits: FlowLimits
    state: FlowState
    admitted_keys: Counter[KeyPair] = field(default_factory=Counter)
    admitted_runs: Counter[str] = field(default_factory=Counter)
    #: The earliest instant a run key that held a candidate back frees a start.
    next_free: datetime | None = None

    def held_back(self, candidate: Keyed) -> str | None:
        """Why the candidate's keys hold it back ("waiting for concurrency key …"), or
        None when they let it start."""
        key = candidate.concurrency_key
        if key is not None:
            pair = (candidate.tenant, candidate.queue, key)
            limit = self.limits.key_limit(candidate.type, candidate.queue)
            held = self.state.held.get(pair, 0) + self.admitted_keys[pair]
            if held >= limit:
                return key_message(key, held, limit)
        run_key = candidate.run_key
        run_limit = self.limits.run_limit(candidate.type, candidate.queue) if run_key else None
        if run_key is not None and run_limit is not None:
            free = self.state.free_at(run_limit, run_key, self.admitted_runs[run_key])
            if free is not None:
                self.wake_at(free)
                return run_message(run_key, free, self.state.paused.get(run_key) == free)
        return None

    def admit(self, candidate: Keyed) -> None:
        """Count an admitted candidate against its keys for the rest of the pass."""
        if candidate.concurrency_key is not None:
            self.admitted_keys[(candidate.tenant, candidate.queue, candidate.concurrency_key)] += 1
        if candidate.run_key is not None:
            self.admitted_runs[candidate.run_key] += 1

    def wake_at(self, when: datetime) -> None:
        if self.next_free is None or when < self.next_free:
            self.next_free = when


def key_message(key: str, held: int, limit: int) -> str:
    """ "waiting for concurrency key 'user-42' (1 running, limit 1)"."""
    return f"{WAITING_PREFIX} concurrency key {key!r} ({held} running, limit {limit})"


def run_message(key: str, free: datetime, paused: bool) -> str:
    """ "waiting for run limit 'openai': next start at 12:00:03Z" (the second rounded
    up, so the time said is never early); a paused key says so."""
    at = clock_time(free)
    if paused:
        return f"{WAITING_PREFIX} run limit {key!r}: paused by its service until {at}"
    return f"{WAITING_PREFIX} run limit {key!r}: next start at {at}"


def clock_time(when: datetime) -> str:
    """The time of day in UTC to the second, rounded up: "12:00:03Z"."""
    whole = when.replace(microsecond=0)
    if whole < when:
        whole += timedelta(seconds=1)
    return f"{whole:%H:%M:%S}Z"


@dataclass
class FlowControl:
    """A dispatcher's flow control across its claims: the limits, what its latest claim
    read (the store sets it in the claim's transaction, before the candidates are
    chosen), and when run starts were last pruned."""

    limits: FlowLimits
    state: FlowState | None = None
    pruned_at: datetime | None = None

    def prune_due(self, now: datetime) -> bool:
        """Whether starts older than the longest window should go now (once a window)."""
        longest = self.limits.longest_window_s
        if not longest or (
            self.pruned_at is not None and now - self.pruned_at < timedelta(seconds=longest)
        ):
            return False
        self.pruned_at = now
        return True
