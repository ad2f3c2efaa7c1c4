"""Isosurface extraction: dense vs coarse-to-fine marching cubes on a field as costly as a small MLP.

    python benchmarks/bench_extract.py [--resolution 256] [--threads 2]

The field is an analytic union of two spheres and a torus plus 1e-3 x a fixed random MLP (3 -> 64 -> 64 -> 64 -> 64
-> 1, SiLU; about 16k multiply-adds per point, the order of TripoSR's 64-wide decoder), so every query pays an MLP
while the surface stays the analytic one. Prints the wall and CPU seconds and the points queried of each method, their
ratios (dense is the baseline, measured in the same run) and the F-score@0.005 between the two meshes. CPU seconds
are the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from monorecon.core.extract import extract_isosurface


def make_field(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    widths = [3, 64, 64, 64, 64, 1]
    layers: list[torch.nn.Module] = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.SiLU()]
    mlp = torch.nn.Sequential(*layers[:-1]).eval()

    class Field(torch.nn.Module):
        def forward(self, points: torch.Tensor) -> torch.Tensor:
            big = 0.45 - (points - points.new_tensor([-0.3, 0.1, 0.0])).norm(dim=-1)
            small = 0.2 - (points - points.new_tensor([0.55, 0.45, 0.2])).norm(dim=-1)
            x, y, z = (points - points.new_tensor([0.3, -0.45, 0.0])).unbind(-1)
            torus = 0.1 - torch.sqrt((torch.sqrt(x**2 + z**2) - 0.35) ** 2 + y**2)
            return torch.maximum(torch.maximum(big, small), torus) + 1e-3 * torch.tanh(mlp(points)[:, 0])

    return Field()


def f_score(a: trimesh.Trimesh, b: trimesh.Trimesh, tau: float = 0.005) -> float:
    """F-score at ``tau``: 100k samples of each surface against 2M samples of the other (spacing well below tau)."""

    def fraction_near(x: trimesh.Trimesh, y: trimesh.Trimesh) -> float:
        points = trimesh.sample.sample_surface(x, 100_000, seed=0)[0]
        dense = trimesh.sample.sample_surface(y, 2_000_000, seed=1)[0]
        return float((cKDTree(dense).query(points)[0] < tau).mean())

    precision, recall = fraction_near(a, b), fraction_near(b, a)
    return 2 * precision * recall / (precision + recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    field = make_field()
    queried = {"dense": 0, "coarse_to_fine": 0}
    results = {}
    for method in ("dense", "coarse_to_fine"):

        def density(points: torch.Tensor, method: str = method) -> torch.Tensor:
            queried[method] += len(points)
            return field(points)

        start, start_cpu = time.perf_counter(), time.process_time()
        mesh = extract_isosurface(density, args.resolution, 0.0, 1.0, method=method)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        results[method] = (seconds, cpu_seconds, mesh)
        print(
            f"{method:>15}: {seconds:8.2f} s wall {cpu_seconds:8.2f} s CPU  {queried[method] / 1e6:7.2f} M points "
            f"queried  {mesh.num_verts} vertices {mesh.num_faces} faces"
        )
    dense_s, dense_cpu, dense_mesh = results["dense"]
    fast_s, fast_cpu, fast_mesh = results["coarse_to_fine"]
    identical = torch.equal(dense_mesh.faces, fast_mesh.faces) and torch.equal(dense_mesh.verts, fast_mesh.verts)
    score = f_score(dense_mesh.to_trimesh(), fast_mesh.to_trimesh())
    print(f"resolution {args.resolution}^3, {args.threads} threads")
    print(
        f"speed-up coarse_to_fine vs dense: {dense_s / fast_s:.2f}x wall, {dense_cpu / fast_cpu:.2f}x CPU "
        f"(queries {np.divide(*queried.values()):.1f}x fewer)"
    )
    print(f"F-score@0.005 coarse_to_fine vs dense: {score:.4f}; identical meshes: {identical}")


if __name__ == "__main__":
    main()
