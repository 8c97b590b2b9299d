"""A CPU-time budget for a block of code: work that runs past it is interrupted and fails
with a permanent error naming the setting that bounds it.

A job's ``timeout_s`` stops an attempt and retries it. A budget is for work whose cost is
set by its input (parsing a hostile document takes as long the next time), so running out
of it is permanent. The block's thread is measured on its own CPU clock (time spent
waiting, and other threads' work, do not count) by a watchdog thread, which interrupts it
by raising an exception in it asynchronously, as dramatiq's time limits do: Python code
stops at its next bytecode, a call into C when it returns.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from raypipe.exceptions import PermanentError

#: How long the watchdog waits between raises in a block that ran out: it raises again
#: until the block ends, since a raise can be lost (one landing in a finalizer that the
#: garbage collector runs on the thread is swallowed there, as Python prints "Exception
#: ignored"). A block that swallows every raise still fails once it ends.
RAISE_AGAIN_S = 0.1
#: Backward jumps :meth:`_Watchdog.finish` makes for a raise on its way to land on (the
#: first one does: each checks for it).
LANDING_LOOPS = 100

# PyThreadState_SetAsyncExc(thread id, exception class).
_raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class CpuBudgetExceeded(BaseException):
    """Raised inside a block that ran out of its budget. A BaseException, so that a
    library's ``except Exception`` does not swallow it; :func:`cpu_budget` turns it into a
    :class:`~raypipe.exceptions.PermanentError` where the block ends."""


@contextmanager
def cpu_budget(seconds: float | None, setting: str) -> Iterator[None]:
    """Run the block with at most ``seconds`` of CPU time on this thread (``None``: no
    limit); past it, :class:`~raypipe.exceptions.PermanentError` naming ``setting``."""
    if seconds is None:
        yield
        return
    watchdog = _Watchdog(threading.get_ident(), seconds)
    watchdog.start()
    exceeded = False
    try:
        yield
    except CpuBudgetExceeded:
        exceeded = True
    finally:
        exceeded = watchdog.finish() or exceeded
    if exceeded:
        raise PermanentError(f"used more than {seconds:g} s of CPU time ({setting})")


def _thread_clock(ident: int) -> int:
    """The CPU clock of thread ``ident``; the process's where threads have none (macOS)."""
    try:
        return time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):
        return time.CLOCK_PROCESS_CPUTIME_ID


class _Watchdog(threading.Thread):
    """Waits until its thread has used its budget, then raises in it every
    :data:`RAISE_AGAIN_S` until :meth:`finish`."""

    def __init__(self, target: int, seconds: float):
        super().__init__(name="raypipe-cpu-budget", daemon=True)
        self.target = target
        self.clock = _thread_clock(target)
        self.deadline = time.clock_gettime(self.clock) + seconds
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.fired = False
        self.done = False

    def run(self) -> None:
        try:
            # A thread uses CPU no faster than the clock on the wall runs: sleep what is left.
            while (left := self.deadline - time.clock_gettime(self.clock)) > 0:
                if self.stopped.wait(left):
                    return
        except OSError:  # the thread is gone: nothing left to stop
            return
        while True:
            with self.lock:
                if self.done:
                    return
                self.fired = True
                _raise_in(self.target, CpuBudgetExceeded)
            if self.stopped.wait(RAISE_AGAIN_S):
                return

    def finish(self) -> bool:
        """Stop watching; whether the budget ran out. Called by the watched thread, which
        may receive a raise on its way in: it is taken here, not let out of the block.

        A raise still on its way is let land (a loop's backward jump delivers it) rather
        than withdrawn: withdrawing one (``PyThreadState_SetAsyncExc`` with NULL) leaves
        CPython 3.11's eval breaker set for good, and the thread then hangs the next time
        a profiler or tracer runs on it."""
        while True:
            try:
                with self.lock:
                    self.done = True
                    fired = self.fired
                self.stopped.set()
                if fired:
                    for _ in range(LANDING_LOOPS):
                        pass
                return fired
            except CpuBudgetExceeded:
                continue  # delivered just now; ``done`` stops any other
