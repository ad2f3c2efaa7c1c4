"""Volume IoU's occupancy (:func:`monorecon.eval.metrics.solid_occupancy`: signed ray crossings along three axes)
against the baseline measured in the same run, the generalised winding number at every cell centre
(:func:`monorecon.eval.metrics.winding_number`, what ``volume_iou`` used before). The real meshes of
``../shared/data`` normalised to the unit box, on a 16^3 grid (the baseline's cost is cells x faces, so larger grids
take it minutes); also the new method alone at 64^3, the ``eval`` default. Prints CPU seconds, their ratio and
whether the two occupancies agree.

    python benchmarks/bench_volume_iou.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import SHARED_MESHES
from monorecon.eval.metrics import solid_occupancy, winding_number
from monorecon.io.mesh_io import load_mesh


def cpu_seconds(fn) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi, resolution = -0.55, 0.55, 16
    axis = lo + (np.arange(resolution) + 0.5) * (hi - lo) / resolution
    centres = torch.tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    print(f"{'mesh':8} {'faces':>6} {'winding 16^3 s':>15} {'crossings 16^3 s':>17} {'ratio':>7} {'agree':>6} "
          f"{'crossings 64^3 s':>17}")  # fmt: skip
    for path in sorted(SHARED_MESHES.glob("*.ply")):
        mesh = load_mesh(path).normalized()
        base_s, winding = cpu_seconds(lambda: winding_number(mesh, centres))  # noqa: B023
        new_s, occupancy = cpu_seconds(lambda: solid_occupancy(mesh, lo, hi, resolution))  # noqa: B023
        fine_s, _ = cpu_seconds(lambda: solid_occupancy(mesh, lo, hi, 64))  # noqa: B023
        agree = bool(((winding > 0.5).numpy().reshape(occupancy.shape) == occupancy).all())
        print(f"{path.stem:8} {mesh.num_faces:6d} {base_s:15.2f} {new_s:17.3f} {base_s / new_s:7.0f}x {agree!s:>6} "
              f"{fine_s:17.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
