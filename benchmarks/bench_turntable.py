"""Turntable frames (``monorecon render``): vertex normals computed once for the still mesh, against the baseline
measured in the same run, normals recomputed for every frame by ``render_mesh`` (what ``turntable_from_mesh`` did
before). Both give identical frames (checked: the reconstruction has no vertex copies, so ``Mesh.vertex_normals``
equals ``render_mesh``'s own). The mesh is the bundled model's for ``examples/mug.png`` (the default
``reconstruct``, ~115,000 faces); the two ways alternate frame by frame and CPU seconds are counted, so a busy
machine slows both alike.

    OMP_NUM_THREADS=1 python benchmarks/bench_turntable.py [--frames 12] [--size 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from monorecon.api import ReconstructOptions, load_model, reconstruct_full
from monorecon.core.mesh_renderer import headlight, render_mesh
from monorecon.video import FIT_RADIUS, PREVIEW_LIGHTING, turntable_cameras

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mug.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    mesh = reconstruct_full(EXAMPLE, load_model(), ReconstructOptions(progress=False)).mesh
    centre, radius = mesh.bounding_sphere()
    verts = ((mesh.verts.double() - centre.double()) * (FIT_RADIUS / radius)).float()
    cameras = turntable_cameras(args.frames, size=args.size)
    seconds = {"per frame (baseline)": 0.0, "once": 0.0}
    with torch.inference_mode():
        start = time.process_time()
        once = dataclasses.replace(mesh, verts=verts).vertex_normals  # as turntable_from_mesh computes them
        seconds["once"] += time.process_time() - start
        print(f"vertex normals: {1e3 * seconds['once']:.0f} ms")
        for i in range(args.frames):
            frames = []
            ways = (("per frame (baseline)", None), ("once", once))
            for way, normals in ways if i % 2 else ways[::-1]:  # who goes first alternates
                start = time.process_time()
                out = render_mesh(verts, mesh.faces, cameras[i], vertex_colors=mesh.vertex_colors, normals=normals,
                                  lights=headlight(cameras[i], **PREVIEW_LIGHTING), shading="lambert")  # fmt: skip
                seconds[way] += time.process_time() - start
                frames.append(out["rgb"])
            if not torch.equal(*frames):
                raise RuntimeError(f"frame {i}: the two ways differ")
    base = seconds["per frame (baseline)"]
    print(f"{mesh.num_faces:,} faces, {args.frames} frames of {args.size} px, identical frames (CPU seconds)")
    print(f"normals per frame (baseline): {base:.1f} s ({base / args.frames:.2f} s per frame)")
    print(f"normals once: {seconds['once']:.1f} s, speed-up x{base / seconds['once']:.2f}")


if __name__ == "__main__":
    main()
