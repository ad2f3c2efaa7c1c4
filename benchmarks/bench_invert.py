"""MeshInversion benchmark: mask IoU on held-out synthetic objects of the trained classes (issue 5 acceptance).

Held-out objects: :func:`monorecon.data.shapes.make_object` with seeds 10000, 10001, ... (training uses seeds from
``first_seed``, 0 by default, well below), rendered like the synthetic datasets (:mod:`monorecon.data.synth`:
perspective camera, fov 40 deg, object filling 85 % of the frame, azimuth uniform, elevation U(-10, 40), one random
tinted directional light, Phong), at ``--size`` pixels. Each is inverted with :func:`monorecon.fit.invert.invert`;
the table lists the mask IoU after the best-of-N initialisation and after optimisation, and the seconds of each.
The baseline in the same run is the initialisation alone (its IoU and seconds); the ratio printed is total seconds
/ initialisation seconds.

Usage: ``python benchmarks/bench_invert.py --generator runs/meshgan_small [--config configs/meshgan_small.yaml]
[--objects 5] [--size 64]``; without a trained generator in ``--generator`` it trains one from ``--config`` first
(and prints the training time).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from monorecon.core.cameras import orbit_c2w
from monorecon.data.shapes import make_object
from monorecon.data.synth import camera_distance, render_views
from monorecon.fit.invert import DEFAULT_WEIGHTS, PAPER_WEIGHTS, invert
from monorecon.models.meshgan.train import MeshGANConfig, load_generator, train_meshgan


def target_view(class_name: str, seed: int, size: int) -> torch.Tensor:
    """(size, size, 4) RGBA render of a held-out object, synth-style (see the module docstring)."""
    rng = np.random.default_rng(seed)
    mesh = make_object(class_name, seed)
    azimuth, elevation = rng.uniform(0, 360), rng.uniform(-10, 40)
    view = {"c2w": orbit_c2w(azimuth, elevation, camera_distance(40.0))[0].tolist(), "fov_y_deg": 40.0}
    light_az, light_el = math.radians(rng.uniform(0, 360)), math.radians(rng.uniform(15, 75))
    tint = 1.0 - 0.15 * rng.uniform(size=3)
    light = {
        "direction": [
            math.cos(light_el) * math.sin(light_az),
            math.sin(light_el),
            math.cos(light_el) * math.cos(light_az),
        ],
        "ambient_color": (tint * 0.4).tolist(),
        "diffuse_color": (tint * 0.6).tolist(),
        "specular_color": [0.1, 0.1, 0.1],
    }
    rgba = render_views(mesh, [view], size, light)["rgba"][0]
    return torch.from_numpy(rgba)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="runs/meshgan_small", help="training output folder")
    parser.add_argument("--config", default="configs/meshgan_small.yaml")
    parser.add_argument("--objects", type=int, default=5, help="held-out objects per class")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n-init", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=["default", "paper"], default="default", help="loss weights")
    args = parser.parse_args()

    folder = Path(args.generator)
    if not (folder / "generator.safetensors").is_file():
        start = time.perf_counter()
        train_meshgan(args.config, folder)
        print(f"trained the generator in {time.perf_counter() - start:.0f} s")
    generator = load_generator(folder)
    weights = DEFAULT_WEIGHTS if args.weights == "default" else PAPER_WEIGHTS
    print(f"loss weights ({args.weights}): {weights}; {args.size} px, n_init {args.n_init}")
    classes = MeshGANConfig.from_yaml(folder / "config.yaml").classes

    print(f"{'class':8s} {'seed':>6s} {'IoU init':>9s} {'IoU final':>9s} {'init s':>7s} {'total s':>8s}")
    rows = []
    for class_name in classes:
        for k in range(args.objects):
            seed = 10000 + k
            image = target_view(class_name, seed, args.size)
            start = time.perf_counter()
            init = invert(image, generator, n_init=args.n_init, stage_steps=(0,), z_lrs=(0.0,), camera_lrs=(0.0,),
                          seed=args.seed)  # fmt: skip
            init_seconds = time.perf_counter() - start
            start = time.perf_counter()
            result = invert(image, generator, n_init=args.n_init, weights=weights, seed=args.seed)
            seconds = time.perf_counter() - start
            rows.append((result.init_iou, result.iou, init_seconds, seconds))
            assert abs(init.iou - result.init_iou) < 1e-9  # same seed: same initialisation
            ious = f"{result.init_iou:9.3f} {result.iou:9.3f}"
            print(f"{class_name:8s} {seed:6d} {ious} {init_seconds:7.1f} {seconds:8.1f}", flush=True)
    table = np.array(rows)
    print(f"mean IoU: initialisation {table[:, 0].mean():.3f}, after inversion {table[:, 1].mean():.3f}; "
          f"{int((table[:, 1] >= 0.85).sum())}/{len(table)} objects >= 0.85, "
          f"{int((table[:, 1] > table[:, 0]).sum())}/{len(table)} improved")  # fmt: skip
    init_s, total_s = table[:, 2].mean(), table[:, 3].mean()
    print(f"seconds per object: initialisation (baseline) {init_s:.1f}, inversion {total_s:.1f}, "
          f"ratio {total_s / init_s:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
