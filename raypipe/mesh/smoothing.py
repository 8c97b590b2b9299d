"""Taubin smoothing of a height grid's heights, leaving the grid's x/y where they are."""

from __future__ import annotations

import numpy as np
import trimesh


def smooth_heights(mesh: trimesh.Trimesh, iterations: int) -> None:
    """Smooth ``mesh`` in place with ``iterations`` Taubin passes (λ = 0.5, ν = 0.52, so
    1/λ − 1/ν ≈ 0.08, inside the 0 … 0.1 that keeps the filter stable).

    Taubin alternates shrinking and inflating steps, so bumps soften without the whole
    surface sinking as plain Laplacian smoothing makes it. Only z changes: with
    equal-weight (umbrella) neighbours x/y do not affect the result, and keeping them
    keeps the grid regular, its outline and every face pointing up.
    """
    if iterations <= 0:
        return
    xy = mesh.vertices[:, :2].copy()
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.52, iterations=iterations)
    vertices = np.array(mesh.vertices)
    vertices[:, :2] = xy
    mesh.vertices = vertices
