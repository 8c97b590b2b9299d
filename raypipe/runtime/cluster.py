"""Connecting to Ray and starting raypipe's detached actors."""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

import ray

from raypipe.config import Settings
from raypipe.exceptions import NotRunning
from raypipe.runtime.dispatcher import Dispatcher
from raypipe.runtime.names import DISPATCHER_ACTOR, PROGRESS_ACTOR
from raypipe.runtime.progress import ProgressActor

ActorHandle = Any
STARTED_MARKER = "ray-started-by-raypipe"


def init_ray(settings: Settings, *, start_local: bool = False) -> None:
    """Connect this process to the running Ray cluster, or start one in-process if allowed."""
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=settings.ray_address,
            namespace=settings.namespace,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except ConnectionError as exc:
        if not start_local:
            raise NotRunning(
                f"no Ray cluster at {settings.ray_address!r}: start one with `raypipe up`"
            ) from exc
        ray.init(
            address="local",
            namespace=settings.namespace,
            num_cpus=settings.ray_num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )


def start_head(settings: Settings) -> bool:
    """Start a local Ray head with ``ray start`` unless one is running; returns whether it did."""
    try:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    except ConnectionError:
        pass
    else:
        ray.shutdown()
        return False
    command = [
        shutil.which("ray") or "ray",
        "start",
        "--head",
        f"--port={settings.ray_port}",
        "--disable-usage-stats",
        "--dashboard-host=127.0.0.1",
    ]
    if settings.ray_num_cpus is not None:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NotRunning(f"`ray start` failed: {done.stderr.strip().splitlines()[-1:]}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / STARTED_MARKER).touch()
    return True


def stop_head(settings: Settings) -> bool:
    """Stop the local Ray head if ``raypipe up`` started it; returns whether it did."""
    marker = settings.data_dir / STARTED_MARKER
    if not marker.exists():
        return False
    subprocess.run([shutil.which("ray") or "ray", "stop"], capture_output=True, check=False)
    marker.unlink()
    return True


def start_actors(settings: Settings) -> tuple[ActorHandle, ActorHandle]:
    """Create (or find) the progress actor and the dispatcher, and wait until both answer."""
    common = {
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
    }
    progress = (
        ray.remote(ProgressActor)
        .options(name=PROGRESS_ACTOR, max_task_retries=-1, **common)
        .remote(settings)
    )
    dispatcher = (
        ray.remote(Dispatcher)
        .options(name=DISPATCHER_ACTOR, max_task_retries=-1, **common)
        .remote(settings)
    )
    ray.get([progress.stats.remote(), dispatcher.info.remote()], timeout=120)
    return dispatcher, progress


def find_actor(settings: Settings, name: str) -> ActorHandle | None:
    try:
        return ray.get_actor(name, namespace=settings.namespace)
    except ValueError:
        return None


def stop_actors(settings: Settings) -> list[str]:
    """Kill raypipe's actors for good; running attempts are rescued when it comes back."""
    stopped = []
    for name in (DISPATCHER_ACTOR, PROGRESS_ACTOR):
        actor = find_actor(settings, name)
        if actor is not None:
            ray.kill(actor, no_restart=True)
            stopped.append(name)
    return stopped
