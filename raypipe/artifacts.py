"""Artifact storage: the files jobs produce, under a folder or any fsspec URL.

Layout: ``<root>/<tenant>/<job id>/<attempt>/<name>``. The tenant is part of the path,
so a job can only ever reach its own tenant's artifacts, and deleting a job removes one
folder. Each attempt writes into a folder of its own: an attempt that went stale (its
lease was rescued, a newer attempt ran) cannot replace the newer one's files, and the
job's row names the attempt whose files it lists. Files written before 0.6.0 lie in the
job's folder itself and are read from there.
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
    #: The attempt that wrote it; None for files written before 0.6.0 (no attempt folder).
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "size": self.size, "content_type": self.content_type}
        if self.attempt is not None:
            data["attempt"] = self.attempt
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactInfo:
        attempt = data.get("attempt")
        return cls(
            data["name"],
            int(data["size"]),
            data["content_type"],
            None if attempt is None else int(attempt),
        )


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

    def _attempt_folder(self, tenant: str, job_id: str, attempt: int) -> str:
        return f"{self.folder(tenant, job_id)}/{int(attempt)}"

    def _path(self, tenant: str, job_id: str, name: str, attempt: int | None) -> str:
        """``attempt``'s file ``name``; with None, the newest attempt's that has one (or a
        file from before attempt folders)."""
        check_name(name)
        if attempt is None:
            attempt = self._newest(tenant, job_id, name)
        if attempt is None:
            return f"{self.folder(tenant, job_id)}/{name}"
        return f"{self._attempt_folder(tenant, job_id, attempt)}/{name}"

    def _newest(self, tenant: str, job_id: str, name: str) -> int | None:
        folder = self.folder(tenant, job_id)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return None
        attempts = sorted(
            (
                int(tail)
                for entry in entries
                if (tail := entry.rstrip("/").rsplit("/", 1)[-1]).isdigit()
            ),
            reverse=True,
        )
        return next((n for n in attempts if self.fs.exists(f"{folder}/{n}/{name}")), None)

    def write(self, tenant: str, job_id: str, name: str, data: bytes, attempt: int) -> ArtifactInfo:
        """Store ``data`` as ``name`` in ``attempt``'s own folder."""
        folder = self._attempt_folder(tenant, job_id, attempt)
        self.fs.makedirs(folder, exist_ok=True)
        with self.fs.open(f"{folder}/{check_name(name)}", "wb") as out:
            out.write(data)
        return ArtifactInfo(name, len(data), content_type(name), attempt)

    def read(self, tenant: str, job_id: str, name: str, attempt: int | None = None) -> bytes:
        """The bytes of ``attempt``'s ``name``; with None, the newest attempt's."""
        with self.open(tenant, job_id, name, attempt) as src:
            return bytes(src.read())

    def open(self, tenant: str, job_id: str, name: str, attempt: int | None = None) -> Any:
        """A binary file object (for streaming a large artifact to a client)."""
        try:
            return self.fs.open(self._path(tenant, job_id, name, attempt), "rb")
        except FileNotFoundError:
            raise NotFound(f"no artifact {name!r} on job {job_id}") from None

    def exists(self, tenant: str, job_id: str, name: str, attempt: int | None = None) -> bool:
        return bool(self.fs.exists(self._path(tenant, job_id, name, attempt)))

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
