"""The Celery side of bench/fairness.py: raypipe's ``sleep`` job as a Celery task.

The worker runs from bench/ (``celery -A celery_tasks worker``); each task writes when it
started and when it ended to Redis, under the key the bench gave it, so that the bench
reads every wait from one clock, as it reads raypipe's from the job rows. Everything,
broker and timestamps, lives in one Redis database of its own (``RAYPIPE_BENCH_REDIS_URL``,
default db 15), which the bench flushes, and nothing else.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("RAYPIPE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
QUEUE = "fairness"
#: Hashes of task key -> ``time.time()`` at its start and at its end.
STARTED = "bench:started"
ENDED = "bench:ended"

app = Celery("celery_tasks", broker=REDIS_URL)
# Celery's defaults otherwise (FIFO on one Redis list, prefetch 4 per process): what a
# user of Celery gets.
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE)
_redis = redis.Redis.from_url(REDIS_URL)


@app.task(name="bench.sleep")
def sleep(key: str, seconds: float) -> None:
    """Sleep ``seconds`` (raypipe's ``sleep`` with one step), recording start and end."""
    _redis.hset(STARTED, key, time.time())
    time.sleep(seconds)
    _redis.hset(ENDED, key, time.time())
