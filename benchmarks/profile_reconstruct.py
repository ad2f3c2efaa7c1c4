"""Where the time of image -> textured GLB goes: CPU seconds per stage (process time, robust to a shared machine).

Stages mirror :func:`monorecon.api.reconstruct_full` (the official TripoSR architecture at random weights, density
bias shifted as in ``benchmarks/reconstruct.py`` so that a surface exists) and each is timed on its own: encode
(image encoder / backbone / upsampler), extraction (field queries vs marching cubes), clean-up, the input photo's
colours on the vertices, UV unwrap, UV raster, texel colour queries and their photo colours, dilation and GLB
writing. Also times the encoder's matmul in float32 and bfloat16, since CPUs without native bf16 (no AVX512-BF16 /
AMX) emulate it.

    python benchmarks/profile_reconstruct.py [--resolution 256] [--texture-resolution 1024] [--dtype float32]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from monorecon.core.bake import dilate_texture, rasterize_uv_positions, unwrap_uv
from monorecon.core.extract import cleanup_mesh
from monorecon.core.projection import project_image_colours
from monorecon.io.mesh_io import save_mesh
from monorecon.models.triposr.model import input_camera
from monorecon.preprocess import preprocess_image
from reconstruct import THRESHOLD, make_model, place_surface, test_image

STAGES: dict[str, float] = {}


def stage(name: str, fn, *args, quiet: bool = False, **kwargs):
    """Run ``fn`` and add its process (CPU) time to ``STAGES[name]``; print it unless ``quiet``."""
    start = time.process_time()
    result = fn(*args, **kwargs)
    seconds = time.process_time() - start
    STAGES[name] = STAGES.get(name, 0.0) + seconds
    if not quiet:
        print(f"  {name}: {seconds:.2f} cpu s", flush=True)
    return result


def matmul_rate(dtype: torch.dtype) -> float:
    """GFLOP per CPU second of a ViT-sized linear layer (3072 x 1024 @ 1024 x 4096) in ``dtype``."""
    x, w = torch.randn(3072, 1024, dtype=dtype), torch.randn(4096, 1024, dtype=dtype)
    torch.nn.functional.linear(x, w)
    start = time.process_time()
    torch.nn.functional.linear(x, w)
    return 2 * 3072 * 1024 * 4096 / (time.process_time() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--texture-resolution", type=int, default=1024)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--target-faces", type=int, default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    print(f"linear 3072x1024x4096: float32 {fp32:.1f} GFLOP/cpu-s | bfloat16 {bf16:.1f} GFLOP/cpu-s")

    model = make_model(0)
    image = test_image()
    prepared = stage("preprocess", preprocess_image, image)
    rgb = torch.from_numpy(prepared.rgb)[None]
    model.encode(rgb[:, :64, :64])  # warm-up
    place_surface(model, model.encode(rgb))
    model.autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    pixels = torch.nn.functional.interpolate(
        rgb.permute(0, 3, 1, 2), (512, 512), mode="bilinear", align_corners=False, antialias=True
    )
    with model._autocast():
        image_tokens = stage("encode: image encoder (ViT)", model.image_tokenizer, pixels)
        tokens = stage("encode: backbone", model.backbone, model.tokenizer(1), image_tokens)
    code = stage("encode: upsampler", lambda t: model.post_processor(model.tokenizer.detokenize(t.float())), tokens)

    query_fn = model.query

    def timed_query(*qargs, **qkwargs):
        return stage("query (extraction)", query_fn, *qargs, quiet=True, **qkwargs)

    model.query = timed_query
    mesh = stage("extract (total)", model.extract_mesh, code, args.resolution, THRESHOLD, method="coarse_to_fine")
    model.query = query_fn
    STAGES["extract: marching cubes + bookkeeping"] = STAGES["extract (total)"] - STAGES["query (extraction)"]
    faces_mc = mesh.faces.shape[0]
    mesh = stage("cleanup", cleanup_mesh, mesh, min_component_fraction=0.01, target_faces=args.target_faces)
    camera = input_camera(prepared.alpha.shape[0])
    mesh, recolour = stage(
        "photo colours (vertices)", project_image_colours, mesh, camera, rgb[0], torch.from_numpy(prepared.alpha)
    )
    unwrapped = stage("bake: xatlas unwrap", unwrap_uv, mesh, args.texture_resolution)
    positions, covered = stage("bake: UV raster", rasterize_uv_positions, unwrapped, args.texture_resolution)
    flat = positions[covered]
    colours = stage("bake: colour query", lambda: model.query(code, flat[None])[1][0])
    colours = stage("bake: photo colours (texels)", recolour, flat, colours)
    texture = np.zeros((args.texture_resolution,) * 2 + (3,), dtype=np.float32)
    texture[covered.numpy()] = colours.numpy()
    texture = stage("bake: dilate", dilate_texture, texture, covered.numpy())
    unwrapped = dataclasses.replace(unwrapped, texture=torch.from_numpy(texture))
    with tempfile.TemporaryDirectory() as tmp:
        stage("GLB write", save_mesh, unwrapped, Path(tmp) / "mesh.glb")

    total = sum(v for k, v in STAGES.items() if k not in ("extract (total)", "query (extraction)")) + STAGES.get(
        "query (extraction)", 0.0
    )
    print(
        f"dtype {args.dtype}, {args.resolution}^3 coarse-to-fine, {args.texture_resolution}^2 texture, "
        f"{faces_mc} faces after marching cubes, {mesh.faces.shape[0]} after clean-up, {int(covered.sum())} texels"
    )
    print(f"{'stage':40s} {'cpu s':>8s} {'share':>7s}")
    for name, seconds in STAGES.items():
        if name == "extract (total)":
            continue
        print(f"{name:40s} {seconds:8.2f} {100 * seconds / total:6.1f}%")
    print(f"{'total':40s} {total:8.2f}")


if __name__ == "__main__":
    main()
