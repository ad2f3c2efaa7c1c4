"""Write the parity reference of ``tests/test_triposr.py`` (``reference.npz``) with the OFFICIAL TripoSR code.

The official package ``tsr`` (a checkout of https://github.com/VAST-AI-Research/TripoSR, given by ``--official``) is
imported from that folder at run time and run on CPU in float32; nothing of monorecon is imported, so the script
runs in a separate environment with the official requirements' transformers 4.35:

    python3.11 -m venv /tmp/tsr-env
    /tmp/tsr-env/bin/pip install torch==2.13.0 transformers==4.35.0 omegaconf==2.3.0 einops==0.7.0 \\
        Pillow==10.1.0 trimesh==4.0.5 imageio "numpy<2"
    git clone https://github.com/VAST-AI-Research/TripoSR /tmp/TripoSR
    /tmp/tsr-env/bin/python tools/triposr_reference.py --official /tmp/TripoSR -o /tmp/reference.npz \\
        --compare tests/data/triposr_ref/reference.npz

``--compare`` prints the largest absolute difference of every array with another npz (here the stored one). With
torch 2.13 on an x86-64 CPU the inputs and the weights come out bit-identical and the outputs agree to float32
round-off: the scene codes within 4e-6 (of values up to 10), and from the stored scene codes the density, colour
and renders are bit-identical, so the small differences are the encoder's arithmetic on another machine or build.

Official parts used: ``tsr.system.TSR`` builds the image tokenizer (transformers' ``ViTModel``), the triplane
tokenizer, the backbone, the post-processor, the decoder and the renderer from the config; ``TSR.forward`` (with its
``ImagePreprocessor``) gives the scene codes, ``TSR.render`` the images and ``renderer.query_triplane`` the density
and colour of points. Importing ``tsr`` needs ``omegaconf``, ``einops``, ``Pillow``, ``imageio`` and ``trimesh``
besides torch and transformers (``huggingface_hub``, ``safetensors`` and ``PyYAML`` come with transformers). Two
imports serve only background removal and mesh extraction, which are not run here: ``rembg`` (heavy, and it would
lift numpy and Pillow past the pins) and ``torchmcubes`` (built from git). Where they are not installed, empty
stand-in modules take their names, so the rest of the official code is imported unchanged.

Model: ``--reference-dir`` (default ``tests/data/triposr_ref``) holds our ``config.yaml`` and ``model.safetensors``.
The config (monorecon layout) is translated to the official hyper-parameters; the ViT sizes go into a
``config.json`` that the official image tokenizer reads in place of the ``facebook/dino-vitb16`` one it would
download (its ``hf_hub_download`` is pointed at that file). The checkpoint's key names and shapes are the official
module's own, so it is loaded with ``strict=True`` as it is.

Inputs: regenerated from seed 1234 (``--seed``) of torch's CPU generator, in the order the reference was made.

1. The weights of ``model.safetensors`` were drawn first: for every entry of the official model's state dict, in its
   order, ``torch.randn(shape, dtype=float64)`` scaled (biases 0.1; norm weights 1 + 0.2 x; decoder weights
   1.5 / sqrt(fan_in); the post-processor's transposed convolution 1 / sqrt(in_channels); other weights
   1 / sqrt(numel / shape[0])), rounded to float32, and the decoder's last bias[0] (density) set to 4. The script
   draws them again and checks that they equal the stored file (it uses the stored file either way).
2. ``images_u8`` (2, 96, 112, 3): ``torch.randint(0, 256) // 2`` (0..127) plus 64 inside the centred ellipse
   x^2 + y^2 < 0.5 (x, y from ``linspace(-1, 1)`` over the width and height).
3. ``points_triposr`` (2, 1000, 3): ``(torch.rand() * 2 - 1) * 0.95``, in TripoSR's frame.

``--inputs-from NPZ`` takes ``images_u8`` and ``points_triposr`` from an existing npz instead.

Outputs (float32 unless said), each scene on its own as the official code does:

* ``images_u8``, ``points_triposr``: the inputs;
* ``scene_codes`` (2, 3, 40, 16, 16): ``TSR.forward`` on the images as float32 / 255 (resized to the 80 px
  ``cond_image_size`` by the official preprocessor; the ViT's 3 x 3 position grid is interpolated to 5 x 5);
* ``density`` (2, 1000, 1), ``color`` (2, 1000, 3): ``density_act`` and ``color`` of
  ``renderer.query_triplane(decoder, points[b], scene_codes[b])``;
* ``render_elev0_32x32`` (2, 4, 32, 32, 3): ``TSR.render(n_views=4, elevation_deg=0, camera_distance=1.9,
  fovy_deg=40, height=32, width=32)`` (RGB on a white background);
* ``render_elev20_32x24`` (2, 5, 32, 24, 3): the same with 5 views at elevation 20, height 32 and width 24.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "triposr_ref"
SEED = 1234
IMAGE_SHAPE = (2, 96, 112, 3)
POINTS_SHAPE = (2, 1000, 3)
POINT_EXTENT = 0.95
DENSITY_LOGIT = 4.0  # the decoder's last bias[0] in the stored weights
CAMERA_DISTANCE, FOVY_DEG = 1.9, 40.0
RENDERS = {  # npz key: TSR.render arguments
    "render_elev0_32x32": {"n_views": 4, "elevation_deg": 0.0, "height": 32, "width": 32},
    "render_elev20_32x24": {"n_views": 5, "elevation_deg": 20.0, "height": 32, "width": 24},
}
KEYS = ("images_u8", "scene_codes", "points_triposr", "density", "color", *RENDERS)

# Our config layout's defaults (those of the released TripoSR), for keys a config.yaml leaves out.
OUR_DEFAULTS = {
    "image_encoder": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072,
                      "patch_size": 16, "pretrained_image_size": 224, "layer_norm_eps": 1e-12, "qkv_bias": True},
    "tokenizer": {"plane_size": 32, "num_channels": 1024},
    "backbone": {"in_channels": 1024, "num_heads": 16, "head_dim": 64, "num_layers": 16,
                 "cross_attention_dim": 768, "norm_num_groups": 32},
    "post_processor": {"in_channels": 1024, "out_channels": 40},
    "decoder": {"in_channels": 120, "hidden_channels": 64, "n_hidden_layers": 9, "activation": "silu"},
    "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp", "density_bias": -1.0,
                 "color_activation": "sigmoid", "n_samples": 128},
}  # fmt: skip
# The official config's class paths (monorecon.models.triposr.config writes the same: this script imports nothing of
# monorecon, since it runs in the official code's environment).
OFFICIAL_CLASSES = {
    "image_tokenizer": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder": "tsr.models.network_utils.NeRFMLP",
    "renderer": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}
VIT_ID = "local-vit"  # pretrained_model_name_or_path given to the official image tokenizer


def _section(ours: dict, name: str) -> dict:
    values = {**OUR_DEFAULTS[name], **(ours.get(name) or {})}
    ours_only = {"mesh_threshold", "silhouette_fill"} if name == "renderer" else set()
    unknown = set(values) - set(OUR_DEFAULTS[name]) - ours_only
    if unknown:
        raise SystemExit(f"config section {name!r} has keys this script does not know: {sorted(unknown)}")
    return values


def official_config(ours: dict) -> tuple[dict, dict]:
    """Our config.yaml (monorecon layout) as the official config and the ViT's Hugging Face config.json.

    ``foreground_ratio`` (framing in preprocessing), ``mesh_threshold`` and ``silhouette_fill`` are ours only and play
    no part in the official model.
    """
    vit, tokenizer, backbone = _section(ours, "image_encoder"), _section(ours, "tokenizer"), _section(ours, "backbone")
    post, decoder, renderer = _section(ours, "post_processor"), _section(ours, "decoder"), _section(ours, "renderer")
    vit_json = {
        "model_type": "vit", "hidden_act": "gelu", "num_channels": 3, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "hidden_size": vit["hidden_size"],
        "num_hidden_layers": vit["num_layers"], "num_attention_heads": vit["num_heads"],
        "intermediate_size": vit["intermediate_size"], "patch_size": vit["patch_size"],
        "image_size": vit["pretrained_image_size"], "layer_norm_eps": vit["layer_norm_eps"],
        "qkv_bias": vit["qkv_bias"],
    }  # fmt: skip
    parts = {
        "image_tokenizer": {"pretrained_model_name_or_path": VIT_ID},
        "tokenizer": {"plane_size": tokenizer["plane_size"], "num_channels": tokenizer["num_channels"]},
        "backbone": {
            "in_channels": backbone["in_channels"], "num_attention_heads": backbone["num_heads"],
            "attention_head_dim": backbone["head_dim"], "num_layers": backbone["num_layers"],
            "cross_attention_dim": backbone["cross_attention_dim"], "norm_num_groups": backbone["norm_num_groups"],
        },
        "post_processor": {"in_channels": post["in_channels"], "out_channels": post["out_channels"]},
        "decoder": {
            "in_channels": decoder["in_channels"], "n_neurons": decoder["hidden_channels"],
            "n_hidden_layers": decoder["n_hidden_layers"], "activation": decoder["activation"],
        },
        "renderer": {
            "radius": renderer["radius"], "feature_reduction": renderer["feature_reduction"],
            "density_activation": renderer["density_activation"], "density_bias": renderer["density_bias"],
            "color_activation": renderer["color_activation"], "num_samples_per_ray": renderer["n_samples"],
        },
    }  # fmt: skip
    config: dict = {"cond_image_size": ours.get("cond_image_size", 512)}
    for part, values in parts.items():
        config[f"{part}_cls"] = OFFICIAL_CLASSES[part]
        config[part] = values
    return config, vit_json


def import_official(official: Path, vit_config: Path) -> type:
    """``tsr.system.TSR`` from the checkout, with stand-ins for the unused optional imports."""
    if not (official / "tsr" / "system.py").is_file():
        raise SystemExit(f"--official {official}: no tsr/system.py there (a TripoSR checkout is expected)")
    for name in ("rembg", "torchmcubes"):
        if importlib.util.find_spec(name) is None:
            stand_in = types.ModuleType(name)
            stand_in.__doc__ = f"empty stand-in: {name} is not used to write the reference"
            if name == "torchmcubes":
                stand_in.marching_cubes = _no_marching_cubes
            sys.modules[name] = stand_in
    sys.path.insert(0, str(official))
    image_tokenizer = importlib.import_module("tsr.models.tokenizers.image")
    image_tokenizer.hf_hub_download = lambda repo_id, filename, **kwargs: _local_vit(vit_config, repo_id, filename)
    return importlib.import_module("tsr.system").TSR


def _no_marching_cubes(*args, **kwargs):
    raise RuntimeError("torchmcubes is not installed (mesh extraction is not part of the reference)")


def _local_vit(vit_config: Path, repo_id: str, filename: str) -> str:
    if repo_id != VIT_ID or filename != "config.json":
        raise RuntimeError(f"unexpected download of {filename} from {repo_id}")
    return str(vit_config)


def build_model(tsr_class: type, config: dict, weights: Path) -> torch.nn.Module:
    from omegaconf import OmegaConf  # an official requirement: only in the official environment

    cfg = OmegaConf.create(config)
    OmegaConf.resolve(cfg)
    model = tsr_class(cfg)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    stored = load_file(str(weights))
    # Our checkpoint layout is the official one (same key names and shapes): nothing to rename.
    got = {key: tuple(value.shape) for key, value in stored.items()}
    if got != expected:
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(key for key in set(got) & set(expected) if got[key] != expected[key])
        raise SystemExit(f"{weights} does not fit the official model: missing {missing}, unexpected {unexpected}, "
                         f"wrong shapes {wrong}")  # fmt: skip
    model.load_state_dict(stored, strict=True)
    return model.eval()


def seeded_weight(name: str, shape: torch.Size, draw: torch.Tensor) -> torch.Tensor:
    """One stored weight from its float64 normal draw (the scales of the reduced random model)."""
    if name.endswith(".bias"):
        scale, offset = 0.1, 0.0
    elif "norm" in name.rsplit(".", 2)[-2] and name.endswith(".weight"):
        scale, offset = 0.2, 1.0
    elif name.startswith("decoder."):
        scale, offset = 1.5 / math.sqrt(shape[1]), 0.0
    elif name == "post_processor.upsample.weight":
        scale, offset = 1.0 / math.sqrt(shape[0]), 0.0
    else:
        scale, offset = 1.0 / math.sqrt(draw.numel() / shape[0]), 0.0
    return (offset + scale * draw).float()


def seeded_inputs(model: torch.nn.Module, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replay the generator: the weights (checked against the loaded ones), then the images, then the points."""
    torch.manual_seed(seed)
    state = model.state_dict()
    worst = 0.0
    for name, value in state.items():
        weight = seeded_weight(name, value.shape, torch.randn(value.shape, dtype=torch.float64))
        if name == f"decoder.layers.{len(model.decoder.layers) - 1}.bias":
            weight[0] = DENSITY_LOGIT
        worst = max(worst, float((weight - value).abs().max()))
    print(f"weights drawn from seed {seed} vs model.safetensors: max |difference| {worst:.3g}")
    if worst:
        print("  (not the stored weights: the inputs drawn after them may differ from the stored ones)")
    _, height, width, _ = IMAGE_SHAPE
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    inside = (x.square() + y.square() < 0.5)[None, :, :, None]
    images = torch.randint(0, 256, IMAGE_SHAPE) // 2 + 64 * inside
    points = (torch.rand(POINTS_SHAPE) * 2 - 1) * POINT_EXTENT
    return images.to(torch.uint8).numpy(), points.numpy()


def run_official(model: torch.nn.Module, images_u8: np.ndarray, points: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"images_u8": images_u8}
    with torch.no_grad():
        scene_codes = model(torch.from_numpy(images_u8).float() / 255.0, device="cpu")
        out["scene_codes"] = scene_codes.numpy()
        out["points_triposr"] = points
        queries = [
            model.renderer.query_triplane(model.decoder, torch.from_numpy(points[b]), scene_codes[b])
            for b in range(len(scene_codes))
        ]
        out["density"] = torch.stack([query["density_act"] for query in queries]).numpy()
        out["color"] = torch.stack([query["color"] for query in queries]).numpy()
        for key, views in RENDERS.items():
            frames = model.render(
                scene_codes, camera_distance=CAMERA_DISTANCE, fovy_deg=FOVY_DEG, return_type="pt", **views
            )
            out[key] = torch.stack([torch.stack(scene) for scene in frames]).numpy()
    return {key: out[key] for key in KEYS}


def compare(arrays: dict[str, np.ndarray], other: Path) -> None:
    with np.load(other) as stored:
        for key in KEYS:
            if key not in stored:
                print(f"{key:22s} not in {other}")
            elif stored[key].shape != arrays[key].shape or stored[key].dtype != arrays[key].dtype:
                print(f"{key:22s} {arrays[key].dtype}{arrays[key].shape} vs {stored[key].dtype}{stored[key].shape}")
            else:
                diff = np.abs(arrays[key].astype(np.float64) - stored[key].astype(np.float64)).max()
                print(f"{key:22s} max |difference| {diff:.3g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of the official TripoSR repository")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_DIR,
                        help="folder with our config.yaml and model.safetensors (default: %(default)s)")  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, required=True, help="npz to write")
    parser.add_argument("--seed", type=int, default=SEED, help="generator seed of the inputs (default: %(default)s)")
    parser.add_argument("--inputs-from", type=Path, help="take images_u8 and points_triposr from this npz instead")
    parser.add_argument("--compare", type=Path, help="print the largest difference of each array with this npz")
    args = parser.parse_args(argv)

    for path in (args.official / "tsr", args.reference_dir / "config.yaml", args.reference_dir / "model.safetensors"):
        if not path.exists():
            raise SystemExit(f"triposr_reference: {path} not found (see --official / --reference-dir)")
    if not args.output.parent.is_dir():
        raise SystemExit(f"triposr_reference: cannot write {args.output}: folder {args.output.parent} does not exist")

    with torch.no_grad():  # not set_grad_enabled(False): main may run inside a process that trains next (the tests)
        return _write_reference(args)


def _write_reference(args: argparse.Namespace) -> int:
    """The official model of ``args``' reduced config and weights, run on the seeded (or given) inputs, into the npz."""
    ours = yaml.safe_load((args.reference_dir / "config.yaml").read_text())
    if not isinstance(ours, dict) or "image_tokenizer_cls" in ours:
        raise SystemExit(f"{args.reference_dir / 'config.yaml'}: a config in monorecon's layout is expected")
    config, vit_json = official_config(ours)
    with tempfile.TemporaryDirectory() as tmp:
        vit_config = Path(tmp) / "config.json"
        vit_config.write_text(json.dumps(vit_json))
        tsr_class = import_official(args.official.resolve(), vit_config)
        model = build_model(tsr_class, config, args.reference_dir / "model.safetensors")
    if args.inputs_from is not None:
        with np.load(args.inputs_from) as given:
            images_u8, points = given["images_u8"], given["points_triposr"]
        print(f"inputs read from {args.inputs_from}")
    else:
        images_u8, points = seeded_inputs(model, args.seed)
    arrays = run_official(model, images_u8, points)
    partial = args.output.with_name(f".{args.output.name}.partial.npz")  # renamed when complete
    np.savez_compressed(partial, **arrays)
    os.replace(partial, args.output)
    print(f"wrote {args.output}: " + ", ".join(f"{key} {value.shape}" for key, value in arrays.items()))
    if args.compare is not None:
        compare(arrays, args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
