"""Soft rasterisation speed: binned rasteriser vs the unbinned brute force, forward + backward, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_raster.py [--mesh icosphere|bunny] [--size 256] [--faces-per-pixel 50]

The baseline is the same rasteriser with ``bin_size=0``: one tile holding the whole image, so every pixel is tested
against every face (vectorised, chunked to the same memory bound). Both produce identical fragments (checked).
"""

from __future__ import annotations

import argparse
import time

import torch
import trimesh

from common import SHARED_MESHES
from monorecon.core.cameras import PerspectiveCameras, look_at
from monorecon.core.raster import blur_radius_for_sigma, rasterize, soft_silhouette

# The project's real meshes lie beside the checkout.


def load_mesh(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "icosphere":
        tm = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    else:
        tm = trimesh.load(SHARED_MESHES / f"{name}.ply", process=False)
        tm.apply_translation(-tm.bounds.mean(axis=0))
        tm.apply_scale(2.0 / tm.extents.max())
    return torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.long)


def soft_step(verts, faces, cameras, sigma, k, bin_size):
    """One forward + backward pass of the soft silhouette; returns ((wall s, CPU s), fragments)."""
    verts = verts.clone().requires_grad_()
    start, start_cpu = time.perf_counter(), time.process_time()
    fragments = rasterize(cameras.transform_points_ndc(verts), faces, cameras.height, cameras.width,
                          faces_per_pixel=k, blur_radius=blur_radius_for_sigma(sigma), bin_size=bin_size)  # fmt: skip
    silhouette = soft_silhouette(fragments, sigma)
    (silhouette * torch.linspace(0, 1, cameras.width)).sum().backward()
    return (time.perf_counter() - start, time.process_time() - start_cpu), fragments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", default="icosphere", help="icosphere or a name in ../shared/data/meshes")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--faces-per-pixel", type=int, default=50)
    parser.add_argument("--sigma", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    verts, faces = load_mesh(args.mesh)
    cameras = PerspectiveCameras(look_at(torch.tensor([0.6, 0.8, 2.6])), args.size, args.size, fov_y_deg=50.0)
    print(f"mesh {args.mesh}: {len(verts)} vertices, {len(faces)} faces; image {args.size}x{args.size}, "
          f"K={args.faces_per_pixel}, sigma={args.sigma}, torch threads {torch.get_num_threads()}")  # fmt: skip

    soft_step(verts, faces, cameras, args.sigma, args.faces_per_pixel, None)  # warm-up
    binned = [soft_step(verts, faces, cameras, args.sigma, args.faces_per_pixel, None) for _ in range(args.repeats)]
    wall, cpu = min(t[0] for t, _ in binned), min(t[1] for t, _ in binned)
    print(f"binned (default tiles)  forward+backward: {wall:.3f} s wall, {cpu:.3f} s CPU (best of {args.repeats})")
    (brute_wall, brute_cpu), brute_fragments = soft_step(verts, faces, cameras, args.sigma, args.faces_per_pixel, 0)
    print(f"brute force (unbinned)  forward+backward: {brute_wall:.3f} s wall, {brute_cpu:.3f} s CPU (1 run)")
    print(f"speed-up: {brute_wall / wall:.1f}x wall, {brute_cpu / cpu:.1f}x CPU")
    same = torch.equal(binned[0][1].face_index, brute_fragments.face_index)
    print(
        f"identical face selection: {same}; covered pixels {(binned[0][1].face_index[..., 0] >= 0).float().mean():.3f}"
    )


if __name__ == "__main__":
    main()
