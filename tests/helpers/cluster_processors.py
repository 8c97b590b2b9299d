"""Processors for the multi-node tests: each says which Ray node ran it and with which GPUs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, Field

from raypipe import JobContext, processor


class WherePayload(BaseModel):
    #: If set, the attempt leaves ``started-<job>-<attempt>-<node>`` there and waits for a
    #: ``release`` file: the test sees where each attempt runs while it still runs.
    folder: str | None = None
    seconds: float = Field(default=0.0, ge=0)


def _where(payload: WherePayload, ctx: JobContext) -> dict[str, Any]:
    node_id = ray.get_runtime_context().get_node_id()
    if payload.folder is not None:
        folder = Path(payload.folder)
        (folder / f"started-{ctx.job_id}-{ctx.attempt}-{node_id}").touch()
        while not (folder / "release").exists():
            time.sleep(0.05)
    time.sleep(payload.seconds)
    return {"node_id": node_id, "gpu_ids": list(ray.get_gpu_ids()), "attempt": ctx.attempt}


@processor("cluster.cpu", payload=WherePayload)
def cpu_where(payload: WherePayload, ctx: JobContext) -> dict[str, Any]:
    """CPU-only work (one CPU): where it ran."""
    return _where(payload, ctx)


@processor("cluster.gpu", payload=WherePayload, num_gpus=1)
def gpu_where(payload: WherePayload, ctx: JobContext) -> dict[str, Any]:
    """Work that needs one GPU: where it ran and which GPU Ray gave it."""
    return _where(payload, ctx)
