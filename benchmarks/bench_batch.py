"""Batch reconstruction: ``monorecon reconstruct FOLDER`` in one process vs ``--workers N`` processes.

    python benchmarks/bench_batch.py [--copies 2] [--workers 2] [--mc-resolution 256]

Reconstructs the bundled examples (``examples/*.png``, each ``--copies`` times under other names) with the bundled
model into a temporary folder, once with ``--workers 1`` (torch's own threads; the baseline, measured in the same
run) and once with ``--workers N`` (one torch thread each), prints the wall seconds of each and their ratio, and
checks that the two runs wrote meshes with the same face counts and vertices (up to float rounding).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import print_workers_speedup, seconds_with_workers
from monorecon.cli import main as monorecon
from monorecon.io import load_mesh

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of each example image")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mc-resolution", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        for image in sorted(EXAMPLES.glob("*.png")):
            for copy in range(args.copies):
                shutil.copy(image, inputs / f"{image.stem}{copy}.png")
        n_images = len(list(inputs.iterdir()))

        def run(workers: int) -> None:
            argv = ["reconstruct", str(inputs), "-o", str(Path(tmp) / f"w{workers}"), "--format", "ply",
                    "--mc-resolution", str(args.mc_resolution), "--workers", str(workers), "--quiet"]  # fmt: skip
            if monorecon(argv) != 0:
                raise SystemExit(f"reconstruct --workers {workers} failed")

        seconds = seconds_with_workers(run, args.workers)
        largest = 0.0
        for folder in sorted(p for p in (Path(tmp) / "w1").iterdir() if p.is_dir()):  # not batch.csv
            one, many = (load_mesh(Path(tmp) / w / folder.name / "mesh.ply") for w in ("w1", f"w{args.workers}"))
            if one.num_faces != many.num_faces:
                raise SystemExit(f"{folder.name}: {one.num_faces} vs {many.num_faces} faces")
            largest = max(largest, float(np.abs((one.verts - many.verts).numpy()).max()))
    print(f"{n_images} images, --mc-resolution {args.mc_resolution}, the bundled model")
    print_workers_speedup(seconds, n_images, "image")
    print(f"same face counts; largest vertex difference {largest:.1e}")


if __name__ == "__main__":
    main()
