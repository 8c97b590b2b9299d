"""Images/s of mesh.from_image through raypipe against the same steps in one process, in one run.

    python bench/mesh.py --images 24 --size 1024 --cpus 1,2 --db sqlite

N distinct grayscale test images (gradients, gaussian bumps and noise; PNG, base64 once)
are generated in memory. Reference: ``mesh_from_image`` on every image in this process,
one after another, with a local context (same payload: ``detail_factor``, GLB only). Then,
for each worker count in ``--cpus``: a local Ray of that many CPUs, a fresh database and
namespace, raypipe's actors, one warm-up job per CPU (so the worker processes have
imported trimesh and friends), then all N jobs in one ``submit_many``, timed until every
job is terminal. The reference and raypipe's run alternate ``--repeat`` times and each
side's best is kept: this machine's speed drifts by up to 2× within a minute, which one
run of each would read as a ratio. Prints images/s, the ratio to the reference and the
scaling over the smallest worker count. The defaults (24 images of 1024×1024, about
0.15 s each here) run in about two minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import ray
from common import database, start_ray
from PIL import Image

from raypipe.config import Settings, get_settings
from raypipe.context import JobContext
from raypipe.direct import DirectClient
from raypipe.jobs import JobStatus
from raypipe.processors.mesh import MeshPayload, mesh_from_image
from raypipe.runtime import actors

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


def wait_all(client: DirectClient, specs: list[tuple[str, dict[str, object]]]) -> float:
    """Submit ``specs`` in one batch, wait until none is unfinished; (seconds to submit).

    Polls the count (every 20 ms) rather than each handle, whose back-off would add up to
    half a second to the measurement. Fails loudly unless every job completed.
    """
    started = time.perf_counter()
    handles = client.submit_many(specs)
    submitted = time.perf_counter() - started
    while client.store.count_unfinished("mesh"):
        time.sleep(0.02)
    for handle in handles:
        job = handle.refresh()
        if job.status is not JobStatus.COMPLETED:
            raise SystemExit(f"job {job.id} {job.status.value}: {job.error}")
    return submitted


def compare(
    kind: str, num_cpus: int, folder: Path, payloads: list[dict[str, object]], repeat: int
) -> tuple[float, float, float]:
    """(best reference images/s, best raypipe images/s end to end, seconds spent submitting
    in that run) on a fresh Ray of ``num_cpus`` CPUs, the two sides alternating."""
    start_ray(num_cpus)
    try:
        with database(kind, folder) as url:
            settings = get_settings(
                database_url=url,
                data_dir=folder / f"data-{num_cpus}",
                namespace=f"bench-{uuid.uuid4().hex[:8]}",
            )
            actors.start_actors(settings)
            client = DirectClient(settings)
            try:
                wait_all(client, [(JOB_TYPE, payloads[0])] * num_cpus)  # warm the workers
                references, runs = [], []
                for _ in range(repeat):
                    references.append(reference_rate(settings, payloads))
                    started = time.perf_counter()
                    submit_s = wait_all(client, [(JOB_TYPE, p) for p in payloads])
                    runs.append((len(payloads) / (time.perf_counter() - started), submit_s))
                return (max(references), *max(runs))
            finally:
                actors.stop_actors(settings)
                client.close()
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--detail", type=float, default=0.5, help="detail_factor")
    parser.add_argument("--cpus", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (best kept)")
    args = parser.parse_args()
    counts = [int(c) for c in args.cpus.split(",")]

    payloads: list[dict[str, object]] = [
        {
            "image_b64": base64.b64encode(test_image(i, args.size)).decode("ascii"),
            "detail_factor": args.detail,
            "formats": ["glb"],
        }
        for i in range(args.images)
    ]
    mib = sum(len(str(p["image_b64"])) for p in payloads) / 2**20

    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            (count, *compare(args.db, count, Path(tmp), payloads, args.repeat)) for count in counts
        ]

    print(
        f"\n{args.images} images {args.size}×{args.size} L ({mib:.1f} MiB base64),"
        f" detail_factor={args.detail}, formats=glb, db={args.db}, best of {args.repeat}"
    )
    print(f"{'case':<26}{'reference':>10}{'images/s':>10}{'ratio':>8}{'submit s':>10}")
    for count, reference, rate, submit_s in rows:
        label = f"raypipe, {count} CPU{'s' if count > 1 else ''}"
        print(
            f"{label:<26}{reference:>10.2f}{rate:>10.2f}{rate / reference:>8.2f}{submit_s:>10.2f}"
        )
    base_count, _, base_rate, _ = min(rows)
    for count, _, rate, _ in rows:
        if count != base_count:
            print(f"scaling {base_count} → {count} CPUs: {rate / base_rate:.2f}×")


if __name__ == "__main__":
    main()
