"""The processor registry: which code runs each job type, with what resources and policy."""

from __future__ import annotations

import builtins
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from raypipe.exceptions import InvalidInput
from raypipe.retry import RetryPolicy

#: Modules of the built-in processors, always loaded.
BUILTIN_MODULES = (
    "raypipe.processors.basic",
    "raypipe.processors.embed",
    "raypipe.processors.ai",
    "raypipe.processors.mesh",
    "raypipe.processors.document",
    "raypipe.processors.maintenance",
)

ProcessorFn = Callable[..., Any]


@dataclass(frozen=True)
class ProcessorSpec:
    """A registered job type."""

    type: str
    fn: ProcessorFn
    payload_model: builtins.type[BaseModel]  # `type` alone is the field above
    queue: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    description: str = ""
    #: Acts beyond one tenant (maintenance): only admin keys may submit it.
    admin_only: bool = False
    #: The pool of warm actors that runs it (``settings.pools``); None: a fresh Ray task.
    pool: str | None = None
    #: Pools it calls into while running (``ctx.embed`` uses ``embeddings``).
    uses: tuple[str, ...] = ()

    def ray_options(self) -> dict[str, Any]:
        """Options for ``.options()`` on the Ray task that runs this type."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            options["memory"] = self.memory
        if self.resources:
            options["resources"] = dict(self.resources)
        return options

    def demand(self) -> dict[str, float]:
        """What one running job of this type holds, per Ray resource name."""
        demand = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        if self.memory:
            demand["memory"] = float(self.memory)
        return {name: amount for name, amount in demand.items() if amount}


_registry: dict[str, ProcessorSpec] = {}


def processor(
    type: str,
    *,
    payload: type[BaseModel] | None = None,
    queue: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float | None = None,
    admin_only: bool = False,
    pool: str | None = None,
    uses: Iterable[str] = (),
) -> Callable[[ProcessorFn], ProcessorFn]:
    """Register ``fn(payload, ctx)`` as the processor of job ``type``.

    The payload model comes from ``payload=`` or from the annotation of the first
    parameter. ``queue``, ``retry`` and ``timeout_s`` default to the settings'.
    ``admin_only`` types (they act on every tenant) are refused to non-admin API keys.
    ``pool`` runs the jobs on that pool's warm actors instead of a Ray task each (the
    resources are then the pool's, per actor); ``uses`` names pools the processor calls
    into, so that they have an actor while it runs.
    """

    def register(fn: ProcessorFn) -> ProcessorFn:
        model = payload or _payload_annotation(fn)
        spec = ProcessorSpec(
            type=type,
            fn=fn,
            payload_model=model,
            queue=queue,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=memory,
            resources=dict(resources or {}),
            retry=retry,
            timeout_s=timeout_s,
            description=inspect.getdoc(fn) or "",
            admin_only=admin_only,
            pool=pool,
            uses=tuple(uses),
        )
        known = _registry.get(type)
        if known is not None and _qualname(known.fn) != _qualname(fn):
            raise ValueError(f"job type {type!r} is already registered by {_qualname(known.fn)}")
        _registry[type] = spec
        return fn

    return register


def _payload_annotation(fn: ProcessorFn) -> type[BaseModel]:
    params = list(inspect.signature(fn).parameters)
    hints = typing.get_type_hints(fn)
    model = hints.get(params[0]) if params else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(
            f"processor {_qualname(fn)}: annotate its first parameter with a pydantic model"
            " or pass payload="
        )
    return model


def _qualname(fn: ProcessorFn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def load(modules: Iterable[str] = ()) -> dict[str, ProcessorSpec]:
    """Import the built-in and the configured processor modules; returns the registry."""
    for name in (*BUILTIN_MODULES, *modules):
        importlib.import_module(name)
    return dict(_registry)


def get(type: str) -> ProcessorSpec:
    """The processor of ``type``; an :class:`InvalidInput` naming the known types otherwise."""
    try:
        return _registry[type]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise InvalidInput(
            f"type: unknown job type {type!r} (known: {known})",
            details=[{"loc": ["type"], "msg": f"unknown job type {type!r}; known: {known}"}],
        ) from None
