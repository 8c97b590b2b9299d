"""The memory estimate of ``mesh.from_image``: a pure function of the image's header and the
payload, checked here for its shape; ``tests/security/test_mesh_bounds.py`` checks it
against the peaks of real runs."""

from __future__ import annotations

import dataclasses

import pytest

from raypipe.mesh import FORMATS
from raypipe.mesh.memory import (
    BASE_BYTES,
    GRID_BYTES_PER_VERTEX,
    MeshJob,
    estimate,
    largest_detail_factor,
)

GIB = 1 << 30


def job(**fields: object) -> MeshJob:
    values: dict[str, object] = {
        "width": 2000,
        "height": 2000,
        "mode": "L",
        "input_bytes": 0,
        "detail_factor": 0.5,
        "smoothing": 0,
        "formats": ("glb",),
    }
    return MeshJob(**{**values, **fields})  # type: ignore[arg-type]


def test_the_issues_png_is_over_a_gib() -> None:
    """Issue 33: 8000×8000 at detail 0.25 with smoothing 50 and every format peaked at
    3.9 GB in one worker; 2.5 GiB measured now that formats no longer add up."""
    need = estimate(job(width=8000, height=8000, detail_factor=0.25, smoothing=50, formats=FORMATS))
    assert need.grid == (2000, 2000)
    assert need.step == "stl export"
    assert need.total == BASE_BYTES + 4_000_000 * GRID_BYTES_PER_VERTEX["stl"]
    assert need.total > 2.5 * GIB


def test_formats_cost_one_at_a_time_the_costliest_counts() -> None:
    every = estimate(job(formats=FORMATS))
    assert every == estimate(job(formats=("stl",)))
    assert estimate(job(formats=("glb",))).total < estimate(job(formats=("obj",))).total
    assert every.total < sum(estimate(job(formats=(f,))).total for f in FORMATS) - BASE_BYTES


def test_smoothing_counts_where_it_is_the_costliest_step_whatever_the_passes() -> None:
    assert GRID_BYTES_PER_VERTEX["smooth"] < GRID_BYTES_PER_VERTEX["triangulate"]
    assert estimate(job(smoothing=50)) == estimate(job(smoothing=0))
    costly = {**GRID_BYTES_PER_VERTEX, "smooth": 10_000}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("raypipe.mesh.memory.GRID_BYTES_PER_VERTEX", costly)
        one, fifty = estimate(job(smoothing=1)), estimate(job(smoothing=50))
        assert one == fifty and one.step == "smooth"


def test_the_pixels_count_where_the_grid_is_small() -> None:
    """At a small detail_factor the decoded image, not the grid, is the peak: Pillow keeps
    a pixel of RGBA in four bytes, of L in one."""
    rgba = estimate(job(width=4000, height=4000, mode="RGBA", detail_factor=0.01))
    gray = estimate(job(width=4000, height=4000, mode="L", detail_factor=0.01))
    assert (rgba.step, gray.step) == ("luminance", "resample")
    assert rgba.pixels > 100 * rgba.vertices
    assert rgba.total > gray.total > BASE_BYTES + 16_000_000 * 8


def test_a_very_wide_image_counts_its_conversion_band() -> None:
    """A band of rows is at least one row: a 64 M × 1 image converts in one 64 M-pixel band."""
    wide = estimate(job(width=64_000_000, height=1, mode="RGBA", detail_factor=0.01))
    square = estimate(job(width=8000, height=8000, mode="RGBA", detail_factor=0.01))
    assert wide.total > square.total + 64_000_000 * 40


def test_the_input_counts() -> None:
    assert estimate(job(input_bytes=10**8)).total == estimate(job()).total + 10**8


def test_largest_detail_factor_fits_and_a_little_more_does_not() -> None:
    hostile = job(width=8000, height=8000, detail_factor=0.25, smoothing=50, formats=FORMATS)
    factor = largest_detail_factor(hostile, GIB)
    assert factor is not None and 0.05 < factor < 0.25
    assert estimate(dataclasses.replace(hostile, detail_factor=factor)).total <= GIB
    assert estimate(dataclasses.replace(hostile, detail_factor=factor * 1.01)).total > GIB
    assert largest_detail_factor(hostile, BASE_BYTES) is None  # nothing fits in the base
