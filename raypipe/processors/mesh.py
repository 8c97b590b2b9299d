"""``mesh.from_image``: an image becomes a 3-D heightmap mesh and a PNG thumbnail.

The numeric work lives in :mod:`raypipe.mesh` and is imported when a job runs: the API
imports every processor module to validate payloads and should not pay for trimesh
and matplotlib (about two seconds).
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, Any

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
from raypipe.config import Settings
from raypipe.context import JobContext
from raypipe.exceptions import PermanentError
from raypipe.mesh import FORMATS, MeshFormat
from raypipe.processors.inputs import check_input_url, load_input
from raypipe.registry import processor

if TYPE_CHECKING:
    from PIL import Image

SOURCES = ("image_b64", "image_url", "image_artifact")
#: Taubin passes beyond this change little but cost a pass over the grid each.
MAX_SMOOTHING = 50
#: Heights are float32 (so are GLB's and STL's coordinates): a scale past float32's range
#: made them infinite (``height_scale`` 1e308 completed with ``null`` bounds). A million
#: times the image's width is far past any use and far inside the range; 65535 reads a
#: 16-bit image's levels back as heights.
MIN_HEIGHT_SCALE = 1e-6
MAX_HEIGHT_SCALE = 1e6
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
        ge=MIN_HEIGHT_SCALE,
        le=MAX_HEIGHT_SCALE,
        allow_inf_nan=False,
        description="height of white, in units of the image's longer side",
    )
    smoothing: int = Field(default=0, ge=0, le=MAX_SMOOTHING, description="Taubin passes")
    formats: list[MeshFormat] = Field(default=["glb"], min_length=1, max_length=len(FORMATS))

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


def _reserved(settings: Settings) -> int:
    """What a job reserves from Ray: the bound it is held to (``mesh_memory_bytes``)."""
    return settings.mesh.memory_bytes


@processor("mesh.from_image", queue="mesh", num_cpus=1, memory=_reserved)
def mesh_from_image(payload: MeshPayload, ctx: JobContext) -> dict[str, Any]:
    """Turns an image into a heightmap mesh (brighter is higher) plus ``thumbnail.png``.

    Result: ``vertices`` and ``triangles`` of the exported mesh, its ``bounds``, the
    ``artifacts`` written, the height ``grid`` as [cols, rows] and the number of row
    ``tiles`` it was triangulated in. A cancelled job stops between steps.
    """
    from raypipe.mesh import grid, heightmap

    ctx.progress(0, "loading the image", stage="decode")
    data = load_input(
        ctx,
        field="image",
        b64=payload.image_b64,
        url=payload.image_url,
        artifact=payload.image_artifact,
    )
    ctx.progress(5, f"decoding {len(data)} bytes", stage="decode")
    image = heightmap.open_image(data, ctx.settings.mesh.max_pixels)
    _check_grid(payload, ctx.settings, image.size)
    inline = len(payload.image_b64 or "")  # the payload's text stays while the job runs
    _check_memory(payload, ctx.settings, image, input_bytes=len(data) + inline)
    # Imported once the job is known to fit: a refusal costs no second of trimesh.
    from raypipe.mesh import export, smoothing, thumbnail

    image = heightmap.load_image(image, ctx.settings.mesh.max_pixels)
    del data
    width, height = image.size  # EXIF orientation may have swapped them
    cols, rows = heightmap.grid_shape(width, height, payload.detail_factor)
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
    del heights
    # The mesh's heights as a (rows, cols) grid: a view of its z column (one stride, so
    # reshaping never copies), smoothed in place.
    z = vertices[:, 2].reshape(rows, cols)
    if ctx.is_cancelled():
        return CANCELLED

    if payload.smoothing:
        ctx.progress(45, f"{payload.smoothing} Taubin passes", stage="smooth")
        smoothing.smooth_heights(z, payload.smoothing)
        if ctx.is_cancelled():
            return CANCELLED

    names: list[str] = []
    for index, fmt in enumerate(payload.formats):
        ctx.progress(55 + 35 * index / len(payload.formats), f"mesh.{fmt}", stage="export")
        data = export.export_mesh(vertices, faces, fmt)
        names.append(ctx.write_artifact(f"mesh.{fmt}", data).name)
        del data
        if ctx.is_cancelled():
            return CANCELLED

    ctx.progress(90, "thumbnail.png", stage="thumbnail")
    png = thumbnail.render_thumbnail(z, size)
    names.append(ctx.write_artifact("thumbnail.png", png).name)
    ctx.progress(100, f"{len(vertices)} vertices, {len(faces)} triangles")
    return {
        "vertices": len(vertices),
        "triangles": len(faces),
        "bounds": [vertices.min(axis=0).tolist(), vertices.max(axis=0).tolist()],
        "artifacts": names,
        "grid": [cols, rows],
        "tiles": tiles,
    }


def _check_grid(payload: MeshPayload, settings: Settings, image_size: tuple[int, int]) -> None:
    """The grid's vertex count against ``mesh_max_vertices``, before any pixel is decoded."""
    from raypipe.mesh.heightmap import grid_shape

    width, height = image_size
    cols, rows = grid_shape(width, height, payload.detail_factor)
    if cols * rows > settings.mesh.max_vertices:
        raise PermanentError(
            f"payload.detail_factor: a {width}×{height} image at {payload.detail_factor:g} is"
            f" a {cols}×{rows} grid of {cols * rows} vertices, over the limit of"
            f" {settings.mesh.max_vertices} (RAYPIPE_MESH_MAX_VERTICES): lower detail_factor"
        )


def _check_memory(
    payload: MeshPayload, settings: Settings, image: Image.Image, *, input_bytes: int
) -> None:
    """The worker's estimated peak against ``mesh_memory_bytes`` (what the job reserves
    from Ray), from the image's header, before any pixel is decoded."""
    from raypipe.mesh import memory

    width, height = image.size
    job = memory.MeshJob(
        width=width,
        height=height,
        mode=image.mode,
        input_bytes=input_bytes,
        detail_factor=payload.detail_factor,
        smoothing=payload.smoothing,
        formats=tuple(payload.formats),
    )
    need = memory.estimate(job)
    limit = settings.mesh.memory_bytes
    if need.total <= limit:
        return
    cols, rows = need.grid
    fits = memory.largest_detail_factor(job, limit)
    advice = (
        f"lower detail_factor (at most {fits:.4g} fits)"
        if fits is not None
        else "the image alone needs more: send a smaller image"
    )
    raise PermanentError(
        f"payload: a {width}×{height} {image.mode} image at detail_factor"
        f" {payload.detail_factor:g} is a {cols}×{rows} grid of {cols * rows} vertices;"
        f" with smoothing {payload.smoothing} and formats {', '.join(payload.formats)} its"
        f" worker would peak at about {need.total} bytes ({memory.gib(need.total)}, at"
        f" {need.step}), over the limit of {limit} bytes ({memory.gib(limit)},"
        f" RAYPIPE_MESH_MEMORY_BYTES): {advice}, ask for fewer formats, or raise"
        " RAYPIPE_MESH_MEMORY_BYTES"
    )


def _triangulate(
    ctx: JobContext, heights: np.ndarray, size: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Vertices, faces and tile count: in one piece, or, past ``mesh_tile_rows`` rows, as
    overlapping row bands fanned out with ``ctx.parallel`` and stitched back together."""
    from raypipe.mesh import grid

    rows, cols = heights.shape
    bands = grid.band_rows(rows, ctx.settings.mesh.tile_rows)
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
