"""API keys and rate-limit windows on real SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from raypipe.exceptions import NotFound
from raypipe.store import create_engine
from raypipe.store.access import AccessStore, hash_key


@pytest.fixture
def access(db_url: str) -> Iterator[AccessStore]:
    engine = create_engine(db_url)
    yield AccessStore(engine)
    engine.dispose()


def test_keys_are_stored_hashed_and_can_be_revoked(access: AccessStore) -> None:
    secret, key = access.create_key("acme", name="ci")
    assert secret.startswith("rp_") and len(secret) > 40
    assert access.find_key(secret) == key
    assert access.find_key(secret + "x") is None
    stored = access.list_keys("acme")
    assert [k.id for k in stored] == [key.id]
    assert secret not in repr(stored) and hash_key(secret) != secret
    revoked = access.revoke_key(key.prefix)
    assert revoked.revoked_at is not None
    assert access.find_key(secret) is None
    with pytest.raises(NotFound):
        access.revoke_key("rp_nothing")


def test_rate_windows_count_per_tenant_and_roll_over(access: AccessStore) -> None:
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc)
    assert access.hit("a", "submit", 3, 60, now) == (
        3,
        now.replace(second=0) + timedelta(minutes=1),
    )
    assert access.hit("a", "submit", 2, 60, now)[0] == 5
    assert access.hit("b", "submit", 1, 60, now)[0] == 1
    later = now + timedelta(minutes=1)
    assert access.hit("a", "submit", 1, 60, later)[0] == 1


def test_concurrent_hits_are_all_counted(access: AccessStore) -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: access.hit("c", "submit", 1, 3600, now), range(80)))
    assert access.hit("c", "submit", 0, 3600, now)[0] == 80
