"""The webhook sender: a named, detached Ray actor that empties the delivery outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import exc as db_errors

from raypipe import metrics, tracing
from raypipe.config import Settings
from raypipe.store import create_engine, engine, schema_version
from raypipe.store.webhooks import AttemptOutcome, Delivery, DeliveryStatus, WebhookStore
from raypipe.webhooks import sender

log = logging.getLogger(__name__)

#: Longest pause after a failing round (database down, say) before trying again.
MAX_ERROR_BACKOFF_S = 10.0
#: A claim's lease outlasts its attempt (bounded by the webhook timeout) by this much,
#: which covers recording the outcome.
LEASE_MARGIN_S = 30.0


class WebhookSender:
    """Runs inside a named, detached Ray actor that Ray restarts when it dies.

    Its loop lives on a thread of its own (started in ``__init__``, so a restarted actor
    resumes by itself) with one asyncio event loop: it claims due deliveries, sends up to
    ``webhook_concurrency`` at once through one HTTP client, and records each attempt.
    Blocking work (SQL, DNS) runs on a small thread pool beside the loop. Deliveries a
    dead incarnation held come back when their lease runs out.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = WebhookStore(create_engine(settings.database_url))
        self.lease_s = settings.webhooks.timeout_s + LEASE_MARGIN_S
        self.counters: Counter[str] = Counter()
        self._sending: set[asyncio.Task[None]] = set()
        self._last_error: str | None = None
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            ThreadPoolExecutor(settings.webhooks.concurrency + 2, thread_name_prefix="webhooks")
        )
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="raypipe-webhooks")
        self._thread.start()

    # -- actor methods -------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (after a replay; the sender polls anyway)."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def stats(self) -> dict[str, Any]:
        return {
            "alive": self._thread.is_alive(),
            "sending": len(self._sending),
            "last_error": self._last_error,
            "counters": dict(self.counters),
        }

    # -- the loop --------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        http = sender.client(self.settings)
        failures = 0
        next_release = 0.0
        schema_checked = False
        while True:
            self._wake.clear()
            try:
                if not schema_checked:
                    # Not in __init__: Ray does not restart an actor whose constructor raised.
                    await asyncio.to_thread(schema_version.check, self.store.engine)
                    schema_checked = True
                if time.monotonic() >= next_release:
                    self.counters["released"] += await asyncio.to_thread(self.store.release_expired)
                    next_release = time.monotonic() + self.lease_s / 2
                free = self.settings.webhooks.concurrency - len(self._sending)
                claimed = await asyncio.to_thread(self.store.claim_due, free, self.lease_s)
                secrets = (
                    await asyncio.to_thread(self.store.secrets, {d.tenant for d in claimed})
                    if claimed
                    else {}
                )
                failures, self._last_error = 0, None
            except Exception as exc:  # the database is away: wait, retry, lose nothing
                failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("webhook round failed (%d in a row)", failures)
                await asyncio.sleep(min(MAX_ERROR_BACKOFF_S, 0.2 * 2**failures))
                continue
            for delivery in claimed:
                task = asyncio.create_task(self._send(http, delivery, secrets[delivery.tenant]))
                self._sending.add(task)
                task.add_done_callback(self._sent)
            self.counters["claimed"] += len(claimed)
            # Sleep until a send frees a slot, a wake-up, or the next poll.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhooks.poll_interval_s)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()

    async def _send(self, http: httpx.AsyncClient, delivery: Delivery, secret: str) -> None:
        """One attempt, recorded (tried again while the database is away: see
        :meth:`_record`); only if this sender dies before that is the claim left to expire,
        and the delivery sent again then (receivers deduplicate by ``webhook-id``)."""
        try:
            with tracing.span(
                f"webhook {delivery.event}",
                parent=delivery.trace_parent,
                attributes={
                    "raypipe.delivery_id": delivery.id,
                    "raypipe.job_id": delivery.job_id or "",
                },
            ):
                outcome = await sender.deliver(
                    delivery, secret, self.settings, http, self.store.clock
                )
            recorded = await self._record(delivery, outcome)
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            self.counters["errors"] += 1
            metrics.record_webhook(delivery.event, "error")
            log.exception("webhook delivery %s could not be recorded", delivery.id)
            return
        self.counters["attempts"] += 1
        if not recorded:
            result = "stale"
        elif outcome.delivered:
            result = DeliveryStatus.DELIVERED.value
        elif outcome.retry_at is not None:
            result = "retried"
        else:
            result = DeliveryStatus.FAILED.value
        self.counters[result] += 1
        metrics.record_webhook(delivery.event, result)

    async def _record(self, delivery: Delivery, outcome: AttemptOutcome) -> bool:
        """Record the attempt, trying again while the database is away.

        The receiver has answered by now: given up, the claim would expire and the same
        event would be POSTed a second time (bench/chaos.py saw a 5 s PostgreSQL outage
        deliver two batch callbacks twice). Kept here, the outcome is written once the
        database is back, as the dispatcher keeps the outcomes it cannot write; the claim
        still holds then unless the outage outlasted its lease (``record_attempt`` then
        writes nothing, and the delivery is sent again, as after this sender's death).
        """
        failures = 0
        while True:
            try:
                return await asyncio.to_thread(self.store.record_attempt, delivery, outcome)
            except db_errors.SQLAlchemyError as exc:
                if not engine.unavailable(exc):
                    raise
                failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self.counters["record_retries"] += 1
                log.warning(
                    "webhook delivery %s: recording its attempt failed (%d in a row): %s",
                    delivery.id,
                    failures,
                    self._last_error,
                )
                await asyncio.sleep(min(MAX_ERROR_BACKOFF_S, 0.2 * 2**failures))
