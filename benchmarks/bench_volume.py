"""Volume-rendering speed: a 256x256 image x 128 samples of a TripoSR-sized triplane field (random weights).

Compares the chunked renderer (TripoSR mode) with two baselines measured in the same run:

* a straightforward per-ray loop (one ray's 128 samples per field query), timed on a subset of rays and extrapolated;
* one fully vectorised pass (every ray of the subset in a single chunk), timed on a subset and extrapolated.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_volume.py`` (``--sweep`` also times several chunk sizes).
"""

from __future__ import annotations

import argparse
import time

import torch

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w
from monorecon.core.fields import TriplaneDecoder
from monorecon.core.triplane import sample_triplane
from monorecon.core.volume import VolumeRenderConfig, VolumeRenderer, composite, ray_aabb


def make_field(seed: int = 0):
    torch.manual_seed(seed)
    decoder = TriplaneDecoder.triposr().eval()
    planes = torch.randn(1, 3, 40, 64, 64) * 0.5

    def field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = decoder(sample_triplane(planes, points[None] / 0.87)[0])
        return out["density"], out["rgb"]

    return field


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_ray_loop(field, origins: torch.Tensor, directions: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Baseline: each ray on its own (TripoSR sampling and compositing)."""
    colors = []
    mids = (torch.arange(n_samples, dtype=origins.dtype) + 0.5) / n_samples
    white = torch.ones(3)
    for o, d in zip(origins, directions, strict=True):
        near, far, hit = ray_aabb(o[None], d[None], (-0.87,) * 3, (0.87,) * 3, shrink=1e-3, min_length=0.01)
        if not hit.item():
            colors.append(white)
            continue
        t = near * (1 - mids) + far * mids
        density, rgb = field(o + t[:, None] * d)
        deltas = torch.full((1, n_samples), 1.0 / n_samples)
        colors.append(composite(density[None], rgb[None], t[None], deltas, white)["rgb"][0])
    return torch.stack(colors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--loop-rays", type=int, default=256, help="rays timed for the per-ray loop baseline")
    parser.add_argument("--vector-rays", type=int, default=4096, help="rays timed for the single-chunk baseline")
    parser.add_argument("--sweep", action="store_true", help="also time chunk sizes of 4k..64k field queries")
    args = parser.parse_args()

    field = make_field()
    cameras = PerspectiveCameras(orbit_c2w(0.0, 0.0, 1.9), args.size, args.size, fov_y_deg=40.0)
    origins, directions = (x[0].reshape(-1, 3) for x in cameras.get_rays())
    config = VolumeRenderConfig.triposr(n_samples=args.samples)
    renderer = VolumeRenderer(config)
    hit = ray_aabb(origins, directions, *config.box_bounds, shrink=1e-3, min_length=0.01)[2]
    hit_o, hit_d = origins[hit], directions[hit]
    n_hit = hit_o.shape[0]
    chunk = renderer.auto_chunk_size(origins.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.size}x{args.size} rays "
          f"({n_hit} hit the box) x {args.samples} samples; auto chunk {chunk} rays")  # fmt: skip

    with torch.no_grad():
        renderer.render(field, origins[:64], directions[:64])  # warm-up
        ours = seconds(lambda: renderer.render(field, origins, directions))
        print(f"chunked renderer:              {ours:8.2f} s  ({n_hit * args.samples / ours / 1e6:.2f} M samples/s)")

        subset = torch.randperm(n_hit, generator=torch.Generator().manual_seed(0))
        loop_rays = min(args.loop_rays, n_hit)
        index = subset[:loop_rays]
        loop = seconds(lambda: per_ray_loop(field, hit_o[index], hit_d[index], args.samples)) * n_hit / loop_rays
        print(f"per-ray loop (extrapolated):   {loop:8.2f} s  ratio {loop / ours:6.1f}x  (from {loop_rays} rays)")

        vector_rays = min(args.vector_rays, n_hit)
        index = subset[:vector_rays]
        single = VolumeRenderer(VolumeRenderConfig.triposr(n_samples=args.samples, chunk_size=vector_rays))
        vector = seconds(lambda: single.render(field, hit_o[index], hit_d[index])) * n_hit / vector_rays
        print(f"single chunk (extrapolated):   {vector:8.2f} s  ratio {vector / ours:6.1f}x  (from {vector_rays} rays)")

        if args.sweep:  # interleaved rounds, best of each: robust to a machine whose load changes
            index = subset[: min(2048, n_hit)]
            sizes = (4096, 8192, 16384, 32768, 65536)
            best = dict.fromkeys(sizes, float("inf"))
            for _ in range(3):
                for points in sizes:
                    sized = VolumeRenderer(VolumeRenderConfig.triposr(n_samples=args.samples, chunk_size=points // 128))
                    took = seconds(lambda sized=sized: sized.render(field, hit_o[index], hit_d[index]))
                    best[points] = min(best[points], took)
            for points, took in best.items():
                print(f"  chunks of {points:6d} queries: {took:6.2f} s for {index.numel()} rays (best of 3)")


if __name__ == "__main__":
    main()
