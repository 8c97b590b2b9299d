"""``mesh.from_image`` end to end in this process: real images in, real mesh files out."""

from __future__ import annotations

import base64
import io
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import trimesh
from PIL import Image
from pydantic import ValidationError

from raypipe import registry
from raypipe.config import Settings, get_settings
from raypipe.context import JobContext, LocalRunner
from raypipe.exceptions import PermanentError
from raypipe.processors.mesh import MeshPayload, mesh_from_image
from tests.helpers.contexts import reporting
from tests.helpers.local_http import QuietHandler

T = TypeVar("T")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bump(width: int, height: int) -> Image.Image:
    """A grayscale Gaussian hill: white in the middle, black at the edges."""
    ys, xs = np.mgrid[0:height, 0:width]
    hill = np.exp(-((xs - width / 2) ** 2 + (ys - height / 2) ** 2) / (2 * (width / 5) ** 2))
    return Image.fromarray(np.round(hill * 255).astype(np.uint8))


def halves(width: int, height: int) -> Image.Image:
    """Left half black, right half white."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels)


def run(ctx: JobContext, image: bytes, **fields: Any) -> dict[str, Any]:
    return mesh_from_image(MeshPayload(image_b64=b64(image), **fields), ctx)


def load(ctx: JobContext, name: str) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(ctx.read_artifact(name)), file_type=name[5:], force="mesh")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(data_dir=tmp_path)


@pytest.fixture
def ctx(settings: Settings) -> JobContext:
    return JobContext.local("mesh.from_image", settings)


# -- the mesh ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "factor", "grid"),
    [
        (64, 48, 0.5, (32, 24)),
        (101, 37, 0.3, (30, 11)),
        (40, 40, 1.0, (40, 40)),
        (5, 3, 0.1, (2, 2)),
    ],
)
def test_grid_follows_detail_factor(
    ctx: JobContext, width: int, height: int, factor: float, grid: tuple[int, int]
) -> None:
    result = run(ctx, encode(bump(width, height)), detail_factor=factor)
    cols, rows = grid
    assert result["grid"] == [cols, rows]
    assert result["vertices"] == cols * rows
    assert result["triangles"] == 2 * (cols - 1) * (rows - 1)
    assert result["tiles"] == 1
    assert result["artifacts"] == ["mesh.glb", "thumbnail.png"]


def test_heights_follow_the_image(ctx: JobContext) -> None:
    result = run(ctx, encode(halves(40, 20)), detail_factor=1.0, height_scale=2.5, formats=["ply"])
    (x0, y0, z0), (x1, y1, z1) = result["bounds"]
    assert (x0, y0, z0) == (0.0, 0.0, 0.0)
    assert (x1, y1) == (1.0, 0.5)  # the longer side is 1.0
    assert z1 == pytest.approx(2.5)
    vertices = load(ctx, "mesh.ply").vertices
    left, right = vertices[:, 0] < 0.49, vertices[:, 0] > 0.51
    assert np.all(vertices[left, 2] == 0.0)
    assert np.allclose(vertices[right, 2], 2.5)


def test_image_reads_upright(ctx: JobContext) -> None:
    """Image row 0 (the top) is the largest y, so the picture is not mirrored from above."""
    pixels = np.zeros((10, 10), dtype=np.uint8)
    pixels[0, 0] = 255
    run(ctx, encode(Image.fromarray(pixels)), detail_factor=1.0, formats=["ply"])
    vertices = load(ctx, "mesh.ply").vertices
    top = vertices[np.argmax(vertices[:, 2])]
    assert top.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_every_format_reloads_with_the_same_mesh(ctx: JobContext) -> None:
    result = run(ctx, encode(bump(30, 20)), detail_factor=1.0, formats=["glb", "ply", "stl", "obj"])
    names = ["mesh.glb", "mesh.ply", "mesh.stl", "mesh.obj", "thumbnail.png"]
    assert result["artifacts"] == names
    assert sorted(ctx.artifacts) == sorted(names)
    assert (result["vertices"], result["triangles"]) == (600, 2 * 29 * 19)
    for name in names[:-1]:
        mesh = load(ctx, name)
        mesh.merge_vertices()  # STL repeats every corner
        assert (len(mesh.vertices), len(mesh.faces)) == (600, 2 * 29 * 19), name
        np.testing.assert_allclose(mesh.bounds, result["bounds"], atol=1e-6, err_msg=name)
    assert ctx.artifacts["mesh.glb"].content_type == "model/gltf-binary"


def test_thumbnail_is_a_picture(ctx: JobContext) -> None:
    run(ctx, encode(bump(300, 200)), detail_factor=0.5)
    data = ctx.read_artifact("thumbnail.png")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("PNG", (256, 256))
        pixels = np.asarray(image.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50
    assert np.mean(np.all(pixels == 255, axis=-1)) < 0.9  # not just the white background


def test_triangles_are_sound_and_face_up(ctx: JobContext) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (25, 35), dtype=np.uint8)
    run(ctx, encode(Image.fromarray(noise)), detail_factor=1.0, height_scale=3.0, formats=["ply"])
    mesh = load(ctx, "mesh.ply")
    assert mesh.area_faces.min() > 0
    assert mesh.face_normals[:, 2].min() > 0
    assert mesh.is_winding_consistent
    assert len(mesh.vertices) == 25 * 35


class PicklingRunner(LocalRunner):
    """Runs each call after a pickle round trip, as Ray would ship it, and records it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.calls: list[Callable[[], Any]] = []
        self.num_cpus: list[float] = []

    def parallel(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        num_cpus: float = 1.0,
        memory: int | None = None,
        on_done: Callable[[int, T], None] | None = None,
    ) -> list[T]:
        self.calls.extend(calls)
        self.num_cpus.append(num_cpus)
        shipped = [pickle.loads(pickle.dumps(call)) for call in calls]
        return super().parallel(shipped, num_cpus=num_cpus, memory=memory, on_done=on_done)


def test_tiled_mesh_is_identical_to_the_whole_one(tmp_path: Path) -> None:
    image = encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (45, 30), np.uint8)))
    whole_ctx = JobContext.local("mesh.from_image", get_settings(data_dir=tmp_path / "whole"))
    tiled_settings = get_settings(data_dir=tmp_path / "tiled", mesh_tile_rows=8)
    runner = PicklingRunner(tiled_settings)
    tiled_ctx = JobContext(
        job_id=whole_ctx.job_id, job_type="mesh.from_image", settings=tiled_settings, runner=runner
    )

    whole = run(whole_ctx, image, detail_factor=1.0, formats=["ply"])
    tiled = run(tiled_ctx, image, detail_factor=1.0, formats=["ply"])

    assert (whole["tiles"], tiled["tiles"]) == (1, 7)  # 44 rows of cells, 7 per tile
    assert {**tiled, "tiles": 1} == whole
    assert tiled_ctx.read_artifact("mesh.ply") == whole_ctx.read_artifact("mesh.ply")
    assert len(runner.calls) == 7 and runner.num_cpus == [1]
    assert all(not isinstance(arg, JobContext) for call in runner.calls for arg in call.args)


def test_smoothing_softens_heights_only(ctx: JobContext, settings: Settings) -> None:
    noise = encode(Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 30), np.uint8)))
    run(ctx, noise, detail_factor=1.0, formats=["ply"])
    smooth_ctx = JobContext.local("mesh.from_image", settings)
    result = run(smooth_ctx, noise, detail_factor=1.0, smoothing=10, formats=["ply"])
    rough, smooth = load(ctx, "mesh.ply"), load(smooth_ctx, "mesh.ply")
    assert result["vertices"] == len(smooth.vertices) == 900
    assert np.array_equal(rough.vertices[:, :2], smooth.vertices[:, :2])
    assert np.std(smooth.vertices[:, 2]) < 0.5 * np.std(rough.vertices[:, 2])
    assert smooth.face_normals[:, 2].min() > 0


def test_progress_walks_through_the_stages(settings: Settings) -> None:
    ctx, states = reporting(
        "mesh.from_image", settings, job_id="00000000-0000-0000-0000-000000000001"
    )
    run(ctx, encode(bump(20, 20)), smoothing=2)
    stages = list(dict.fromkeys(state.stage for state in states))
    assert stages == [
        "decode",
        "heightmap",
        "resample",
        "triangulate",
        "smooth",
        "export",
        "thumbnail",
    ]
    percents = [state.progress for state in states]
    assert percents == sorted(percents) and percents[-1] == 100.0


@pytest.mark.parametrize(("checks_before_cancel", "written"), [(0, []), (3, []), (4, ["mesh.glb"])])
def test_cancellation_stops_between_steps(
    settings: Settings, checks_before_cancel: int, written: list[str]
) -> None:
    checks = iter(range(100))
    ctx = JobContext(
        job_id="00000000-0000-0000-0000-000000000002",
        job_type="mesh.from_image",
        settings=settings,
        cancelled=lambda: next(checks) >= checks_before_cancel,
    )
    assert run(ctx, encode(bump(20, 20)), formats=["glb", "ply"]) == {"cancelled": True}
    assert sorted(ctx.artifacts) == written


# -- image modes -------------------------------------------------------------------------


def test_transparent_pixels_are_ground(ctx: JobContext) -> None:
    rgba = np.full((10, 20, 4), 255, dtype=np.uint8)
    rgba[:, :10, 3] = 0  # white but fully transparent on the left
    result = run(ctx, encode(Image.fromarray(rgba)), detail_factor=1.0, formats=["ply"])
    vertices = load(ctx, "mesh.ply").vertices
    assert np.all(vertices[vertices[:, 0] < 0.45, 2] == 0.0)
    assert result["bounds"][1][2] == pytest.approx(1.0)


def test_sixteen_bit_keeps_its_precision(ctx: JobContext) -> None:
    levels = np.array([[0, 1000, 1001, 65535]], dtype=np.uint16).repeat(2, axis=0)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    run(ctx, encode(image), detail_factor=1.0, height_scale=65535.0, formats=["ply"])
    heights = load(ctx, "mesh.ply").vertices[:4, 2]
    assert heights.tolist() == pytest.approx([0, 1000, 1001, 65535], abs=0.01)


def test_palette_image_with_transparency(ctx: JobContext) -> None:
    image = Image.new("P", (3, 2))
    image.putpalette([0, 0, 0, 255, 255, 255, 255, 255, 255])
    image.putdata([0, 1, 2, 1, 1, 0])
    image.info["transparency"] = 2  # a white entry that is see-through
    run(ctx, encode(image), detail_factor=1.0, formats=["ply"])
    assert load(ctx, "mesh.ply").vertices[:, 2].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_colour_jpeg_uses_luminance(ctx: JobContext) -> None:
    rgb = np.zeros((16, 48, 3), dtype=np.uint8)
    rgb[:, 16:32, 2] = 255  # blue: dark
    rgb[:, 32:, 1] = 255  # green: bright
    run(ctx, encode(Image.fromarray(rgb), "JPEG"), detail_factor=1.0, formats=["ply"])
    vertices = load(ctx, "mesh.ply").vertices
    middle = vertices[:, 1] == vertices[8 * 48, 1]
    row = vertices[middle, 2]
    assert row[4] < 0.05 and row[24] == pytest.approx(0.114, abs=0.05)
    assert row[40] == pytest.approx(0.587, abs=0.05)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,  # PNG signature, garbage after it
        b"name,height\nhill,3\n",
        encode(bump(64, 64))[:300],  # cut short mid-stream
    ],
    ids=["corrupt", "text", "truncated"],
)
def test_unreadable_bytes_are_permanent(ctx: JobContext, data: bytes) -> None:
    with pytest.raises(PermanentError, match=r"payload\.image: not a readable image"):
        run(ctx, data)
    assert ctx.artifacts == {}


def test_too_many_pixels_is_permanent(tmp_path: Path) -> None:
    ctx = JobContext.local("mesh.from_image", get_settings(data_dir=tmp_path, mesh_max_pixels=399))
    with pytest.raises(PermanentError, match=r"20×20 is 400 pixels.*limit of 399.*mesh_max_pixels"):
        run(ctx, encode(bump(20, 20)))


def test_a_grid_over_the_vertex_limit_is_permanent_before_any_grid_is_built(
    tmp_path: Path,
) -> None:
    # A 40×40 image at detail 1 is 1,600 vertices: a limit of 1,599 stands for the 8000×8000
    # PNG of 62 KB that passed the pixel limit and needed several GB for its grid.
    settings = get_settings(data_dir=tmp_path, mesh_max_vertices=1599)
    ctx = JobContext.local("mesh.from_image", settings)
    limit = r"40×40 grid of 1600 vertices.*RAYPIPE_MESH_MAX_VERTICES"
    with pytest.raises(PermanentError, match=limit):
        run(ctx, encode(bump(40, 40)), detail_factor=1.0)
    assert ctx.artifacts == {}
    assert run(ctx, encode(bump(40, 40)), detail_factor=0.5)["vertices"] == 400


def test_a_job_over_its_memory_is_refused_from_the_header_alone(tmp_path: Path) -> None:
    """The estimate needs the header only: a PNG whose pixel data is garbage is refused
    for its memory, not found unreadable, so no pixel was decoded before the refusal."""
    good = encode(bump(400, 400))
    start = good.index(b"IDAT") + 4
    garbage = good[:start] + bytes(len(good) - start)  # header intact, pixels zeroed
    settings = get_settings(data_dir=tmp_path, mesh_memory_bytes=300 << 20)
    ctx = JobContext.local("mesh.from_image", settings)
    limit = (
        r"^payload: a 400×400 L image at detail_factor 1 is a 400×400 grid of 160000"
        r" vertices; with smoothing 0 and formats stl its worker would peak at about \d+"
        r" bytes \(0\.\d\d GiB, at stl export\), over the limit of 314572800 bytes"
        r" \(0\.29 GiB, RAYPIPE_MESH_MEMORY_BYTES\): lower detail_factor \(at most 0\.\d+"
        r" fits\), ask for fewer formats, or raise RAYPIPE_MESH_MEMORY_BYTES$"
    )
    with pytest.raises(PermanentError, match=limit):
        run(ctx, garbage, detail_factor=1.0, formats=["stl"])
    with pytest.raises(PermanentError, match=r"not a readable image"):
        run(ctx, garbage, detail_factor=0.1, formats=["stl"])  # fits: then decoded
    assert ctx.artifacts == {}


def test_pillow_bomb_limit_is_reported_as_too_large(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    run(ctx, encode(bump(12, 12)))  # over Pillow's limit, not twice over: ours decides
    with pytest.raises(PermanentError, match=r"too many pixels.*Image\.MAX_IMAGE_PIXELS"):
        run(ctx, encode(bump(20, 20)))


def test_bad_base64_is_permanent(ctx: JobContext) -> None:
    with pytest.raises(PermanentError, match=r"payload\.image_b64: not valid base64"):
        mesh_from_image(MeshPayload(image_b64="not base64!"), ctx)


# -- other sources -----------------------------------------------------------------------


def test_image_from_another_jobs_artifact(ctx: JobContext, settings: Settings) -> None:
    upstream = JobContext.local("noop", settings)
    upstream.write_artifact("hill.png", encode(bump(20, 10)))
    payload = MeshPayload(image_artifact=f"{upstream.job_id}/hill.png", detail_factor=1.0)
    assert mesh_from_image(payload, ctx)["grid"] == [20, 10]


def test_missing_artifact_is_permanent(ctx: JobContext) -> None:
    payload = MeshPayload(image_artifact="00000000-0000-0000-0000-000000000000/hill.png")
    with pytest.raises(PermanentError, match=r"no artifact 'hill.png'"):
        mesh_from_image(payload, ctx)


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on 127.0.0.1 serving whatever the test puts in the dict."""
    files: dict[str, bytes] = {}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", files
    httpd.shutdown()
    httpd.server_close()
    thread.join()


#: The test server listens on loopback, which the outbound guard refuses by default.
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture
def url_ctx(tmp_path: Path) -> JobContext:
    """A context whose fetches may reach the test server."""
    settings = get_settings(data_dir=tmp_path, fetch_allow_networks=LOOPBACK)
    return JobContext.local("mesh.from_image", settings)


def test_image_from_url(url_ctx: JobContext, server: tuple[str, dict[str, bytes]]) -> None:
    base, files = server
    files["/hill.png"] = encode(bump(24, 16))
    payload = MeshPayload(image_url=f"{base}/hill.png", detail_factor=0.5)
    assert mesh_from_image(payload, url_ctx)["grid"] == [12, 8]


def test_loopback_url_is_refused_by_default(
    ctx: JobContext, server: tuple[str, dict[str, bytes]]
) -> None:
    base, files = server
    files["/hill.png"] = encode(bump(24, 16))
    with pytest.raises(PermanentError, match=r"^payload\.image_url: .*\(loopback\)"):
        mesh_from_image(MeshPayload(image_url=f"{base}/hill.png"), ctx)


def test_missing_url_is_permanent(
    url_ctx: JobContext, server: tuple[str, dict[str, bytes]]
) -> None:
    base, _ = server
    with pytest.raises(PermanentError, match=r"answered HTTP 404"):
        mesh_from_image(MeshPayload(image_url=f"{base}/nothing.png"), url_ctx)


def test_oversized_url_is_permanent(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    base, files = server
    files["/hill.png"] = encode(bump(64, 64))
    settings = get_settings(data_dir=tmp_path, max_input_bytes=100, fetch_allow_networks=LOOPBACK)
    ctx = JobContext.local("mesh.from_image", settings)
    with pytest.raises(PermanentError, match=r"too large"):
        mesh_from_image(MeshPayload(image_url=f"{base}/hill.png"), ctx)


# -- payload -----------------------------------------------------------------------------

PNG_B64 = b64(b"\x89PNG")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"image_b64": ""}, "at least 1 character"),
        ({"image_b64": PNG_B64, "detail_factor": 0}, "greater than 0"),
        ({"image_b64": PNG_B64, "detail_factor": 1.5}, "less than or equal to 1"),
        ({"image_b64": PNG_B64, "detail_factor": float("nan")}, "finite number"),
        ({"image_b64": PNG_B64, "height_scale": 0}, "greater than or equal to 0.000001"),
        ({"image_b64": PNG_B64, "height_scale": 1e308}, "less than or equal to 1000000"),
        ({"image_b64": PNG_B64, "height_scale": float("inf")}, "finite number"),
        ({"image_b64": PNG_B64, "smoothing": -1}, "greater than or equal to 0"),
        ({"image_b64": PNG_B64, "smoothing": 51}, "less than or equal to 50"),
        ({"image_b64": PNG_B64, "formats": []}, "at least 1 item"),
        ({"image_b64": PNG_B64, "formats": ["fbx"]}, "'glb', 'ply', 'stl' or 'obj'"),
        ({"image_b64": PNG_B64, "formats": ["glb", "glb"]}, "must not name a format twice"),
        ({"image_b64": PNG_B64, "image_url": "http://x/a.png"}, "exactly one of.*got image_b64"),
        ({}, "exactly one of image_b64, image_url or image_artifact \\(got none\\)"),
        ({"image_url": "ftp://example.com/a.png"}, "http:// or https:// URL"),
        ({"image_url": "https:///a.png"}, "with a host"),
        ({"image_url": "http://xn--/a.png"}, "IDNA"),
        ({"image_url": "http://user:pw@example.com/a.png"}, "credentials"),
        ({"image_artifact": "../../etc/passwd"}, "should match pattern"),
        ({"image_b64": PNG_B64, "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_payload_validation(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        MeshPayload.model_validate(fields)


def test_payload_defaults() -> None:
    payload = MeshPayload.model_validate({"image_url": "https://example.com/a.png"})
    assert (payload.detail_factor, payload.height_scale, payload.smoothing) == (0.5, 1.0, 0)
    assert payload.formats == ["glb"]
    assert MeshPayload(image_url="https://example.com/a.png").formats is not payload.formats


def test_registered_for_the_mesh_queue() -> None:
    spec = registry.get("mesh.from_image")
    assert mesh_from_image.spec is spec
    assert (spec.fn, spec.payload_model, spec.queue) == (mesh_from_image.fn, MeshPayload, "mesh")
    # What a job reserves from Ray is the bound it is held to, as the settings say.
    for bound in (1 << 30, 3 << 29):
        settings = get_settings(mesh_memory_bytes=bound)
        options = spec.configured(settings).ray_options()
        assert options == {"num_cpus": 1, "num_gpus": 0.0, "memory": bound}
        assert spec.configured(settings).demand() == {"CPU": 1, "memory": float(bound)}
