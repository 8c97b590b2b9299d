"""Bounded memory for ``mesh.from_image``: a job the estimate admits stays within the bound
it reserves from Ray (``RAYPIPE_MESH_MEMORY_BYTES``), and one it does not fails before any
pixel is decoded, naming the setting and the numbers.

Measured on the code before the fix (issue 33, finding 5): an 80 KB 8000×8000 PNG at
``detail_factor`` 0.25 with ``smoothing`` 50 and all four formats (4,000,000 vertices,
within ``RAYPIPE_MESH_MAX_VERTICES``) ran for two minutes to a peak resident set of
3,103 MiB in one process (3.9 GB in a Ray worker), where the job reserved 1 GiB.

Each job runs in a process of its own, as in a Ray worker, and reports its peak resident
set: the whole process, interpreter and libraries included, which is what the node's
memory holds. It is read from ``VmHWM`` in ``/proc/self/status``: ``ru_maxrss`` (of the
child, or ``RUSAGE_CHILDREN`` here) starts from the peak of the process that spawned it
(Linux carries the old image's peak over ``exec``), so it reports pytest's own. A watchdog
in that process stops it at twice its bound, so a job the estimate fails to refuse cannot
take a CI machine's memory.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from raypipe.config import get_settings
from raypipe.config_groups import MeshSettings
from raypipe.context import JobContext
from raypipe.exceptions import InvalidInput
from raypipe.mesh import FORMATS
from raypipe.mesh.memory import BASE_BYTES, MeshJob, estimate
from raypipe.processors.mesh import MAX_HEIGHT_SCALE, MAX_SMOOTHING, MeshPayload, mesh_from_image
from raypipe.submission import prepare

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the job's peak in /proc/self/status"
)

MIB = 1 << 20
DEFAULT_BOUND: int = MeshSettings.model_fields["memory_bytes"].default

#: The job, in a fresh interpreter: arguments as JSON in argv[1], a JSON report on stdout.
CHILD = r"""
import base64, json, os, sys, threading, time
from pathlib import Path

args = json.loads(sys.argv[1])

def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def watchdog():
    while True:
        if rss() > args["kill_at"]:
            print(json.dumps({"killed_at": rss()}), flush=True)
            os._exit(3)
        time.sleep(0.005)

threading.Thread(target=watchdog, daemon=True).start()

from raypipe.config import get_settings
from raypipe.context import JobContext
from raypipe.exceptions import PermanentError
from raypipe.processors.mesh import MeshPayload, mesh_from_image
if args["warm"]:
    # What a warm worker has loaded, so that the base below is the worker's, not Python's.
    import raypipe.mesh.export, raypipe.mesh.smoothing, raypipe.mesh.thumbnail

data = Path(args["image"]).read_bytes()
settings = get_settings(data_dir=args["data_dir"], **args["settings"])
ctx = JobContext.local("mesh.from_image", settings)
payload = MeshPayload(image_b64=base64.b64encode(data).decode(), **args["payload"])
del data
report = {"base": rss()}
began = time.thread_time()
try:
    report["vertices"] = mesh_from_image(payload, ctx)["vertices"]
except PermanentError as exc:
    report["error"] = exc.message
report["cpu_s"] = time.thread_time() - began
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        report["peak"] = int(line.split()[1]) * 1024
report["artifacts"] = sorted(ctx.artifacts)
print(json.dumps(report), flush=True)
"""


def run_job(
    tmp_path: Path, image: bytes, payload: dict[str, Any], bound: int, *, warm: bool = True
) -> dict[str, Any]:
    """Run ``mesh.from_image`` in a process of its own; its report (``peak`` in bytes).
    ``warm``: the mesh libraries are loaded before the job, as in a worker that ran one."""
    path = tmp_path / "image.png"
    path.write_bytes(image)
    args = {
        "image": str(path),
        "data_dir": str(tmp_path / "data"),
        "settings": {"mesh_memory_bytes": bound},
        "payload": payload,
        "kill_at": 2 * bound,
        "warm": warm,
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"the job's process printed nothing (exit {done.returncode}):\n{done.stderr}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert "killed_at" not in report, f"stopped at {report['killed_at'] / MIB:.0f} MiB"
    assert done.returncode == 0, done.stderr
    return report


def png(pixels: np.ndarray, mode: str | None = None, compress_level: int = 6) -> bytes:
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    (image.convert(mode) if mode else image).save(out, "PNG", compress_level=compress_level)
    return out.getvalue()


def checkerboard(side: int) -> np.ndarray:
    """Squares of 500 pixels: it compresses to almost nothing, as the issue's PNG did."""
    squares = (np.arange(side) // 500 % 2).astype(np.uint8)
    return (squares[None, :] ^ squares[:, None]) * np.uint8(255)


def header(data: bytes) -> tuple[int, int, str]:
    with Image.open(io.BytesIO(data)) as image:
        return image.width, image.height, image.mode


@linux_only
def test_the_issues_png_fails_at_once_naming_the_limit(tmp_path: Path) -> None:
    image = png(checkerboard(8000), compress_level=1)
    assert len(image) < 400_000  # 80 KB at Pillow's default compression: 64 M pixels
    payload = {
        "detail_factor": 0.25,
        "smoothing": MAX_SMOOTHING,
        "formats": list(FORMATS),
    }
    report = run_job(tmp_path, image, payload, DEFAULT_BOUND, warm=False)

    error = report.get("error", "")
    assert error.startswith("payload: a 8000×8000 L image at detail_factor 0.25 is a 2000×2000")
    assert "grid of 4000000 vertices" in error
    assert f"over the limit of {DEFAULT_BOUND} bytes (1.00 GiB, RAYPIPE_MESH_MEMORY_BYTES)" in error
    assert "at stl export" in error and "lower detail_factor (at most 0.1" in error
    assert report["artifacts"] == []
    # Refused from the header: no pixel decoded (64 MB of them), no grid built.
    assert report["cpu_s"] < 1.0
    assert report["peak"] - report["base"] < 32 * MIB
    assert report["peak"] < DEFAULT_BOUND


def largest_side(bound: int, mode: str, input_bytes: Any, **fields: Any) -> int:
    """The side of the largest square image in ``mode`` whose job the estimate admits
    within ``bound``; ``input_bytes(side)``: at least what its payload will be."""

    def need(side: int) -> int:
        return estimate(MeshJob(side, side, mode, input_bytes(side), **fields)).total

    low, high = 2, 100_000
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if need(middle) <= bound else (low, middle)
    return low


def inline(png_bytes: int) -> int:
    """The input a PNG of this size is to a job: its bytes and their base64 text."""
    return png_bytes + 4 * (png_bytes + 2) // 3


@linux_only
@pytest.mark.parametrize(
    ("case", "bound", "detail_factor", "smoothing", "formats"),
    [
        # The grid is the peak: a vertex per pixel, every format, the most smoothing.
        ("grid", 400 * MIB, 1.0, MAX_SMOOTHING, list(FORMATS)),
        # The pixels are the peak: a large RGBA image to a small grid.
        ("pixels", 400 * MIB, 0.02, 0, ["glb"]),
    ],
)
def test_the_largest_admitted_job_stays_within_its_bound(
    tmp_path: Path,
    case: str,
    bound: int,
    detail_factor: float,
    smoothing: int,
    formats: list[str],
) -> None:
    """The bound is small (400 MiB, about 210 of them the worker's base) so that the
    largest admitted job runs in seconds; the estimate's constants are per vertex and
    per pixel, so what holds here holds at 1 GiB (``bench/mesh_memory.py`` measures)."""
    fields = {"detail_factor": detail_factor, "smoothing": smoothing, "formats": tuple(formats)}
    if case == "grid":
        # Noise: every height has all its digits in OBJ's text, and PNG cannot shrink it
        # (at most a filter byte a row and zlib's framing more than the pixels).
        side = largest_side(bound, "L", lambda side: inline(side * side + side + 4096), **fields)
        image = png(np.random.default_rng(6).integers(0, 256, (side, side), dtype=np.uint8))
    else:
        side = largest_side(bound, "RGBA", lambda side: inline(side * side // 100), **fields)
        image = png(checkerboard(side), "RGBA")
    width, height, mode = header(image)
    need = estimate(MeshJob(width, height, mode, inline(len(image)), **fields))  # type: ignore[arg-type]
    assert 0.97 * bound < need.total <= bound  # admitted, and at the edge of it

    report = run_job(tmp_path, image, {**fields, "formats": formats}, bound)

    assert "error" not in report, report["error"]
    assert report["base"] <= BASE_BYTES, (
        f"a worker's base here is {report['base'] / MIB:.0f} MiB: raise memory.BASE_BYTES"
    )
    assert report["peak"] <= bound, (
        f"{side}×{side}: peak {report['peak'] / MIB:.0f} MiB over {bound / MIB:.0f} MiB"
    )
    # And the job did the work the estimate counted on: most of it, not a fraction.
    assert report["peak"] - report["base"] > 0.6 * (need.total - BASE_BYTES - inline(len(image)))


# -- numeric inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        # 1e308 completed with null bounds: float32 heights were infinite.
        ("height_scale", 1e308, "less than or equal to 1000000"),
        ("height_scale", 1e-300, "greater than or equal to 0.000001"),
        ("height_scale", 0, "greater than or equal to 0.000001"),
        ("detail_factor", 1.01, "less than or equal to 1"),
        ("detail_factor", 0, "greater than 0"),
        ("smoothing", MAX_SMOOTHING + 1, "less than or equal to 50"),
        ("smoothing", -1, "greater than or equal to 0"),
        ("formats", [*FORMATS, "glb"], "at most 4 items"),
    ],
)
def test_every_numeric_input_has_a_range_a_422_names(
    field: str, value: object, problem: str, tmp_path: Path
) -> None:
    spec = {"type": "mesh.from_image", "payload": {"image_url": "https://example.com/a.png"}}
    spec["payload"][field] = value  # type: ignore[index]
    with pytest.raises(InvalidInput) as caught:
        prepare([spec], get_settings(data_dir=tmp_path), datetime.now(timezone.utc))
    assert [detail["loc"] for detail in caught.value.details] == [["payload", field]]
    assert problem in caught.value.details[0]["msg"]


def test_the_largest_height_scale_gives_finite_bounds(tmp_path: Path) -> None:
    ctx = JobContext.local("mesh.from_image", get_settings(data_dir=tmp_path))
    image = base64.b64encode(png(np.random.default_rng(7).integers(0, 256, (20, 30), np.uint8)))
    payload = MeshPayload(
        image_b64=image.decode(),
        detail_factor=1.0,
        height_scale=MAX_HEIGHT_SCALE,
        smoothing=MAX_SMOOTHING,
        formats=list(FORMATS),
    )
    bounds = np.array(mesh_from_image(payload, ctx)["bounds"])
    assert np.isfinite(bounds).all() and bounds[1, 2] > 0.1 * MAX_HEIGHT_SCALE
