"""Reconstruction benchmark: the official TripoSR architecture (random weights) on this CPU.

Prints encode time in float32 and bfloat16, extraction at 256^3 dense vs coarse-to-fine (with the F-score between the
two meshes), image -> textured GLB end to end, and peak memory. Given the official code (``--official-code`` with
``--official-python``, an interpreter of a venv that has its requirements), it also times the official forward and
grid query on the same weights in the same run, and prints the ratio and the F-score between the two meshes.

    python benchmarks/reconstruct.py [--resolution 256] [--official-code DIR --official-python PY]

Random weights give a scene code of white noise, whose iso-surface fills the whole box (16 M faces at 256^3): nothing
like an object. So, on both sides identically, a forward hook low-passes the post-processor's output (8 x 8 average
pooling, bilinear upsampling back), and the decoder's density bias is shifted so that the iso level 25 cuts the
box; the field then has a few smooth closed surfaces, like an object. Everything else is the released architecture
at its default initialisation (seed 0).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from monorecon.api import ReconstructOptions, reconstruct_full
from monorecon.core.cameras import triposr_to_world
from monorecon.core.mesh import Mesh
from monorecon.eval.metrics import chamfer_and_fscore
from monorecon.io.images import to_uint8
from monorecon.io.mesh_io import save_mesh
from monorecon.models.triposr import TripoSRConfig, TripoSRModel
from monorecon.preprocess import preprocess_image

THRESHOLD = 25.0
POOL = 8  # low-pass factor of the scene code (module docstring)

# Runs in the official code's own venv: its forward, then its grid query, timed; the density grid is saved so that
# both meshes come from the same marching cubes (torchmcubes cannot be built here).
OFFICIAL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, types
    import numpy as np, torch
    code_dir, config_path, vit_dir, weights, image_path, resolution, out = sys.argv[1:8]
    resolution = int(resolution)
    sys.path.insert(0, code_dir)
    for name in ("rembg", "torchmcubes"):  # imported by the official code, not used here
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchmcubes"].marching_cubes = None
    import tsr.models.tokenizers.image as tok
    tok.hf_hub_download = lambda repo_id, filename: vit_dir + "/" + filename
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from PIL import Image
    from tsr.system import TSR
    from tsr.utils import scale_tensor
    cfg = OmegaConf.load(config_path); OmegaConf.resolve(cfg)
    model = TSR(cfg).eval()
    model.load_state_dict(load_file(weights), strict=True)
    def low_pass(module, inputs, output):
        flat = output.flatten(0, -4)
        smooth = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(flat, POOL), size=flat.shape[-2:],
                                                 mode="bilinear", align_corners=False)
        return smooth.reshape(output.shape)
    model.post_processor.register_forward_hook(low_pass)
    image = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
    with torch.no_grad():
        t0 = time.perf_counter(); codes = model([image], device="cpu"); t1 = time.perf_counter()
        model.set_marching_cubes_resolution(resolution)
        helper = model.isosurface_helper
        radius = model.renderer.cfg.radius
        grid = scale_tensor(helper.grid_vertices, helper.points_range, (-radius, radius))
        density = model.renderer.query_triplane(model.decoder, grid, codes[0])["density_act"]
        t2 = time.perf_counter()
    np.save(out + "/density.npy", density.reshape(resolution, resolution, resolution).numpy())
    json.dump({"forward_s": t1 - t0, "query_s": t2 - t1}, open(out + "/times.json", "w"))
    """
).replace("POOL", str(POOL))


def low_pass(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: (..., C, H, W) scene code -> its POOL x POOL average, bilinearly upsampled back."""
    flat = output.flatten(0, -4)
    smooth = F.interpolate(F.avg_pool2d(flat, POOL), size=flat.shape[-2:], mode="bilinear", align_corners=False)
    return smooth.reshape(output.shape)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def make_model(seed: int) -> TripoSRModel:
    torch.manual_seed(seed)
    model = TripoSRModel(TripoSRConfig()).eval()
    model.post_processor.register_forward_hook(low_pass)
    return model


def place_surface(model: TripoSRModel, scene_code: torch.Tensor) -> None:
    """Shift the density bias so the iso level 25 cuts the box (30 % of random points inside)."""
    points = (torch.rand(20000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.6
    with torch.no_grad():
        density, _ = model.query(scene_code, points[None])
        log_density = density.clamp_min(1e-12).log().flatten()
        shift = np.log(THRESHOLD) - torch.quantile(log_density, 0.7).item()
        model.decoder.layers[-1].bias[0] += shift


def test_image(size: int = 600) -> np.ndarray:
    """A deterministic RGBA test image: a two-colour blob on transparency."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    alpha = (((xx - 0.5) / 0.35) ** 2 + ((yy - 0.55) / 0.4) ** 2 < 1).astype(np.float32)
    rgb = np.stack([xx, 0.3 + 0.4 * yy, 1 - xx], axis=-1).astype(np.float32)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def mesh_fscore(a: Mesh, b: Mesh, threshold: float = 0.005) -> float:
    """F-score@threshold between the two meshes' vertex sets.

    Both meshes come from marching cubes on the same grid, so equal fields give (nearly) equal vertices; random
    surface samples would not do here: their spacing (~0.01 for 20,000 points) exceeds the threshold.
    """
    scores = chamfer_and_fscore(a.verts.double(), b.verts.double(), thresholds=(threshold,))
    return scores[f"fscore@{threshold:g}"]


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has AMX or AVX512-BF16 (where bfloat16 matmuls beat float32), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--texture-resolution", type=int, default=1024)
    parser.add_argument("--official-code", type=Path, help="checkout of VAST-AI-Research/TripoSR")
    parser.add_argument("--official-python", type=Path, help="python of a venv with the official requirements")
    parser.add_argument("--official-config", type=Path, help="official config.yaml (released with the checkpoint)")
    parser.add_argument(
        "--e2e-dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="end-to-end run dtype (auto: bfloat16 on CPUs with AMX / AVX512-BF16, else float32)",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    model, t_build = timed(make_model, 0)
    print(f"build official architecture (random init): {t_build:.1f} s")
    image = test_image()
    # Quantised to 8 bits: the official code reads the same prepared image from a PNG, so both sides see equal input.
    prepared = to_uint8(preprocess_image(image).rgb).astype(np.float32) / 255.0
    rgb = torch.from_numpy(prepared)[None]
    model.encode(rgb[:, :64, :64])  # warm-up (small)
    code32, t_fp32 = timed(model.encode, rgb)
    place_surface(model, code32)
    model.autocast_dtype = torch.bfloat16
    code16, t_bf16 = timed(model.encode, rgb)
    model.autocast_dtype = None
    rel = ((code16 - code32).abs().max() / code32.abs().max()).item()
    print(
        f"encode float32: {t_fp32:.2f} s | bfloat16: {t_bf16:.2f} s | "
        f"ratio {t_fp32 / t_bf16:.2f}x (max rel diff {rel:.1e})"
    )

    dense, t_dense = timed(model.extract_mesh, code32, resolution=args.resolution, threshold=THRESHOLD, method="dense")
    c2f, t_c2f = timed(
        model.extract_mesh, code32, resolution=args.resolution, threshold=THRESHOLD, method="coarse_to_fine"
    )
    f_c2f = mesh_fscore(dense, c2f)
    print(
        f"extract {args.resolution}^3 dense: {t_dense:.2f} s | coarse-to-fine: {t_c2f:.2f} s | "
        f"ratio {t_dense / t_c2f:.2f}x | F-score@0.005 between them {f_c2f:.4f} | faces {dense.faces.shape[0]}"
    )

    native_bf16 = cpu_has_native_bf16()
    e2e_dtype = args.e2e_dtype if args.e2e_dtype != "auto" else ("bfloat16" if native_bf16 else "float32")
    print(f"CPU native bfloat16 (AMX / AVX512-BF16): {'yes' if native_bf16 else 'no'}")
    model.autocast_dtype = torch.bfloat16 if e2e_dtype == "bfloat16" else None
    options = ReconstructOptions(
        mc_resolution=args.resolution,
        threshold=THRESHOLD,
        bake_texture=True,
        texture_resolution=args.texture_resolution,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = reconstruct_full(image, model, options)
        save_mesh(result.mesh, Path(tmp) / "mesh.glb")
        t_e2e = time.perf_counter() - start
    print(
        f"image -> textured GLB end to end ({e2e_dtype}, coarse-to-fine, {args.texture_resolution}^2 texture): "
        f"{t_e2e:.2f} s"
    )
    model.autocast_dtype = None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MiB")

    if args.official_code and args.official_python:
        run_official(args, model, prepared, dense, t_fp32 + t_dense, t_e2e, e2e_dtype)


def run_official(
    args, model, prepared: np.ndarray, dense, ours_fp32_s: float, ours_e2e_s: float, e2e_dtype: str
) -> None:
    import mcubes

    from monorecon.io.images import save_image

    config = args.official_config or args.official_code / "config.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vit_dir = tmp / "vit"
        vit_dir.mkdir()
        enc = model.config.image_encoder
        (vit_dir / "config.json").write_text(
            json.dumps(
                {
                    "model_type": "vit",
                    "hidden_size": enc.hidden_size,
                    "num_hidden_layers": enc.num_layers,
                    "num_attention_heads": enc.num_heads,
                    "intermediate_size": enc.intermediate_size,
                    "patch_size": enc.patch_size,
                    "image_size": enc.pretrained_image_size,
                    "layer_norm_eps": enc.layer_norm_eps,
                    "hidden_act": "gelu",
                    "qkv_bias": True,
                    "hidden_dropout_prob": 0.0,
                    "attention_probs_dropout_prob": 0.0,
                    "num_channels": 3,
                }
            )
        )
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "weights.safetensors")
        save_image(prepared, tmp / "input.png")
        cmd = [
            str(args.official_python), "-c", OFFICIAL_SCRIPT, str(args.official_code), str(config), str(vit_dir),
            str(tmp / "weights.safetensors"), str(tmp / "input.png"), str(args.resolution), str(tmp),
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        times = json.loads((tmp / "times.json").read_text())
        density = np.load(tmp / "density.npy")
    (verts, faces), t_mc = timed(mcubes.marching_cubes, density, THRESHOLD)
    radius = 0.87
    verts = verts / (args.resolution - 1) * 2 * radius - radius

    verts_world = triposr_to_world(torch.from_numpy(np.ascontiguousarray(verts)).float()).numpy()
    official_s = times["forward_s"] + times["query_s"] + t_mc
    print(
        f"official: forward {times['forward_s']:.2f} s + grid query {times['query_s']:.2f} s + marching cubes "
        f"(PyMCubes stand-in) {t_mc:.2f} s = {official_s:.2f} s (subprocess wall {wall:.1f} s)"
    )
    print(f"ours float32 (encode + dense extraction): {ours_fp32_s:.2f} s -> {official_s / ours_fp32_s:.2f}x faster")
    print(f"ours {e2e_dtype} end to end, textured GLB: {ours_e2e_s:.2f} s -> {official_s / ours_e2e_s:.2f}x faster")
    official_mesh = Mesh(torch.from_numpy(verts_world).float(), torch.from_numpy(faces.astype(np.int64)))
    print(f"F-score@0.005 official vs ours (float32, dense, vertex sets): {mesh_fscore(official_mesh, dense):.4f}")


if __name__ == "__main__":
    sys.exit(main())
