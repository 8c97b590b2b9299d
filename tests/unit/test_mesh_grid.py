"""The pure pieces of ``mesh.from_image``: heightmap, grid shape, triangulation, tiling."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from raypipe.mesh import grid, smoothing
from raypipe.mesh import heightmap as heightmap_module
from raypipe.mesh.heightmap import band_rows, grid_shape, heightmap, luminance, resample
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


def test_heightmap_of_a_tall_image_is_converted_in_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heightmap_module, "BAND_PIXELS", 300)  # bands of 100 rows
    rows = np.linspace(0, 255, 1000).astype(np.uint8)[:, None].repeat(3, axis=1)
    image = Image.fromarray(np.stack([rows] * 3, axis=-1))  # taller than one band of rows
    heights = heightmap(image, 2.0)
    assert np.allclose(heights[:, 0], rows[:, 0] / 255 * 2.0)


def test_bands_hold_about_a_million_pixels_however_wide() -> None:
    assert band_rows(1000) == 1048
    assert band_rows(64_000_000) == 1  # a 64 M × 1 image: one row, never more


@pytest.mark.parametrize("shape", [(2, 2), (2, 9), (7, 5), (30, 20)])
def test_grid_smoothing_is_trimeshs_taubin(shape: tuple[int, int]) -> None:
    """The same umbrella operator as trimesh's over the grid's faces, border included,
    without its edge list and sparse matrix (about 380 bytes a vertex)."""
    heights = np.random.default_rng(5).random(shape).astype(np.float32)
    vertices, faces = grid.triangulate(heights, grid.extent(shape[1], shape[0]))
    reference = trimesh.Trimesh(vertices.copy(), faces, process=False, validate=False)
    trimesh.smoothing.filter_taubin(reference, lamb=0.5, nu=0.52, iterations=11)

    xy = vertices[:, :2].copy()
    z = vertices[:, 2].reshape(shape)  # the strided view the processor smooths in place
    assert np.shares_memory(z, vertices)
    smoothing.smooth_heights(z, 11)
    np.testing.assert_allclose(vertices[:, 2], reference.vertices[:, 2], rtol=0, atol=1e-12)
    assert np.array_equal(vertices[:, :2], xy)  # trimesh moves x/y too; the grid keeps them
    assert np.abs(z - heights).max() > 0.1  # it did smooth


@pytest.mark.parametrize("shape", [(3, 4), (400, 900)])
def test_thumbnail_of_any_grid(shape: tuple[int, int]) -> None:
    rows, cols = shape
    flat = np.zeros(shape) if rows < 10 else np.random.default_rng(4).random(shape)
    png = render_thumbnail(flat, grid.extent(cols, rows))
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
