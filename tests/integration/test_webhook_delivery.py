"""Webhook delivery against a real local receiver, on SQLite and PostgreSQL: signatures,
retries with backoff, replays, redirects, time limits, SSRF refusals, leases, the actor."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import ray
import sqlalchemy as sa

from raypipe.config import Settings
from raypipe.direct import DirectClient
from raypipe.exceptions import Conflict, NotFound
from raypipe.retry import ErrorKind
from raypipe.runtime import actors
from raypipe.runtime.bells import ActorBell
from raypipe.runtime.names import WEBHOOK_ACTOR
from raypipe.store import create_engine
from raypipe.store.tables import webhook_deliveries
from raypipe.store.webhooks import AttemptOutcome, DeliveryStatus, WebhookStore
from raypipe.webhooks import sender, verify
from raypipe.webhooks.events import outbox_row
from raypipe.webhooks.signing import WebhookVerificationError
from tests.conftest import fresh_database, make_settings, wait_for
from tests.helpers.webhook_receiver import Answer, receiver, tls_receiver

#: The receivers listen on 127.0.0.1: loopback, which the outbound guard refuses by default.
LOOPBACK = ["127.0.0.0/8"]


class FakeClock:
    """Time that moves only when a test says so (near real time: signatures are checked
    against the real clock, within five minutes)."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Fast webhook timings, loopback allowed (the receiver runs on 127.0.0.1); also what
    the ``raypipe`` fixture starts the actors with."""
    return make_settings(
        db_url,
        tmp_path / "data",
        webhook_allow_networks=LOOPBACK,
        webhook_backoff_s=0.01,
        webhook_max_backoff_s=0.05,
        webhook_max_attempts=3,
        webhook_timeout_s=1.0,
        webhook_poll_interval_s=0.05,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(settings: Settings, clock: FakeClock) -> Iterator[WebhookStore]:
    engine = create_engine(settings.database_url)
    yield WebhookStore(engine, clock)
    engine.dispose()


def add(store: WebhookStore, url: str, tenant: str = "acme", **ids: str) -> str:
    """Queue a delivery as a job's terminal event does; returns its id."""
    job_id = ids.get("job_id", str(uuid.uuid4()))
    data = {"id": job_id, "status": "completed", "result": {"n": 1}}
    row = outbox_row(tenant, "job.completed", url, data, store.clock(), job_id=job_id)
    row["batch_id"] = ids.get("batch_id")
    with store.engine.begin() as conn:
        conn.execute(webhook_deliveries.insert(), row)
    return row["id"]


async def _round(store: WebhookStore, settings: Settings, http: httpx.AsyncClient) -> int:
    """Claim what is due, send it all at once, record every outcome; how many were sent."""
    claimed = store.claim_due(10, lease_s=60)
    secrets = store.secrets({d.tenant for d in claimed}) if claimed else {}
    outcomes = await asyncio.gather(
        *(sender.deliver(d, secrets[d.tenant], settings, http, store.clock) for d in claimed)
    )
    for delivery, outcome in zip(claimed, outcomes, strict=True):
        assert store.record_attempt(delivery, outcome)
    return len(claimed)


def send_until_settled(
    store: WebhookStore, settings: Settings, clock: FakeClock, http: httpx.AsyncClient | None = None
) -> None:
    """Deliver until nothing is pending; the clock jumps past each backoff in between."""

    async def run() -> None:
        async with http or sender.client(settings) as client:
            for _ in range(50):
                await _round(store, settings, client)
                if not store.list(status=DeliveryStatus.PENDING):
                    return
                clock.advance(1.0)
            pytest.fail("deliveries still pending after 50 rounds")

    asyncio.run(run())


# -- retries, signatures, replays ------------------------------------------------------------


def test_failures_are_retried_until_delivered_with_one_id_and_valid_signatures(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    set_cookie = Answer(500, {"Set-Cookie": "session=1; Path=/"})
    with receiver([set_cookie, Answer(503, body=b"busy\x00")]) as hook:
        delivery_id = add(store, hook.url)
        send_until_settled(store, settings, clock)
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.DELIVERED
    assert delivery.delivered_at == clock.now and delivery.next_attempt_at is None
    assert delivery.attempts == 3
    assert [(a.attempt, a.status_code) for a in delivery.attempt_log] == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]
    assert delivery.attempt_log[1].response == "busy\ufffd"  # NUL: not storable
    assert delivery.attempt_log[0].error == "HTTP 500 Internal Server Error"
    assert delivery.attempt_log[2].error is None
    assert len(hook.requests) == 3
    secret = store.secret("acme")
    for request in hook.requests:
        assert request.headers["webhook-id"] == delivery_id  # retries keep the id
        assert request.body.decode() == delivery.body
        assert request.headers["user-agent"] == "raypipe-webhooks/1"
        assert "cookie" not in request.headers  # a receiver's cookies are never sent back
        assert verify(request.body, request.headers, secret)["type"] == "job.completed"
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(hook.requests[0].body, hook.requests[0].headers, store.rotate_secret("acme"))


def test_retries_back_off_and_honour_retry_after(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    limits = settings.model_copy(
        update={"webhook_backoff_s": 2.0, "webhook_max_backoff_s": 30.0, "webhook_max_attempts": 9}
    )
    with receiver(
        [500, 500, Answer(429, {"Retry-After": "7"}), Answer(503, {"Retry-After": "600"})]
    ) as hook:
        delivery_id = add(store, hook.url)

        async def waits() -> list[float]:
            found = []
            async with sender.client(limits) as http:
                for _ in range(4):
                    assert await _round(store, limits, http) == 1
                    due = store.get(delivery_id).next_attempt_at
                    assert due is not None
                    found.append((due - clock.now).total_seconds())
                    clock.now = due
            return found

        first, second, asked, capped = asyncio.run(waits())
    assert 1.8 <= first <= 2.2 and 3.6 <= second <= 4.4  # 2 s, then 4 s, ±10 % jitter
    assert asked == 7.0  # Retry-After, exactly
    assert capped == 30.0  # ... but never past the backoff cap


def test_exhausted_attempts_fail_and_a_replay_delivers(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    with receiver([500, 502, 504]) as hook:
        delivery_id = add(store, hook.url)
        send_until_settled(store, settings, clock)
        failed = store.get(delivery_id)
        assert failed.status is DeliveryStatus.FAILED
        assert failed.attempts == settings.webhooks.max_attempts == 3
        assert failed.last_status_code == 504 and failed.next_attempt_at is None
        assert len(hook.requests) == 3

        replayed = store.replay(delivery_id, tenant="acme")
        assert replayed.status is DeliveryStatus.PENDING
        assert replayed.next_attempt_at == clock.now
        send_until_settled(store, settings, clock)
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.DELIVERED
    assert [a.status_code for a in delivery.attempt_log] == [500, 502, 504, 200]
    assert {r.headers["webhook-id"] for r in hook.requests} == {delivery_id}


def test_gone_is_permanent(store: WebhookStore, settings: Settings, clock: FakeClock) -> None:
    with receiver([410]) as hook:
        delivery_id = add(store, hook.url)
        send_until_settled(store, settings, clock)
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempts == 1 and len(hook.requests) == 1


def test_a_name_that_does_not_resolve_is_retried_not_refused(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    delivery_id = add(store, "http://raypipe-test.invalid/hook")  # .invalid never resolves
    send_until_settled(store, settings, clock)
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempts == settings.webhooks.max_attempts  # every try was made
    assert all("cannot resolve" in (a.error or "") for a in delivery.attempt_log)


def test_replay_checks_tenant_and_state(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    delivery_id = add(store, "http://127.0.0.1:9/hook")
    with pytest.raises(NotFound):
        store.replay(delivery_id, tenant="someone-else")
    with pytest.raises(NotFound):
        store.get(delivery_id, tenant="someone-else")
    with pytest.raises(NotFound):
        store.get("msg_" + "0" * 100)
    assert len(store.claim_due(10, lease_s=60)) == 1
    with pytest.raises(Conflict):
        store.replay(delivery_id, tenant="acme")
    assert store.get(delivery_id).status is DeliveryStatus.DELIVERING


# -- what a delivery may and may not do ------------------------------------------------------


def test_redirects_are_not_followed(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    with receiver() as target, receiver(then=Answer(307, {"Location": target.url})) as hook:
        delivery_id = add(store, hook.url)
        send_until_settled(store, settings, clock)
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED
    assert [a.status_code for a in delivery.attempt_log] == [307, 307, 307]
    assert len(hook.requests) == 3 and target.requests == []


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Answer(delay_s=60), id="no-answer"),
        pytest.param(Answer(drip_s=0.05), id="a-body-that-trickles"),
    ],
)
def test_each_attempt_is_bounded_by_the_timeout(
    store: WebhookStore, settings: Settings, answer: Answer
) -> None:
    """A receiver that never finishes answering costs one timeout, not its own pace."""
    with receiver(then=answer) as hook:
        delivery = store.get(add(store, hook.url))

        async def attempt() -> AttemptOutcome:
            async with sender.client(settings) as http:
                return await sender.deliver(delivery, store.secret("acme"), settings, http)

        outcome = asyncio.run(attempt())
    assert not outcome.delivered and outcome.retry_at is not None
    assert outcome.error == "no answer within 1s" or "Timeout" in (outcome.error or "")
    assert outcome.duration_ms < 10_000  # the receiver would take a minute, or forever


def test_only_the_start_of_an_endless_answer_is_read(
    store: WebhookStore, settings: Settings
) -> None:
    with receiver(then=Answer(endless=True)) as hook:
        delivery = store.get(add(store, hook.url))

        async def attempt() -> AttemptOutcome:
            async with sender.client(settings) as http:
                return await sender.deliver(delivery, store.secret("acme"), settings, http)

        outcome = asyncio.run(attempt())
    assert outcome.delivered
    assert outcome.response == "x" * sender.RESPONSE_LIMIT


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_unless_allowed(
    db_url: str, tmp_path: Path, clock: FakeClock, host: str
) -> None:
    strict = make_settings(db_url, tmp_path / "data", webhook_backoff_s=0.01)
    engine = create_engine(strict.database_url)
    store = WebhookStore(engine, clock)
    try:
        with receiver() as hook:
            url = hook.url.replace("127.0.0.1", host)
            refused = add(store, url)
            send_until_settled(store, strict, clock)
            assert hook.requests == []  # refused before connecting
            allowed = strict.model_copy(update={"webhook_allow_networks": LOOPBACK})
            store.replay(refused)
            send_until_settled(store, allowed, clock)
            assert len(hook.requests) == 1
    finally:
        engine.dispose()
    delivery = store.get(refused)
    first, second = delivery.attempt_log
    assert first.status_code is None and "loopback" in (first.error or "")
    assert second.status_code == 200 and delivery.status is DeliveryStatus.DELIVERED


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://0.0.0.0:9/",
    ],
)
def test_private_and_link_local_destinations_fail_at_once(
    store: WebhookStore, settings: Settings, clock: FakeClock, url: str
) -> None:
    strict = settings.model_copy(update={"webhook_allow_networks": []})
    delivery_id = add(store, url)
    send_until_settled(store, strict, clock)
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED and delivery.attempts == 1
    assert "refused" in (delivery.last_error or "")


def test_https_connects_to_the_checked_address_and_checks_the_name(
    store: WebhookStore, settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    """The request goes to the resolved IP, yet SNI and the certificate check use the name."""
    with tls_receiver(tmp_path, "localhost") as (hook, trust):
        delivery_id = add(store, hook.url.replace("127.0.0.1", "localhost"))
        client = httpx.AsyncClient(verify=trust, follow_redirects=False, trust_env=False)
        send_until_settled(store, settings, clock, client)
        assert store.get(delivery_id).status is DeliveryStatus.DELIVERED
        assert hook.server_names == ["localhost"]
        assert hook.requests[0].headers["host"] == f"localhost:{hook.port}"
    with tls_receiver(tmp_path, "elsewhere.test") as (hook, trust):
        delivery_id = add(store, hook.url.replace("127.0.0.1", "localhost"))
        client = httpx.AsyncClient(verify=trust, follow_redirects=False, trust_env=False)
        send_until_settled(store, settings, clock, client)
        delivery = store.get(delivery_id)
        assert delivery.status is DeliveryStatus.FAILED
        assert "CERTIFICATE_VERIFY_FAILED" in (delivery.last_error or "")
        assert hook.requests == []


def test_next_try_is_a_pure_decision(settings: Settings) -> None:
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert sender.next_try(settings, 1, now, ErrorKind.PERMANENT) is None
    assert sender.next_try(settings, settings.webhooks.max_attempts, now, ErrorKind.ERROR) is None
    retry = sender.next_try(settings, 1, now, ErrorKind.RETRYABLE, retry_after_s=0.03)
    assert retry == now + timedelta(seconds=0.03)


# -- claims, leases, reads -------------------------------------------------------------------


def test_a_stale_sender_cannot_record_over_a_new_claim(
    store: WebhookStore, clock: FakeClock
) -> None:
    delivery_id = add(store, "http://127.0.0.1:9/hook")
    [first] = store.claim_due(10, lease_s=5)
    assert store.claim_due(10, lease_s=5) == []  # held
    clock.advance(4)
    assert store.release_expired() == 0
    clock.advance(2)
    assert store.release_expired() == 1  # its sender died or hung
    [second] = store.claim_due(10, lease_s=5)
    late = AttemptOutcome(started_at=clock.now, duration_ms=1.0, status_code=200, delivered=True)
    assert not store.record_attempt(first, late)
    failed = AttemptOutcome(
        started_at=clock.now,
        duration_ms=1.0,
        status_code=500,
        error="HTTP 500",
        retry_at=clock.now + timedelta(seconds=1),
    )
    assert store.record_attempt(second, failed)
    assert not store.record_attempt(second, late)  # recorded once only
    delivery = store.get(delivery_id)
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 1
    assert [a.status_code for a in delivery.attempt_log] == [500]


def test_claims_take_due_rows_oldest_first(store: WebhookStore, clock: FakeClock) -> None:
    first = add(store, "http://127.0.0.1:9/a")
    clock.advance(1)
    second = add(store, "http://127.0.0.1:9/b")
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(webhook_deliveries)
            .where(webhook_deliveries.c.id == second)
            .values(next_attempt_at=clock.now + timedelta(seconds=30))
        )
    third = add(store, "http://127.0.0.1:9/c")
    assert [d.id for d in store.claim_due(10, lease_s=60)] == [first, third]
    clock.advance(31)
    [late] = store.claim_due(10, lease_s=60)
    assert late.id == second and late.status is DeliveryStatus.DELIVERING


def test_two_senders_never_deliver_one_row_twice(settings: Settings) -> None:
    """Two senders with their own connections drain one outbox at the same time."""
    count = 40
    engines = [create_engine(settings.database_url) for _ in range(2)]
    stores = [WebhookStore(engine) for engine in engines]
    start = threading.Barrier(len(stores))
    claims: Counter[int] = Counter()
    with receiver() as hook:
        ids = {add(stores[0], hook.url) for _ in range(count)}

        async def drain(store: WebhookStore) -> None:
            async with sender.client(settings) as http:
                start.wait()
                while store.list(status=DeliveryStatus.PENDING, limit=1):
                    claimed = store.claim_due(3, lease_s=60)
                    claims[id(store)] += len(claimed)
                    outcomes = await asyncio.gather(
                        *(
                            sender.deliver(d, store.secret(d.tenant), settings, http)
                            for d in claimed
                        )
                    )
                    for delivery, outcome in zip(claimed, outcomes, strict=True):
                        assert store.record_attempt(delivery, outcome)

        threads = [threading.Thread(target=asyncio.run, args=(drain(s),)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    delivered = stores[0].list(status=DeliveryStatus.DELIVERED, limit=count + 1)
    for engine in engines:
        engine.dispose()
    sent = Counter(r.headers["webhook-id"] for r in hook.requests)
    assert set(sent) == ids and set(sent.values()) == {1}
    assert {d.id for d in delivered} == ids
    assert all(claims[id(store)] > 0 for store in stores)  # both took part


def test_listing_filters_pages_and_reads_attempts_in_one_query(
    store: WebhookStore, settings: Settings, clock: FakeClock
) -> None:
    job_id = str(uuid.uuid4())
    with receiver([500]) as hook:
        ids = []
        for n in range(5):
            ids.append(add(store, hook.url, job_id=job_id if n < 2 else str(uuid.uuid4())))
            clock.advance(0.001)
        other = add(store, hook.url, tenant="other", batch_id=str(uuid.uuid4()))
        send_until_settled(store, settings, clock)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        page = store.list(tenant="acme", limit=3)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert len(statements) == 2  # the page, then every attempt of it
    assert [d.id for d in page] == ids[::-1][:3]
    rest = store.list(tenant="acme", limit=3, before=(page[-1].created_at, page[-1].id))
    assert [d.id for d in rest] == ids[::-1][3:]
    # Sent at once, any one of the six (the other tenant's too) got the one 500.
    first = next(d for d in store.list(limit=10) if d.attempt_log[0].status_code == 500)
    assert [a.status_code for a in first.attempt_log] == [500, 200]
    assert {d.id for d in store.list(job_id=job_id)} == set(ids[:2])
    assert [d.id for d in store.list(tenant="other")] == [other]
    assert store.list(tenant="acme", status=DeliveryStatus.FAILED) == []
    assert len(store.list(status=DeliveryStatus.DELIVERED)) == 6


def test_secrets_are_created_once_and_rotated(store: WebhookStore) -> None:
    first = store.secret("acme")
    assert first.startswith("whsec_") and store.secret("acme") == first
    assert store.secrets(["acme", "other"])["acme"] == first
    rotated = store.rotate_secret("acme")
    assert rotated != first and store.secret("acme") == rotated
    assert store.rotate_secret("new-tenant") == store.secret("new-tenant")


def test_concurrent_first_use_agrees_on_one_secret(settings: Settings) -> None:
    engines = [create_engine(settings.database_url) for _ in range(4)]
    stores = [WebhookStore(engine) for engine in engines]
    start = threading.Barrier(len(stores))
    found: list[str] = []

    def first_use(store: WebhookStore) -> None:
        start.wait()
        found.append(store.secret("racing"))

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for engine in engines:
        engine.dispose()
    assert len(found) == len(stores) and len(set(found)) == 1


# -- the actor ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("raypipe")
def test_the_sender_actor_delivers_retries_and_replays(settings: Settings) -> None:
    """``start_actors`` runs the sender; it empties the outbox and comes back on a replay."""
    engine = create_engine(settings.database_url)
    store = WebhookStore(engine)
    attempts = settings.webhooks.max_attempts
    try:
        with receiver() as ok, receiver([500] * attempts) as failing:
            delivered, failed = add(store, ok.url), add(store, failing.url)
            wait_for(lambda: store.get(delivered).status is DeliveryStatus.DELIVERED, 60)
            wait_for(lambda: store.get(failed).status is DeliveryStatus.FAILED, 60)
            assert len(ok.requests) == 1 and len(failing.requests) == attempts
            assert verify(ok.requests[0].body, ok.requests[0].headers, store.secret("acme"))

            store.replay(failed)
            ActorBell(settings, WEBHOOK_ACTOR).ring()
            wait_for(lambda: store.get(failed).status is DeliveryStatus.DELIVERED, 60)
            assert len(failing.requests) == attempts + 1

        actor = ray.get_actor(WEBHOOK_ACTOR, namespace=settings.namespace)
        stats = ray.get(actor.stats.remote(), timeout=30)
        assert stats["alive"] and stats["last_error"] is None and stats["sending"] == 0
        assert stats["counters"]["delivered"] == 2 and stats["counters"]["failed"] == 1
        assert stats["counters"]["retried"] == attempts - 1
    finally:
        engine.dispose()


def test_a_finished_job_reaches_its_webhook(raypipe: DirectClient, settings: Settings) -> None:
    """The whole path: a job's end queues its event, the sender posts it signed."""
    engine = create_engine(settings.database_url)
    store = WebhookStore(engine)
    try:
        with receiver() as hook:
            job = raypipe.submit("noop", {}, webhook_url=hook.url)
            [request] = hook.wait_for(1)
            event = verify(request.body, request.headers, store.secret(job.refresh().tenant))
            assert event["type"] == "job.completed" and event["data"]["id"] == job.id
            [delivery] = store.list(job_id=job.id)
            assert request.headers["webhook-id"] == delivery.id
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_sender_actor_outlives_a_database_outage(
    ray_session: None, pg_admin: sa.Engine, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with fresh_database(request, "postgres", tmp_path) as url:
        settings = make_settings(
            url, tmp_path / "data", webhook_allow_networks=LOOPBACK, webhook_poll_interval_s=0.05
        )
        database = sa.engine.make_url(url).database
        actors.start_actors(settings)
        actor = ray.get_actor(WEBHOOK_ACTOR, namespace=settings.namespace)
        engine = create_engine(url)
        try:
            with pg_admin.connect() as admin:
                admin.execute(sa.text(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false"))
                admin.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                )
                wait_for(lambda: ray.get(actor.stats.remote())["last_error"], 30, "a failed round")
                admin.execute(sa.text(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
            store = WebhookStore(engine)
            with receiver() as hook:
                delivery_id = add(store, hook.url)
                hook.wait_for(1)
                wait_for(lambda: store.get(delivery_id).status is DeliveryStatus.DELIVERED, 30)
            stats = ray.get(actor.stats.remote())
            assert stats["alive"] and stats["last_error"] is None
        finally:
            engine.dispose()
            actors.stop_actors(settings)
