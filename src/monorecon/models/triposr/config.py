"""Configuration of the TripoSR architecture: dataclasses, our yaml layout, and the official ``config.yaml``.

Two yaml layouts are read by :meth:`TripoSRConfig.load`:

* **official** (``config.yaml`` of the released checkpoint): one ``<part>_cls`` string plus one ``<part>`` mapping
  per component (``image_tokenizer``, ``tokenizer``, ``backbone``, ``post_processor``, ``decoder``, ``renderer``),
  with OmegaConf-style ``${a.b}`` references. The image encoder is named by its Hugging Face model id; the ViT
  sizes of ``facebook/dino-vitb16`` are built in (nothing is downloaded), a local folder holding a ``config.json``
  also works.
* **monorecon** (``format: monorecon-triposr``): the fields of the dataclasses below, ViT sizes included, written by
  :meth:`TripoSRConfig.save`.

Unknown keys and settings that this implementation does not support raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monorecon.io.yaml_config import load_yaml

__all__ = [
    "BackboneConfig",
    "DecoderConfig",
    "ImageEncoderConfig",
    "PostProcessorConfig",
    "RendererConfig",
    "TokenizerConfig",
    "TripoSRConfig",
]

FORMAT_NAME = "monorecon-triposr"


def _is_number(value: object) -> bool:
    """An int or float, not a bool (which Python counts as an int) nor a string."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_ints(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ImageEncoderConfig:
    """ViT image encoder (DINO ViT-B/16 by default). ``pretrained_image_size`` sets the grid of the learned position
    embeddings (224 / 16 = 14 x 14), interpolated at run time to the grid of ``cond_image_size``."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    pretrained_image_size: int = 224
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        _positive_ints(self, "hidden_size", "num_layers", "num_heads", "intermediate_size", "patch_size")
        _positive_ints(self, "pretrained_image_size")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"image encoder hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if self.pretrained_image_size % self.patch_size:
            raise ValueError("image encoder pretrained_image_size must be a multiple of patch_size")
        if not (_is_number(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise ValueError(f"image encoder layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Learned triplane tokens: 3 planes of ``plane_size`` x ``plane_size`` tokens of ``num_channels``."""

    plane_size: int = 32
    num_channels: int = 1024

    def __post_init__(self) -> None:
        _positive_ints(self, "plane_size", "num_channels")


@dataclass(frozen=True)
class BackboneConfig:
    """Transformer writing the triplane tokens (self-attention, cross-attention to the image tokens, GEGLU)."""

    in_channels: int = 1024
    num_heads: int = 16
    head_dim: int = 64
    num_layers: int = 16
    cross_attention_dim: int = 768
    norm_num_groups: int = 32

    def __post_init__(self) -> None:
        _positive_ints(self, "in_channels", "num_heads", "head_dim", "num_layers", "cross_attention_dim")
        _positive_ints(self, "norm_num_groups")
        if self.in_channels % self.norm_num_groups:
            raise ValueError(f"backbone in_channels {self.in_channels} not divisible by {self.norm_num_groups} groups")


@dataclass(frozen=True)
class PostProcessorConfig:
    """Per-plane 2x upsampling (transposed convolution) of the tokens to the scene code."""

    in_channels: int = 1024
    out_channels: int = 40

    def __post_init__(self) -> None:
        _positive_ints(self, "in_channels", "out_channels")


@dataclass(frozen=True)
class DecoderConfig:
    """NeRF MLP ``in_channels -> hidden_channels x n_hidden_layers -> 4``."""

    in_channels: int = 120
    hidden_channels: int = 64
    n_hidden_layers: int = 9
    activation: str = "silu"

    def __post_init__(self) -> None:
        _positive_ints(self, "in_channels", "hidden_channels", "n_hidden_layers")
        if self.activation not in ("silu", "relu"):
            raise ValueError(f"decoder activation must be 'silu' or 'relu', got {self.activation!r}")


@dataclass(frozen=True)
class RendererConfig:
    """Triplane lookup and volume rendering (TripoSR frame: points / radius read the planes)."""

    radius: float = 0.87
    feature_reduction: str = "concat"
    density_activation: str = "exp"
    density_bias: float = -1.0
    color_activation: str = "sigmoid"
    n_samples: int = 128
    #: Density iso level of the model's surface for marching cubes (official: 25; a model trained here may differ).
    mesh_threshold: float = 25.0
    #: Raise the density on input-silhouette rays that never reach the surface level when carving
    #: (:meth:`monorecon.core.carving.SilhouetteHull.filled`): validated for the bundled model only, so off by default.
    silhouette_fill: bool = False

    def __post_init__(self) -> None:
        _positive_ints(self, "n_samples")
        if not isinstance(self.silhouette_fill, bool):
            raise ValueError(f"renderer silhouette_fill must be true or false, got {self.silhouette_fill!r}")
        for name in ("mesh_threshold", "radius"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 < value < float("inf")):
                raise ValueError(f"renderer {name} must be positive and finite, got {value!r}")
        if not (_is_number(self.density_bias) and math.isfinite(self.density_bias)):
            raise ValueError(f"renderer density_bias must be a finite number, got {self.density_bias!r}")
        if self.feature_reduction not in ("concat", "mean"):
            raise ValueError(f"renderer feature_reduction must be 'concat' or 'mean', got {self.feature_reduction!r}")
        if self.density_activation not in ("exp", "trunc_exp", "softplus"):
            raise ValueError(f"unsupported density_activation {self.density_activation!r}")
        if self.color_activation != "sigmoid":
            raise ValueError(f"unsupported color_activation {self.color_activation!r} (only 'sigmoid')")


_SECTIONS: dict[str, type] = {
    "image_encoder": ImageEncoderConfig,
    "tokenizer": TokenizerConfig,
    "backbone": BackboneConfig,
    "post_processor": PostProcessorConfig,
    "decoder": DecoderConfig,
    "renderer": RendererConfig,
}


@dataclass(frozen=True)
class TripoSRConfig:
    """The whole model. Defaults are the released TripoSR checkpoint (SPEC §1).

    Attributes:
        cond_image_size: input images are resized to this square size (a multiple of the patch size).
        foreground_ratio: share of the input square the object's larger bounding-box side should take, i.e. the
            framing the model was trained on (TripoSR: 0.85); preprocessing uses it unless told otherwise.
    """

    cond_image_size: int = 512
    foreground_ratio: float = 0.85
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    post_processor: PostProcessorConfig = field(default_factory=PostProcessorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)

    def __post_init__(self) -> None:
        _positive_ints(self, "cond_image_size")
        ratio = self.foreground_ratio
        if isinstance(ratio, bool) or not (isinstance(ratio, int | float) and 0.05 <= ratio <= 1.0):
            raise ValueError(f"foreground_ratio must lie in [0.05, 1], got {self.foreground_ratio!r}")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"TripoSRConfig.{name} must be a {cls.__name__}")
        if self.cond_image_size % self.image_encoder.patch_size:
            raise ValueError(
                f"cond_image_size {self.cond_image_size} is not a multiple of the patch size "
                f"{self.image_encoder.patch_size}"
            )
        channels = self.tokenizer.num_channels
        checks = [
            ("backbone.in_channels", self.backbone.in_channels, "tokenizer.num_channels", channels),
            ("post_processor.in_channels", self.post_processor.in_channels, "tokenizer.num_channels", channels),
            ("backbone.cross_attention_dim", self.backbone.cross_attention_dim,
             "image_encoder.hidden_size", self.image_encoder.hidden_size),
            ("decoder.in_channels", self.decoder.in_channels, "the sampled feature size", self.feature_size),
        ]  # fmt: skip
        for name, value, other, expected in checks:
            if value != expected:
                raise ValueError(f"inconsistent config: {name} = {value} but {other} = {expected}")

    @property
    def feature_size(self) -> int:
        """Features per point given to the decoder (3 planes concatenated, or their mean)."""
        per_plane = self.post_processor.out_channels
        return 3 * per_plane if self.renderer.feature_reduction == "concat" else per_plane

    # -- our own layout --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the monorecon yaml layout (``format`` key included)."""
        return {"format": FORMAT_NAME, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TripoSRConfig:
        """Parse the monorecon layout (see :meth:`to_dict`); the ``format`` key is optional."""
        if not isinstance(data, dict):
            raise ValueError(f"TripoSR config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if data.pop("format", FORMAT_NAME) != FORMAT_NAME:
            raise ValueError(f"unknown config format (expected {FORMAT_NAME!r})")
        unknown = set(data) - {"cond_image_size", "foreground_ratio", *_SECTIONS}
        if unknown:
            raise ValueError(f"unknown TripoSR config keys: {sorted(unknown)}")
        sections = {name: _build_section(kind, data.get(name, {}), name) for name, kind in _SECTIONS.items()}
        scalars = {key: data[key] for key in ("cond_image_size", "foreground_ratio") if key in data}
        return cls(**scalars, **sections)

    def save(self, path: str | os.PathLike) -> None:
        """Write the monorecon yaml layout."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # -- reading ---------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> TripoSRConfig:
        """Read a yaml file in either layout (official ``config.yaml`` or monorecon)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        data = load_yaml(path)
        if isinstance(data, dict) and "image_tokenizer_cls" in data:
            return cls.from_official(data, base_dir=path.parent)
        return cls.from_dict(data)

    @classmethod
    def from_official(cls, data: dict[str, Any], base_dir: str | os.PathLike | None = None) -> TripoSRConfig:
        """Parse the official layout (``*_cls`` + section mappings, ``${a.b}`` references resolved).

        Args:
            data: the parsed yaml.
            base_dir: folder against which a relative image-encoder folder is resolved.
        """
        data = _resolve_references(data, data)
        expected_keys = {"cond_image_size"} | {
            f"{part}{suffix}" for part in _OFFICIAL_CLASSES for suffix in ("", "_cls")
        }
        unknown = set(data) - expected_keys
        if unknown:
            raise ValueError(f"unknown keys in the official TripoSR config: {sorted(unknown)}")
        for part, class_name in _OFFICIAL_CLASSES.items():
            if data.get(f"{part}_cls") != class_name:
                raise ValueError(
                    f"config is not a TripoSR architecture: {part}_cls is {data.get(f'{part}_cls')!r}, "
                    f"expected {class_name!r}"
                )
        image_defaults = {"pretrained_model_name_or_path": None, "enable_gradient_checkpointing": False}
        image = _options(data, "image_tokenizer", image_defaults)
        tokenizer = _options(data, "tokenizer", {"plane_size": None, "num_channels": None})
        backbone = _options(data, "backbone", _OFFICIAL_BACKBONE_DEFAULTS)
        post = _options(data, "post_processor", {"in_channels": None, "out_channels": None})
        decoder = _options(data, "decoder", _OFFICIAL_DECODER_DEFAULTS)
        renderer = _options(data, "renderer", _OFFICIAL_RENDERER_DEFAULTS)
        for section, values, supported in (
            ("backbone", backbone, _OFFICIAL_BACKBONE_SUPPORTED),
            ("decoder", decoder, _OFFICIAL_DECODER_SUPPORTED),
            ("renderer", renderer, _OFFICIAL_RENDERER_SUPPORTED),
        ):
            for key, allowed in supported.items():
                if values[key] != allowed:
                    setting = f"{section}.{key} = {values[key]!r}"
                    raise ValueError(f"unsupported official setting {setting} (supported: {allowed!r})")
        return cls(
            cond_image_size=data.get("cond_image_size"),
            image_encoder=_official_vit(image["pretrained_model_name_or_path"], base_dir),
            tokenizer=TokenizerConfig(**tokenizer),
            backbone=BackboneConfig(
                in_channels=backbone["in_channels"],
                num_heads=backbone["num_attention_heads"],
                head_dim=backbone["attention_head_dim"],
                num_layers=backbone["num_layers"],
                cross_attention_dim=backbone["cross_attention_dim"],
                norm_num_groups=backbone["norm_num_groups"],
            ),
            post_processor=PostProcessorConfig(**post),
            decoder=DecoderConfig(
                in_channels=decoder["in_channels"],
                hidden_channels=decoder["n_neurons"],
                n_hidden_layers=decoder["n_hidden_layers"],
                activation=decoder["activation"],
            ),
            renderer=RendererConfig(
                radius=renderer["radius"],
                feature_reduction=renderer["feature_reduction"],
                density_activation=renderer["density_activation"],
                density_bias=renderer["density_bias"],
                color_activation=renderer["color_activation"],
                n_samples=renderer["num_samples_per_ray"],
            ),
        )


def _build_section(kind: type, values: object, name: str):
    if not isinstance(values, dict):
        raise ValueError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown keys in config section {name!r}: {sorted(unknown)}")
    return kind(**values)


# ------------------------------------------------------------------------------------------------------------------
# Official layout
# ------------------------------------------------------------------------------------------------------------------
_OFFICIAL_CLASSES = {
    "image_tokenizer": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder": "tsr.models.network_utils.NeRFMLP",
    "renderer": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}
# Options of the official components with their defaults (None: required) ...
_OFFICIAL_BACKBONE_DEFAULTS = {
    "num_attention_heads": 16, "attention_head_dim": 88, "in_channels": None, "out_channels": None,
    "num_layers": 1, "dropout": 0.0, "norm_num_groups": 32, "cross_attention_dim": None, "attention_bias": False,
    "activation_fn": "geglu", "only_cross_attention": False, "double_self_attention": False,
    "upcast_attention": False, "norm_type": "layer_norm", "norm_elementwise_affine": True,
    "gradient_checkpointing": False,
}  # fmt: skip
_OFFICIAL_DECODER_DEFAULTS = {
    "in_channels": None, "n_neurons": None, "n_hidden_layers": None, "activation": "relu", "bias": True,
    "weight_init": "kaiming_uniform", "bias_init": None,
}  # fmt: skip
_OFFICIAL_RENDERER_DEFAULTS = {
    "radius": None, "feature_reduction": "concat", "density_activation": "trunc_exp", "density_bias": -1.0,
    "color_activation": "sigmoid", "num_samples_per_ray": 128, "randomized": False,
}  # fmt: skip
# ... and the values this implementation supports where the official code allows others (inference only, so
# dropout, initialisation and gradient checkpointing do not matter).
_OFFICIAL_BACKBONE_SUPPORTED = {
    "attention_bias": False, "activation_fn": "geglu", "only_cross_attention": False,
    "double_self_attention": False, "norm_type": "layer_norm", "norm_elementwise_affine": True, "out_channels": None,
}  # fmt: skip
_OFFICIAL_DECODER_SUPPORTED = {"bias": True}
_OFFICIAL_RENDERER_SUPPORTED = {"randomized": False}

# ViT sizes of the image encoders known without a download (Hugging Face config.json values).
_KNOWN_VITS = {"facebook/dino-vitb16": ImageEncoderConfig()}


def _options(data: dict[str, Any], part: str, defaults: dict[str, Any]) -> dict[str, Any]:
    values = data.get(part)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"official config section {part!r} must be a mapping")
    unknown = set(values) - set(defaults)
    if unknown:
        raise ValueError(f"unknown keys in official config section {part!r}: {sorted(unknown)}")
    merged = {**defaults, **values}
    missing = [key for key in _REQUIRED[part] if merged[key] is None]
    if missing:
        raise ValueError(f"official config section {part!r} lacks {missing}")
    return merged


_REQUIRED = {
    "image_tokenizer": ("pretrained_model_name_or_path",),
    "tokenizer": ("plane_size", "num_channels"),
    "backbone": ("in_channels", "cross_attention_dim"),
    "post_processor": ("in_channels", "out_channels"),
    "decoder": ("in_channels", "n_neurons", "n_hidden_layers"),
    "renderer": ("radius",),
}


def _official_vit(name: str, base_dir: str | os.PathLike | None) -> ImageEncoderConfig:
    """ViT sizes for the official ``pretrained_model_name_or_path``: a known id, or a local folder / config.json."""
    if name in _KNOWN_VITS:
        return _KNOWN_VITS[name]
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(
            f"unknown image encoder {name!r}: not one of {sorted(_KNOWN_VITS)} and no config.json at {path}"
        )
    try:
        vit = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"image encoder config {path} is not valid JSON: {err}") from err
    if not isinstance(vit, dict):
        raise ValueError(f"image encoder config {path} is not a JSON object")
    if vit.get("model_type", "vit") != "vit" or vit.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"image encoder config {path} is not a GELU ViT")
    return ImageEncoderConfig(
        hidden_size=vit.get("hidden_size", 768), num_layers=vit.get("num_hidden_layers", 12),
        num_heads=vit.get("num_attention_heads", 12), intermediate_size=vit.get("intermediate_size", 3072),
        patch_size=vit.get("patch_size", 16), pretrained_image_size=vit.get("image_size", 224),
        layer_norm_eps=vit.get("layer_norm_eps", 1e-12), qkv_bias=vit.get("qkv_bias", True),
    )  # fmt: skip


_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def _resolve_references(value: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """Replace whole-string ``${a.b}`` values by the value at that dotted path of ``root`` (OmegaConf style)."""
    if depth > 16:
        raise ValueError("config references nest too deeply (a cycle?)")
    if isinstance(value, dict):
        return {key: _resolve_references(item, root, depth) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_references(item, root, depth) for item in value]
    if isinstance(value, str) and "${" in value:
        match = _REFERENCE.match(value)
        if match is None:
            raise ValueError(f"unsupported config interpolation {value!r} (only whole '${{a.b}}' references)")
        target: Any = root
        for part in match.group(1).split("."):
            if not isinstance(target, dict) or part not in target:
                raise ValueError(f"config reference {value!r} points to nothing")
            target = target[part]
        return _resolve_references(target, root, depth + 1)
    return value
