"""Pose-fitting benchmark: recover random reference cameras of the real meshes (issue 5 acceptance).

For every mesh of ../shared/data/meshes (centred, farthest vertex at radius 1 ~ the tutorial teapot's size) and
``--views`` random reference cameras (azimuth U(0, 360), elevation U(-30, 70) deg, distance U(2.5, 3.5), fov 60,
znear 1, zfar 100, Phong headlight render at ``--size``), run :func:`monorecon.fit.pose.fit_pose` from the tutorial
start (3.0, 6.9, 2.5) with restarts. A fit succeeds when its rotation error is <= 2 deg and its position error <= 2 %
of the camera distance. Prints per mesh and overall success rates and mean seconds per fit.

Baseline, measured in the same run on the first ``--baseline-views`` views of each mesh: the tutorial method alone
(position parameter, sigma 1e-4 at full size, Adam lr 0.05, up to 200 steps, stop when the loss < 200 scaled to the
image size; no coarse phase, restarts or refinement). The ratio printed is seconds per fit (ours / baseline).

Usage: ``python benchmarks/bench_pose.py [--size 128] [--views 20] [--loss silhouette+shading] [--meshes teapot,...]``
"""

from __future__ import annotations

import argparse
import time

import torch

from common import SHARED_MESHES
from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.mesh_renderer import render_mesh
from monorecon.data.shapes import load_normalized_mesh
from monorecon.fit.pose import fit_pose, rotation_error_deg

MESH_DIR = SHARED_MESHES


def reference_views(n: int, seed: int) -> list[tuple[float, float, float]]:
    """(azimuth, elevation, distance) of n random reference cameras."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g)
    return [(360 * a, -30 + 100 * e, 2.5 + d) for a, e, d in u.tolist()]


def errors(c2w: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Rotation error (deg) and position error relative to the true camera distance."""
    position_error = float((c2w[:3, 3] - truth[:3, 3]).norm() / truth[:3, 3].norm())
    return rotation_error_deg(c2w, truth), position_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--baseline-views", type=int, default=3)
    parser.add_argument("--loss", default="silhouette+shading", choices=["silhouette", "silhouette+shading"])
    parser.add_argument("--meshes", default="", help="comma-separated names (default: every .ply)")
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    all_names = sorted(p.stem for p in MESH_DIR.glob("*.ply"))
    names = [n for n in args.meshes.split(",") if n] or all_names
    totals = {"ours": [0, 0, 0.0], "baseline": [0, 0, 0.0]}  # successes, fits, seconds
    print(f"size {args.size}, {args.views} views per mesh, loss {args.loss}, restarts {args.restarts}")
    for name in names:
        m_index = all_names.index(name)  # the same reference views whichever meshes are run together
        mesh = load_normalized_mesh(MESH_DIR / f"{name}.ply", radius=1.0)
        per_mesh = [0, 0, 0.0]
        for v_index, (az, el, dist) in enumerate(reference_views(args.views, args.seed + 1000 * m_index)):
            truth = orbit_c2w(az, el, dist)
            camera = PerspectiveCameras(truth, args.size, args.size, znear=1.0, zfar=100.0, fov_y_deg=60.0)
            with torch.no_grad():
                out = render_mesh(mesh.verts, mesh.faces, camera, vertex_colors=mesh.vertex_colors)
            image = torch.cat([out["rgb"][0].clamp(0, 1), out["alpha"][0, ..., None]], dim=-1)
            runs = [("ours", {"loss": args.loss, "restarts": args.restarts})]
            if v_index < args.baseline_views:
                runs.append(("baseline", {"restarts": 0, "coarse_size": None, "refine_steps": 0}))
            for label, options in runs:
                start = time.perf_counter()
                result = fit_pose(mesh, image, seed=args.seed, **options)
                seconds = time.perf_counter() - start
                rot, pos = errors(result.c2w, truth[0])
                ok = rot <= 2.0 and pos <= 0.02
                totals[label][0] += ok
                totals[label][1] += 1
                totals[label][2] += seconds
                if label == "ours":
                    per_mesh[0] += ok
                    per_mesh[1] += 1
                    per_mesh[2] += seconds
                print(
                    f"  {name:8s} view {v_index:2d} az {az:6.1f} el {el:5.1f} d {dist:4.2f} {label:8s} "
                    f"rot {rot:7.3f} deg pos {100 * pos:6.2f} % restart {result.restart} "
                    f"{'ok' if ok else 'FAIL'} {seconds:6.1f} s",
                    flush=True,
                )
        print(f"{name}: {per_mesh[0]}/{per_mesh[1]} succeeded, {per_mesh[2] / per_mesh[1]:.1f} s per fit", flush=True)
    ours, base = totals["ours"], totals["baseline"]
    print(f"ours:     success {ours[0]}/{ours[1]} = {100 * ours[0] / ours[1]:.1f} %, {ours[2] / ours[1]:.1f} s per fit")
    if base[1]:
        rate, seconds = 100 * base[0] / base[1], base[2] / base[1]
        print(f"baseline: success {base[0]}/{base[1]} = {rate:.1f} %, {seconds:.1f} s per fit")
        ratio = (ours[2] / ours[1]) / (base[2] / base[1])
        print(f"seconds per fit ratio ours / baseline: {ratio:.2f}")


if __name__ == "__main__":
    main()
