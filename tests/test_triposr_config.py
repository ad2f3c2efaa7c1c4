"""TripoSR configuration: every official ``config.yaml`` option reaches the config, the official code's defaults apply
to omitted options, and unknown or unsupported settings are refused.

The expectations are written out by hand from the official TripoSR code's constructor defaults
(``Transformer1D``, ``NeRFMLP``, ``TriplaneNeRFRenderer``) and SPEC §1, never taken from the parser itself.
"""

from __future__ import annotations

import json

import pytest
import yaml

from monorecon.models.triposr import (
    BackboneConfig,
    DecoderConfig,
    ImageEncoderConfig,
    PostProcessorConfig,
    RendererConfig,
    TokenizerConfig,
    TripoSRConfig,
)

CLASSES = {
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}


def official(**sections) -> dict:
    """An official-layout config: the class names, the sections given, and cond_image_size 512 unless given."""
    return {"cond_image_size": 512, **CLASSES, **sections}


def load(tmp_path, data: dict) -> TripoSRConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return TripoSRConfig.load(path)


def test_every_official_option_reaches_the_config(tmp_path):
    """Non-default values for every option of every section land in the matching field."""
    data = official(
        cond_image_size=256,
        image_tokenizer={"pretrained_model_name_or_path": "facebook/dino-vitb16"},
        tokenizer={"plane_size": 16, "num_channels": 64},
        backbone={
            "in_channels": 64, "num_attention_heads": 4, "attention_head_dim": 16, "num_layers": 3,
            "norm_num_groups": 16, "cross_attention_dim": 768,
        },
        post_processor={"in_channels": 64, "out_channels": 24},
        decoder={"in_channels": 24, "n_neurons": 32, "n_hidden_layers": 3, "activation": "relu"},
        renderer={
            "radius": 0.6, "feature_reduction": "mean", "density_activation": "softplus", "density_bias": 0.5,
            "color_activation": "sigmoid", "num_samples_per_ray": 48,
        },
    )  # fmt: skip
    expected = TripoSRConfig(
        cond_image_size=256,
        image_encoder=ImageEncoderConfig(),
        tokenizer=TokenizerConfig(plane_size=16, num_channels=64),
        backbone=BackboneConfig(
            in_channels=64, num_heads=4, head_dim=16, num_layers=3, cross_attention_dim=768, norm_num_groups=16
        ),
        post_processor=PostProcessorConfig(in_channels=64, out_channels=24),
        decoder=DecoderConfig(in_channels=24, hidden_channels=32, n_hidden_layers=3, activation="relu"),
        renderer=RendererConfig(
            radius=0.6, feature_reduction="mean", density_activation="softplus", density_bias=0.5, n_samples=48
        ),
    )
    assert load(tmp_path, data) == expected


def test_omitted_official_options_take_the_official_code_defaults(tmp_path):
    """Transformer1D: 16 heads x 88, 1 layer, 32 groups; NeRFMLP: relu; renderer: trunc_exp, bias -1, 128 samples."""
    data = official(
        image_tokenizer={"pretrained_model_name_or_path": "facebook/dino-vitb16"},
        tokenizer={"plane_size": 32, "num_channels": 1024},
        backbone={"in_channels": 1024, "cross_attention_dim": 768},
        post_processor={"in_channels": 1024, "out_channels": 40},
        decoder={"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9},
        renderer={"radius": 0.87},
    )
    config = load(tmp_path, data)
    assert config.backbone == BackboneConfig(
        in_channels=1024, num_heads=16, head_dim=88, num_layers=1, cross_attention_dim=768, norm_num_groups=32
    )
    assert config.decoder == DecoderConfig(in_channels=120, hidden_channels=64, n_hidden_layers=9, activation="relu")
    assert config.renderer == RendererConfig(
        radius=0.87, feature_reduction="concat", density_activation="trunc_exp", density_bias=-1.0,
        color_activation="sigmoid", n_samples=128,
    )  # fmt: skip


def test_official_vit_config_json_values_reach_the_encoder(tmp_path):
    """Every field of a local ViT config.json (LayerNorm eps included) lands in ImageEncoderConfig."""
    (tmp_path / "vit").mkdir()
    vit = {
        "model_type": "vit", "hidden_act": "gelu", "hidden_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": 4, "intermediate_size": 200, "patch_size": 8, "image_size": 64,
        "layer_norm_eps": 1e-6, "qkv_bias": False,
    }  # fmt: skip
    (tmp_path / "vit" / "config.json").write_text(json.dumps(vit))
    data = official(
        cond_image_size=64,
        image_tokenizer={"pretrained_model_name_or_path": "vit"},
        tokenizer={"plane_size": 4, "num_channels": 32},
        backbone={"in_channels": 32, "cross_attention_dim": 96, "norm_num_groups": 8},
        post_processor={"in_channels": 32, "out_channels": 8},
        decoder={"in_channels": 24, "n_neurons": 16, "n_hidden_layers": 1},
        renderer={"radius": 0.87},
    )
    assert load(tmp_path, data).image_encoder == ImageEncoderConfig(
        hidden_size=96, num_layers=3, num_heads=4, intermediate_size=200, patch_size=8, pretrained_image_size=64,
        layer_norm_eps=1e-6, qkv_bias=False,
    )  # fmt: skip


def _full_official() -> dict:
    return official(
        image_tokenizer={"pretrained_model_name_or_path": "facebook/dino-vitb16"},
        tokenizer={"plane_size": 32, "num_channels": 1024},
        backbone={"in_channels": 1024, "num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 16,
                  "cross_attention_dim": 768},
        post_processor={"in_channels": 1024, "out_channels": 40},
        decoder={"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
        renderer={"radius": 0.87, "density_activation": "exp"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("renderer", "randomized", True, r"renderer\.randomized"),
        ("decoder", "bias", False, r"decoder\.bias"),
        ("backbone", "norm_type", "ada_norm", r"backbone\.norm_type"),
        ("renderer", "num_samples", 64, r"unknown keys in official config section 'renderer'.*num_samples"),
        ("decoder", "neurons", 64, r"unknown keys in official config section 'decoder'.*neurons"),
        ("backbone", "heads", 8, r"unknown keys in official config section 'backbone'.*heads"),
        ("tokenizer", "plane", 8, r"unknown keys in official config section 'tokenizer'"),
    ],
)
def test_official_unknown_or_unsupported_section_options_are_refused(tmp_path, section, key, value, message):
    """A typo in a section, or a setting this implementation cannot reproduce, raises instead of being dropped."""
    assert load(tmp_path, _full_official()) == TripoSRConfig()  # the unedited file is the default architecture
    data = _full_official()
    data[section][key] = value
    with pytest.raises(ValueError, match=message):
        load(tmp_path, data)


def test_mesh_threshold_default_and_validation():
    """SPEC §1: iso level 25 for the official model; set in the own layout, refused unless positive and finite."""
    assert TripoSRConfig().renderer.mesh_threshold == 25.0
    data = TripoSRConfig().to_dict()
    data["renderer"]["mesh_threshold"] = 7.5
    assert TripoSRConfig.from_dict(data).renderer.mesh_threshold == 7.5
    for bad in (0.0, -3.0, float("inf"), float("nan"), "25"):
        data["renderer"]["mesh_threshold"] = bad
        with pytest.raises(ValueError, match="mesh_threshold"):
            TripoSRConfig.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("density_activation", "relu", "density_activation"),
        ("color_activation", "tanh", "color_activation"),
        ("feature_reduction", "sum", "feature_reduction"),
        ("radius", 0.0, "radius"),
        ("n_samples", 0, "n_samples"),
    ],
)
def test_renderer_settings_are_validated(field, value, message):
    """Renderer settings outside what the model implements raise ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        RendererConfig(**{field: value})
