"""Connecting to Ray, and starting and stopping raypipe's detached actors."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.job_config import JobConfig

from raypipe.config import Settings
from raypipe.exceptions import InvalidInput, NotRunning
from raypipe.runtime import head, pools
from raypipe.runtime.dispatcher import Dispatcher
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR, WEBHOOK_ACTOR, find_actor
from raypipe.runtime.progress import ProgressActor
from raypipe.runtime.webhook_sender import WebhookSender

log = logging.getLogger(__name__)


def init_ray(settings: Settings, *, start_local: bool = False, owner: bool = False) -> None:
    """Connect this process to the running Ray cluster, or start one in-process if allowed.

    ``owner``: this process starts raypipe's actors, whose processes (and their workers)
    log as its Ray job is configured (:func:`logging_config`); this process keeps its
    own logging all the same (the CLI's output stays plain), and so do other processes
    (the CLI's wake-ups)."""
    if ray.is_initialized():
        return
    if not head.ray_running(settings):
        if not start_local:
            raise NotRunning(
                f"no Ray cluster at {settings.ray_address!r}: start one with `raypipe up`"
            )
        _start_in_process(settings)
        return
    head.use_local_ray_token()
    # The job's configuration, not ray.init(logging_config=...), which also turns this
    # process's root logger into a JSON stream at INFO.
    job = JobConfig()
    job.set_py_logging_config(logging_config(settings) if owner else None)
    try:
        ray.init(
            address=settings.ray_address,
            namespace=settings.namespace,
            logging_level=logging.WARNING,
            configure_logging=False,
            job_config=job,
        )
    except ConnectionError as exc:
        raise NotRunning(f"could not join Ray at {settings.ray_address!r}: {exc}") from exc


def _start_in_process(settings: Settings) -> None:
    """A Ray of this process's own, which ends with it (notebooks without `raypipe up`); this
    process starts raypipe's actors in it."""
    ray.init(
        address="local",
        namespace=settings.namespace,
        num_cpus=settings.ray_num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
        logging_config=logging_config(settings),
    )


def logging_config(settings: Settings) -> ray.LoggingConfig | None:
    """Ray's logging configuration for the processes of the jobs this process starts
    (the dispatcher, its workers and pools): JSON lines when ``log_format`` says so, with
    Ray's context and each record's own fields (:func:`raypipe.job_logs.job_fields`)."""
    if settings.logs.format != "json":
        return None
    return ray.LoggingConfig(encoding="JSON", log_level="INFO")


def start_actors(settings: Settings) -> tuple[ActorHandle, ActorHandle]:
    """Create (or find) the progress actor, the dispatcher and the webhook sender, and wait
    until all answer; returns the dispatcher and the progress actor. Refuses pool settings
    the cluster cannot hold."""
    problems = pools.unsatisfiable(settings, ray.cluster_resources())
    if problems:
        raise InvalidInput("; ".join(problems))
    progress = _detached(ProgressActor, PROGRESS_ACTOR, settings)
    dispatcher = _detached(Dispatcher, DISPATCHER_ACTOR, settings)
    webhooks = _detached(WebhookSender, WEBHOOK_ACTOR, settings)
    ray.get(
        [progress.stats.remote(), dispatcher.info.remote(), webhooks.stats.remote()], timeout=120
    )
    return dispatcher, progress


def _detached(actor: type, name: str, settings: Settings) -> Any:
    """Start the named actor, or find it running: it outlives its starter, is restarted
    whenever it dies (its calls retried), and holds no CPU."""
    return (
        ray.remote(actor)
        .options(
            name=name,
            namespace=settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=0,
        )
        .remote(settings)
    )


def stop_actors(settings: Settings, drain_grace_s: float | None = None) -> list[str]:
    """Kill raypipe's actors for good (the pools' actors end with the dispatcher that owns
    them). With ``drain_grace_s``, the dispatcher drains first: it claims nothing more,
    lets what runs end within the grace, and queues the rest again (their attempts not
    counted); without, running attempts die and are rescued when it comes back."""
    dispatcher = find_actor(settings, DISPATCHER_ACTOR)
    if dispatcher is not None and drain_grace_s is not None:
        try:
            log.info("drained: %s", ray.get(dispatcher.drain.remote(drain_grace_s)))
        except ray.exceptions.RayError as exc:  # dead or restarting: its leases rescue the jobs
            log.warning("the dispatcher could not drain: %s", exc)
    stopped = []
    for name in (DISPATCHER_ACTOR, PROGRESS_ACTOR, WEBHOOK_ACTOR):
        actor = find_actor(settings, name)
        if actor is not None:
            ray.kill(actor, no_restart=True)
            stopped.append(name)
    return stopped
