"""UV unwrapping before a texture bake (:func:`monorecon.core.bake.unwrap_uv`, xatlas): packing without trying chart
rotations, against the baseline measured in the same run, xatlas's default packing (which tries them; what
``unwrap_uv`` did before). The meshes are the bundled model's for the example images, decimated as
``reconstruct --bake-texture`` decimates them (``monorecon.api.BAKE_MAX_FACES`` faces), packed for a 1024-texel
texture. Prints CPU seconds (steadier than wall time on a shared machine), their ratio, the charts and the share of the
atlas the charts cover (xatlas's utilisation: higher is better).

    python benchmarks/bench_unwrap.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xatlas

from monorecon.api import BAKE_MAX_FACES, ReconstructOptions, load_model, reconstruct_full
from monorecon.core._unwrap_worker import atlas_pack_options

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.png"))


def pack(verts: np.ndarray, faces: np.ndarray, rotate_charts: bool) -> tuple[float, int, float]:
    """CPU seconds, chart count and utilisation of one xatlas run with unwrap_uv's options (``rotate_charts`` set)."""
    options = atlas_pack_options(1024, 4)
    options.rotate_charts = rotate_charts
    atlas = xatlas.Atlas()
    atlas.add_mesh(verts, faces)
    start = time.process_time()
    atlas.generate(pack_options=options)
    seconds = time.process_time() - start
    if atlas.atlas_count != 1:
        raise RuntimeError(f"{atlas.atlas_count} atlases")
    return seconds, atlas.chart_count, atlas.utilization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each packing per mesh (the fastest is kept)")
    args = parser.parse_args()
    model = load_model()
    totals = {True: 0.0, False: 0.0}
    for image in EXAMPLES:
        mesh = reconstruct_full(image, model, ReconstructOptions(target_faces=BAKE_MAX_FACES)).mesh
        verts = mesh.verts.numpy().astype(np.float32)
        faces = mesh.faces.numpy().astype(np.uint32)
        row, seconds = [f"{image.stem} ({mesh.num_faces:,} faces):"], {}
        for rotate in (True, False):
            runs = [pack(verts, faces, rotate) for _ in range(args.repeats)]
            seconds[rotate] = min(run[0] for run in runs)
            totals[rotate] += seconds[rotate]
            name = "rotations tried (baseline)" if rotate else "no rotations"
            row.append(f"{name} {seconds[rotate]:.1f} s, {runs[0][1]} charts, utilisation {runs[0][2]:.3f};")
        row.append(f"x{seconds[True] / seconds[False]:.2f} less CPU")
        print(" ".join(row), flush=True)
    ratio = totals[True] / totals[False]
    print(f"all: {totals[True]:.1f} s (baseline) -> {totals[False]:.1f} s, x{ratio:.2f} less CPU")


if __name__ == "__main__":
    main()
