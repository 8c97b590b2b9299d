"""The SQL of webhooks: tenants' signing secrets, and the delivery outbox with its attempts.

A delivery row moves ``pending → delivering`` when a sender claims it (under a lease),
then to ``delivered``, back to ``pending`` for a later try, or to ``failed``. Each move out
of ``delivering`` is guarded by the claim's lease, so a sender that lost its lease (it was
too slow, or died and came back) can never overwrite the outcome of the one that took over.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from raypipe.exceptions import Conflict, NotFound
from raypipe.jobs import iso, utcnow
from raypipe.store.engine import read_only, upsert
from raypipe.store.jobs import Clock
from raypipe.store.tables import PENDING_ONLY, webhook_attempts, webhook_deliveries, webhook_secrets
from raypipe.webhooks.signing import new_secret

#: Longest id a delivery row holds (``webhook_deliveries.id``): a longer one names none.
MAX_ID_LENGTH = 40


class DeliveryStatus(str, Enum):
    """Where a delivery is; the values are what the API shows."""

    PENDING = "pending"  # due at ``next_attempt_at``
    DELIVERING = "delivering"  # a sender holds it until ``lease_expires_at``
    DELIVERED = "delivered"
    FAILED = "failed"  # out of attempts, or refused for good: replay it to try again


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of a delivery, as recorded."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": iso(self.started_at),
            "duration_ms": self.duration_ms,
            "status_code": self.status_code,
            "error": self.error,
        }


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery row; ``id`` is also the ``webhook-id`` every try carries."""

    id: str
    tenant: str
    event: str
    job_id: str | None
    batch_id: str | None
    url: str
    body: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    lease_expires_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    attempt_log: tuple[DeliveryAttempt, ...] = ()
    #: The job's trace, which sending continues (traces on).
    trace_parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The delivery as the API and the CLI show it (without its body)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "event": self.event,
            "job_id": self.job_id,
            "batch_id": self.batch_id,
            "url": self.url,
            "status": self.status.value,
            "attempts": self.attempts,
            "next_attempt_at": iso(self.next_attempt_at),
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "delivered_at": iso(self.delivered_at),
            "attempt_log": [attempt.to_dict() for attempt in self.attempt_log],
        }


@dataclass(frozen=True)
class AttemptOutcome:
    """How one POST went and what follows: delivered, another try at ``retry_at``, or (with
    neither) failed for good."""

    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    delivered: bool = False
    retry_at: datetime | None = None


class WebhookStore:
    """Reads and writes webhook secrets, deliveries and their attempts."""

    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    # -- secrets ---------------------------------------------------------------------

    def secret(self, tenant: str) -> str:
        """The tenant's signing secret, created on first use."""
        return self.secrets([tenant])[tenant]

    def secrets(self, tenants: Iterable[str]) -> dict[str, str]:
        """Each tenant's signing secret; missing ones are created (a racing creator wins,
        and both callers then read its secret)."""
        wanted = sorted(set(tenants))
        query = sa.select(webhook_secrets.c.tenant, webhook_secrets.c.secret)
        with read_only(self.engine) as conn:
            found = dict(conn.execute(query.where(webhook_secrets.c.tenant.in_(wanted))).all())
        missing = [tenant for tenant in wanted if tenant not in found]
        if missing:
            now = self.clock()
            rows = [{"tenant": t, "secret": new_secret(), "created_at": now} for t in missing]
            with self.engine.begin() as conn:
                conn.execute(upsert(self.engine, webhook_secrets).on_conflict_do_nothing(), rows)
                found.update(conn.execute(query.where(webhook_secrets.c.tenant.in_(missing))).all())
        return found

    def rotate_secret(self, tenant: str) -> str:
        """Replace the tenant's secret; deliveries signed from now on use the new one."""
        secret = new_secret()
        statement = upsert(self.engine, webhook_secrets).values(
            tenant=tenant, secret=secret, created_at=self.clock()
        )
        statement = statement.on_conflict_do_update(
            index_elements=["tenant"],
            set_={"secret": statement.excluded.secret, "created_at": statement.excluded.created_at},
        )
        with self.engine.begin() as conn:
            conn.execute(statement)
        return secret

    # -- the sender's side -------------------------------------------------------------

    def claim_due(self, limit: int, lease_s: float) -> list[Delivery]:
        """Take up to ``limit`` due pending deliveries, oldest due first, into ``delivering``
        under a lease of ``lease_s`` seconds (skipping rows another sender is claiming)."""
        if limit <= 0:
            return []
        now = self.clock()
        query = (
            sa.select(webhook_deliveries)
            .where(PENDING_ONLY, webhook_deliveries.c.next_attempt_at <= now)
            .order_by(webhook_deliveries.c.next_attempt_at)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        lease = {
            "status": DeliveryStatus.DELIVERING.value,
            "lease_expires_at": now + timedelta(seconds=lease_s),
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return []
            claimed = set(
                conn.execute(
                    sa.update(webhook_deliveries)
                    .where(webhook_deliveries.c.id.in_([row.id for row in rows]), PENDING_ONLY)
                    .values(lease)
                    .returning(webhook_deliveries.c.id)
                ).scalars()
            )
        return [_delivery({**row._mapping, **lease}) for row in rows if row.id in claimed]

    def release_expired(self) -> int:
        """Make deliveries whose sender's lease ran out due again (the sender died or hung
        mid-attempt; whether the receiver got it is unknown, so it is sent again, with the
        same ``webhook-id``). Returns how many."""
        now = self.clock()
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.status == DeliveryStatus.DELIVERING.value,
                    webhook_deliveries.c.lease_expires_at < now,
                )
                .values(
                    status=DeliveryStatus.PENDING.value,
                    next_attempt_at=now,
                    lease_expires_at=None,
                    updated_at=now,
                )
            ).rowcount

    def record_attempt(self, delivery: Delivery, outcome: AttemptOutcome) -> bool:
        """Record one attempt of a claimed delivery and move it on, in one transaction.

        Returns False, writing nothing, when the claim is no longer held (its lease ran out
        and the delivery was released or claimed again).
        """
        now = self.clock()
        if outcome.delivered:
            status, due = DeliveryStatus.DELIVERED, None
        elif outcome.retry_at is not None:
            status, due = DeliveryStatus.PENDING, outcome.retry_at
        else:
            status, due = DeliveryStatus.FAILED, None
        attempt = delivery.attempts + 1
        values: dict[str, Any] = {
            "status": status.value,
            "attempts": attempt,
            "next_attempt_at": due,
            "lease_expires_at": None,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "updated_at": now,
        }
        if outcome.delivered:
            values["delivered_at"] = now
        with self.engine.begin() as conn:
            held = conn.execute(
                sa.update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.id == delivery.id,
                    webhook_deliveries.c.status == DeliveryStatus.DELIVERING.value,
                    webhook_deliveries.c.lease_expires_at == delivery.lease_expires_at,
                )
                .values(values)
            ).rowcount
            if not held:
                return False
            conn.execute(
                webhook_attempts.insert(),
                {
                    "delivery_id": delivery.id,
                    "attempt": attempt,
                    "started_at": outcome.started_at,
                    "duration_ms": outcome.duration_ms,
                    "status_code": outcome.status_code,
                    "error": outcome.error,
                    "response": outcome.response,
                },
            )
        return True

    # -- reads and the user's writes ------------------------------------------------------

    def list(
        self,
        *,
        tenant: str | None = None,
        status: DeliveryStatus | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries matching every filter given, newest first, each with its attempts;
        ``before`` is the (created_at, id) of the previous page's last one."""
        table = webhook_deliveries
        query = sa.select(table).order_by(table.c.created_at.desc(), table.c.id.desc())
        for column, value in (
            (table.c.tenant, tenant),
            (table.c.status, status.value if status else None),
            (table.c.job_id, job_id),
            (table.c.batch_id, batch_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if before is not None:
            at, last_id = before
            query = query.where(
                sa.or_(
                    table.c.created_at < at, sa.and_(table.c.created_at == at, table.c.id < last_id)
                )
            )
        with read_only(self.engine) as conn:
            rows = conn.execute(query.limit(limit)).all()
            return self._with_attempts(conn, rows)

    def get(self, delivery_id: str, tenant: str | None = None) -> Delivery:
        """The delivery with its attempts, or :class:`NotFound` (also another tenant's)."""
        with read_only(self.engine) as conn:
            row = self._row(conn, delivery_id, tenant)
            return self._with_attempts(conn, [row])[0]

    def replay(self, delivery_id: str, tenant: str | None = None) -> Delivery:
        """Send a delivery again, now, with the same ``webhook-id`` (receivers deduplicate by
        it). Its attempts keep counting, so a delivery that used up its attempts gets one
        more; one being sent right now is a :class:`Conflict`."""
        now = self.clock()
        with self.engine.begin() as conn:
            row = self._row(conn, delivery_id, tenant, lock=True)
            if row.status == DeliveryStatus.DELIVERING.value:
                raise Conflict(
                    f"delivery {delivery_id} is being sent right now: replay it once that"
                    " attempt has ended"
                )
            conn.execute(
                sa.update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.id == delivery_id,
                    webhook_deliveries.c.status == row.status,
                )
                .values(status=DeliveryStatus.PENDING.value, next_attempt_at=now, updated_at=now)
            )
        return self.get(delivery_id, tenant)

    def _row(
        self, conn: Connection, delivery_id: str, tenant: str | None, lock: bool = False
    ) -> Row[Any]:
        if len(delivery_id) > MAX_ID_LENGTH or "\x00" in delivery_id:
            raise NotFound(f"webhook delivery {delivery_id[:50]!r} not found")
        query = sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        if tenant is not None:
            query = query.where(webhook_deliveries.c.tenant == tenant)
        if lock and self._postgres:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"webhook delivery {delivery_id} not found")
        return row

    @staticmethod
    def _with_attempts(conn: Connection, rows: Sequence[Row[Any]]) -> builtins.list[Delivery]:
        """Records of ``rows`` with their attempts, read in one query for all of them."""
        if not rows:
            return []
        query = (
            sa.select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id.in_([row.id for row in rows]))
            .order_by(webhook_attempts.c.delivery_id, webhook_attempts.c.attempt)
        )
        log: dict[str, list[DeliveryAttempt]] = {}
        for a in conn.execute(query):
            log.setdefault(a.delivery_id, []).append(
                DeliveryAttempt(
                    a.attempt, a.started_at, a.duration_ms, a.status_code, a.error, a.response
                )
            )
        return [_delivery(row._mapping, tuple(log.get(row.id, ()))) for row in rows]


#: The delivery fields read as their column holds them: all but its status (an enum) and
#: its attempt log (rows of ``webhook_attempts``).
_AS_STORED = [f.name for f in fields(Delivery) if f.name not in ("status", "attempt_log")]


def _delivery(row: Any, attempt_log: tuple[DeliveryAttempt, ...] = ()) -> Delivery:
    stored = {name: row[name] for name in _AS_STORED}
    return Delivery(**stored, status=DeliveryStatus(row["status"]), attempt_log=attempt_log)
