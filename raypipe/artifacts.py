"""Artifact storage: the files jobs produce, under a folder or any fsspec URL.

Layout: ``<root>/<tenant>/<job id>/<name>``. The tenant is part of the path, so a
job can only ever reach its own tenant's artifacts, and deleting a job removes one
folder.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import fsspec
from fsspec.core import url_to_fs

from raypipe.exceptions import InvalidInput, NotFound
from raypipe.tenants import check_tenant

#: Artifact names are plain file names: no folders, no dot-dot, nothing a URL must escape.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
#: A reference to another job's artifact, as payloads carry it: ``<job id>/<name>``.
REF_PATTERN = r"^[0-9a-fA-F-]{36}/[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_NAME = re.compile(NAME_PATTERN)

mimetypes.add_type("model/gltf-binary", ".glb")
mimetypes.add_type("model/stl", ".stl")
mimetypes.add_type("model/obj", ".obj")
mimetypes.add_type("application/x-ply", ".ply")
mimetypes.add_type("application/x-npy", ".npy")
mimetypes.add_type("application/x-ndjson", ".jsonl")


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored artifact, as the job's row lists it."""

    name: str
    size: int
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "content_type": self.content_type}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactInfo:
        return cls(data["name"], int(data["size"]), data["content_type"])


def check_name(name: str) -> str:
    """``name`` if it is a safe artifact name; :class:`InvalidInput` otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidInput(
            f"artifact name {name!r}: use letters, digits, '.', '_' and '-' only"
            " (no folders, at most 200 characters)"
        )
    return name


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class ArtifactStore:
    """Reads and writes artifacts under ``root`` (a path or an fsspec URL).

    Cheap to build and picklable by URL, so every worker process makes its own.
    """

    def __init__(self, root: str, **storage_options: Any):
        self.root = root
        self.fs: fsspec.AbstractFileSystem
        self.fs, self.base = url_to_fs(root, **storage_options)

    def folder(self, tenant: str, job_id: str) -> str:
        """Where one job's files live: one folder per job, under its tenant's."""
        # Tenants made before names were checked may hold any character: quoted, they
        # stay one path segment, and only "." and ".." would still leave their folder.
        segment = quote(tenant, safe="")
        if segment in ("", ".", ".."):
            check_tenant(tenant)  # raises, naming the rule
        return f"{self.base.rstrip('/')}/{segment}/{check_name(job_id)}"

    def _path(self, tenant: str, job_id: str, name: str) -> str:
        return f"{self.folder(tenant, job_id)}/{check_name(name)}"

    def write(self, tenant: str, job_id: str, name: str, data: bytes) -> ArtifactInfo:
        """Store ``data`` as ``name`` (replacing an earlier attempt's file of that name)."""
        path = self._path(tenant, job_id, name)
        self.fs.makedirs(self.folder(tenant, job_id), exist_ok=True)
        with self.fs.open(path, "wb") as out:
            out.write(data)
        return ArtifactInfo(name, len(data), content_type(name))

    def read(self, tenant: str, job_id: str, name: str) -> bytes:
        path = self._path(tenant, job_id, name)
        try:
            with self.fs.open(path, "rb") as src:
                return src.read()
        except FileNotFoundError:
            raise NotFound(f"no artifact {name!r} on job {job_id}") from None

    def open(self, tenant: str, job_id: str, name: str) -> Any:
        """A binary file object (for streaming a large artifact to a client)."""
        try:
            return self.fs.open(self._path(tenant, job_id, name), "rb")
        except FileNotFoundError:
            raise NotFound(f"no artifact {name!r} on job {job_id}") from None

    def exists(self, tenant: str, job_id: str, name: str) -> bool:
        return bool(self.fs.exists(self._path(tenant, job_id, name)))

    def delete(self, tenant: str, job_id: str) -> None:
        """Remove every artifact of a job (nothing to do when it has none)."""
        folder = self.folder(tenant, job_id)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)


def split_ref(ref: str) -> tuple[str, str]:
    """``"<job id>/<name>"`` → (job id, name)."""
    job_id, _, name = ref.partition("/")
    return job_id, check_name(name)


def listed(artifacts: list[dict[str, Any]], job_id: str, name: str) -> ArtifactInfo:
    """The listed artifact ``name`` of a job; only what a completed attempt listed is served."""
    for artifact in artifacts:
        if artifact["name"] == name:
            return ArtifactInfo.from_dict(artifact)
    have = ", ".join(a["name"] for a in artifacts) or "none"
    raise NotFound(f"job {job_id} has no artifact {name!r} (it has: {have})")
