"""Counting what a piece of the hot path costs besides its own work: module lookups,
imports, database statements and calls into Ray. Counts, not timings: they are the same on
a fast machine and a slow one, so a change that adds to them fails at once."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import ray
import sqlalchemy as sa

RAY_PACKAGE = str(Path(ray.__file__).parent)


@dataclass
class Costs:
    """What ran inside a :func:`counting` block."""

    #: ``importlib.util.find_spec`` calls: one per package asked about.
    find_spec: int = 0
    #: Searches of ``sys.path`` for a module (what a ``find_spec`` of a module not yet
    #: imported, or a first import, does: a directory listing per entry).
    path_scans: int = 0
    #: ``importlib.import_module`` calls, and modules newly in ``sys.modules``.
    import_module: int = 0
    new_modules: list[str] = field(default_factory=list)
    #: SQL statements sent to any database, by their first word.
    statements: list[str] = field(default_factory=list)
    #: Calls from code outside Ray into Ray's package, by function name.
    ray_calls: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What a block costs that looks nothing up, imports nothing, sends no statement and calls
#: nothing in Ray: what an attempt of a processor that does nothing may cost.
NOTHING: dict[str, Any] = {
    "find_spec": 0,
    "path_scans": 0,
    "import_module": 0,
    "new_modules": [],
    "statements": [],
    "ray_calls": [],
}


@contextmanager
def counting(ray_calls: bool = False) -> Iterator[Costs]:
    """Count, in this process and on every thread, what the block costs.

    ``ray_calls``: also count calls into Ray (a profile hook: slow, for small blocks)."""
    costs = Costs()
    find_spec = importlib.util.find_spec
    path_find_spec = importlib.machinery.PathFinder.find_spec
    import_module = importlib.import_module

    def counted_find_spec(name: str, package: str | None = None) -> Any:
        costs.find_spec += 1
        return find_spec(name, package)

    def counted_path_find_spec(fullname: str, path: Any = None, target: Any = None) -> Any:
        costs.path_scans += 1
        return path_find_spec(fullname, path, target)

    def counted_import_module(name: str, package: str | None = None) -> Any:
        costs.import_module += 1
        return import_module(name, package)

    def statement(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        costs.statements.append(sql.split(None, 1)[0].upper())

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call" or not frame.f_code.co_filename.startswith(RAY_PACKAGE):
            return
        caller = frame.f_back
        if caller is not None and not caller.f_code.co_filename.startswith(RAY_PACKAGE):
            costs.ray_calls.append(frame.f_code.co_qualname)

    modules_before = set(sys.modules)
    importlib.util.find_spec = counted_find_spec
    importlib.machinery.PathFinder.find_spec = counted_path_find_spec  # type: ignore[method-assign]
    importlib.import_module = counted_import_module
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
    if ray_calls:
        threading.setprofile(profile)
        sys.setprofile(profile)
    try:
        yield costs
    finally:
        if ray_calls:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", statement)
        importlib.import_module = import_module
        importlib.machinery.PathFinder.find_spec = path_find_spec  # type: ignore[method-assign]
        importlib.util.find_spec = find_spec
        costs.new_modules = sorted(set(sys.modules) - modules_before)
