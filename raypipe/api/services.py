"""What the API's routes share in one process: settings, every store (on one engine), the
bells that wake the dispatcher and the webhook sender. Routes get it as ``AppServices``.

Built lazily on first use, because the FastAPI app is pickled into Serve replicas
and database engines cannot be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy.engine import Connection

from raypipe import registry
from raypipe.artifacts import ArtifactStore
from raypipe.config import Settings
from raypipe.exceptions import RateLimited, Unauthorized
from raypipe.jobs import utcnow
from raypipe.runtime.bells import ActorBell, DispatcherBell, dispatcher_info
from raypipe.runtime.names import WEBHOOK_ACTOR
from raypipe.store import JobStore, access, schema_version
from raypipe.store.access import AccessStore, ApiKey
from raypipe.store.batches import BatchStore
from raypipe.store.jobs import Charge
from raypipe.store.logs import LogStore
from raypipe.store.queues import QueueStore
from raypipe.store.schedules import ScheduleStore
from raypipe.store.stats import StatsStore
from raypipe.store.tenants import TenantStore
from raypipe.store.webhooks import WebhookStore
from raypipe.submitter import Submitter

#: Seconds a verified key is trusted before the database is asked again (revocations
#: take effect within this).
KEY_CACHE_S = 5.0


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, whether its key sees every tenant, and the key's id."""

    tenant: str
    admin: bool
    key_id: str = ""

    @property
    def scope(self) -> str | None:
        """The tenant to filter by; None for an admin."""
        return None if self.admin else self.tenant


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._bell = DispatcherBell(settings)
        self._webhook_bell = ActorBell(settings, WEBHOOK_ACTOR)

    @cached_property
    def jobs(self) -> JobStore:
        registry.load(self.settings.processor_modules)
        return JobStore(schema_version.open_current(self.settings.database_url))

    @cached_property
    def submitter(self) -> Submitter:
        return Submitter(self.jobs, self.settings, self.wake_dispatcher)

    @cached_property
    def batches(self) -> BatchStore:
        return self.submitter.batches

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts_url)

    @cached_property
    def access(self) -> AccessStore:
        return AccessStore(self.jobs.engine)

    @cached_property
    def logs(self) -> LogStore:
        return LogStore(self.jobs.engine)

    @cached_property
    def queues(self) -> QueueStore:
        return QueueStore(self.jobs.engine, self.jobs.clock)

    @cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self.jobs.engine, self.jobs.clock)

    @cached_property
    def stats(self) -> StatsStore:
        return StatsStore(self.jobs.engine, self.jobs.clock)

    @cached_property
    def tenants(self) -> TenantStore:
        return TenantStore(self.jobs.engine, self.jobs.clock)

    def tenant_usage(self) -> dict[str, dict[str, Any]]:
        """Each tenant's recent usage as the dispatcher counts it (fair share), or nothing
        when no dispatcher answers within a second (the figures then show as null)."""
        info = dispatcher_info(self.settings)
        return dict(info.get("tenants") or {}) if info else {}

    @cached_property
    def webhooks(self) -> WebhookStore:
        return WebhookStore(self.jobs.engine, self.jobs.clock)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller with this ``Authorization`` header; :class:`Unauthorized` without a
        live key. May ask the database (see :meth:`known`)."""
        known = self.known(authorization)
        if known is not None:
            return known
        secret = _secret(authorization)
        key = self.access.find_key(secret)
        if key is None:
            self._keys.pop(secret, None)
            raise Unauthorized("invalid or revoked API key")
        self._keys[secret] = (time.monotonic() + KEY_CACHE_S, key)
        return _principal(key)

    def known(self, authorization: str | None) -> Principal | None:
        """The caller, if its key was verified in the last :data:`KEY_CACHE_S` seconds,
        without asking the database (so an event loop may call it); None if it must be
        asked; :class:`Unauthorized` for a header that names no key at all."""
        cached = self._keys.get(_secret(authorization))
        if cached is None or cached[0] < time.monotonic():
            return None
        return _principal(cached[1])

    def charge(
        self, principal: Principal, action: str, cost: int, conn: Connection | None = None
    ) -> None:
        """Count ``cost`` against the tenant's limit for ``action``; 429 past it.

        ``conn``: charge inside that transaction, for work whose cost is known only once it
        is done there (a batch's retried jobs): the 429 rolls the work back with the count.
        """
        limit = self.settings.limits.rate_limits.get(action)
        if limit is None or cost <= 0:
            return
        now = utcnow()
        counted = (principal.tenant, action, cost, limit.window_s, now)
        count, window_end = (
            access.hit(conn, *counted) if conn is not None else self.access.hit(*counted)
        )
        if count > limit.limit:
            wait = max(1, int((window_end - now).total_seconds() + 0.999))
            raise RateLimited(
                f"{action}: at most {limit.limit} per {limit.window_s}s for tenant"
                f" {principal.tenant!r}; retry after {wait}s",
                retry_after_s=wait,
            )

    def charger(self, principal: Principal, action: str = "submit") -> Charge:
        """:meth:`charge` as a store calls it, inside the transaction that does the work
        (retries: their count is known only there, and a 429 undoes them)."""
        return lambda conn, cost: self.charge(principal, action, cost, conn)

    def wake_dispatcher(self) -> None:
        """Fire-and-forget: the dispatcher looks for work now (it polls anyway)."""
        self._bell.ring()

    def wake_webhook_sender(self) -> None:
        """Fire-and-forget: the webhook sender looks for deliveries now (it polls anyway)."""
        self._webhook_bell.ring()


def _secret(authorization: str | None) -> str:
    """The key in a ``Bearer`` header; :class:`Unauthorized` if it names none."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized()
    return secret.strip()


def _principal(key: ApiKey) -> Principal:
    return Principal(tenant=key.tenant, admin=key.admin, key_id=key.id)
