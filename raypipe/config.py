"""Settings: one object, read from ``RAYPIPE_*`` variables, with embedded defaults."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from raypipe.config_groups import (
    AiSettings,
    ApiSettings,
    DocumentSettings,
    EmbeddingSettings,
    EngineSettings,
    FetchSettings,
    Group,
    LimitSettings,
    LogSettings,
    MaintenanceSettings,
    MeshSettings,
    RunLimit,
    TenantSettings,
    WebhookSettings,
)

DEFAULT_QUEUE = "default"


#: Why ``RAYPIPE_OUTBOUND_ALLOW_NETWORKS`` (in 0.6.0, never released) stops a start.
OUTBOUND_REPLACED = (
    "RAYPIPE_OUTBOUND_ALLOW_NETWORKS is no longer read: it opened input fetches and webhooks"
    " at once. Set RAYPIPE_FETCH_ALLOW_NETWORKS for job input URLs (image_url, document_url:"
    " the tenant reads their answers) and RAYPIPE_WEBHOOK_ALLOW_NETWORKS for webhook"
    " deliveries, each to what that purpose needs, and unset it"
)


class QueueConfig(BaseModel):
    """A named lane: how many of its jobs may run at once, their default priority, and
    whether only admin keys may submit to it (an operator's lane, such as ``maintenance``,
    that a tenant's job would otherwise hold)."""

    concurrency: int = Field(default=100, ge=1)
    priority: int = Field(default=0, ge=0)
    admin_only: bool = Field(
        default=False, description="only admin API keys may submit to it (403 for others)"
    )
    key_limit: int = Field(
        default=1,
        ge=1,
        description="most jobs of one tenant with one concurrency_key that run at once",
    )
    run_limit: RunLimit | None = Field(
        default=None, description="starts per window of all the queue's jobs (a run limit)"
    )


#: Lanes of the built-in workloads, so a flood of one kind cannot starve the others. The
#: default lane's 400 keeps two of the ``workers`` pool's bundles (200 jobs) in flight: with
#: at most one (it was 100, half a bundle), each bundle's round trip waited for a dispatcher
#: round. Admission still bounds what runs by what the cluster holds.
BUILTIN_QUEUES: dict[str, QueueConfig] = {
    DEFAULT_QUEUE: QueueConfig(concurrency=400),
    "embeddings": QueueConfig(concurrency=128),
    "mesh": QueueConfig(),
    "documents": QueueConfig(),
    "ai": QueueConfig(concurrency=16),
    "maintenance": QueueConfig(concurrency=1, admin_only=True),
}


class PoolConfig(BaseModel):
    """A named pool of warm actors that runs the jobs of the processors that name it.

    Each actor holds its resources for as long as it lives; the dispatcher grows the
    pool with its queue's depth (within what admission allows) and removes actors that
    were idle for ``idle_s``, or at once when queued work needs what an idle one holds.
    """

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float | None = Field(
        default=None, ge=0, description="per actor; unset: one GPU each where the cluster has any"
    )
    memory: int | None = Field(default=None, ge=1, description="bytes per actor")
    resources: dict[str, float] = Field(default_factory=dict)
    concurrency: int = Field(default=1, ge=1, description="jobs each actor runs at once")
    bundle: int = Field(default=1, ge=1, description="most jobs per actor call")
    prefetch: int = Field(
        default=1, ge=0, description="bundles queued at each actor beyond those running"
    )
    min_size: int = Field(default=0, ge=0)
    max_size: int | None = Field(default=None, ge=1, description="unset: as many as fit")
    idle_s: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def _sizes(self) -> PoolConfig:
        if self.max_size is not None and self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        return self


#: The built-in pools: ``embeddings`` keeps sentence-transformers models loaded and merges
#: the requests of its concurrent jobs into model calls (32 jobs at once per actor, sent in
#: one actor call, so that small jobs fill a call of ``embedding_chunk_size`` texts while
#: one runs; the ``embeddings`` queue's 128 gives two such actors a bundle running and one
#: waiting each, as the pool's ``prefetch`` asks: with 64, an actor's model idled between
#: its bundles and its calls after the first were short); ``workers`` runs
#: tiny CPU jobs (``noop``) in bundles, so Ray's cost per call is shared by many jobs.
BUILTIN_POOLS: dict[str, PoolConfig] = {
    "embeddings": PoolConfig(num_cpus=1.0, concurrency=32, bundle=32, max_size=2, idle_s=600.0),
    "workers": PoolConfig(num_cpus=1.0, num_gpus=0.0, bundle=200, idle_s=60.0),
}


#: What a schedule does about instants it missed while nothing ran: ``skip`` them,
#: ``run_once`` (one job for the latest missed instant), or ``run_all`` (one per instant,
#: at most :data:`MAX_CATCH_UP` of the latest).
MissedFires = Literal["skip", "run_once", "run_all"]
MAX_CATCH_UP = 100


class ScheduleConfig(BaseModel):
    """A cron schedule declared in the configuration (synced to the database at start)."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    job: dict[str, Any]
    missed: MissedFires = "run_once"
    tenant: str = "default"
    enabled: bool = True


#: Built-in maintenance, scheduled when ``maintenance_schedules`` is on (times in UTC).
MAINTENANCE_SCHEDULES: dict[str, ScheduleConfig] = {
    "maintenance.prune": ScheduleConfig(cron="17 3 * * *", job={"type": "maintenance.prune"}),
    "maintenance.orphans": ScheduleConfig(cron="47 3 * * *", job={"type": "maintenance.orphans"}),
    "maintenance.stuck": ScheduleConfig(cron="*/15 * * * *", job={"type": "maintenance.stuck"}),
}


#: Where settings come from: ``RAYPIPE_*`` variables and ``.env`` (the flat names alike).
SOURCES = SettingsConfigDict(
    env_prefix="RAYPIPE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
)


class _FlatBase(BaseSettings):
    model_config = SOURCES


class Settings(BaseSettings):
    """Everything raypipe reads from its environment, grouped by what it configures
    (``settings.engine``, ``settings.embeddings``, … in :mod:`raypipe.config_groups`).

    Users name a grouped setting by its flat name, as always: ``RAYPIPE_LEASE_TTL_S``,
    ``embedding_batch_size = 64`` in the TOML file, ``get_settings(max_batch_jobs=3)``
    (:data:`FLAT_NAMES`); validation errors name it that way too. Built by
    :func:`get_settings` (never at import time) so tests and the CLI can override it; the
    object is pickled into Ray actors, so it carries absolute paths.
    """

    model_config = SOURCES

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword overrides, then ``RAYPIPE_*`` variables, then ``.env``, then the TOML
        file named by ``RAYPIPE_CONFIG_FILE`` (default ``raypipe.toml``, if it exists); each
        read by the flat names and regrouped before they are merged, so that precedence
        holds field by field whichever spelling each source used."""
        flat = _flat_settings_class()
        sources = (
            init_settings,
            EnvSettingsSource(flat),
            DotEnvSettingsSource(flat),
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
        )
        return (*(_Regrouped(settings_cls, source) for source in sources), file_secret_settings)

    data_dir: Path = Field(default=Path("raypipe-data"), description="SQLite file and artifacts")
    database_url: str = Field(
        default="",
        description="postgresql+psycopg://user@host/db for PostgreSQL (postgresql:// is"
        " accepted); unset: SQLite, data_dir/raypipe.db",
    )
    ray_address: str = Field(
        default="",
        description="the Ray cluster to join (auto: whichever Ray runs here); unset:"
        " 127.0.0.1:ray_port",
    )
    ray_port: int = Field(default=6380, description="port of the head `raypipe up` starts")
    ray_num_cpus: int | None = Field(
        default=None, description="CPUs of the head `raypipe up` starts; unset: Ray's count"
    )
    namespace: str = Field(default="raypipe", description="Ray namespace of raypipe's actors")
    artifacts_url: str = Field(
        default="",
        description="where artifacts live: a folder or any fsspec URL (s3://…) reachable from"
        " every node; unset: data_dir/artifacts",
    )
    processor_modules: list[str] = Field(
        default_factory=list, description="JSON list of modules with your processors"
    )

    queues: dict[str, QueueConfig] = Field(
        default_factory=dict,
        description="JSON: queue -> concurrency, priority, admin_only (only admin keys may"
        " submit to it), key_limit (of one concurrency key), run_limit; the built-in queues"
        " (default 400; mesh, documents 100; embeddings 128; ai 16; maintenance 1, admin-only)"
        " are always there, and naming one changes only the fields given",
    )
    pools: dict[str, PoolConfig] = Field(
        default_factory=dict,
        description="JSON: pool -> num_cpus, num_gpus, memory, resources, concurrency, bundle,"
        " prefetch, min_size, max_size, idle_s; the built-in pools (embeddings, workers) are"
        " always there, and naming one changes only the fields given",
    )
    schedules: dict[str, ScheduleConfig] = Field(
        default_factory=dict, description="cron schedules from the configuration"
    )
    outbound_allow_networks: Any = Field(
        default=None,
        description="refused at start-up: it opened input fetches and webhooks at once;"
        " fetch_allow_networks and webhook_allow_networks replace it",
    )

    engine: EngineSettings = Field(default_factory=EngineSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    mesh: MeshSettings = Field(default_factory=MeshSettings)
    documents: DocumentSettings = Field(default_factory=DocumentSettings)
    ai: AiSettings = Field(default_factory=AiSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("outbound_allow_networks")
    @classmethod
    def _outbound_replaced(cls, value: Any) -> None:
        """Refused whenever it is set, whatever its value: kept silently, one setting would
        still open both purposes, and dropped silently, fetches or webhooks that worked
        would fail."""
        if value is not None:
            raise ValueError(OUTBOUND_REPLACED)

    @model_validator(mode="wrap")
    @classmethod
    def _flat_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """Errors name a grouped setting by its flat name, as the user wrote it
        (``claim_batch``, not ``engine.claim_batch``)."""
        try:
            return handler(data)
        except ValidationError as exc:
            errors = [_flat_error(error) for error in exc.errors()]
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'raypipe.db'}"
        self.database_url = normalize_database_url(self.database_url)
        # A configured built-in queue or pool changes only the fields it names: setting the
        # maintenance queue's concurrency must not make it open to tenants.
        for name, queue in BUILTIN_QUEUES.items():
            self.queues[name] = _amended(queue, self.queues.get(name))
        for name, pool in BUILTIN_POOLS.items():
            self.pools[name] = _amended(pool, self.pools.get(name))
        if not self.artifacts_url:
            self.artifacts_url = str(self.data_dir / "artifacts")
        if not self.ray_address:
            # The head `raypipe up` starts, not whichever Ray happens to run on this machine.
            self.ray_address = f"127.0.0.1:{self.ray_port}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update``'s fields changed (unvalidated, as pydantic's): flat names
        (``max_batch_jobs``) and groups given as dicts change only the fields they name."""
        changes = {
            name: getattr(self, name).model_copy(update=value)
            if name in GROUPS and isinstance(value, Mapping)
            else value
            for name, value in regroup(update or {}).items()
        }
        return super().model_copy(update=changes, deep=deep)

    def __getattr__(self, name: str) -> Any:
        """A grouped setting read by its flat name (``settings.lease_ttl_s``), as code
        written before the groups (a processor's ``ctx.settings``) reads it: the grouped
        field, with a ``DeprecationWarning`` naming where it lives now."""
        if name in FLAT_NAMES:
            group, field = FLAT_NAMES[name]
            warnings.warn(
                f"settings.{name} is settings.{group}.{field}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(getattr(self, group), field)
        return super().__getattr__(name)  # type: ignore[misc]

    def flat_dump(
        self, *, mode: Literal["json", "python"] = "python", include: Set[str] | None = None
    ) -> dict[str, Any]:
        """The settings (those in ``include``) under their flat names: ``RAYPIPE_`` and each,
        upper-cased, is its variable, for a process started with them."""
        dump = self.model_dump(mode=mode)
        flat = {name: value for name, value in dump.items() if name not in GROUPS}
        for name, (group, field) in FLAT_NAMES.items():
            flat[name] = dump[group][field]
        return {name: flat[name] for name in include} if include is not None else flat


#: The fields of :class:`Settings` that are groups, with their models.
GROUPS: dict[str, type[Group]] = {
    name: info.annotation
    for name, info in Settings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, Group)
}
#: Each grouped setting's flat name (``embedding_batch_size``) -> (group, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    model.flat_name(field): (group, field)
    for group, model in GROUPS.items()
    for field in model.model_fields
}


def regroup(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each flat name moved into its group (``lease_ttl_s`` into
    ``engine``), over what a group given whole (a dict or a model) says."""
    grouped = {key: value for key, value in values.items() if key not in FLAT_NAMES}
    for key, value in values.items():
        if key in FLAT_NAMES:
            group, field = FLAT_NAMES[key]
            given = grouped.get(group, {})
            if isinstance(given, BaseModel):
                given = given.model_dump()
            grouped[group] = {**given, field: value}
    return grouped


def _flat_error(error: ErrorDetails) -> InitErrorDetails:
    """``error`` located by the flat name of the grouped setting it is about."""
    loc = error["loc"]
    if loc and loc[0] in GROUPS:
        model = GROUPS[str(loc[0])]
        where = loc[1:2]
        if where and where[0] in model.model_fields:
            loc = (model.flat_name(str(where[0])), *loc[2:])
        elif not where:
            loc = ()  # the group's own check (one setting against another)
    details = InitErrorDetails(type=error["type"], loc=loc, input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


class _Regrouped(PydanticBaseSettingsSource):
    """A source whose flat names are moved into their groups (:func:`regroup`)."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False  # __call__ reads the whole source

    def __call__(self) -> dict[str, Any]:
        return regroup(self._source())

    def __repr__(self) -> str:
        return f"_Regrouped({self._source!r})"


@functools.cache
def _flat_settings_class() -> type[BaseSettings]:
    """A settings class with every setting under its flat name, for the sources that read
    by name (the environment, ``.env``): its fields' types tell them what is JSON."""
    fields: dict[str, Any] = {
        name: (info.annotation, None)
        for name, info in Settings.model_fields.items()
        if name not in GROUPS
    }
    for flat, (group, field) in FLAT_NAMES.items():
        fields[flat] = (GROUPS[group].model_fields[field].annotation, None)
    return create_model("FlatSettings", __base__=_FlatBase, **fields)


_Model = TypeVar("_Model", bound=BaseModel)


def _amended(builtin: _Model, given: _Model | None) -> _Model:
    """A built-in queue's or pool's configuration with the fields ``given`` names changed."""
    changes = {key: getattr(given, key) for key in given.model_fields_set} if given else {}
    return type(builtin).model_validate({**builtin.model_dump(), **changes})


def normalize_database_url(url: str) -> str:
    """Pick psycopg 3 for PostgreSQL and make SQLite paths absolute.

    Absolute paths matter because Ray workers do not share the caller's working directory.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if path.expanduser() != path or not path.is_absolute():
            absolute = str(path.expanduser().resolve())
            return parsed.set(database=absolute).render_as_string(hide_password=False)
    return url


def config_file() -> Path:
    """The optional TOML configuration file (``RAYPIPE_CONFIG_FILE``)."""
    return Path(os.environ.get("RAYPIPE_CONFIG_FILE", "raypipe.toml")).expanduser()


def get_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, with keyword overrides taking precedence; an
    override names a setting by its flat name (``lease_ttl_s=3.0``) or gives a group
    (``engine={"lease_ttl_s": 3.0}``)."""
    return Settings(**overrides)
