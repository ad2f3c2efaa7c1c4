"""DINO ViT image encoder: Hugging Face ``ViTModel`` with the position-embedding interpolation of transformers 4.35.

TripoSR was trained with transformers 4.35, which resizes the learned position embeddings (a ``g x g`` grid, g = 14
for the 224-pixel DINO model) to the ``n x n`` patch grid of the input bicubically with
``scale_factor = (n + 0.1) / g`` (``align_corners=False``). Newer versions pass ``size=(n, n)`` instead, which maps
pixel coordinates with ``g / n`` rather than ``g / (n + 0.1)`` and changes the tokens noticeably. This module
reproduces the 4.35 behaviour whatever transformers version is installed.

Checkpoint keys stay in the transformers 4.x layout (``model.encoder.layer.{i}.attention.attention.query.weight``,
...) whatever names the installed version uses internally: ``state_dict`` and ``load_state_dict`` translate.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTModel
from transformers.models.vit.modeling_vit import ViTEmbeddings

from ...io.images import IMAGENET_MEAN, IMAGENET_STD
from .config import ImageEncoderConfig

__all__ = [
    "DinoImageEncoder",
    "legacy_interpolate_position_embeddings",
    "resample_patch_embedding",
]


def legacy_interpolate_position_embeddings(position_embeddings: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize ViT position embeddings to a ``grid_h x grid_w`` patch grid as transformers 4.35 did.

    Args:
        position_embeddings: (1, 1 + g*g, D): the class-token embedding, then the ``g x g`` grid row-major.
        grid_h, grid_w: patch grid of the input image.

    Returns:
        (1, 1 + grid_h*grid_w, D); the input itself when the grid is already ``g x g`` and square.
    """
    n_grid = position_embeddings.shape[1] - 1
    if n_grid == grid_h * grid_w and grid_h == grid_w:
        return position_embeddings
    side = math.isqrt(n_grid)
    if side * side != n_grid:
        raise ValueError(f"position embeddings hold {n_grid} patch positions, not a square grid")
    dim = position_embeddings.shape[-1]
    grid = position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # The + 0.1 (from DINO) makes floor(side * scale) land on the wanted size; the scale itself, not the size,
    # sets the sampling positions: source = (dst + 0.5) * side / (n + 0.1) - 0.5.
    scale = ((grid_h + 0.1) / side, (grid_w + 0.1) / side)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    if grid.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, expected {grid_h, grid_w}")
    return torch.cat([position_embeddings[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def resample_patch_embedding(
    state_dict: dict[str, torch.Tensor], patch_size: int, image_size: int, prefix: str = "image_tokenizer."
) -> dict[str, torch.Tensor]:
    """Weights of a ViT image encoder converted to another patch size (warm start for fine-tuning).

    The patch kernel is area-resampled and rescaled so that its sum per input channel is kept (a plain-colour patch
    gives the same token as before); the position embeddings are resized to the new ``image_size / patch_size`` grid
    as :func:`legacy_interpolate_position_embeddings` does at run time.

    Args:
        state_dict: model weights (checkpoint key layout); not modified.
        patch_size: the new patch side.
        image_size: the new ``pretrained_image_size`` (a multiple of ``patch_size``).
        prefix: key prefix of the encoder (``"image_tokenizer."`` in a TripoSR model, ``""`` for the encoder alone).

    Returns:
        A new state dict; keys other than the patch kernel and the position embeddings are shared with the input.
    """
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a positive multiple of patch_size ({patch_size})")
    kernel_key = prefix + "model.embeddings.patch_embeddings.projection.weight"
    position_key = prefix + "model.embeddings.position_embeddings"
    if kernel_key not in state_dict or position_key not in state_dict:
        raise ValueError(f"no ViT patch embedding under the prefix {prefix!r}")
    kernel = state_dict[kernel_key]
    old = kernel.shape[-1]
    resized = F.interpolate(kernel.float(), size=(patch_size, patch_size), mode="area") * (old / patch_size) ** 2
    grid = image_size // patch_size
    out = dict(state_dict)
    out[kernel_key] = resized.to(kernel.dtype).contiguous()
    out[position_key] = legacy_interpolate_position_embeddings(state_dict[position_key], grid, grid).contiguous()
    return out


class _LegacyViTEmbeddings(ViTEmbeddings):
    """``ViTEmbeddings`` whose run-time interpolation is the transformers 4.35 one."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        patch = self.patch_embeddings.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        return legacy_interpolate_position_embeddings(self.position_embeddings, height // patch_h, width // patch_w)


# Installed-name -> transformers 4.x name, for versions that renamed the ViT modules (transformers 5 uses
# layers.{i}.attention.{q,k,v,o}_proj and layers.{i}.mlp.fc{1,2}). Names that match no rule are the same in both.
_TO_LEGACY = [
    (re.compile(r"^layers\.(\d+)\.attention\.q_proj\."), r"encoder.layer.\1.attention.attention.query."),
    (re.compile(r"^layers\.(\d+)\.attention\.k_proj\."), r"encoder.layer.\1.attention.attention.key."),
    (re.compile(r"^layers\.(\d+)\.attention\.v_proj\."), r"encoder.layer.\1.attention.attention.value."),
    (re.compile(r"^layers\.(\d+)\.attention\.o_proj\."), r"encoder.layer.\1.attention.output.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc1\."), r"encoder.layer.\1.intermediate.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc2\."), r"encoder.layer.\1.output.dense."),
    (re.compile(r"^layers\.(\d+)\.(layernorm_before|layernorm_after)\."), r"encoder.layer.\1.\2."),
]


def _legacy_name(name: str) -> str:
    for pattern, replacement in _TO_LEGACY:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return name


def _legacy_vit_keys(num_layers: int, qkv_bias: bool = True) -> set[str]:
    """Parameter names of a transformers 4.x ``ViTModel`` (with pooler); no q/k/v biases without ``qkv_bias``."""
    keys = {"embeddings.cls_token", "embeddings.position_embeddings"}
    leaves = ["embeddings.patch_embeddings.projection", "layernorm", "pooler.dense"]
    for i in range(num_layers):
        layer = f"encoder.layer.{i}"
        qkv = [f"{layer}.attention.attention.{p}" for p in ("query", "key", "value")]
        leaves += qkv if qkv_bias else []
        keys |= set() if qkv_bias else {f"{leaf}.weight" for leaf in qkv}
        leaves += [f"{layer}.attention.output.dense", f"{layer}.intermediate.dense", f"{layer}.output.dense"]
        leaves += [f"{layer}.layernorm_before", f"{layer}.layernorm_after"]
    return keys | {f"{leaf}.{kind}" for leaf in leaves for kind in ("weight", "bias")}


class DinoImageEncoder(nn.Module):
    """Image -> ViT tokens (class token first, after the final LayerNorm).

    Attributes:
        model: the Hugging Face ``ViTModel`` (pooler included: the checkpoint holds it, TripoSR does not use it).
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        vit_config = ViTConfig(
            hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            image_size=config.pretrained_image_size, patch_size=config.patch_size,
            layer_norm_eps=config.layer_norm_eps, qkv_bias=config.qkv_bias, hidden_act="gelu",
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_channels=3,
        )  # fmt: skip
        self.model = ViTModel(vit_config)
        self.model.embeddings = _LegacyViTEmbeddings(vit_config)
        installed = list(self.model.state_dict())
        self._to_legacy = {name: _legacy_name(name) for name in installed}
        if set(self._to_legacy.values()) != _legacy_vit_keys(config.num_layers, config.qkv_bias):
            raise RuntimeError("the installed transformers ViTModel has a parameter layout this module does not know")
        self._to_installed = {legacy: name for name, legacy in self._to_legacy.items()}
        self.register_state_dict_post_hook(_rename_state_dict_hook)
        self.register_load_state_dict_pre_hook(_rename_load_hook)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] (H, W multiples of the patch size) -> (B, 1 + H W / p^2, D) tokens."""
        mean = images.new_tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
        pixels = (images - mean) / std
        return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state


def _rename_keys(state_dict: dict[str, torch.Tensor], prefix: str, mapping: dict[str, str]) -> None:
    """Rename ``prefix + key`` entries in place through ``mapping``, keeping the order of the dict."""
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(prefix) and key[len(prefix) :] in mapping:
            key = prefix + mapping[key[len(prefix) :]]
        state_dict[key] = value


def _rename_state_dict_hook(module: DinoImageEncoder, state_dict, prefix: str, local_metadata) -> None:
    _rename_keys(state_dict, prefix + "model.", module._to_legacy)


def _rename_load_hook(module: DinoImageEncoder, state_dict, prefix: str, *args) -> None:
    _rename_keys(state_dict, prefix + "model.", module._to_installed)
