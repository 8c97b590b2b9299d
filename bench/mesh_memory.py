"""Peak memory of each step of mesh.from_image, per image pixel and per grid vertex: where
the constants of ``raypipe/mesh/memory.py`` come from. Linux only (``/proc/self``).

    python bench/mesh_memory.py                       # 2000×2000 L image, detail 0.5
    python bench/mesh_memory.py --side 4000 --detail 0.05 --modes L,RGB,RGBA,I;16

Each run is a process of its own: the real ``mesh_from_image`` with a local context, its
progress reports marking the steps. At each report the process's peak resident set
(``VmHWM``) is read and reset (``/proc/self/clear_refs``), so each step's peak is its own;
it is printed above the resident set before the job (the base: Python with the mesh
libraries loaded), in MiB, per grid vertex and per image pixel. Then the whole job's peak
(the largest step's) next to :func:`raypipe.mesh.memory.estimate`. The image is a checkerboard
of 500-pixel squares (it compresses well, like the 62 KB 8000×8000 PNG of issue 33).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

STEPS = ("decode", "heightmap", "resample", "triangulate", "smooth", "export", "thumbnail")


def make_image(side: int, mode: str, path: Path) -> None:
    import numpy as np
    from PIL import Image

    squares = (np.arange(side) // 500 % 2).astype(np.uint8)
    gray = Image.fromarray((squares[None, :] ^ squares[:, None]) * np.uint8(255))
    if mode.startswith("I;16"):
        image = Image.fromarray(np.asarray(gray).astype(np.uint16) * np.uint16(257))
    else:
        image = gray.convert(mode)
    image.save(path, "PNG")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def child(path: str, detail: float, smoothing: int, formats: list[str]) -> None:
    import raypipe.mesh.export
    import raypipe.mesh.smoothing
    import raypipe.mesh.thumbnail  # noqa: F401  (loaded before the base is read)
    from raypipe.config import get_settings
    from raypipe.context import JobContext
    from raypipe.mesh import memory
    from raypipe.processors.mesh import MeshPayload, mesh_from_image

    data = Path(path).read_bytes()
    payload = MeshPayload(
        image_b64=base64.b64encode(data).decode(),
        detail_factor=detail,
        smoothing=smoothing,
        formats=formats,  # type: ignore[arg-type]
    )
    settings = get_settings(
        data_dir=tempfile.mkdtemp(), mesh_max_vertices=10**9, mesh_memory_bytes=1 << 50
    )
    peaks: dict[str, int] = {}
    starts: dict[str, int] = {}
    current = ["start"]

    def reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    def progress(self: JobContext, percent: float, message: str = "", **kw: Any) -> None:
        stage = kw.get("stage")
        if stage is not None:
            name = message if stage == "export" else stage
            peaks[current[0]] = max(peaks.get(current[0], 0), _status("VmHWM"))
            current[0] = name
            starts[name] = _status("VmRSS")
            reset()

    JobContext.progress = progress  # type: ignore[method-assign]
    ctx = JobContext.local("mesh.from_image", settings)
    from PIL import Image

    with Image.open(path) as image:
        width, height, mode = *image.size, image.mode
    job = memory.MeshJob(
        width, height, mode, len(data) + len(payload.image_b64 or ""), detail, smoothing, formats
    )  # type: ignore[arg-type]
    base = _status("VmRSS")
    reset()
    result = mesh_from_image(payload, ctx)
    peaks[current[0]] = max(peaks.get(current[0], 0), _status("VmHWM"))
    print(
        json.dumps(
            {
                "base": base,
                "peaks": {step: peak - base for step, peak in peaks.items() if step != "start"},
                "starts": {step: rss - base for step, rss in starts.items()},
                "vertices": result["vertices"],
                "pixels": width * height,
                "mode": mode,
                "peak": max(peaks.values()),
                "estimate": memory.estimate(job).total,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=2000, help="image width and height")
    parser.add_argument("--detail", type=float, default=0.5)
    parser.add_argument("--smoothing", type=int, default=50)
    parser.add_argument("--formats", default="glb,ply,stl,obj")
    parser.add_argument("--modes", default="L")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, detail, smoothing, formats = args.child
        child(path, float(detail), int(smoothing), formats.split(","))
        return
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            path = Path(folder) / f"{mode.replace(';', '')}.png"
            make_image(args.side, mode, path)
            command = [sys.executable, __file__, "--child", str(path), str(args.detail)]
            command += [str(args.smoothing), args.formats]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.splitlines()[-1])
            print(
                f"{args.side}×{args.side} {run['mode']}, detail {args.detail}:"
                f" {run['vertices']} vertices, base {run['base'] / 2**20:.0f} MiB"
            )
            for step, peak in run["peaks"].items():
                print(
                    f"  {step:<12} +{peak / 2**20:7.1f} MiB  {peak / run['vertices']:7.1f} B/vertex"
                    f"  {peak / run['pixels']:6.2f} B/pixel"
                    f"  (resident at its start +{run['starts'][step] / 2**20:.1f} MiB)"
                )
            print(
                f"  the job's peak {run['peak'] / 2**20:.0f} MiB (the process's),"
                f" estimate {run['estimate'] / 2**20:.0f} MiB"
            )


if __name__ == "__main__":
    main()
