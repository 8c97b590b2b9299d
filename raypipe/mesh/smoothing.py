"""Taubin smoothing of a height grid's heights, leaving the grid's x/y where they are.

The grid's neighbours are known from its shape, so the umbrella operator is a handful of
shifted array sums: no edge list and no sparse matrix, which is what made trimesh's
``filter_taubin`` cost about 380 bytes a vertex (a 4 M-vertex grid needed 1.5 GB more for
smoothing alone). The result is trimesh's, to rounding (a unit test compares them).
"""

from __future__ import annotations

import numpy as np

#: Taubin's shrinking and inflating factors: 1/λ − 1/ν ≈ 0.08, inside the 0 … 0.1 that
#: keeps the filter stable.
LAMBDA = 0.5
NU = 0.52


def smooth_heights(heights: np.ndarray, iterations: int) -> None:
    """Smooth the (rows, cols) float64 ``heights`` in place with ``iterations`` Taubin
    passes; ``heights`` may be a strided view, such as the z column of the mesh's vertices.

    Taubin alternates shrinking and inflating steps, so bumps soften without the whole
    surface sinking as plain Laplacian smoothing makes it. Each pass moves a vertex
    towards the mean of its neighbours with equal (umbrella) weights, the neighbours being
    those of trimesh's operator over :func:`~raypipe.mesh.grid.triangulate`'s faces: for
    each face around a vertex, the corner that follows it counter-clockwise. Inside the
    grid that is all six; on the border some are left out, as trimesh leaves them out.
    Only z changes, so the grid stays regular, keeps its outline and every face up.
    Beyond ``heights`` it holds three grid-sized float64 arrays (two where ``heights`` is
    contiguous), however many passes.
    """
    if iterations <= 0:
        return
    # Shifted sums over a strided view run four times slower than over a contiguous copy.
    z = np.ascontiguousarray(heights, dtype=np.float64)
    inverse_count = _neighbour_sums(np.ones(z.shape))
    np.reciprocal(inverse_count, out=inverse_count)
    step = np.empty(z.shape)
    for index in range(iterations):
        _neighbour_sums(z, out=step)
        step *= inverse_count
        step -= z  # the umbrella vector: mean of the neighbours minus the vertex
        step *= LAMBDA if index % 2 == 0 else -NU
        z += step
    if z is not heights:
        heights[...] = z


def _neighbour_sums(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per grid vertex (r, c), the sum of ``values`` over its neighbours in trimesh's
    operator: the corner after it in each face ``triangulate`` gives that vertex.

    A cell's faces are (tl, below, right) and (right, below, below-right), so a vertex
    gets (r+1, c) as a cell's top-left; (r−1, c+1) and (r, c+1) as its bottom-left;
    (r, c−1) and (r+1, c−1) as its top-right; (r−1, c) as its bottom-right: each only
    where that cell exists.
    """
    total = np.zeros(values.shape) if out is None else out
    if out is not None:
        total.fill(0.0)
    total[:-1, :-1] += values[1:, :-1]  # top-left of cell (r, c)
    total[1:, :-1] += values[:-1, 1:]  # bottom-left of cell (r-1, c) ...
    total[1:, :-1] += values[1:, 1:]  # ... in both of its faces
    total[:-1, 1:] += values[:-1, :-1]  # top-right of cell (r, c-1) ...
    total[:-1, 1:] += values[1:, :-1]  # ... in both of its faces
    total[1:, 1:] += values[:-1, 1:]  # bottom-right of cell (r-1, c-1)
    return total
