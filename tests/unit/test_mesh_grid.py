"""The pure pieces of ``mesh.from_image``: heightmap, grid shape, triangulation, tiling."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raypipe.mesh import grid
from raypipe.mesh.heightmap import grid_shape, heightmap, luminance, resample
from raypipe.mesh.thumbnail import THUMBNAIL_SIZE, render_thumbnail


def test_two_by_two_grid_spelled_out() -> None:
    heights = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    vertices, faces = grid.triangulate(heights, (1.0, 0.5))
    assert vertices.tolist() == [[0, 0.5, 0], [1, 0.5, 0.25], [0, 0, 0.5], [1, 0, 1]]
    assert faces.tolist() == [[0, 2, 1], [1, 2, 3]]
    assert (vertices.dtype, faces.dtype) == (np.float64, np.int64)


def test_faces_cover_every_cell_once_and_face_up() -> None:
    rows, cols = 7, 5
    heights = np.random.default_rng(0).random((rows, cols), dtype=np.float32) * 10
    vertices, faces = grid.triangulate(heights, grid.extent(cols, rows))
    assert len(vertices) == rows * cols and len(faces) == 2 * (rows - 1) * (cols - 1)
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert normals[:, 2].min() > 0  # counter-clockwise from above, none degenerate
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert uses.max() == 2  # a proper surface: no edge shared by three triangles


@pytest.mark.parametrize(
    ("rows", "tile_rows", "bands"),
    [
        (10, 4, [(0, 3), (3, 6), (6, 9)]),
        (11, 4, [(0, 3), (3, 6), (6, 9), (9, 10)]),
        (4, 4, [(0, 3)]),
        (2, 1024, [(0, 1)]),
        (4, 2, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_band_rows_overlap_by_one(rows: int, tile_rows: int, bands: list[tuple[int, int]]) -> None:
    assert grid.band_rows(rows, tile_rows) == bands


@pytest.mark.parametrize("cols", [2, 3, 17])
@pytest.mark.parametrize("tile_rows", [2, 3, 5, 8])
def test_stitched_bands_equal_the_whole_grid(cols: int, tile_rows: int) -> None:
    rng = np.random.default_rng(cols * 100 + tile_rows)
    for rows in range(2, 20):
        heights = rng.random((rows, cols), dtype=np.float32)
        size = grid.extent(cols * 3, rows * 3)
        bands = [
            grid.triangulate_band(heights[first : last + 1], first, rows, size)
            for first, last in grid.band_rows(rows, tile_rows)
        ]
        vertices, faces = grid.stitch(bands, cols)
        whole_vertices, whole_faces = grid.triangulate(heights, size)
        assert np.array_equal(vertices, whole_vertices)
        assert np.array_equal(faces, whole_faces)


@pytest.mark.parametrize(
    ("size", "expected"), [((200, 100), (1.0, 0.5)), ((30, 60), (0.5, 1.0)), ((7, 7), (1.0, 1.0))]
)
def test_extent_puts_the_longer_side_at_one(
    size: tuple[int, int], expected: tuple[float, float]
) -> None:
    assert grid.extent(*size) == expected


@pytest.mark.parametrize(
    ("width", "height", "factor", "shape"),
    [(5, 3, 0.5, (3, 2)), (1000, 10, 0.01, (10, 2)), (1, 1, 1.0, (2, 2)), (7, 9, 1.0, (7, 9))],
)
def test_grid_shape_rounds_half_up_and_keeps_two(
    width: int, height: int, factor: float, shape: tuple[int, int]
) -> None:
    assert grid_shape(width, height, factor) == shape


def test_resample_averages_areas() -> None:
    heights = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert resample(heights, 4, 4) is heights
    assert resample(heights, 2, 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert resample(np.ones((1, 1), dtype=np.float32), 2, 2).tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("1", (2, 1), 1), [1.0, 1.0]),
        (Image.new("L", (2, 1), 51), [0.2, 0.2]),
        (Image.new("LA", (2, 1), (255, 51)), [0.2, 0.2]),
        (Image.new("RGB", (2, 1), (255, 0, 0)), [0.299, 0.299]),
        (Image.new("RGBA", (2, 1), (0, 0, 255, 0)), [0.0, 0.0]),
        (Image.new("CMYK", (2, 1), (0, 0, 0, 0)), [1.0, 1.0]),
        (Image.new("I", (2, 1), 70_000), [1.0, 1.0]),
        (Image.new("F", (2, 1), -3.0), [0.0, 0.0]),
    ],
    ids=lambda value: getattr(value, "mode", ""),
)
def test_luminance_of_every_mode(image: Image.Image, expected: list[float]) -> None:
    heights = luminance(image)
    assert heights.dtype == np.float32 and heights.shape == (1, 2)
    assert heights[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_heightmap_of_a_tall_image_is_converted_in_bands() -> None:
    rows = np.linspace(0, 255, 1000).astype(np.uint8)[:, None].repeat(3, axis=1)
    image = Image.fromarray(np.stack([rows] * 3, axis=-1))  # taller than one band of rows
    heights = heightmap(image, 2.0)
    assert np.allclose(heights[:, 0], rows[:, 0] / 255 * 2.0)


@pytest.mark.parametrize("shape", [(3, 4), (400, 900)])
def test_thumbnail_of_any_grid(shape: tuple[int, int]) -> None:
    rows, cols = shape
    flat = np.zeros(shape) if rows < 10 else np.random.default_rng(4).random(shape)
    png = render_thumbnail(flat, grid.extent(cols, rows))
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
