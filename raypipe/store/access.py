"""API keys and rate-limit windows: the SQL behind authentication and throttling."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from raypipe.exceptions import NotFound
from raypipe.jobs import utcnow
from raypipe.store.engine import read_only, upsert
from raypipe.store.tables import api_keys, rate_limits
from raypipe.tenants import check_tenant

KEY_PREFIX = "rp_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    """Keys are long random tokens, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode()).hexdigest()


class AccessStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create_key(self, tenant: str, name: str = "", admin: bool = False) -> tuple[str, ApiKey]:
        """A new key for ``tenant``; the secret is returned once and only its hash is kept."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": str(uuid.uuid4()),
            "tenant": check_tenant(tenant),
            "name": name or tenant,
            "prefix": secret[:10],
            "key_hash": hash_key(secret),
            "admin": admin,
            "created_at": utcnow(),
        }
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert(), row)
        return secret, _key(row | {"revoked_at": None})

    def find_key(self, secret: str) -> ApiKey | None:
        """The live key with this secret, or None."""
        query = sa.select(api_keys).where(
            api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None)
        )
        with read_only(self.engine) as conn:
            row = conn.execute(query).first()
        return _key(row._mapping) if row else None

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with read_only(self.engine) as conn:
            return [_key(row._mapping) for row in conn.execute(query)]

    def count_keys(self) -> int:
        with read_only(self.engine) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(api_keys)).scalar_one()

    def revoke_key(self, key_id_or_prefix: str) -> ApiKey:
        now = utcnow()
        match = sa.or_(api_keys.c.id == key_id_or_prefix, api_keys.c.prefix == key_id_or_prefix)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(api_keys).where(match)).first()
            if row is None:
                raise NotFound(f"no API key {key_id_or_prefix!r}")
            conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == row.id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return _key({**row._mapping, "revoked_at": row.revoked_at or now})

    def hit(
        self, tenant: str, action: str, cost: int, window_s: int, now: datetime
    ) -> tuple[int, datetime]:
        """Add ``cost`` to the tenant's current window for ``action``; returns the new count
        and when the window ends. One atomic upsert, so every replica sees the same count."""
        with self.engine.begin() as conn:
            return hit(conn, tenant, action, cost, window_s, now)


def hit(
    conn: Connection, tenant: str, action: str, cost: int, window_s: int, now: datetime
) -> tuple[int, datetime]:
    """:meth:`AccessStore.hit` inside ``conn``'s transaction (a schedule's fire is charged
    in the transaction that writes its jobs)."""
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % window_s, tz=now.tzinfo)
    statement = upsert(conn, rate_limits).values(
        tenant=tenant, action=action, window_start=start, count=cost
    )
    adding = statement.on_conflict_do_update(
        index_elements=["tenant", "action", "window_start"],
        set_={"count": rate_limits.c.count + statement.excluded.count},
    ).returning(rate_limits.c.count)
    count = conn.execute(adding).scalar_one()
    if count == cost:  # a new window began: drop the tenant's older ones
        conn.execute(
            sa.delete(rate_limits).where(
                rate_limits.c.tenant == tenant,
                rate_limits.c.action == action,
                rate_limits.c.window_start < start,
            )
        )
    return count, start + timedelta(seconds=window_s)


def _key(row: object) -> ApiKey:
    m = dict(row)  # type: ignore[call-overload]
    return ApiKey(
        m["id"],
        m["tenant"],
        m["name"],
        m["prefix"],
        bool(m["admin"]),
        m["created_at"],
        m["revoked_at"],
    )
