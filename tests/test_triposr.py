"""TripoSR model: numerical parity with the official code, checkpoint layout, loading errors, frames.

The reference in tests/data/triposr_ref was produced by the official TripoSR code (transformers 4.35) for a reduced
configuration with seeded random weights (see its config.yaml): the ViT's position embeddings are a 3 x 3 grid and
the 80-pixel input a 5 x 5 grid, so the legacy ``(n + 0.1) / m`` interpolation is exercised. ``official_keys.json``
lists the key names and shapes of the full-size official model. ``tools/triposr_reference.py`` writes the reference
again with the official code (its docstring: the environment and the command), from seeded weights and inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import mcubes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from monorecon.core.cameras import PerspectiveCameras, orbit_c2w, triposr_to_world
from monorecon.models.triposr import TripoSRConfig, TripoSRModel, image_encoder, load_triposr, loading
from monorecon.models.triposr.image_encoder import legacy_interpolate_position_embeddings

REF = Path(__file__).parent / "data" / "triposr_ref"
WEIGHTS = REF / "model.safetensors"
RTOL = 1e-4


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest deviation relative to the largest reference magnitude."""
    return float((value - reference).abs().max() / reference.abs().max())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in np.load(REF / "reference.npz").items()}


@pytest.fixture(scope="module")
def model() -> TripoSRModel:
    return load_triposr(WEIGHTS)


@pytest.fixture(scope="module")
def images(reference) -> torch.Tensor:
    return reference["images_u8"].float() / 255.0


# --------------------------------------------------------------------------------------------------------------------
# Parity with the official outputs
# --------------------------------------------------------------------------------------------------------------------
def test_scene_codes_match_official(model, images, reference):
    with torch.no_grad():
        codes = model.encode(images)
    assert codes.shape == reference["scene_codes"].shape == (2, 3, 40, 16, 16)
    assert codes.dtype == torch.float32
    assert rel_error(codes, reference["scene_codes"]) < RTOL


def test_query_matches_official(model, reference):
    points = triposr_to_world(reference["points_triposr"])  # official frame -> ours
    with torch.no_grad():
        density, rgb = model.query(reference["scene_codes"], points)
    assert density.shape == (2, 1000, 1) and rgb.shape == (2, 1000, 3)
    # Densities span 1e-4 .. 250 (exp): compare each one relatively.
    assert float(((density - reference["density"]).abs() / reference["density"]).max()) < RTOL
    assert rel_error(rgb, reference["color"]) < RTOL
    with torch.no_grad():  # unbatched form, and chunking does not change values
        density_0, rgb_0 = model.query(reference["scene_codes"][0], points[0], chunk_size=77)
    torch.testing.assert_close(density_0, density[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(rgb_0, rgb[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("key", "elevation", "n_views", "height", "width", "scene", "views"),
    [("render_elev0_32x32", 0.0, 4, 32, 32, 0, [0, 1]), ("render_elev20_32x24", 20.0, 5, 32, 24, 1, [1])],
)
def test_render_matches_official(model, reference, key, elevation, n_views, height, width, scene, views):
    # The official views: azimuth linspace(0, 360, n + 1)[:n] from +x_t towards +y_t, distance 1.9, fov 40. In our
    # frame that is orbit_c2w(azimuth, elevation, 1.9) (view 0 = the input view, camera on +Z).
    azimuth = torch.linspace(0, 360, n_views + 1)[:n_views][views]
    cameras = PerspectiveCameras(orbit_c2w(azimuth, elevation, 1.9), height, width, fov_y_deg=40.0)
    with torch.no_grad():
        out = model.render(reference["scene_codes"][scene], cameras)
    assert out["rgb"].shape == (len(views), height, width, 3)
    assert out["opacity"].shape == out["depth"].shape == (len(views), height, width, 1)
    assert rel_error(out["rgb"], reference[key][scene, views]) < RTOL
    assert bool((out["opacity"] >= 0).all()) and bool((out["opacity"] <= 1 + 1e-5).all())


def _modern_interpolation(position_embeddings: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """What newer transformers do: bicubic to ``size=(h, w)``."""
    side = int((position_embeddings.shape[1] - 1) ** 0.5)
    grid = position_embeddings[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([position_embeddings[:, :1], grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)


def test_reference_exercises_legacy_interpolation(model, images, reference, monkeypatch):
    pos = model.image_tokenizer.model.embeddings.position_embeddings.detach()
    legacy = legacy_interpolate_position_embeddings(pos, 5, 5)
    assert legacy.shape == (1, 26, pos.shape[-1])
    torch.testing.assert_close(legacy[:, 0], pos[:, 0])
    assert legacy_interpolate_position_embeddings(pos, 3, 3) is pos  # native grid: unchanged
    assert rel_error(_modern_interpolation(pos, 5, 5), legacy) > 0.03
    # With the newer interpolation the scene codes leave the official ones by far more than the tolerance.
    monkeypatch.setattr(image_encoder, "legacy_interpolate_position_embeddings", _modern_interpolation)
    with torch.no_grad():
        codes = model.encode(images)
    assert rel_error(codes, reference["scene_codes"]) > 10 * RTOL


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint layout of the full-size model
# --------------------------------------------------------------------------------------------------------------------
def test_full_size_architecture_matches_official_checkpoint_layout():
    official = json.loads((REF / "official_keys.json").read_text())
    with torch.device("meta"):
        full = TripoSRModel(TripoSRConfig())
    state = full.state_dict()
    assert len(state) == 549
    assert sum(value.numel() for value in state.values()) == 419_275_628
    assert {key: list(value.shape) for key, value in state.items()} == official
    assert state["backbone.transformer_blocks.15.attn2.to_k.weight"].shape == (1024, 768)
    assert state["post_processor.upsample.weight"].shape == (1024, 40, 2, 2)


def test_state_dict_round_trips_checkpoint(model):
    stored = load_file(str(WEIGHTS))
    state = model.state_dict()
    assert set(state) == set(stored)
    for key, value in stored.items():
        assert torch.equal(state[key], value), key


OFFICIAL_CONFIG_YAML = """
cond_image_size: 512
image_tokenizer_cls: tsr.models.tokenizers.image.DINOSingleImageTokenizer
image_tokenizer:
  pretrained_model_name_or_path: facebook/dino-vitb16
tokenizer_cls: tsr.models.tokenizers.triplane.Triplane1DTokenizer
tokenizer: {plane_size: 32, num_channels: 1024}
backbone_cls: tsr.models.transformer.transformer_1d.Transformer1D
backbone:
  in_channels: ${tokenizer.num_channels}
  num_attention_heads: 16
  attention_head_dim: 64
  num_layers: 16
  cross_attention_dim: 768
post_processor_cls: tsr.models.network_utils.TriplaneUpsampleNetwork
post_processor: {in_channels: 1024, out_channels: 40}
decoder_cls: tsr.models.network_utils.NeRFMLP
decoder: {in_channels: 120, n_neurons: 64, n_hidden_layers: 9, activation: silu}
renderer_cls: tsr.models.nerf_renderer.TriplaneNeRFRenderer
renderer:
  radius: 0.87
  feature_reduction: concat
  density_activation: exp
  density_bias: -1.0
  num_samples_per_ray: 128
"""


def test_official_config_yaml_gives_the_default_architecture(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OFFICIAL_CONFIG_YAML)
    assert TripoSRConfig.load(path) == TripoSRConfig()


def test_official_layout_with_local_vit_folder_and_own_layout_round_trip(tmp_path):
    own = TripoSRConfig.load(REF / "config.yaml")
    vit = own.image_encoder
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({
        "hidden_size": vit.hidden_size, "num_hidden_layers": vit.num_layers, "num_attention_heads": vit.num_heads,
        "intermediate_size": vit.intermediate_size, "patch_size": vit.patch_size,
        "image_size": vit.pretrained_image_size, "layer_norm_eps": vit.layer_norm_eps, "qkv_bias": True,
    }))  # fmt: skip
    official = yaml.safe_load(OFFICIAL_CONFIG_YAML)
    official["cond_image_size"] = own.cond_image_size
    official["image_tokenizer"]["pretrained_model_name_or_path"] = "vit"  # relative to the yaml's folder
    official["tokenizer"] = {"plane_size": 8, "num_channels": 32}
    official["backbone"].update(num_attention_heads=2, attention_head_dim=24, num_layers=2, cross_attention_dim=64,
                                norm_num_groups=8)  # fmt: skip
    official["post_processor"]["in_channels"] = 32
    (tmp_path / "official.yaml").write_text(yaml.safe_dump(official))
    assert TripoSRConfig.load(tmp_path / "official.yaml") == own
    own.save(tmp_path / "own.yaml")
    assert TripoSRConfig.load(tmp_path / "own.yaml") == own


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(decoder_cls="tsr.models.other.Decoder"), "not a TripoSR architecture"),
        (lambda c: c.update(extra_key=1), "unknown keys"),
        (lambda c: c["backbone"].update(activation_fn="gelu"), "activation_fn"),
        (lambda c: c["backbone"].update(in_channels="${tokenizer.missing}"), "points to nothing"),
        (lambda c: c["decoder"].update(in_channels=99), "decoder.in_channels"),
        (lambda c: c["image_tokenizer"].update(pretrained_model_name_or_path="no/such-model"), "unknown image encoder"),
        (lambda c: c.update(cond_image_size=500), "multiple of the patch size"),
    ],
)
def test_bad_configs_raise(tmp_path, edit, message):
    config = yaml.safe_load(OFFICIAL_CONFIG_YAML)
    edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        TripoSRConfig.load(path)


def test_own_config_rejects_unknown_and_missing_files(tmp_path):
    data = TripoSRConfig().to_dict()
    data["backbone"]["heads"] = 4
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="heads"):
        TripoSRConfig.load(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="not found"):
        TripoSRConfig.load(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    (tmp_path / "config.yaml").write_text((REF / "config.yaml").read_text())
    return tmp_path


def test_load_torch_ckpt_and_folder(checkpoint_dir, images, reference):
    torch.save(load_file(str(WEIGHTS)), checkpoint_dir / "model.ckpt")
    loaded = load_triposr(checkpoint_dir)  # a folder: model.ckpt + config.yaml
    assert not loaded.training
    with torch.no_grad():
        assert rel_error(loaded.encode(images[:1]), reference["scene_codes"][:1]) < RTOL
    # Both files in the folder: model.safetensors is read (a damaged model.ckpt beside it is not touched).
    (checkpoint_dir / "model.ckpt").write_bytes(b"damaged")
    (checkpoint_dir / "model.safetensors").write_bytes(WEIGHTS.read_bytes())
    with torch.no_grad():
        assert rel_error(load_triposr(checkpoint_dir).encode(images[:1]), reference["scene_codes"][:1]) < RTOL


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("backbone.transformer_blocks.1.attn2.to_k.weight"), r"missing keys.*attn2\.to_k\.weight"),
        (lambda s: s.update({"decoder.layers.20.weight": torch.zeros(4, 4)}), r"unexpected keys.*layers\.20\.weight"),
        (lambda s: s.update({"tokenizer.embeddings": torch.zeros(3, 32, 4, 4)}), r"wrong shape.*tokenizer\.embeddings"),
        (lambda s: s.update({f"other.{k}": s.pop(k) for k in list(s)}), "not a TripoSR checkpoint"),
    ],
)
def test_mismatched_checkpoints_raise_naming_keys(checkpoint_dir, change, message):
    state = load_file(str(WEIGHTS))
    change(state)
    save_file(state, str(checkpoint_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=message):
        load_triposr(checkpoint_dir / "model.safetensors")


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_truncated_files_raise(checkpoint_dir, name):
    full = checkpoint_dir / f"full_{name}"
    if name.endswith(".ckpt"):
        torch.save(load_file(str(WEIGHTS)), full)
    else:
        full.write_bytes(WEIGHTS.read_bytes())
    data = full.read_bytes()
    (checkpoint_dir / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_triposr(checkpoint_dir / name)


def test_missing_paths_raise(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_triposr(tmp_path / "nothing" / "model.ckpt")
    (tmp_path / "model.safetensors").write_bytes(WEIGHTS.read_bytes())
    with pytest.raises(ValueError, match=r"no config\.yaml beside .*--config on the command line"):
        load_triposr(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"config file not found: .*other\.yaml$"):
        load_triposr(tmp_path / "model.safetensors", tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="dtype"):
        load_triposr(WEIGHTS, dtype=torch.float16)


def test_hugging_face_repo_id_uses_hf_hub_download(monkeypatch, tmp_path, images, reference):
    import huggingface_hub

    torch.save(load_file(str(WEIGHTS)), tmp_path / "model.ckpt")
    (tmp_path / "config.yaml").write_text((REF / "config.yaml").read_text())
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(loading, "_hub_unreachable", lambda: None)  # as if online: this machine has no network
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = load_triposr("stabilityai/TripoSR")
    assert sorted(calls) == [("stabilityai/TripoSR", "config.yaml"), ("stabilityai/TripoSR", "model.ckpt")]
    with torch.no_grad():
        assert rel_error(loaded.encode(images[1:]), reference["scene_codes"][1:]) < RTOL

    def offline(repo_id: str, filename: str, **kwargs) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match=r"no local file or folder.*model\.ckpt.*no network"):
        load_triposr("stabilityai/TripoSR")
    # Really offline (the host cannot be looked up): one error at once, not the hub client's retries and their logs.
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: "Name or service not known")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    calls.clear()
    with pytest.raises(ValueError, match=r"model\.ckpt from the Hugging Face Hub failed: no network \(Name or service"):
        load_triposr("stabilityai/TripoSR")
    assert calls == []


def test_bfloat16_autocast_stays_close_and_returns_float32(images, reference):
    model_bf16 = load_triposr(WEIGHTS, dtype=torch.bfloat16)
    with torch.no_grad():
        codes = model_bf16.encode(images)
    assert codes.dtype == torch.float32
    assert model_bf16.decoder.layers[0].weight.dtype == torch.float32
    assert rel_error(codes, reference["scene_codes"]) < 0.05


# --------------------------------------------------------------------------------------------------------------------
# Mesh extraction and input validation
# --------------------------------------------------------------------------------------------------------------------
def test_extract_mesh_matches_marching_cubes_in_the_official_frame(model, reference):
    code, resolution, radius = reference["scene_codes"][0], 20, 0.87
    mesh = model.extract_mesh(code[None], resolution=resolution, threshold=25.0)
    # Independent path: grid built in TripoSR's frame (as the official code does), PyMCubes directly, then ours.
    axis = torch.linspace(-radius, radius, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    with torch.no_grad():
        density = model.query(code, triposr_to_world(grid))[0].reshape(resolution, resolution, resolution)
    verts, faces = mcubes.marching_cubes(density.double().numpy(), 25.0)
    expected = triposr_to_world(torch.from_numpy(-radius + verts * (2 * radius / (resolution - 1))).float())
    assert mesh.faces.shape[0] == faces.shape[0] > 0
    assert mesh.verts.shape == expected.shape
    # Same surface; rounding in the deep random MLP (batches of other shapes) moves a few vertices on flat edges.
    nearest = torch.cdist(mesh.verts, expected).min(dim=1).values
    cell = 2 * radius / (resolution - 1)
    assert float(nearest.median()) < 1e-6 and float(nearest.max()) < 0.02 * cell
    with torch.no_grad():
        torch.testing.assert_close(mesh.vertex_colors, model.query(code, mesh.verts)[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one scene code"):
        model.extract_mesh(reference["scene_codes"], resolution=8)


def test_bad_inputs_raise(model, reference):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(torch.full((1, 16, 16, 3), 1.5))
    with pytest.raises(ValueError, match="images"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="batch"):
        model.query(reference["scene_codes"], torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="scene_code"):
        model.query(torch.zeros(1, 3, 8, 16, 16), torch.zeros(1, 4, 3))
    cameras = PerspectiveCameras(orbit_c2w(torch.tensor([0.0, 90.0, 180.0]), 0.0, 1.9), 4, 4, fov_y_deg=40.0)
    with pytest.raises(ValueError, match="cameras"):
        model.render(reference["scene_codes"], cameras)


def test_missing_weights_file_that_looks_like_a_repo_id_is_not_downloaded(monkeypatch):
    import huggingface_hub

    def no_download(**kwargs):
        raise AssertionError("a local-looking weights path must not trigger a download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(ValueError, match="weights not found"):
        load_triposr("checkpoints/model.safetensors")


def test_resample_patch_embedding_keeps_plain_colour_tokens():
    from monorecon.models.triposr.config import ImageEncoderConfig
    from monorecon.models.triposr.image_encoder import DinoImageEncoder, resample_patch_embedding

    torch.manual_seed(0)
    small = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, pretrained_image_size=32)
    coarse = DinoImageEncoder(ImageEncoderConfig(patch_size=16, **small))
    fine = DinoImageEncoder(ImageEncoderConfig(patch_size=8, **small))
    fine.load_state_dict(resample_patch_embedding(coarse.state_dict(), 8, 32, prefix=""))  # strict: shapes fit

    # A plain-colour image: every patch of either size is the same colour, so the conv outputs must agree.
    pixels = torch.tensor([0.3, -0.7, 1.1]).reshape(1, 3, 1, 1).expand(1, 3, 32, 32)
    before = coarse.model.embeddings.patch_embeddings(pixels)  # (1, 4, 16)
    after = fine.model.embeddings.patch_embeddings(pixels)  # (1, 16, 16)
    torch.testing.assert_close(after, before[:, :1].expand_as(after), atol=1e-5, rtol=1e-5)
    # Position embeddings: class token kept, grid resized 2x2 -> 4x4 (a constant grid stays constant).
    position = fine.state_dict()["model.embeddings.position_embeddings"]
    assert position.shape == (1, 17, 16)
    torch.testing.assert_close(position[:, :1], coarse.state_dict()["model.embeddings.position_embeddings"][:, :1])
    flat = coarse.state_dict()
    flat["model.embeddings.position_embeddings"][:, 1:] = 0.25
    resized = resample_patch_embedding(flat, 8, 32, prefix="")["model.embeddings.position_embeddings"]
    torch.testing.assert_close(resized[:, 1:], torch.full((1, 16, 16), 0.25))
    with pytest.raises(ValueError, match="multiple"):
        resample_patch_embedding(flat, 8, 36, prefix="")
    with pytest.raises(ValueError, match="prefix"):
        resample_patch_embedding(flat, 8, 32)


def test_silhouette_fill_in_the_config():
    assert TripoSRConfig().renderer.silhouette_fill is False  # TripoSR's weights: no fill unless asked
    data = TripoSRConfig().to_dict()
    data["renderer"] = {**data["renderer"], "silhouette_fill": True}
    assert TripoSRConfig.from_dict(data).renderer.silhouette_fill is True
    for bad in ("yes", 1, None):
        data["renderer"]["silhouette_fill"] = bad
        with pytest.raises(ValueError, match="silhouette_fill"):
            TripoSRConfig.from_dict(data)


def test_foreground_ratio_in_the_config():
    assert TripoSRConfig().foreground_ratio == 0.85  # TripoSR's framing
    config = TripoSRConfig.from_dict({**TripoSRConfig().to_dict(), "foreground_ratio": 0.7})
    assert config.foreground_ratio == 0.7 and TripoSRConfig.from_dict(config.to_dict()) == config
    for bad in (1.5, 0.0, True, "0.7", float("nan")):
        with pytest.raises(ValueError, match="foreground_ratio"):
            TripoSRConfig(foreground_ratio=bad)


def test_deepened_weights_compute_the_same_scene_code_and_the_new_blocks_learn(model, images):
    from monorecon.models.triposr.growth import deepen_triposr_weights, interleave_identity_blocks

    deep_config = model.config.to_dict()
    deep_config["image_encoder"]["num_layers"] = 3  # 2 -> 3: one new layer after layer 0
    deep_config["backbone"]["num_layers"] = 4  # 2 -> 4: one new block after each
    deep = TripoSRModel(TripoSRConfig.from_dict(deep_config))
    deep.load_state_dict(deepen_triposr_weights(model.state_dict(), encoder_layers=3, backbone_layers=4))  # strict
    with torch.no_grad():
        torch.testing.assert_close(deep.encode(images), model.encode(images), atol=1e-6, rtol=0)
    # The old blocks keep their place (old 1 -> new 2), the new ones copy their predecessor except the output.
    state = deep.state_dict()
    old = model.state_dict()
    torch.testing.assert_close(
        state["backbone.transformer_blocks.2.attn1.to_q.weight"], old["backbone.transformer_blocks.1.attn1.to_q.weight"]
    )
    torch.testing.assert_close(
        state["image_tokenizer.model.encoder.layer.1.attention.attention.query.weight"],
        old["image_tokenizer.model.encoder.layer.0.attention.attention.query.weight"],
    )
    assert not state["backbone.transformer_blocks.3.ff.net.2.weight"].any()

    # Fine-tuning can use the new depth: the zeroed projections get gradients at once.
    deep.encode(images).square().mean().backward()
    grads = deep.state_dict(keep_vars=True)  # checkpoint key names, the parameters themselves
    for name in (
        "backbone.transformer_blocks.1.attn1.to_out.0.weight",
        "backbone.transformer_blocks.3.ff.net.2.weight",
        "image_tokenizer.model.encoder.layer.1.output.dense.weight",
    ):
        assert grads[name].grad.abs().max() > 0, name

    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        deepen_triposr_weights(model.state_dict(), backbone_layers=5)
    with pytest.raises(ValueError, match="no blocks"):
        interleave_identity_blocks(model.state_dict(), "nothing.", ("x.",), 2)
    with pytest.raises(ValueError, match="starts with"):
        interleave_identity_blocks(model.state_dict(), "backbone.transformer_blocks.", ("nope.",), 3)


def test_devices_are_resolved_and_missing_ones_refused():
    from monorecon.api import load_model
    from monorecon.core.checks import check_device

    assert check_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert check_device("cpu") == check_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("gpu", "meta", "mps", "", "cuda:-1"):
        with pytest.raises(ValueError, match="device must be"):
            check_device(name)
    with pytest.raises(ValueError, match="this machine has"):
        check_device("cuda:64")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            check_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        load_model(device="gpu")


@pytest.mark.parametrize("capable", [False, True])
def test_bfloat16_on_a_cpu_without_native_support_warns(monkeypatch, capable):
    import warnings

    from monorecon.core.checks import warn_if_slow_bfloat16

    flags = {"avx512_bf16": False, "amx_bf16": capable}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_triposr(REF / "model.safetensors", REF / "config.yaml", dtype=torch.bfloat16)
        warn_if_slow_bfloat16("cuda", "training")  # GPUs are not judged by the CPU's flags
    messages = [str(w.message) for w in caught if "bfloat16" in str(w.message)]
    assert messages == ([] if capable else ["bfloat16 inference on this CPU (no AVX512-BF16 or AMX) is much slower "
                                            "than float32; use float32 here"])  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Settings of the config that the reduced reference does not vary
# --------------------------------------------------------------------------------------------------------------------
def _reference_model_with(model: TripoSRModel, **renderer) -> TripoSRModel:
    """The reference weights in a model whose renderer section is changed."""
    data = model.config.to_dict()
    data["renderer"].update(renderer)
    changed = TripoSRModel(TripoSRConfig.from_dict(data))
    changed.load_state_dict(model.state_dict())
    return changed.eval()


def test_config_radius_scales_query_render_and_mesh(model, reference):
    """Radius r reads the planes at p / r: the whole scene scales by r / 0.87, so the official densities come back at
    scaled points and the official renders from a camera at 1.9 r / 0.87 (alpha uses the normalised step)."""
    radius = 0.6
    scale = radius / 0.87
    small = _reference_model_with(model, radius=radius)
    with torch.no_grad():
        density, _ = small.query(reference["scene_codes"], triposr_to_world(reference["points_triposr"] * scale))
    assert float(((density - reference["density"]).abs() / reference["density"]).max()) < RTOL

    azimuth = torch.linspace(0, 360, 5)[:4][[0, 1]]
    cameras = PerspectiveCameras(orbit_c2w(azimuth, 0.0, 1.9 * scale), 32, 32, fov_y_deg=40.0)
    with torch.no_grad():
        out = small.render(reference["scene_codes"][0], cameras)
    assert rel_error(out["rgb"], reference["render_elev0_32x32"][0, [0, 1]]) < RTOL

    code = reference["scene_codes"][0]
    mesh = model.extract_mesh(code, resolution=16, threshold=25.0)
    small_mesh = small.extract_mesh(code, resolution=16, threshold=25.0)
    assert small_mesh.faces.shape == mesh.faces.shape
    assert float((small_mesh.verts - mesh.verts * scale).abs().max()) < 1e-4


def test_config_sample_count_sets_the_renderer(model, reference):
    """renderer.n_samples is the default sample count of render(): checked against TripoSR's renderer written out
    from SPEC §1 (box r (1 - 1e-3), bin midpoints, alpha = 1 - exp(-sigma / n), exclusive transmittance + 1e-10,
    white background)."""
    n = 16
    coarse = _reference_model_with(model, n_samples=n)
    cameras = PerspectiveCameras(orbit_c2w(30.0, 10.0, 1.9), 6, 6, fov_y_deg=40.0)
    code = reference["scene_codes"][1]
    with torch.no_grad():
        out = coarse.render(code, cameras)
    origins, directions = (t.reshape(-1, 3).double() for t in cameras.get_rays(normalize=True))
    box = 0.87 * (1 - 1e-3)
    inverse = 1.0 / directions
    t0, t1 = (-box - origins) * inverse, (box - origins) * inverse
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0)
    far = torch.maximum(t0, t1).amin(-1)
    assert bool((far - near > 0.01).sum() > 10)  # most rays cross the box
    mid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    t = near[:, None] * (1 - mid) + far[:, None] * mid
    points = origins[:, None] + t[..., None] * directions[:, None]
    with torch.no_grad():
        sigma, colour = model.query(code, points.reshape(-1, 3).float())
    alpha = 1 - torch.exp(-sigma.double().reshape(-1, n) / n)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * transmittance * (far - near > 0.01)[:, None]
    expected = (weights[..., None] * colour.double().reshape(-1, n, 3)).sum(1) + (1 - weights.sum(1, keepdim=True))
    torch.testing.assert_close(out["rgb"].reshape(-1, 3).double(), expected, atol=1e-5, rtol=0)


def test_decoder_settings_of_the_config_reach_the_field():
    """feature_reduction, hidden activation, density activation and bias from the config, against the MLP written out
    by hand: mean of the three plane samples -> Linear/ReLU ... -> softplus(raw0 + 0.5), sigmoid(raw1..3)."""
    from monorecon.core.triplane import sample_triplane

    data = TripoSRConfig.load(REF / "config.yaml").to_dict()
    data["decoder"].update(in_channels=40, hidden_channels=16, n_hidden_layers=2, activation="relu")
    data["renderer"].update(feature_reduction="mean", density_activation="softplus", density_bias=0.5)
    torch.manual_seed(0)
    field = TripoSRModel(TripoSRConfig.from_dict(data)).eval()
    code = torch.randn(3, 40, 16, 16)
    points = (torch.rand(200, 3) * 2 - 1) * 0.8  # TripoSR frame
    with torch.no_grad():
        density, rgb = field.query(code, triposr_to_world(points))
        features = sample_triplane(code[None], (points / 0.87)[None], "concat")[0].reshape(-1, 3, 40).mean(1)
        linears = [layer for layer in field.decoder.layers if isinstance(layer, torch.nn.Linear)]
        assert len(linears) == 3
        hidden = features
        for layer in linears[:-1]:
            hidden = torch.relu(layer(hidden))
        raw = linears[-1](hidden)
    torch.testing.assert_close(density, F.softplus(raw[:, :1] + 0.5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rgb, torch.sigmoid(raw[:, 1:]), rtol=1e-5, atol=1e-6)


def test_input_camera_is_triposrs_and_takes_its_arguments():
    """Default: on +Z at 1.9 with a 40 degree vertical fov (focal = H / 2 / tan 20 deg); both are arguments."""
    from monorecon.models.triposr.model import input_camera

    camera = input_camera(64)
    origins, directions = camera.get_rays(normalize=True)
    torch.testing.assert_close(origins[0, 0, 0], torch.tensor([0.0, 0.0, 1.9]))
    centre = directions[0, 31:33, 31:33].reshape(4, 3).mean(0)  # looks at the origin
    torch.testing.assert_close(centre / centre.norm(), torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(camera.focal[0], torch.full((2,), 32 / np.tan(np.radians(20.0))).float())
    other = input_camera(32, distance=2.5, fov_deg=30.0)
    torch.testing.assert_close(other.get_rays()[0][0, 0, 0], torch.tensor([0.0, 0.0, 2.5]))
    torch.testing.assert_close(other.focal[0], torch.full((2,), 16 / np.tan(np.radians(15.0))).float())


def test_vit_layer_norm_eps_and_qkv_bias_reach_the_encoder():
    """Every LayerNorm of the ViT uses the config's eps; qkv_bias=False gives q/k/v without bias (4.x key names)."""
    from monorecon.models.triposr.config import ImageEncoderConfig
    from monorecon.models.triposr.image_encoder import DinoImageEncoder

    small = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, pretrained_image_size=32)
    encoder = DinoImageEncoder(ImageEncoderConfig(layer_norm_eps=1e-6, **small))
    eps = {module.eps for module in encoder.modules() if isinstance(module, torch.nn.LayerNorm)}
    assert eps == {1e-6}
    keys = set(DinoImageEncoder(ImageEncoderConfig(qkv_bias=False, **small)).state_dict())
    layer = "model.encoder.layer.1.attention"
    assert {f"{layer}.attention.query.weight", f"{layer}.attention.value.weight", f"{layer}.output.dense.bias"} < keys
    assert not {f"{layer}.attention.{name}.bias" for name in ("query", "key", "value")} & keys
    assert len(keys) == len(set(DinoImageEncoder(ImageEncoderConfig(**small)).state_dict())) - 6


def test_legacy_interpolation_of_a_non_square_grid():
    """A 3 x 3 grid constant along rows (value = row) resized to 1 x 9: one row, constant along it, between the
    first and last row's values; the class token is kept."""
    rows = torch.arange(3.0).repeat_interleave(3)  # row-major 3 x 3, value = row index
    position = torch.cat([torch.tensor([7.0]), rows]).reshape(1, 10, 1).expand(1, 10, 4).contiguous()
    out = legacy_interpolate_position_embeddings(position, 1, 9)
    assert out.shape == (1, 10, 4)
    assert float(out[0, 0, 0]) == 7.0
    grid = out[0, 1:, 0]
    torch.testing.assert_close(grid, grid[:1].expand(9))
    assert 0.5 < float(grid[0]) < 1.5  # source row (0 + 0.5) * 3 / 1.1 - 0.5 = 0.86
    tall = legacy_interpolate_position_embeddings(position, 9, 1)[0, 1:, 0]
    assert float(tall[0]) < float(tall[4]) < float(tall[8])  # the rows' values now run down the 9 x 1 grid


def test_checkpoint_in_lower_precision_loads_as_float32(checkpoint_dir, images, reference):
    """A bfloat16 checkpoint gives float32 parameters (SPEC: fp32 model) and scene codes close to the official."""
    save_file({k: v.bfloat16() for k, v in load_file(str(WEIGHTS)).items()}, str(checkpoint_dir / "model.safetensors"))
    loaded = load_triposr(checkpoint_dir)
    assert {value.dtype for value in loaded.state_dict().values()} == {torch.float32}
    with torch.no_grad():
        assert rel_error(loaded.encode(images), reference["scene_codes"]) < 0.05


def test_bfloat16_dtype_really_runs_under_autocast(model, images):
    """dtype=bfloat16 must change the computation (the encoder runs in bfloat16), not only be accepted."""
    model_bf16 = load_triposr(WEIGHTS, dtype=torch.bfloat16)
    assert model_bf16.autocast_dtype == torch.bfloat16
    with torch.no_grad():
        assert rel_error(model_bf16.encode(images), model.encode(images)) > 1e-3
