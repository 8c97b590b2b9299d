"""Artifact folders as a whole: what maintenance needs to see of the store's layout.

:class:`~raypipe.artifacts.ArtifactStore` reads and writes one job's files; pruning and
the orphan sweep need to list every job folder, measure it and remove many at once,
on any fsspec filesystem.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from raypipe.artifacts import ArtifactStore

#: Folders named like a job id (a UUID): anything else under the root is not raypipe's.
_JOB_ID = re.compile(r"^[0-9a-fA-F-]{36}$")

#: Where filesystems put a file's modification time in ``info`` (local and SFTP, S3,
#: Azure, GCS, others), in order of preference; memory only knows ``created``.
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


@dataclass(frozen=True)
class JobFolder:
    """One job's artifact folder: where it is and what it holds."""

    tenant: str
    job_id: str
    path: str
    files: int
    size: int
    #: The newest file's modification time (the folder's own when empty); None when the
    #: filesystem does not say.
    modified: datetime | None


def job_folder(store: ArtifactStore, tenant: str, job_id: str) -> JobFolder | None:
    """The artifact folder of a job, measured; None when the job wrote nothing."""
    path = store.folder(tenant, job_id)
    return measure(store, tenant, job_id, path) if store.fs.exists(path) else None


def job_folders(store: ArtifactStore) -> Iterator[tuple[str, str, str]]:
    """(tenant, job id, path) of every folder laid out as ``<tenant>/<job id>``."""
    root = store.base.rstrip("/")
    if not store.fs.exists(root):
        return
    for tenant_entry in _folders(store, root):
        tenant = unquote(_basename(tenant_entry["name"]))
        for entry in _folders(store, tenant_entry["name"]):
            name = _basename(entry["name"])
            if _JOB_ID.fullmatch(name):
                yield tenant, name, entry["name"].rstrip("/")


def measure(store: ArtifactStore, tenant: str, job_id: str, path: str) -> JobFolder:
    """Count and size the files under ``path`` (one listing, however deep)."""
    files = store.fs.find(path, detail=True)
    times = [_modified(info) for info in files.values()] or [_modified(store.fs.info(path))]
    known = [t for t in times if t is not None]
    return JobFolder(
        tenant=tenant,
        job_id=job_id,
        path=path,
        files=len(files),
        size=sum(int(info.get("size") or 0) for info in files.values()),
        modified=max(known) if known and len(known) == len(times) else None,
    )


def remove(store: ArtifactStore, folders: Sequence[JobFolder]) -> None:
    """Delete folders with everything in them, in one call (batched requests on S3)."""
    paths = [folder.path for folder in folders]
    if not paths:
        return
    try:
        store.fs.rm(paths, recursive=True)
    except FileNotFoundError:
        # Something else (a job's deletion, another sweep) removed some first.
        for path in paths:
            if store.fs.exists(path):
                store.fs.rm(path, recursive=True)


def _folders(store: ArtifactStore, path: str) -> list[dict[str, Any]]:
    return [e for e in store.fs.ls(path, detail=True) if e.get("type") == "directory"]


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _modified(info: dict[str, Any]) -> datetime | None:
    for key in _TIME_KEYS:
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None
