"""Mutation audit of the TripoSR config, loading and model: the checks and defaults no other test pins down.

References are independent of the code under test: the section defaults of Hugging Face's ``ViTConfig`` (hidden 768,
12 layers, 12 heads, MLP 3072, patch 16, image 224, LayerNorm eps 1e-12, qkv bias), the official ``config.yaml`` key
names, hand-built configs whose sizes are inconsistent, and analytic properties of the model (an empty query, one
code per camera).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from monorecon.models.triposr import (
    BackboneConfig,
    DecoderConfig,
    ImageEncoderConfig,
    PostProcessorConfig,
    RendererConfig,
    TokenizerConfig,
    TripoSRConfig,
    load_triposr,
    loading,
)
from test_triposr_config import CLASSES  # the official class names

REF = Path(__file__).parent / "data" / "triposr_ref"
WEIGHTS = REF / "model.safetensors"


def official(**sections) -> dict:
    """The released TripoSR config.yaml (written out by hand), with sections replaced by ``sections``."""
    data = {
        "cond_image_size": 512,
        **CLASSES,
        "image_tokenizer": {"pretrained_model_name_or_path": "facebook/dino-vitb16"},
        "tokenizer": {"plane_size": 32, "num_channels": 1024},
        "backbone": {"in_channels": 1024, "num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 16,
                     "cross_attention_dim": 768},
        "post_processor": {"in_channels": 1024, "out_channels": 40},
        "decoder": {"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
        "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp",
                     "density_bias": -1.0, "num_samples_per_ray": 128},
    }  # fmt: skip
    data.update(sections)
    return data


def write(tmp_path: Path, data: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------------------------
# Config: range and consistency checks of the dataclasses
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ImageEncoderConfig(pretrained_image_size=0), "pretrained_image_size"),
        (lambda: ImageEncoderConfig(hidden_size=100), "divisible"),  # 100 is no multiple of 12 heads
        (lambda: ImageEncoderConfig(pretrained_image_size=200), "multiple of patch_size"),  # 200 / 16 = 12.5
        (lambda: ImageEncoderConfig(layer_norm_eps=0.0), "layer_norm_eps"),
        (lambda: BackboneConfig(in_channels=1000), "groups"),  # 1000 / 32 groups = 31.25
        (lambda: DecoderConfig(activation="gelu"), "activation"),
        (lambda: TokenizerConfig(plane_size=True), "plane_size"),  # a bool is no size
        (lambda: TripoSRConfig(post_processor=PostProcessorConfig(in_channels=512)), "post_processor.in_channels"),
        (lambda: TripoSRConfig(backbone=BackboneConfig(cross_attention_dim=512)), "cross_attention_dim"),
    ],
)
def test_inconsistent_or_out_of_range_sizes_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_foreground_ratio_bounds_are_inclusive():
    """Documented range [0.05, 1]: both ends are accepted, just outside them is not."""
    assert TripoSRConfig(foreground_ratio=0.05).foreground_ratio == 0.05
    assert TripoSRConfig(foreground_ratio=1.0).foreground_ratio == 1.0
    for bad in (0.04, 1.01):
        with pytest.raises(ValueError, match="foreground_ratio"):
            TripoSRConfig(foreground_ratio=bad)


def test_own_layout_refuses_unknown_top_level_keys_and_other_formats():
    data = TripoSRConfig().to_dict()
    with pytest.raises(ValueError, match=r"unknown TripoSR config keys.*fg_ratio"):
        TripoSRConfig.from_dict({**data, "fg_ratio": 0.7})
    with pytest.raises(ValueError, match="unknown config format"):
        TripoSRConfig.from_dict({**data, "format": "other-format"})


# --------------------------------------------------------------------------------------------------------------------
# Config: the official layout
# --------------------------------------------------------------------------------------------------------------------
def test_unedited_official_config_is_the_default(tmp_path):
    assert TripoSRConfig.load(write(tmp_path, official())) == TripoSRConfig()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # The official Transformer1D has an output projection when out_channels is set: not implemented here.
        (lambda c: c["backbone"].update(out_channels=512), r"backbone\.out_channels"),
        # A reference to itself never resolves: a clear error, not a RecursionError.
        (lambda c: c["backbone"].update(in_channels="${backbone.in_channels}"), "cycle"),
        # Only whole-string references are supported.
        (lambda c: c["backbone"].update(in_channels="${tokenizer.num_channels}0"), "interpolation"),
        # A required official option that is missing is named by its official key.
        (lambda c: c.pop("image_tokenizer"), r"image_tokenizer.*pretrained_model_name_or_path"),
        (lambda c: c["decoder"].pop("n_neurons"), r"decoder.*n_neurons"),
    ],
)
def test_official_configs_this_implementation_cannot_honour_are_refused(tmp_path, edit, message):
    data = official()
    edit(data)
    with pytest.raises(ValueError, match=message):
        TripoSRConfig.load(write(tmp_path, data))


def _official_with_local_vit(tmp_path: Path, vit: dict) -> Path:
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps(vit))
    return write(tmp_path, official(image_tokenizer={"pretrained_model_name_or_path": "vit"}))


def test_local_vit_config_json_falls_back_to_hugging_face_vit_defaults(tmp_path):
    """A config.json giving only ``model_type`` gets ViTConfig's defaults (transformers' constructor values)."""
    config = TripoSRConfig.load(_official_with_local_vit(tmp_path, {"model_type": "vit"}))
    assert config.image_encoder == ImageEncoderConfig(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, patch_size=16,
        pretrained_image_size=224, layer_norm_eps=1e-12, qkv_bias=True,
    )  # fmt: skip


@pytest.mark.parametrize("vit", [{"model_type": "dinov2"}, {"model_type": "vit", "hidden_act": "relu"}])
def test_local_image_encoder_of_another_kind_is_refused(tmp_path, vit):
    with pytest.raises(ValueError, match="not a GELU ViT"):
        TripoSRConfig.load(_official_with_local_vit(tmp_path, vit))


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    (tmp_path / "config.yaml").write_text((REF / "config.yaml").read_text())
    return tmp_path


def test_image_encoder_only_checkpoint_is_named_another_architecture(checkpoint_dir):
    """A bare DINO checkpoint (40 of the 109 keys) shares under half the keys: refused as not TripoSR at all."""
    state = {key: value for key, value in load_file(str(WEIGHTS)).items() if key.startswith("image_tokenizer.")}
    assert len(state) == 40
    save_file(state, str(checkpoint_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"not a TripoSR checkpoint.*69 of 109 expected keys are missing"):
        load_triposr(checkpoint_dir / "model.safetensors")


def test_device_argument_places_the_weights():
    """The meta device is the one other device every torch build has: the parameters must end up there."""
    model = load_triposr(WEIGHTS, device="meta")
    assert {value.device.type for value in model.state_dict().values()} == {"meta"}


def test_hub_repo_id_with_a_given_config_downloads_only_the_weights(monkeypatch, tmp_path):
    import huggingface_hub

    torch.save(load_file(str(WEIGHTS)), tmp_path / "model.ckpt")
    config = tmp_path / "own.yaml"
    config.write_text((REF / "config.yaml").read_text())
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append(filename)
        return str(tmp_path / filename)

    monkeypatch.setattr(loading, "_hub_unreachable", lambda: None)  # as if online: this machine has no network
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_triposr("stabilityai/TripoSR", config_path=config)
    assert calls == ["model.ckpt"]
    assert model.config == TripoSRConfig.load(REF / "config.yaml")


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return load_triposr(WEIGHTS)


@pytest.fixture(scope="module")
def code(model) -> torch.Tensor:
    return torch.randn(model.scene_code_shape, generator=torch.Generator().manual_seed(0))


def test_scene_code_is_three_planes_upsampled_twice():
    """Tokens 8 x 8 per plane, 2x transposed-conv upsampling, 40 channels (tests/data/triposr_ref/config.yaml)."""
    from monorecon.models.triposr import TripoSRModel

    with torch.device("meta"):
        assert TripoSRModel(TripoSRConfig.load(REF / "config.yaml")).scene_code_shape == (3, 40, 16, 16)
        assert TripoSRModel().scene_code_shape == (3, 40, 64, 64)  # released model: 32 x 32 tokens


def test_query_of_no_points_is_empty(model, code):
    with torch.no_grad():
        density, rgb = model.query(code, torch.zeros(0, 3))
        batched = model.query(code[None], torch.zeros(1, 0, 3))
    assert density.shape == (0, 1) and rgb.shape == (0, 3)
    assert batched[0].shape == (1, 0, 1) and batched[1].shape == (1, 0, 3)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5])
def test_bad_chunk_sizes_are_refused(model, code, chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        model.query(code, torch.zeros(4, 3), chunk_size=chunk_size)


def test_bad_images_are_refused(model):
    with pytest.raises(ValueError, match="empty"):
        model.encode(torch.zeros(0, 16, 16, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(torch.full((1, 16, 16, 3), -0.25))


def test_one_scene_code_per_camera_renders_each_with_its_own(model, code):
    """Two codes and two cameras: camera i shows code i, exactly as rendering each pair alone."""
    from monorecon.core.cameras import PerspectiveCameras, orbit_c2w

    codes = torch.stack([code, -code])
    both = PerspectiveCameras(orbit_c2w(torch.tensor([0.0, 90.0]), 0.0, 1.9), 6, 6, fov_y_deg=40.0)
    single = [PerspectiveCameras(orbit_c2w(azimuth, 0.0, 1.9), 6, 6, fov_y_deg=40.0) for azimuth in (0.0, 90.0)]
    with torch.no_grad():
        together = model.render(codes, both, n_samples=16)["rgb"]
        alone = [model.render(codes[i], single[i], n_samples=16)["rgb"][0] for i in range(2)]
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)
    for i in range(2):
        torch.testing.assert_close(together[i], alone[i], rtol=1e-5, atol=1e-6)


def test_scene_codes_stay_float32_under_a_callers_autocast(model):
    """Mixed-precision training wraps encode in autocast: the scene code (the triplane lookup's input) is float32."""
    images = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        codes = model.encode(images)
    assert codes.dtype == torch.float32


def test_triplane_lookup_stays_float32_under_a_callers_autocast(model, code, monkeypatch):
    """Under autocast only the decoder may run in lower precision: its input are the float32 plane samples at the
    points (TripoSR frame) / 0.87, not samples at points rounded to bfloat16."""
    from monorecon.core.cameras import triposr_to_world
    from monorecon.core.triplane import sample_triplane

    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8  # TripoSR frame
    expected = sample_triplane(code[None], (points / 0.87)[None], "concat")
    world = triposr_to_world(points)  # float32, made outside the autocast region
    seen = []
    decoder = model.decoder

    def recording(features):
        seen.append(features)
        return type(decoder).forward(decoder, features)

    monkeypatch.setattr(decoder, "forward", recording)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.query(code, world)
    assert len(seen) == 1 and seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-6)


def test_chained_official_references_resolve(tmp_path):
    """backbone -> post_processor -> tokenizer: a reference to a reference resolves to the final value."""
    data = official()
    data["backbone"]["in_channels"] = "${post_processor.in_channels}"
    data["post_processor"]["in_channels"] = "${tokenizer.num_channels}"
    assert TripoSRConfig.load(write(tmp_path, data)) == TripoSRConfig()


def test_missing_local_name_without_a_slash_is_not_downloaded(monkeypatch, tmp_path):
    import huggingface_hub

    def no_download(**kwargs):
        raise AssertionError("a name without owner/ is no Hugging Face repo id")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="weights not found: triposr_weights"):
        load_triposr("triposr_weights")


def test_folder_without_weights_says_which_files_it_looked_for(tmp_path):
    with pytest.raises(ValueError, match=r"no model\.safetensors or model\.ckpt in the folder"):
        load_triposr(tmp_path)


def test_checkpoint_lacking_one_component_lists_the_missing_keys(checkpoint_dir):
    """A TripoSR checkpoint without its 20 decoder tensors (under half the 109 keys): the keys are named, it is not
    called another architecture."""
    state = {key: value for key, value in load_file(str(WEIGHTS)).items() if not key.startswith("decoder.")}
    assert len(state) == 89
    save_file(state, str(checkpoint_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not match the TripoSR architecture: 20 missing keys: \['decoder\."):
        load_triposr(checkpoint_dir / "model.safetensors")


def test_carve_weighs_each_scene_at_its_own_points(model, code):
    """Batched query: scene b's density is weighted by carve(points[b]), as querying each scene alone."""
    generator = torch.Generator().manual_seed(4)
    points = torch.rand(2, 200, 3, generator=generator) * 1.6 - 0.8
    codes = torch.stack([code, code.flip(-1)])

    def right_half(p: torch.Tensor) -> torch.Tensor:
        return (p[:, 0] > 0).float()

    with torch.no_grad():
        density, _ = model.query(codes, points, carve=right_half)
        for b in range(2):
            plain, _ = model.query(codes[b], points[b])
            torch.testing.assert_close(density[b, :, 0], plain[:, 0] * right_half(points[b]), rtol=1e-5, atol=0)


def test_extract_mesh_default_level_is_the_configs(model):
    """Without a threshold the surface is the config's ``renderer.mesh_threshold``: TripoSR's iso level 25 (SPEC §1)
    for its config, the model's own level for another (here 20)."""
    import dataclasses

    import numpy as np

    code = torch.from_numpy(np.load(REF / "reference.npz")["scene_codes"][0])  # has a surface at 25 and at 20
    assert model.config.renderer.mesh_threshold == 25.0
    default = model.extract_mesh(code, resolution=12)
    at_25 = model.extract_mesh(code, resolution=12, threshold=25.0)
    assert default.faces.shape == at_25.faces.shape
    torch.testing.assert_close(default.verts, at_25.verts)
    renderer = dataclasses.replace(model.config.renderer, mesh_threshold=20.0)
    model.config = dataclasses.replace(model.config, renderer=renderer)
    try:
        at_20 = model.extract_mesh(code, resolution=12, threshold=20.0)
        torch.testing.assert_close(model.extract_mesh(code, resolution=12).verts, at_20.verts)
        assert at_20.faces.shape != at_25.faces.shape
    finally:
        model.config = dataclasses.replace(model.config, renderer=dataclasses.replace(renderer, mesh_threshold=25.0))


@pytest.mark.parametrize(
    "section, changes, needle",
    [
        (RendererConfig, {"density_bias": float("nan")}, "density_bias"),
        (RendererConfig, {"radius": True}, "radius"),
        (RendererConfig, {"mesh_threshold": "10"}, "mesh_threshold"),
        (ImageEncoderConfig, {"layer_norm_eps": "1e-6"}, "layer_norm_eps"),
    ],
)
def test_numbers_must_be_numbers(section, changes, needle):
    with pytest.raises(ValueError, match=needle):
        section(**changes)


def test_a_local_vit_config_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text("[1, 2]")
    config = official(image_tokenizer={"pretrained_model_name_or_path": "vit"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="not a JSON object"):
        TripoSRConfig.load(tmp_path / "config.yaml")


def test_render_depth_is_the_euclidean_distance_to_the_surface(model, code, monkeypatch):
    """An opaque ball of radius 0.7 at the origin, seen from 1.9 on +Z: depth along a ray at angle a from the axis is
    1.9 cos a - sqrt(0.7^2 - (1.9 sin a)^2) (distance, not the ray parameter of an unnormalised direction)."""
    from monorecon.models.triposr.model import input_camera

    def ball(code, points, carve=None):
        inside = (points.norm(dim=-1, keepdim=True) < 0.7).float()
        return 1e4 * inside, torch.ones(*points.shape[:-1], 3)

    monkeypatch.setattr(model, "query", ball)
    camera = input_camera(8)
    with torch.no_grad():
        out = model.render(code, camera, n_samples=256)
    _, directions = camera.get_rays(normalize=True)
    cos = -directions[0, ..., 2]
    sin2 = (1 - cos**2).clamp(min=0)
    hit = 1.9**2 * sin2 < 0.7**2
    assert bool(hit[0, 0] == False) and int(hit.sum()) >= 20  # noqa: E712 - the corners miss, most pixels hit
    expected = 1.9 * cos - torch.sqrt((0.7**2 - 1.9**2 * sin2).clamp(min=0))
    depth = out["depth"][0, ..., 0]
    assert float((depth[hit] - expected[hit]).abs().max()) < 0.02  # a sample step is 1.74 / 256 = 0.007
