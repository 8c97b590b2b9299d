"""How much memory a ``mesh.from_image`` worker reaches, known before any pixel is decoded.

The estimate is the peak resident set of the worker process: the process with the mesh
libraries loaded, plus the input bytes, plus the larger of two phases that never overlap:

- **pixels** (decode, luminance, resample): Pillow's decoded image, its float32
  luminance and one band of conversion temporaries; then the luminance and the resampled
  grid. Costs per image pixel, by how many bytes Pillow stores a pixel of the image's mode.
- **grid** (triangulate, smooth, export, thumbnail): the mesh's float64 vertices and int64
  faces (72 bytes a grid vertex, kept to the end), plus what the costliest step builds on
  top. Each format is exported from a fresh trimesh over the same arrays and freed before
  the next, so formats are not added up: the costliest one asked for counts. Smoothing
  reuses its arrays, so it costs the same for 1 pass or 50.

A grid cut into tiles (``RAYPIPE_MESH_TILE_ROWS``) is triangulated band by band in Ray
tasks of their own, each holding its band (about 150 bytes a vertex of it) in its own
process; the job's worker holds the bands it gets back and the stitched arrays, which
the ``triangulate`` step counts. The tile tasks declare no memory: Ray lends a task's CPU
back while it waits for its tiles, not its memory, so a tile that reserved some could wait
behind its own job on a full node.

The constants are measured peaks (Linux ``VmHWM``, reset at each step), per pixel or per
grid vertex, rounded up by about 10 %: ``python bench/mesh_memory.py`` prints them for an
image of the size, mode and settings given. ``tests/security/test_mesh_bounds.py`` runs the
largest job the estimate admits in a process of its own and checks its peak against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from raypipe.mesh import FORMATS, MeshFormat

MIB = 1 << 20

#: A worker with raypipe, numpy, Pillow, trimesh and matplotlib loaded, before any job:
#: 212 MiB in a plain Python process, 226 MiB in a Ray worker after ``registry.load()``.
BASE_BYTES = 250 * MIB

#: Per image pixel (measured on 4000×4000 PNGs in modes L, P, I;16, LA, RGB and RGBA):
#: decoding holds Pillow's bytes of a pixel (:func:`~raypipe.mesh.heightmap.stored_bytes_per_pixel`:
#: 1.0, 2.0 or 4.0 measured), twice over while EXIF orientation makes its transposed copy;
#: the luminance holds them and the float32 heights (4) and one band's temporaries (5.7 to
#: 10.6 measured in all); resampling holds the heights and Pillow's float32 copy of them
#: (8.2 measured).
HEIGHTS_BYTES_PER_PIXEL = 4
RESAMPLE_BYTES_PER_PIXEL = 9
#: Temporaries of converting one band of rows to luminance, per pixel of the band
#: (``heightmap.band_rows``; RGBA widened to uint32 and weighted: 39 measured).
BAND_BYTES_PER_PIXEL = 48

#: Per grid vertex, each step's peak above the worker's base, the mesh's 72 bytes of
#: arrays included. Measured at 1 M (2000×2000, detail 0.5) and 2.25 M vertices
#: (3000×3000): resample's share of the grid 10 (its float32 result and Pillow's);
#: triangulate 152 in one tile, 173 in two (the bands and the stitched arrays, with one
#: band's temporaries); smooth 96 (whatever the passes); GLB 188 to 204; PLY 186 to 194;
#: STL 613 to 659 (trimesh builds float64 triangles and normals, then copies the packed
#: records twice); OBJ 516 to 533 (text); thumbnail 82 to 84.
GRID_BYTES_PER_VERTEX: dict[str, int] = {
    "resample": 12,
    "triangulate": 190,
    "smooth": 110,
    "glb": 225,
    "ply": 215,
    "stl": 725,
    "obj": 590,
    "thumbnail": 95,
}


@dataclass(frozen=True)
class MeshJob:
    """What the estimate needs of a job: the image's header, its payload's settings and
    the bytes of its input (as fetched, plus the base64 text when it came inline)."""

    width: int
    height: int
    mode: str
    input_bytes: int
    detail_factor: float
    smoothing: int
    formats: Sequence[MeshFormat]


@dataclass(frozen=True)
class Estimate:
    """The worker's estimated peak, in bytes, and where it comes."""

    total: int
    #: (cols, rows) of the height grid.
    grid: tuple[int, int]
    #: The pixel phase's peak and the grid phase's, above the base and the input.
    pixels: int
    vertices: int
    #: The step the peak comes at ("stl export", "luminance", …).
    step: str


def estimate(job: MeshJob) -> Estimate:
    """The peak resident set of a worker running ``job``, in bytes."""
    from raypipe.mesh.heightmap import band_rows, grid_shape, stored_bytes_per_pixel

    cols, rows = grid_shape(job.width, job.height, job.detail_factor)
    count = cols * rows
    pixels = job.width * job.height
    stored = stored_bytes_per_pixel(job.mode)
    band = min(job.height, band_rows(job.width)) * job.width
    pixel_steps = {
        "decode": pixels * 2 * stored,
        "luminance": pixels * (stored + HEIGHTS_BYTES_PER_PIXEL) + band * BAND_BYTES_PER_PIXEL,
        "resample": pixels * RESAMPLE_BYTES_PER_PIXEL + count * GRID_BYTES_PER_VERTEX["resample"],
    }
    grid_steps = ["triangulate", "thumbnail", *job.formats]
    if job.smoothing:
        grid_steps.append("smooth")
    vertex_steps = {
        (f"{step} export" if step in FORMATS else step): count * GRID_BYTES_PER_VERTEX[step]
        for step in grid_steps
    }
    pixel_step = max(pixel_steps, key=lambda step: pixel_steps[step])
    vertex_step = max(vertex_steps, key=lambda step: vertex_steps[step])
    pixel_peak, vertex_peak = pixel_steps[pixel_step], vertex_steps[vertex_step]
    return Estimate(
        total=BASE_BYTES + job.input_bytes + max(pixel_peak, vertex_peak),
        grid=(cols, rows),
        pixels=pixel_peak,
        vertices=vertex_peak,
        step=pixel_step if pixel_peak >= vertex_peak else vertex_step,
    )


def largest_detail_factor(job: MeshJob, limit: int) -> float | None:
    """The largest ``detail_factor`` (to four significant digits, rounded down) at which
    ``job`` fits in ``limit`` bytes; None when none does (the image alone is too large)."""
    from dataclasses import replace

    def fits(factor: float) -> bool:
        return estimate(replace(job, detail_factor=factor)).total <= limit

    low, high = 0.0, min(1.0, job.detail_factor)
    if not fits(1e-9):
        return None
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    digits = 3 - math.floor(math.log10(low)) if low > 0 else 4
    return math.floor(low * 10**digits) / 10**digits or None


def gib(amount: int) -> str:
    """Bytes as people read them: ``"1.0 GiB"``."""
    return f"{amount / (1 << 30):.2f} GiB"
