"""Height grid → triangle mesh, vectorised, whole or in row bands that are stitched back.

Coordinate frame: x runs across columns (left → right), y across rows (bottom → top, so
the image reads upright seen from +z), z is the height. x and y are scaled so that the
image's longer side is 1.0 and the shorter one keeps the aspect ratio; z is luminance ×
``height_scale``, in the same units. Vertex ``r * cols + c`` is grid row ``r`` (row 0 is
the image's top), column ``c``. Each cell gives two triangles, wound counter-clockwise
seen from above, so every face normal points up (+z).
"""

from __future__ import annotations

import numpy as np

#: One grid band's share of the mesh: float64 vertices (n, 3), int64 faces (m, 3).
Band = tuple[np.ndarray, np.ndarray]


def extent(width: int, height: int) -> tuple[float, float]:
    """(x, y) size of the mesh for a ``width`` × ``height`` image: the longer side is 1.0."""
    longer = max(width, height)
    return width / longer, height / longer


def triangulate_band(
    heights: np.ndarray, row_offset: int, total_rows: int, size: tuple[float, float]
) -> Band:
    """Vertices and faces of grid rows ``row_offset`` … ``row_offset + len(heights) - 1``.

    ``heights`` is that band of the (total_rows, cols) grid and ``size`` the whole
    mesh's (x, y) extent. Face indices are global (as in the whole grid), and every
    coordinate is computed from global indices, so bands reproduce the whole grid's
    arrays exactly. Module-level and free of the job context, so it can run as a Ray task.
    """
    band_rows, cols = heights.shape
    rows = np.arange(row_offset, row_offset + band_rows)
    x = np.arange(cols) * (size[0] / (cols - 1))
    y = (total_rows - 1 - rows) * (size[1] / (total_rows - 1))
    xs, ys = np.meshgrid(x, y)
    vertices = np.column_stack((xs.ravel(), ys.ravel(), heights.astype(np.float64).ravel()))

    # Top-left corner of each cell, then its right, lower and lower-right neighbours.
    top_left = (rows[:-1, None] * cols + np.arange(cols - 1)[None, :]).ravel()
    right, below = top_left + 1, top_left + cols
    faces = np.empty((2 * len(top_left), 3), dtype=np.int64)
    faces[0::2] = np.column_stack((top_left, below, right))
    faces[1::2] = np.column_stack((right, below, below + 1))
    return vertices, faces


def triangulate(heights: np.ndarray, size: tuple[float, float]) -> Band:
    """The whole grid as one band: the reference the tiled path must match."""
    return triangulate_band(heights, 0, heights.shape[0], size)


def band_rows(total_rows: int, tile_rows: int) -> list[tuple[int, int]]:
    """(first, last) grid rows, inclusive, of bands of at most ``tile_rows`` rows that
    overlap by one row, so every cell belongs to exactly one band."""
    step = tile_rows - 1
    return [(first, min(first + step, total_rows - 1)) for first in range(0, total_rows - 1, step)]


def stitch(bands: list[Band], cols: int) -> Band:
    """Bands in row order → the whole mesh: each band after the first drops its first row
    of vertices (the previous band's last); faces already carry global indices."""
    vertices = [bands[0][0], *(band_vertices[cols:] for band_vertices, _ in bands[1:])]
    return np.concatenate(vertices), np.concatenate([faces for _, faces in bands])
