"""Finding the processes of a local Ray's actors, task workers and Serve replicas, to kill
them with SIGKILL: nothing in them runs on the way out, as when the kernel's OOM killer
or a lost node ends them. Linux only (``/proc``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import ray
from ray.actor import ActorHandle

#: The namespace of Serve's own actors (replicas, controller, proxies).
SERVE_NAMESPACE = "serve"
#: How Serve names a replica's actor: ``SERVE_REPLICA::<app>#<deployment>#<id>``.
SERVE_REPLICA_PREFIX = "SERVE_REPLICA::"


def actor_pid(actor: ActorHandle) -> int:
    """The process an actor runs in now: a new one once Ray has restarted it."""
    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields after it are fixed.
    return int(stat.rsplit(")", 1)[1].split()[1])


def title(pid: int) -> str:
    """The process's command line as it shows it; Ray's workers show ``ray::<what runs>``
    (``ray::run_task`` while a task of that function runs, ``ray::IDLE`` between tasks)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def workers_running(raylet: int, function: str) -> list[int]:
    """The worker processes of the raylet ``raylet`` running a task of ``function`` now.

    Every worker of a node is the raylet's child, so the raylet's pid is any actor's
    parent on that node (``parent_pid(actor_pid(actor))``): workers of other Ray instances
    on the machine are never among them."""
    return [pid for pid in children(raylet) if title(pid) == f"ray::{function}"]


def serve_replicas(app: str, deployment: str) -> list[ActorHandle]:
    """The actors of a Serve deployment's replicas now (a killed one until Serve notices)."""
    prefix = f"{SERVE_REPLICA_PREFIX}{app}#{deployment}#"
    return [
        ray.get_actor(actor["name"], namespace=SERVE_NAMESPACE)
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == SERVE_NAMESPACE and actor["name"].startswith(prefix)
    ]


def sigkill(pid: int) -> bool:
    """Kill ``pid`` at once; whether it was still there to kill."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
