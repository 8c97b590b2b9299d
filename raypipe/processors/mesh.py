"""``mesh.from_image``: an image becomes a 3-D heightmap mesh and a PNG thumbnail.

The numeric work lives in :mod:`raypipe.mesh` and is imported when a job runs: the API
imports every processor module to validate payloads and should not pay for trimesh
and matplotlib (about two seconds).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raypipe.artifacts import REF_PATTERN
from raypipe.context import JobContext
from raypipe.exceptions import PermanentError
from raypipe.mesh import MeshFormat
from raypipe.processors.inputs import check_input_url, load_input
from raypipe.registry import processor

SOURCES = ("image_b64", "image_url", "image_artifact")
#: Taubin passes beyond this change little but cost a sparse product per pass.
MAX_SMOOTHING = 50
#: Reserved per job for Ray's scheduler (a packing hint; it caps nothing). Measured peaks
#: above an idle worker: 2048×2048 at detail 0.5 (1 M vertices) about 210 MiB for GLB
#: only and 780 MiB for all four formats (OBJ is text, built as Python strings); a 4 M-vertex
#: GLB about 740 MiB. 1 GiB fits the common case without starving a node of job slots.
MEMORY_BYTES = 1024 * 1024 * 1024
#: What a job returns when it stops early on a cancellation (the dispatcher records the
#: job as cancelled whatever it returns).
CANCELLED: dict[str, Any] = {"cancelled": True}


class MeshPayload(BaseModel):
    """Where the image comes from (exactly one source) and how to turn it into a mesh."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str | None = Field(default=None, min_length=1, description="the image, base64")
    image_url: str | None = Field(
        default=None, max_length=2048, description="an http(s) URL to fetch the image from"
    )
    image_artifact: str | None = Field(
        default=None, pattern=REF_PATTERN, description="another job's artifact: <job id>/<name>"
    )
    detail_factor: float = Field(
        default=0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="grid vertices per image pixel, along each axis",
    )
    height_scale: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="height of white, in units of the image's longer side",
    )
    smoothing: int = Field(default=0, ge=0, le=MAX_SMOOTHING, description="Taubin passes")
    formats: list[MeshFormat] = Field(default=["glb"], min_length=1)

    @field_validator("image_url")
    @classmethod
    def _fetchable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_input_url(value, info)

    @field_validator("formats")
    @classmethod
    def _unique(cls, value: list[MeshFormat]) -> list[MeshFormat]:
        if len(set(value)) != len(value):
            raise ValueError("must not name a format twice")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> MeshPayload:
        given = [name for name in SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of image_b64, image_url or image_artifact"
                f" (got {', '.join(given) or 'none'})"
            )
        return self


@processor("mesh.from_image", queue="mesh", num_cpus=1, memory=MEMORY_BYTES)
def mesh_from_image(payload: MeshPayload, ctx: JobContext) -> dict[str, Any]:
    """Turns an image into a heightmap mesh (brighter is higher) plus ``thumbnail.png``.

    Result: ``vertices`` and ``triangles`` of the exported mesh, its ``bounds``, the
    ``artifacts`` written, the height ``grid`` as [cols, rows] and the number of row
    ``tiles`` it was triangulated in. A cancelled job stops between steps.
    """
    from raypipe.mesh import export, grid, heightmap, smoothing, thumbnail

    ctx.progress(0, "loading the image", stage="decode")
    data = load_input(
        ctx,
        field="image",
        b64=payload.image_b64,
        url=payload.image_url,
        artifact=payload.image_artifact,
    )
    ctx.progress(5, f"decoding {len(data)} bytes", stage="decode")
    image = heightmap.decode(data, ctx.settings.mesh_max_pixels)
    del data
    width, height = image.size
    cols, rows = heightmap.grid_shape(width, height, payload.detail_factor)
    if cols * rows > ctx.settings.mesh_max_vertices:
        raise PermanentError(
            f"payload.detail_factor: a {width}×{height} image at {payload.detail_factor:g} is"
            f" a {cols}×{rows} grid of {cols * rows} vertices, over the limit of"
            f" {ctx.settings.mesh_max_vertices} (RAYPIPE_MESH_MAX_VERTICES): lower detail_factor"
        )
    if ctx.is_cancelled():
        return CANCELLED

    ctx.progress(10, f"{width}×{height} {image.mode} image", stage="heightmap")
    heights = heightmap.heightmap(image, payload.height_scale)
    del image
    if ctx.is_cancelled():
        return CANCELLED

    ctx.progress(15, f"{cols}×{rows} grid", stage="resample")
    heights = heightmap.resample(heights, cols, rows)
    if ctx.is_cancelled():
        return CANCELLED

    size = grid.extent(width, height)
    vertices, faces, tiles = _triangulate(ctx, heights, size)
    mesh = export.build_mesh(vertices, faces)
    del heights, vertices, faces
    if ctx.is_cancelled():
        return CANCELLED

    if payload.smoothing:
        ctx.progress(45, f"{payload.smoothing} Taubin passes", stage="smooth")
        smoothing.smooth_heights(mesh, payload.smoothing)
        if ctx.is_cancelled():
            return CANCELLED

    names: list[str] = []
    for index, fmt in enumerate(payload.formats):
        ctx.progress(55 + 35 * index / len(payload.formats), f"mesh.{fmt}", stage="export")
        names.append(ctx.write_artifact(f"mesh.{fmt}", export.export_mesh(mesh, fmt)).name)
        if ctx.is_cancelled():
            return CANCELLED

    ctx.progress(90, "thumbnail.png", stage="thumbnail")
    vertices = mesh.vertices.view(np.ndarray)
    png = thumbnail.render_thumbnail(vertices[:, 2].reshape(rows, cols), size)
    names.append(ctx.write_artifact("thumbnail.png", png).name)
    ctx.progress(100, f"{len(mesh.vertices)} vertices, {len(mesh.faces)} triangles")
    return {
        "vertices": len(mesh.vertices),
        "triangles": len(mesh.faces),
        "bounds": [vertices.min(axis=0).tolist(), vertices.max(axis=0).tolist()],
        "artifacts": names,
        "grid": [cols, rows],
        "tiles": tiles,
    }


def _triangulate(
    ctx: JobContext, heights: np.ndarray, size: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Vertices, faces and tile count: in one piece, or, past ``mesh_tile_rows`` rows, as
    overlapping row bands fanned out with ``ctx.parallel`` and stitched back together."""
    from raypipe.mesh import grid

    rows, cols = heights.shape
    bands = grid.band_rows(rows, ctx.settings.mesh_tile_rows)
    ctx.progress(20, f"{rows - 1} rows of cells in {len(bands)} tile(s)", stage="triangulate")
    if len(bands) == 1:
        vertices, faces = grid.triangulate(heights, size)
        return vertices, faces, 1

    finished = itertools.count(1)

    def done(index: int, band: grid.Band) -> None:
        count = next(finished)
        ctx.progress(20 + 25 * count / len(bands), f"tile {count}/{len(bands)}")

    calls = [
        functools.partial(grid.triangulate_band, heights[first : last + 1], first, rows, size)
        for first, last in bands
    ]
    vertices, faces = grid.stitch(ctx.parallel(calls, num_cpus=1, on_done=done), cols)
    return vertices, faces, len(bands)
