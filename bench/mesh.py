"""Images/s of mesh.from_image through raypipe against the same steps in one process, in one run.

    python bench/mesh.py

Defaults: ``--images 24 --size 1024 --cpus 1,2 --db sqlite``. N distinct grayscale test
images (gradients, gaussian bumps and noise; PNG, base64 once) are generated in memory.
Reference: ``mesh_from_image`` on every image in this process, one after another, with a
local context (same payload: ``detail_factor``, GLB only). Then, for each worker count
in ``--cpus``: a local Ray of that many CPUs, a fresh database and namespace, raypipe's
actors, one warm-up job per CPU (so the worker processes have imported trimesh and
friends), then all N jobs in one ``submit_many``, timed until every job is terminal. The
reference and raypipe's run alternate ``--repeat`` times and each side's best is kept.
Prints images/s, the ratio to the reference and the scaling over the smallest worker
count.

Each image is light (a fraction of a second), so per-job costs show. What keeps them
small: a worker process freezes what it imported after its first attempt
(``gc.freeze``), so the cyclic collector's full passes no longer walk Ray's and the
libraries' objects (one such pass took longer than a job); the thumbnail's figure is
cleared after rendering; payloads live outside the job rows, so a claim, a start and an
end never rewrite or walk a megabyte payload, and the dispatcher leaves the core the
workers share with everything else; jobs without an idempotency key skip the payload
hash. The jobs themselves run as fast as the reference's, back to back (the next one
waits in Ray's queue, the task prefetch). The native thread pools are not a factor: the
reference held to one thread (as Ray holds a 1-CPU task with ``OMP_NUM_THREADS=1``) runs
at the same rate. What limits it: the submission of every payload in one transaction
before the first job can start (the "submit s" column), and a Ray task per job (the
mesh job keeps its isolation).
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import ray
from common import (
    Table,
    alternate,
    bench_settings,
    database,
    parser,
    report,
    start_ray,
    wait_for,
)
from PIL import Image

from raypipe.config import Settings
from raypipe.context import JobContext
from raypipe.direct import DirectClient, running
from raypipe.processors.mesh import MeshPayload, mesh_from_image

JOB_TYPE = "mesh.from_image"


def test_image(index: int, size: int) -> bytes:
    """A distinct ``size``×``size`` grayscale PNG: a tilted gradient, a few gaussian bumps
    and some noise, all seeded by ``index``."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    heights = 0.3 * (np.cos(angle) * x + np.sin(angle) * y)
    for _ in range(rng.integers(3, 8)):
        cx, cy = rng.uniform(0, 1, 2)
        width = rng.uniform(0.03, 0.2)
        heights += rng.uniform(0.2, 0.6) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / width**2)
    heights += rng.normal(0, 0.03, heights.shape)
    heights = (heights - heights.min()) / np.ptp(heights)
    buffer = io.BytesIO()
    Image.fromarray((heights * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def reference_rate(settings: Settings, payloads: list[dict[str, object]]) -> float:
    """Images/s of ``mesh_from_image`` on every payload here, sequentially (after a warm-up)."""

    def run(payload: dict[str, object]) -> None:
        mesh_from_image(MeshPayload(**payload), JobContext.local(JOB_TYPE, settings))

    run(payloads[0])  # imports trimesh, matplotlib…
    started = time.perf_counter()
    for payload in payloads:
        run(payload)
    return len(payloads) / (time.perf_counter() - started)


def raypipe_rate(client: DirectClient, payloads: list[dict[str, object]]) -> tuple[float, float]:
    """(images/s end to end, seconds spent submitting) of every payload in one batch.

    Polls the queue's count (every 20 ms) rather than each handle, whose back-off would
    add up to half a second to the measurement.
    """
    started = time.perf_counter()
    handles = client.submit_many([(JOB_TYPE, p) for p in payloads])
    submitted = time.perf_counter() - started
    ended = wait_for(client.store, "mesh", [h.id for h in handles], poll_s=0.02)
    return len(payloads) / (ended - started), submitted


def compare(
    kind: str, num_cpus: int, folder: Path, payloads: list[dict[str, object]], repeat: int
) -> tuple[float, float, float]:
    """(best reference images/s, best raypipe images/s end to end, seconds spent submitting
    in that run) on a fresh Ray of ``num_cpus`` CPUs, the two sides alternating."""
    start_ray(num_cpus)
    try:
        with database(kind, folder) as url:
            settings = bench_settings(url, folder / f"cpus-{num_cpus}")
            with running(settings) as client:
                raypipe_rate(client, payloads[:1] * num_cpus)  # warm the workers
                references, runs = alternate(
                    repeat,
                    partial(reference_rate, settings, payloads),
                    partial(raypipe_rate, client, payloads),
                )
                return (max(references), *max(runs))
    finally:
        ray.shutdown()


def measure(n: int, size: int, detail: float, counts: list[int], kind: str, repeat: int) -> Table:
    payloads: list[dict[str, object]] = [
        {
            "image_b64": base64.b64encode(test_image(i, size)).decode("ascii"),
            "detail_factor": detail,
            "formats": ["glb"],
        }
        for i in range(n)
    ]
    mib = sum(len(str(p["image_b64"])) for p in payloads) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        runs = {count: compare(kind, count, Path(tmp), payloads, repeat) for count in counts}
    rows, ratios = [], {}
    for count, (reference, rate, submit_s) in runs.items():
        cpus = f"{count} CPU{'s' if count > 1 else ''}"
        ratios[f"mesh images/s, {cpus}"] = rate / reference
        rows.append(
            (
                f"raypipe, {cpus}",
                f"{reference:.2f}",
                f"{rate:.2f}",
                f"{rate / reference:.2f}",
                f"{submit_s:.2f}",
            )
        )
    base = min(counts)
    return Table(
        title=(
            f"{n} images {size}×{size} L ({mib:.1f} MiB base64), detail_factor={detail},"
            f" formats=glb, db={kind}, best of {repeat}"
        ),
        columns=("case", "reference images/s", "raypipe images/s", "ratio", "submit s"),
        rows=tuple(rows),
        ratios=ratios,
        notes=tuple(
            f"scaling {base} → {count} CPUs: {runs[count][1] / runs[base][1]:.2f}×"
            for count in counts
            if count != base
        ),
    )


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--images", type=int, default=24)
    args.add_argument("--size", type=int, default=1024, help="image side in pixels")
    args.add_argument("--detail", type=float, default=0.5, help="detail_factor")
    args.add_argument("--cpus", default="1,2", help="worker counts, comma-separated")
    args.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    options = args.parse_args()
    counts = [int(c) for c in options.cpus.split(",")]
    table = measure(
        options.images, options.size, options.detail, counts, options.db, options.repeat
    )
    report([table], options.json)


if __name__ == "__main__":
    main()
