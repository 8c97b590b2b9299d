"""A simulated multi-node Ray cluster, run in a process of its own and driven through a pipe.

``ray.cluster_utils.Cluster`` starts its nodes from the calling process and points that
process's global Ray state (the internal KV client, the SIGTERM handler) at the new
cluster; its ``shutdown`` resets that state. The pytest process already runs the
session's local Ray (with Serve on it), so the cluster lives in a child process, which
also joins it as a driver and starts raypipe's detached actors there.
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any

from raypipe.config import Settings

#: Small nodes: every node of the cluster runs on this one machine.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
#: Seconds to wait for an answer of the host (starting a cluster on a busy 2-core machine).
REPLY_TIMEOUT_S = 180.0


class ClusterHost:
    """The child process that owns the cluster; every call returns what the child answered."""

    def __init__(self, settings: Settings):
        context = multiprocessing.get_context("spawn")  # no copy of this process's Ray state
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, settings), daemon=True)
        self._process.start()
        child.close()
        #: Node ids of the head (no CPU: it holds only raypipe's actors) and the workers.
        self.nodes: dict[str, str] = self._reply()

    def add_node(self, **node_args: Any) -> str:
        """Start one more worker node; returns its node id."""
        return self._call("add", node_args)

    def remove_node(self, node_id: str) -> None:
        """Kill a worker node's raylet and every process on it without draining, as a lost
        machine would."""
        self._call("remove", node_id)

    def resource_requests(self) -> list[dict[str, float]]:
        """What the autoscaler was asked for (``request_resources``), read back from Ray."""
        return self._call("requests", None)

    def close(self) -> None:
        try:
            if self._process.is_alive():
                self._call("stop", None)
        finally:
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.kill()  # its nodes' reapers then stop their processes
            self._conn.close()

    def _call(self, command: str, argument: Any) -> Any:
        self._conn.send((command, argument))
        return self._reply()

    def _reply(self) -> Any:
        if not self._conn.poll(REPLY_TIMEOUT_S):
            raise TimeoutError(f"the cluster host did not answer within {REPLY_TIMEOUT_S}s")
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"the cluster host failed:\n{value}")
        return value


def _serve(conn: Connection, settings: Settings) -> None:
    """Child side: a head with raypipe's actors, then a CPU node and a one-GPU node."""
    import ray
    from ray.cluster_utils import Cluster

    from raypipe.runtime import actors as runtime
    from raypipe.runtime.head import use_local_ray_token

    nodes: dict[str, Any] = {}
    try:
        # Before any node starts: joining would otherwise switch token authentication on
        # half-way, and nodes added later would refuse the dispatcher's lease requests.
        use_local_ray_token()
        head = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 0,
                "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": False,
                "dashboard_agent_listen_port": None,  # not Ray's fixed default: others use it
                # A killed node's connection is refused at once: declare it dead after 5 checks
                # 1 s apart instead of Ray's 3 s (a slow node still has 10 s per check).
                "_system_config": {"health_check_period_ms": 1000},
            },
        )
        runtime.init_ray(settings.model_copy(update={"ray_address": head.address}))
        # Started while the head is the only node, so the actors live on it: removing a
        # worker node takes running attempts with it, never the dispatcher.
        runtime.start_actors(settings)
        names = {"head": head.head_node.node_id}
        for name, num_gpus in (("cpu", 0), ("gpu", 1)):
            node = head.add_node(
                wait=False, num_cpus=1, num_gpus=num_gpus, object_store_memory=OBJECT_STORE_BYTES
            )
            nodes[node.node_id] = node
            names[name] = node.node_id
        head.wait_for_nodes(timeout=REPLY_TIMEOUT_S)
        conn.send((True, names))
    except Exception:
        conn.send((False, traceback.format_exc()))
        return
    while True:
        command, argument = conn.recv()
        try:
            if command == "stop":
                ray.shutdown()
                head.shutdown()
                conn.send((True, None))
                return
            if command == "add":
                node = head.add_node(object_store_memory=OBJECT_STORE_BYTES, **argument)
                nodes[node.node_id] = node
                conn.send((True, node.node_id))
            elif command == "requests":
                conn.send((True, _resource_requests(head.address)))
            elif command == "remove":
                head.remove_node(nodes.pop(argument), allow_graceful=False)
                conn.send((True, None))
            else:
                conn.send((False, f"unknown command {command!r}"))
        except Exception:
            conn.send((False, traceback.format_exc()))


def _resource_requests(address: str) -> list[dict[str, float]]:
    """The standing ``request_resources`` bundles, one per requested shape and count, from
    wherever this Ray's autoscaler version keeps them."""
    import json

    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        state = get_cluster_resource_state(GcsClient(address))
        return [
            dict(by_count.request.resources_bundle)
            for constraint in state.cluster_resource_constraints
            for by_count in constraint.resource_requests
            for _ in range(by_count.count)
        ]
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []
