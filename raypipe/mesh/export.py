"""Mesh files in the formats a job can ask for, written by trimesh."""

from __future__ import annotations

import numpy as np
import trimesh

from raypipe.mesh import MeshFormat


def build_mesh(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    """A trimesh over the grid's arrays as they are: no merging or reordering, which would
    cost time on a large grid and change nothing (grid vertices are all distinct)."""
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)


def export_mesh(vertices: np.ndarray, faces: np.ndarray, fmt: MeshFormat) -> bytes:
    """The file bytes of the mesh in ``fmt``: binary where the format has a choice (PLY,
    STL); STL is unindexed, so it repeats shared corners.

    Each export gets a trimesh of its own, whose cache (the triangles and normals STL
    builds: 200 bytes a vertex) is cleared when it is done. A trimesh refers to itself
    (its visuals, its ray tester), so without that the cache would stay until the cyclic
    collector's next full pass, and each format's would add to the last's.
    """
    mesh = build_mesh(vertices, faces)
    try:
        data = mesh.export(file_type=fmt)
    finally:
        mesh._cache.clear()
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)
