"""CPU-time budgets: a block past its budget stops and fails permanently, naming the
setting; time spent waiting does not count; nothing is raised once the block is over.

The tests that run out collect garbage first: an interruption that lands in a finalizer
that the collector runs meanwhile is swallowed there (Python prints "Exception ignored"),
and the watchdog raises again; in a test session full of other tests' garbage, pytest
would report the swallowed one.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raypipe.cpu_budget import cpu_budget
from raypipe.exceptions import PermanentError


def busy_swallowing_errors() -> None:
    """A loop of the kind a parser runs, catching whatever its steps raise."""
    while True:
        try:
            sum(range(1_000))
        except Exception:
            continue


def test_a_block_past_its_budget_stops_even_if_it_catches_exceptions() -> None:
    gc.collect()
    began = time.thread_time()
    with (
        pytest.raises(PermanentError, match=r"^used more than 0\.1 s of CPU time \(X_SETTING\)$"),
        cpu_budget(0.1, "X_SETTING"),
    ):
        busy_swallowing_errors()
    assert time.thread_time() - began < 1.0


def test_waiting_costs_no_budget_and_nothing_is_raised_afterwards() -> None:
    with cpu_budget(0.05, "X_SETTING"):
        time.sleep(0.3)
    time.sleep(0.2)  # a late raise would land here
    with cpu_budget(None, "X_SETTING"):
        time.sleep(0.01)


def test_each_thread_is_measured_on_its_own_clock() -> None:
    # Another thread spinning does not use up this thread's budget, and its own budget
    # stops it there.
    failures: list[str] = []
    gc.collect()

    def spin() -> None:
        try:
            with cpu_budget(0.1, "X_SETTING"):
                busy_swallowing_errors()
        except PermanentError as exc:
            failures.append(exc.message)

    other = threading.Thread(target=spin)
    other.start()
    with cpu_budget(0.1, "X_SETTING"):
        time.sleep(0.3)
    other.join(timeout=10)
    assert failures == ["used more than 0.1 s of CPU time (X_SETTING)"]


#: Runs out of a budget, then profiles a call, in a process of its own: a thread left
#: broken spins holding the GIL, past what pytest's timeout can stop.
RUN_OUT_THEN_PROFILE = """
import sys
from raypipe.cpu_budget import cpu_budget
from raypipe.exceptions import PermanentError
from tests.unit.test_cpu_budget import busy_swallowing_errors
try:
    with cpu_budget(0.1, "X_SETTING"):
        busy_swallowing_errors()
except PermanentError:
    pass
def called():
    return 1
events = []
sys.setprofile(lambda frame, event, arg: events.append(event))
called()
sys.setprofile(None)
print("call" in events)
"""


def test_a_thread_that_ran_out_can_still_be_profiled() -> None:
    """What the budget raised is taken before the block ends, not withdrawn: a withdrawn
    raise left CPython's eval breaker set, and the thread's next profiled call spun
    forever (the hot-path tests profile calls)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_OUT_THEN_PROFILE],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
